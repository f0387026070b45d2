//! `http_enrich`: calls an HTTP API once per event and outputs its answer.
//!
//! Each event's payload is sent (`POST`, or as configured) to `url`; the
//! response body becomes the output's payload, with the event's key and a
//! `http-status` header. The host adds `Idempotency-Key: <event id>:0` (the
//! same on every retry of the event) and the event's `traceparent`.
//!
//! - 2xx and 3xx: the output.
//! - 4xx: the API refused this event; retrying will not help: rejected
//!   (dead-lettered).
//! - 5xx, a timeout or a transport failure: retryable (the host retries
//!   with backoff, then dead-letters with the calls made listed).
//!
//! Config (any other key refuses the load):
//! - `url` (required): `http(s)://host[:port]/path`; the pipeline's
//!   `[plugin.http] allow` must list its host and port.
//! - `method`: `POST` (default, the payload is the body), `PUT`, or `GET`
//!   (no body).
//! - `content_type`: of the body sent, default `application/json`.

use sluice_plugin::{http, Config, Event, HandlerError, Output, Plugin};

struct HttpEnrich {
    url: String,
    method: String,
    content_type: String,
}

impl Plugin for HttpEnrich {
    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(&["url", "method", "content_type"])?;
        let url = config.require("url")?.to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("`url` must be an http:// or https:// URL, got `{url}`"));
        }
        let method = config.get("method").unwrap_or("POST").to_ascii_uppercase();
        if !["POST", "PUT", "GET"].contains(&method.as_str()) {
            return Err(format!("`method` must be POST, PUT or GET, got `{method}`"));
        }
        let content_type = config.get("content_type").unwrap_or("application/json").to_owned();
        Ok(HttpEnrich { url, method, content_type })
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        let mut request = http::Request::new(&self.method, &self.url);
        if self.method != "GET" {
            request = request.header("content-type", &self.content_type).body(event.payload.clone());
        }
        // Denied or a bad URL reject the event; timeouts and transport
        // failures are retryable (`From<http::Error> for HandlerError`).
        let response = request.send()?;
        match response.status {
            200..=399 => {
                let mut output = Output::new(response.body).with_header("http-status", response.status.to_string());
                output.key = event.key;
                Ok(vec![output])
            }
            400..=499 => Err(HandlerError::reject(format!("{} answered {}: {}", self.url, response.status, String::from_utf8_lossy(&response.body)))),
            status => Err(HandlerError::retryable(format!("{} answered {status}", self.url))),
        }
    }
}

sluice_plugin::export!(HttpEnrich);
