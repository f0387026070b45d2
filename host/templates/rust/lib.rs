//! `{{name}}`: forwards every event with a header `x-tag` (config `tag`,
//! default `{{name}}`); an empty payload is rejected.
{{#state}}//! - state: counts the events of each key (`seen:<key>` in the pipeline's
//!   state) and puts the count in a header `x-seen`.
{{/state}}{{#http}}//! - HTTP: POSTs the payload to config `url` (default
//!   `https://api.example.com/lookup`) and puts the answer in `x-lookup`; a
//!   4xx rejects the event, a 5xx or a failed request retries it.
{{/http}}{{#client}}//! - service call: asks the destination config `service` (default
//!   `lookup`) about the payload and puts the answer in `x-answer`.
{{/client}}{{#metrics}}//! - metrics: counts the events per tag (`sluice_plugin_events_total`) and
//!   records payload sizes (`sluice_plugin_payload_bytes`).
{{/metrics}}
use sluice_plugin::{Config, Event, HandlerError, Output, Plugin{{#state}}, state{{/state}}{{#http}}, http{{/http}}{{#client}}, client{{/client}}{{#metrics}}, metrics{{/metrics}}};

struct Tagger {
    tag: String,
{{#http}}    url: String,
{{/http}}{{#client}}    service: String,
{{/client}}}

impl Plugin for Tagger {
    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(&[{{config_keys}}])?;
        let tag = config.get("tag").unwrap_or("{{name}}").to_owned();
{{#http}}        let url = config.get("url").unwrap_or("https://api.example.com/lookup").to_owned();
{{/http}}{{#client}}        let service = config.get("service").unwrap_or("lookup").to_owned();
{{/client}}        Ok(Tagger { tag{{#http}}, url{{/http}}{{#client}}, service{{/client}} })
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        if event.payload.is_empty() {
            return Err(HandlerError::reject("empty payload"));
        }
{{#metrics}}        // Recorded on every attempt, never fails the event.
        metrics::counter("events", &[("tag", &self.tag)]).inc();
        metrics::histogram("payload_bytes", &[]).observe(event.payload.len() as f64);
{{/metrics}}{{#state}}        // Kept only if the event succeeds (a failed attempt's writes are dropped).
        let key = event.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        let seen = state::increment(&format!("seen:{key}"), 1)?;
{{/state}}{{#http}}        // The host adds `Idempotency-Key: <event id>:<n>` (the same on every
        // retry) and the event's `traceparent`. `?`: denied rejects, a timeout
        // or a transport failure retries.
        let response = http::Request::post(&self.url).body(event.payload.clone()).send()?;
        match response.status {
            200..=299 => {}
            400..=499 => return Err(HandlerError::reject(format!("{} answered {}", self.url, response.status))),
            status => return Err(HandlerError::retryable(format!("{} answered {status}", self.url))),
        }
        let lookup = response.text()?.to_owned();
{{/http}}{{#client}}        // `?`: a service error rejects; a timeout or no responders retries.
        let reply = client::request(&self.service, &event.payload).send()?;
        let answer = String::from_utf8_lossy(&reply.payload).into_owned();
{{/client}}        Ok(vec![Output::from(event)
            .with_header("x-tag", self.tag.as_str()){{#state}}
            .with_header("x-seen", seen.to_string()){{/state}}{{#http}}
            .with_header("x-lookup", lookup){{/http}}{{#client}}
            .with_header("x-answer", answer){{/client}}])
    }
}

sluice_plugin::export!(Tagger);
