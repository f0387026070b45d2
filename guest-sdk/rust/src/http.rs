//! Outbound HTTP from a handler: a small blocking client over the standard
//! `wasi:http/outgoing-handler` (WASI 0.2, through the `wasip2` crate's
//! bindings). Feature `http`.
//!
//! The pipeline must grant it with `[pipelines.<name>.plugin.http]` and list
//! the destinations (`allow = ["api.example.com:443"]`); a plugin that uses
//! this module in a pipeline without the table is refused at load, and a
//! request to a destination not listed fails with [`Error::Denied`].
//!
//! ```no_run
//! use sluice_plugin::{http, Event, HandlerError, Output};
//!
//! fn handle(event: Event) -> Result<Vec<Output>, HandlerError> {
//!     let reply = http::Request::post("https://api.example.com/score")
//!         .header("content-type", "application/json")
//!         .body(event.payload.clone())
//!         .send()?; // a transport error or timeout is retryable
//!     match reply.status {
//!         200..=299 => Ok(vec![Output::new(reply.body)]),
//!         400..=499 => Err(HandlerError::reject(format!("the API refused it: {}", reply.status))),
//!         _ => Err(HandlerError::retryable(format!("the API failed: {}", reply.status))),
//!     }
//! }
//! ```
//!
//! What the host adds: every request carries `Idempotency-Key:
//! <event id>:<n>` (n counts the event's requests, so a retried event sends
//! the same keys) and the event's `traceparent`, unless you set your own.
//! Bodies are read whole into memory, up to the pipeline's
//! `max_response_bytes`. Plain `http://` works only where the allow entry
//! says `http://`; `https` uses the host's bundled web PKI roots.

use std::fmt;
use std::time::Duration;

/// A response, its body read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (200, 404…).
    pub status: u16,
    /// Names are lowercase; a name may repeat.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body).map_err(|_| Error::Body("the body is not UTF-8".into()))
    }

    /// The body parsed as JSON.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Body(format!("the body is not the JSON expected: {e}")))
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not an `http://` or `https://` URL with a host.
    InvalidUrl(String),
    /// A header name or value the host refuses.
    InvalidHeader(String),
    /// The host refused the request: the pipeline does not allow this
    /// destination (`plugin.http.allow`), or `plugin test --http-replies`
    /// has no rule for it.
    Denied {
        /// `host:port` as requested.
        host: String,
        /// The host's reason when it gave one (`plugin test`: "no rule in
        /// http.json matches POST https://…"); `None`: not in the
        /// pipeline's `plugin.http.allow`.
        reason: Option<String>,
    },
    /// No response within the timeout (`plugin.http.timeout`, or the
    /// request's own).
    Timeout {
        /// `host:port` as requested.
        host: String,
    },
    /// The response body passed `plugin.http.max_response_bytes`.
    TooLarge {
        /// The cap, in bytes, when the host said.
        limit: Option<u64>,
    },
    /// Connection refused, TLS failure, DNS failure, a broken response…
    Transport {
        /// `host:port` as requested.
        host: String,
        /// The `wasi:http` error code.
        code: String,
    },
    /// The body could not be read or decoded.
    Body(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidUrl(url) => write!(f, "not an http(s) URL: {url}"),
            Error::InvalidHeader(name) => write!(f, "invalid header `{name}`"),
            Error::Denied { host, reason: None } => write!(f, "HTTP request to {host} denied: not in the pipeline's plugin.http.allow"),
            Error::Denied { host, reason: Some(reason) } => write!(f, "HTTP request to {host} denied: {reason}"),
            Error::Timeout { host } => write!(f, "HTTP request to {host} timed out"),
            Error::TooLarge { limit: Some(limit) } => write!(f, "HTTP response body over the limit of {limit} bytes"),
            Error::TooLarge { limit: None } => write!(f, "HTTP response body over the limit"),
            Error::Transport { host, code } => write!(f, "HTTP request to {host} failed: {code}"),
            Error::Body(why) => write!(f, "HTTP response body: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// A request that cannot succeed as written (a bad URL or header, a
/// destination the pipeline does not allow) rejects the event; anything
/// that may pass (a timeout, a refused connection, a cut-off body) is
/// retryable. Handle [`Error`] yourself to decide otherwise.
impl From<Error> for crate::HandlerError {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidUrl(_) | Error::InvalidHeader(_) | Error::Denied { .. } => crate::HandlerError::reject(err.to_string()),
            _ => crate::HandlerError::retryable(err.to_string()),
        }
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, Error> {
    Request::get(url).send()
}

/// `POST url` with `body`.
pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Result<Response, Error> {
    Request::post(url).body(body).send()
}

/// A request being built; [`Request::send`] sends it and waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

impl Request {
    /// Any method (`"GET"`, `"PATCH"`…).
    pub fn new(method: &str, url: &str) -> Self {
        Self { method: method.to_ascii_uppercase(), url: url.to_owned(), headers: Vec::new(), body: Vec::new(), timeout: None }
    }
    /// `GET url`.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }
    /// `POST url`.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }
    /// `PUT url`.
    pub fn put(url: &str) -> Self {
        Self::new("PUT", url)
    }
    /// `DELETE url`.
    pub fn delete(url: &str) -> Self {
        Self::new("DELETE", url)
    }

    /// Adds a header (a name may repeat). Set `idempotency-key` or
    /// `traceparent` to replace the ones the host adds.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// The request body (sent with a `content-length`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// `value` as the JSON body, with `content-type: application/json`.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value).map_err(|e| Error::Body(e.to_string()))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Waits at most this long for the connection and the response head
    /// (the pipeline's `plugin.http.timeout` still applies).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, Error> {
        let url = Url::parse(&self.url)?;
        imp::send(&self, &url)
    }
}

/// The parts of a URL a request needs.
#[derive(Debug, PartialEq, Eq)]
struct Url<'a> {
    https: bool,
    authority: &'a str,
    path_with_query: &'a str,
}

impl<'a> Url<'a> {
    fn parse(url: &'a str) -> Result<Self, Error> {
        let invalid = || Error::InvalidUrl(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(invalid()),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_with_query) = rest.split_at(end);
        if authority.is_empty() {
            return Err(invalid());
        }
        let path_with_query = if path_with_query.is_empty() { "/" } else { path_with_query };
        Ok(Self { https, authority, path_with_query })
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme};
    use wasip2::io::streams::StreamError;

    use super::{Error, Request, Response, Url};

    /// Bytes per write into the request body: the most
    /// `blocking-write-and-flush` takes at once.
    const WRITE_CHUNK: usize = 4096;

    pub(super) fn send(request: &Request, url: &Url<'_>) -> Result<Response, Error> {
        let host = url.authority.to_owned();
        let failed = |code: ErrorCode| from_code(code, &host);
        let headers = Fields::new();
        for (name, value) in &request.headers {
            headers.append(name, value).map_err(|_| Error::InvalidHeader(name.clone()))?;
        }
        if !request.body.is_empty() && !request.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
            let length = request.body.len().to_string();
            headers.append("content-length", length.as_bytes()).map_err(|_| Error::InvalidHeader("content-length".into()))?;
        }
        let outgoing = OutgoingRequest::new(headers);
        let method = match request.method.as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_owned()),
        };
        let invalid = || Error::InvalidUrl(request.url.clone());
        outgoing.set_method(&method).map_err(|()| invalid())?;
        outgoing.set_scheme(Some(if url.https { &Scheme::Https } else { &Scheme::Http })).map_err(|()| invalid())?;
        outgoing.set_authority(Some(url.authority)).map_err(|()| invalid())?;
        outgoing.set_path_with_query(Some(url.path_with_query)).map_err(|()| invalid())?;
        let body = match request.body.is_empty() {
            true => None,
            false => Some(outgoing.body().map_err(|()| Error::Body("cannot open the request body".into()))?),
        };
        let options = request.timeout.map(|timeout| {
            let options = RequestOptions::new();
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            options
        });
        let pending = outgoing_handler::handle(outgoing, options).map_err(failed)?;
        // A write can fail because the request already has its answer: the
        // host refused it, or the server replied (a 401, a 413) without
        // reading the body and closed it. That answer is the truth, so it is
        // awaited either way; the write's error counts only if none comes.
        let written = match body {
            Some(body) => write_body(&body, &request.body, &host).and_then(|()| OutgoingBody::finish(body, None).map_err(failed)),
            None => Ok(()),
        };
        let response = loop {
            match pending.get() {
                Some(result) => break result,
                None => pending.subscribe().block(),
            }
        };
        let response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => return Err(failed(code)),
            Err(()) => {
                written?;
                return Err(Error::Transport { host: host.clone(), code: "the response was taken twice".into() });
            }
        };
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response.consume().map_err(|()| Error::Body("cannot open the response body".into()))?;
        let body = read_body(&incoming, &host)?;
        drop(IncomingBody::finish(incoming));
        Ok(Response { status, headers, body })
    }

    fn write_body(body: &OutgoingBody, bytes: &[u8], host: &str) -> Result<(), Error> {
        let stream = body.write().map_err(|()| Error::Body("cannot write the request body".into()))?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            stream.blocking_write_and_flush(chunk).map_err(|e| stream_error(e, host))?;
        }
        Ok(())
    }

    fn read_body(incoming: &IncomingBody, host: &str) -> Result<Vec<u8>, Error> {
        let stream = incoming.stream().map_err(|()| Error::Body("cannot read the response body".into()))?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => return Ok(body),
                Err(err) => return Err(stream_error(err, host)),
            }
        }
    }

    fn stream_error(err: StreamError, host: &str) -> Error {
        match err {
            StreamError::LastOperationFailed(io) => match wasip2::http::types::http_error_code(&io) {
                Some(code) => from_code(code, host),
                None => super::body_error(io.to_debug_string(), host),
            },
            StreamError::Closed => Error::Body("the stream closed early".into()),
        }
    }

    fn from_code(code: ErrorCode, host: &str) -> Error {
        let host = host.to_owned();
        match code {
            ErrorCode::HttpRequestDenied => Error::Denied { host, reason: None },
            // A denial with its reason (`plugin test --http-replies` with no
            // rule for the request): see host/src/runtime/http/send.rs.
            ErrorCode::InternalError(Some(text)) if text.starts_with(super::DENIED_PREFIX) => {
                Error::Denied { host, reason: Some(text[super::DENIED_PREFIX.len()..].to_owned()) }
            }
            ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => Error::Timeout { host },
            ErrorCode::HttpResponseBodySize(limit) => Error::TooLarge { limit },
            other => Error::Transport { host, code: format!("{other:?}") },
        }
    }
}

/// How the host marks an `internal-error` that is a denial with its reason
/// (host/src/runtime/http/send.rs, `denied_because`).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
const DENIED_PREFIX: &str = "denied: ";

/// A body error without an `error-code` (wasmtime's p2 passes the host's
/// own error there, as text): the cap and the deadline are still told apart.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn body_error(text: String, host: &str) -> Error {
    if text.contains("body size exceeds limit") {
        let limit = text.rsplit(": ").next().and_then(|tail| tail.trim_end_matches(" bytes").parse().ok());
        Error::TooLarge { limit }
    } else if text.contains("timeout") || text.contains("timed out") {
        Error::Timeout { host: host.to_owned() }
    } else {
        Error::Body(text)
    }
}

/// Outside a component (native unit tests of a plugin) there is no host to
/// send through.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{Error, Request, Response, Url};

    pub(super) fn send(_request: &Request, url: &Url<'_>) -> Result<Response, Error> {
        Err(Error::Transport { host: url.authority.to_owned(), code: "outbound HTTP needs the wasm32-wasip2 target".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            Url::parse("https://api.example.com/v1/x?q=1#frag"),
            Ok(Url { https: true, authority: "api.example.com", path_with_query: "/v1/x?q=1" })
        );
        assert_eq!(Url::parse("http://127.0.0.1:8080"), Ok(Url { https: false, authority: "127.0.0.1:8080", path_with_query: "/" }));
        assert_eq!(Url::parse("HTTP://h?x"), Ok(Url { https: false, authority: "h", path_with_query: "?x" }));
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("https:///path").is_err());
        assert!(Url::parse("example.com").is_err());
    }

    #[test]
    fn body_errors_are_told_apart_by_their_text() {
        assert_eq!(body_error("HTTP response body size exceeds limit: 1024 bytes".into(), "h"), Error::TooLarge { limit: Some(1024) });
        assert_eq!(body_error("HTTP response timeout".into(), "h:80"), Error::Timeout { host: "h:80".into() });
        assert_eq!(body_error("reset".into(), "h"), Error::Body("reset".into()));
    }

    #[test]
    fn errors_that_cannot_pass_reject_and_the_rest_retry() {
        use crate::Disposition;
        let denied: crate::HandlerError = Error::Denied { host: "x:443".into(), reason: None }.into();
        assert_eq!(denied.disposition, Disposition::Reject);
        assert_eq!(denied.message, "HTTP request to x:443 denied: not in the pipeline's plugin.http.allow");
        let unmatched = Error::Denied { host: "x:443".into(), reason: Some("no rule in http.json matches GET https://x/".into()) };
        assert_eq!(unmatched.to_string(), "HTTP request to x:443 denied: no rule in http.json matches GET https://x/");
        let timeout: crate::HandlerError = Error::Timeout { host: "x:443".into() }.into();
        assert_eq!(timeout.disposition, Disposition::Retryable);
    }
}
