//! Putting one request on the wire: the allow list, the headers Sluice
//! adds, the pipeline's concurrency slots, the deadline, the response cap,
//! and the record of the call. The version's connection pool
//! ([`super::pool`]: hyper, rustls with the bundled webpki roots) does the
//! I/O.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::uri::Scheme;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::body::Capped;
use super::metrics::Outcome;
use super::{CallContext, Outbound};
use crate::config::{Destination, HttpScheme};
use crate::runtime::effects::{CallKind, CallRecord, HttpFailure};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

type Sent = wasmtime_wasi_http::Result<(http::Response<WasiBody>, Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>)>;

/// wasmtime's hooks for one instance: the grant, and the context of the
/// request `handle` is handing over.
pub struct Hooks {
    outbound: Option<Arc<Outbound>>,
    pub(crate) next: Option<CallContext>,
}

impl Hooks {
    pub(super) fn new(outbound: Option<Arc<Outbound>>) -> Self {
        Self { outbound, next: None }
    }
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let context = self.next.take().unwrap_or(CallContext {
            idempotency_key: None,
            traceparent: None,
            attempt: 0,
            calls: None,
            event: None,
            span: None,
            shadow: false,
        });
        // How it ends is kept for `sluice:plugin/http-failure`.
        let ended = context.calls.clone().map(|calls| (calls, context.attempt, target_of(&request)));
        let sent = send(self.outbound.clone(), request, options, context);
        Box::new(async move {
            let sent = sent.await;
            if let Some((calls, attempt, target)) = ended {
                calls.http_ended(attempt, sent.as_ref().err().map(|code| failure(target, code)));
            }
            sent
        })
    }
}

/// The `host:port` a request goes to, as its call record names it.
fn target_of(request: &http::Request<WasiBody>) -> String {
    let scheme = if request.uri().scheme() == Some(&Scheme::HTTP) { HttpScheme::Http } else { HttpScheme::Https };
    let authority = request.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    Destination::parse(scheme, &authority).as_ref().map_or(authority, Destination::target)
}

/// An `error-code` as `sluice:plugin/http-failure` reports it: the case
/// in WIT's spelling (`HTTP-request-denied`), and its text if it has one.
fn failure(target: String, code: &Error) -> HttpFailure {
    let debug = format!("{code:?}");
    let name = debug.split(['(', ' ', '{']).next().unwrap_or_default();
    let detail = match code {
        Error::InternalError(text) => text.clone(),
        Error::DnsError { rcode, .. } => rcode.clone(),
        _ => None,
    };
    HttpFailure { target, code: wit_case(name), detail }
}

/// `HttpRequestUriInvalid` → `HTTP-request-URI-invalid`: the Rust name of
/// an `error-code` case back in WIT's spelling (its acronyms upper case).
fn wit_case(name: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for c in name.chars() {
        match words.last_mut() {
            Some(word) if !c.is_ascii_uppercase() => word.push(c),
            _ => words.push(c.to_string()),
        }
    }
    words
        .iter()
        .map(|word| match word.as_str() {
            "Http" | "Dns" | "Tls" | "Ip" | "Uri" => word.to_ascii_uppercase(),
            _ => word.to_ascii_lowercase(),
        })
        .collect::<Vec<_>>()
        .join("-")
}

async fn send(
    outbound: Option<Arc<Outbound>>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    mut context: CallContext,
) -> Sent {
    let started = Instant::now();
    let scheme = if request.uri().scheme() == Some(&Scheme::HTTP) { HttpScheme::Http } else { HttpScheme::Https };
    let authority = request.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    let destination = Destination::parse(scheme, &authority);
    let target = destination.as_ref().map_or_else(|| authority.clone(), Destination::target);
    let key = stamp(request.headers_mut(), &context);
    let attempt = context.attempt;
    let mut record = Recorder::new(
        &mut context,
        CallRecord {
            kind: CallKind::Http,
            attempt,
            method: request.method().to_string(),
            target: target.clone(),
            path: request.uri().path().to_owned(),
            status: None,
            error: None,
            duration: Default::default(),
            idempotency_key: key.unwrap_or_default(),
        },
        started,
    );
    if context.shadow {
        // A shadowed candidate's effects would be real: it sees a refusal.
        const WHY: &str = "a shadowed candidate version makes no outbound calls";
        record.finish(None, Some(format!("refused: {WHY}")));
        drain(request.into_body(), DRAIN_WITHOUT_GRANT).await;
        return Err(denied_because(WHY));
    }
    if let Some(stubs) = outbound.as_ref().and_then(|o| o.stubs.clone()) {
        return stubbed(&stubs, request, record).await;
    }
    let allowed = match (&outbound, &destination) {
        (Some(outbound), Some(destination)) => outbound.config.allows(destination),
        _ => false,
    };
    let outbound = match outbound {
        Some(outbound) if allowed => outbound,
        refused => {
            let shown = destination.as_ref().map_or_else(|| authority.clone(), ToString::to_string);
            tracing::warn!(
                pipeline = refused.as_ref().map_or("-", |o| o.pipeline.as_str()),
                event = context.event.as_deref().unwrap_or("-"),
                host = %shown,
                "plugin HTTP request to {shown} denied: not in the pipeline's `plugin.http.allow`"
            );
            if let Some(refused) = &refused {
                refused.metrics.count(&target, Outcome::Denied, None);
            }
            record.finish(None, Some(format!("denied: {shown} is not in plugin.http.allow")));
            let patience = refused.as_ref().map_or(DRAIN_WITHOUT_GRANT, |o| o.timeout);
            drain(request.into_body(), patience).await;
            return Err(Error::HttpRequestDenied);
        }
    };

    let deadline = tokio::time::Instant::now() + outbound.timeout;
    let timed_out = |record: &mut Recorder, what: &str| {
        outbound.metrics.count(&target, Outcome::Timeout, Some(started.elapsed()));
        record.finish(None, Some(format!("timed out {what} after {:?} (plugin.http.timeout)", outbound.timeout)));
        Error::HttpResponseTimeout
    };
    let permit = match tokio::time::timeout_at(deadline, outbound.permits.clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) | Err(_) => return Err(timed_out(&mut record, "waiting for a slot (plugin.http.max_concurrent)")),
    };
    // The guest's own first-byte timeout, never past our deadline. (Its
    // connect timeout is the pool's, `plugin.http.timeout`; between bytes,
    // the deadline holds for the whole body.)
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let first_byte = options.and_then(|o| o.first_byte_timeout).map_or(remaining, |own| own.min(remaining));
    match tokio::time::timeout(first_byte, outbound.pool.current().request(request)).await {
        Err(_) => Err(timed_out(&mut record, "before the response")),
        Ok(Err(err)) => {
            let err = super::pool::error_code(err);
            let timeout = matches!(err, Error::ConnectionTimeout | Error::ConnectionReadTimeout | Error::HttpResponseTimeout);
            let outcome = if timeout { Outcome::Timeout } else { Outcome::Transport };
            outbound.metrics.count(&target, outcome, Some(started.elapsed()));
            // The guest's own timeouts, or ours passed down as options.
            let message = if timeout {
                format!("timed out: {err} (plugin.http.timeout {:?}, or the request's own)", outbound.timeout)
            } else {
                err.to_string()
            };
            record.finish(None, Some(message));
            Err(err)
        }
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            outbound.metrics.count(&target, Outcome::Status(status), Some(started.elapsed()));
            record.finish(Some(status), None);
            let limit = outbound.config.max_response_bytes.as_u64();
            let metrics = outbound.metrics.clone();
            let response =
                response.map(|body| Capped::new(body.map_err(Error::from), limit, deadline, permit, metrics, target).boxed_unsync());
            // The pool drives the connection: nothing left for wasmtime to.
            Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>))
        }
    }
}

/// How long a denied request's body is drained when the pipeline grants no
/// HTTP at all (with a grant: `plugin.http.timeout`).
const DRAIN_WITHOUT_GRANT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a refused request's body to its end (or for `patience`), throwing
/// the bytes away. A guest writes its body *after* `handle` hands the
/// request over; had the body been dropped with the refusal, a write racing
/// ahead of the answer would fail on a closed stream, which the guest reads
/// as a transport failure (retryable) instead of the denial (rejected), and
/// which of the two it saw would depend on thread timing.
async fn drain(mut body: WasiBody, patience: std::time::Duration) {
    let _ = tokio::time::timeout(patience, async { while let Some(Ok(_)) = body.frame().await {} }).await;
}

/// The answer of `stubs` to `request`, recorded like a real call. The
/// request body is read whole first (a rule's `when` looks into it).
async fn stubbed(stubs: &super::stub::HttpStubs, request: http::Request<WasiBody>, mut record: Recorder) -> Sent {
    use super::stub::{Answer, StubError};
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    match stubs.answer(parts.method.as_str(), &parts.uri, &body) {
        Answer::Response { status, headers, body } => {
            let mut response = http::Response::builder().status(status);
            for (name, value) in &headers {
                response = response.header(name, value);
            }
            let body = http_body_util::Full::new(bytes::Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
            let response =
                response.body(body).map_err(|e| Error::InternalError(Some(format!("stubbed response from {}: {e}", stubs.path))))?;
            record.finish(Some(status), None);
            Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>))
        }
        Answer::Error(error) => {
            let (message, error) = match error {
                StubError::Timeout => ("timed out (stubbed)", Error::HttpResponseTimeout),
                StubError::Refused => ("connection refused (stubbed)", Error::ConnectionRefused),
                StubError::Reset => ("connection reset (stubbed)", Error::ConnectionTerminated),
                StubError::Dns => ("DNS error (stubbed)", Error::DnsError { rcode: Some("NXDOMAIN".into()), info_code: None }),
                StubError::Denied => ("denied (stubbed)", Error::HttpRequestDenied),
            };
            record.finish(None, Some(message.into()));
            Err(error)
        }
        Answer::Unmatched(message) => {
            tracing::warn!("plugin HTTP request denied: {message}");
            record.finish(None, Some(format!("denied: {message}")));
            Err(denied_because(&message))
        }
    }
}

/// What the guest sees when `plugin test --http-replies` has no rule for
/// its request. `http-request-denied` carries no reason, and the SDKs word
/// it as the pipeline's case ("not in the pipeline's plugin.http.allow"),
/// which would send the author to a config `plugin test` does not read; so
/// the reason travels as `internal-error("denied: <why>")`, which every
/// SDK turns back into its *denied* error (rejected) worded with `<why>`.
/// An SDK that does not know the prefix sees an internal error (retryable)
/// with the reason in it: still the truth.
pub(crate) fn denied_because(why: &str) -> Error {
    Error::InternalError(Some(format!("{DENIED_PREFIX}{why}")))
}

/// The prefix of an `internal-error` that is a denial with its reason (see
/// [`denied_because`]); the SDKs match on it.
pub(crate) const DENIED_PREFIX: &str = "denied: ";

/// Adds `Idempotency-Key` and `traceparent` unless the plugin set its own;
/// returns the key the request carries.
fn stamp(headers: &mut http::HeaderMap, context: &CallContext) -> Option<String> {
    for (name, value) in [(IDEMPOTENCY_KEY, &context.idempotency_key), (TRACEPARENT, &context.traceparent)] {
        if headers.contains_key(&name) {
            continue;
        }
        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    headers.get(IDEMPOTENCY_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Puts the call in the event's call log (and ends its span) once, when
/// its fate is known, or when it is dropped unfinished (the handler's
/// deadline cancelled it).
struct Recorder {
    calls: Option<crate::runtime::effects::CallLog>,
    record: Option<CallRecord>,
    span: Option<crate::telemetry::CallSpan>,
    started: Instant,
}

impl Recorder {
    fn new(context: &mut CallContext, record: CallRecord, started: Instant) -> Self {
        Self { calls: context.calls.clone(), record: Some(record), span: context.span.take(), started }
    }

    fn finish(&mut self, status: Option<u16>, error: Option<String>) {
        let Some(mut record) = self.record.take() else { return };
        record.status = status;
        record.error = error;
        record.duration = self.started.elapsed();
        if let Some(span) = self.span.take() {
            span.end(&record);
        }
        if let Some(calls) = &self.calls {
            calls.push(record);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.finish(None, Some("cancelled before the response (the call ended)".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(key: Option<&str>) -> CallContext {
        CallContext {
            idempotency_key: key.map(str::to_owned),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            attempt: 1,
            calls: None,
            event: None,
            span: None,
            shadow: false,
        }
    }

    #[test]
    fn error_codes_are_named_as_wit_spells_them() {
        let named = |code: &Error| super::failure("h:443".into(), code);
        assert_eq!(named(&Error::HttpRequestDenied).code, "HTTP-request-denied");
        assert_eq!(named(&Error::HttpRequestUriInvalid).code, "HTTP-request-URI-invalid");
        assert_eq!(named(&Error::ConnectionRefused).code, "connection-refused");
        assert_eq!(named(&Error::DestinationIpProhibited).code, "destination-IP-prohibited");
        let denied = named(&super::denied_because("no rule"));
        assert_eq!((denied.code.as_str(), denied.detail.as_deref()), ("internal-error", Some("denied: no rule")));
        assert_eq!(denied.target, "h:443");
    }

    #[test]
    fn the_key_and_trace_context_are_added() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(stamp(&mut headers, &context(Some("e:0"))).as_deref(), Some("e:0"));
        assert_eq!(headers.get("idempotency-key").map(|v| v.as_bytes()), Some(&b"e:0"[..]));
        assert!(headers.contains_key("traceparent"));
    }

    #[test]
    fn the_plugins_own_headers_win() {
        let mut headers = http::HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("mine"));
        headers.insert(TRACEPARENT, HeaderValue::from_static("theirs"));
        assert_eq!(stamp(&mut headers, &context(Some("e:0"))).as_deref(), Some("mine"));
        assert_eq!(headers.get(TRACEPARENT).map(|v| v.as_bytes()), Some(&b"theirs"[..]));
    }
}
