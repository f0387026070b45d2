//! What a plugin call may do outside the plugin while it handles one event:
//! read and write state, call out over HTTP, ask another service, emit.
//!
//! Each of these belongs to a known event. A plugin that makes outbound
//! calls (HTTP, service requests, emits) is called with one event per call,
//! because each request's idempotency key, trace context and call record
//! name its event: the lane lends that call an [`EventScope`] with the
//! event's identity, its state, and a place to put what the call did. The
//! lane takes the scope back after the call: the calls made go to the
//! event's dead letter if it ends there, the emits become outputs if it
//! succeeds, and the state is concluded with the event.
//!
//! State alone does not need one event per call: the host cannot tell which
//! event of a `handle-batch` made a write, but it need not, if the batch is
//! all or nothing. A plugin whose only effect is state gets the lane's batch
//! in one call, with a scope whose state is one overlay the events share in
//! order (`handle-batch` is `handle` on each event in turn); the lane keeps
//! it only if every event succeeds, and otherwise runs the events again one
//! per call, each with its own scope (`dispatch/lane.rs`,
//! `Lane::call_state_batch`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::state::StateAccess;
use crate::event::{Event, Output};

/// The event a call handles, lent to the instance for that call.
pub struct EventScope {
    /// The event's id (its source position): idempotency keys derive from
    /// it, so they are the same on every retry of the event.
    pub event_id: String,
    /// The attempt this scope belongs to (1 for the first).
    pub attempt: u32,
    /// W3C trace context to hand on to whatever the plugin calls, when
    /// there is no span per call (no exporter): the event's own.
    pub traceparent: Option<String>,
    /// With an exporter (`[tracing]`): starts a span per outbound call,
    /// under the event's, whose context the callee gets instead.
    pub trace: Option<crate::telemetry::CallTracer>,
    /// The event's state, when the pipeline has state.
    pub state: Option<Box<dyn StateAccess>>,
    /// Outbound calls made so far (HTTP requests, service requests). Shared
    /// with the lane, so the calls of an attempt that timed out (its scope
    /// dropped with the call) still reach the dead letter.
    pub calls: CallLog,
    /// Messages the plugin emitted (`client.emit`): outputs of the event,
    /// published with its returned outputs only if it succeeds.
    pub emits: Vec<Output>,
    /// The pipeline's service destinations (`sluice:plugin/client`), when
    /// it has `[pipelines.<name>.clients.*]`.
    pub client: Option<crate::client::ClientScope>,
    /// A shadowed candidate's call: its HTTP and service requests are
    /// refused (the guest sees the error), counted in `refused`.
    pub shadow: bool,
    /// Requests refused because the call was a shadow's.
    pub refused: u64,
    /// How many idempotency keys were handed out (the `n` of the next).
    next_call: u32,
}

impl EventScope {
    /// The scope of a call handling `event` (its id, attempt and trace
    /// context), recording outbound calls into `calls`; state, clients and
    /// tracing are added by whoever grants them.
    pub fn new(event: &Event, calls: CallLog) -> Self {
        let traceparent =
            event.headers.iter().find(|h| h.key.eq_ignore_ascii_case("traceparent")).and_then(|h| String::from_utf8(h.value.clone()).ok());
        Self {
            event_id: event.id.clone(),
            attempt: event.attempt,
            traceparent,
            trace: None,
            state: None,
            calls,
            emits: Vec::new(),
            client: None,
            shadow: false,
            refused: 0,
            next_call: 0,
        }
    }

    /// The idempotency key of the next outbound call: `<event id>:<n>`, n
    /// counting from 0 within this attempt. A deterministic handler makes
    /// its calls in the same order on every attempt, so a retried event
    /// sends the same keys, and the receiver can tell a repeat.
    pub fn next_idempotency_key(&mut self) -> String {
        let key = format!("{}:{}", self.event_id, self.next_call);
        self.next_call += 1;
        key
    }

    /// A span for the next outbound call (with an exporter) and the
    /// `traceparent` its callee gets: the span's, or the event's own.
    pub fn call_trace(&self, kind: CallKind) -> (Option<crate::telemetry::CallSpan>, Option<String>) {
        match &self.trace {
            Some(tracer) => {
                let span = tracer.start(kind);
                let traceparent = span.traceparent().or_else(|| self.traceparent.clone());
                (Some(span), traceparent)
            }
            None => (None, self.traceparent.clone()),
        }
    }

    /// Outbound calls made while handling this event so far.
    pub fn calls_made(&self) -> u32 {
        self.next_call
    }
}

/// The outbound calls made while handling one event, over all its attempts.
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    calls: Arc<Mutex<Vec<CallRecord>>>,
    /// How the latest HTTP request ended, as the guest was told
    /// (`sluice:plugin/http-failure`): its attempt, and the failure if it
    /// got an `error-code`.
    last_http: Arc<Mutex<Option<HttpEnded>>>,
}

/// The attempt an HTTP request was made in, and its failure if it failed.
type HttpEnded = (u32, Option<HttpFailure>);

/// A `wasi:http` `error-code` a request was answered with, as
/// `sluice:plugin/http-failure` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFailure {
    /// The request's `host:port`.
    pub target: String,
    /// The `error-code` variant, in WIT's kebab-case.
    pub code: String,
    /// The variant's text, for those that carry one (an internal error's,
    /// a DNS error's rcode).
    pub detail: Option<String>,
}

impl CallLog {
    /// Records one outbound call.
    pub fn push(&self, record: CallRecord) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(record);
        }
    }

    /// Everything recorded so far, in order, leaving the log empty.
    pub fn take(&self) -> Vec<CallRecord> {
        self.calls.lock().map(|mut calls| std::mem::take(&mut *calls)).unwrap_or_default()
    }

    /// Records how the latest HTTP request of `attempt` ended.
    pub fn http_ended(&self, attempt: u32, failure: Option<HttpFailure>) {
        if let Ok(mut last) = self.last_http.lock() {
            *last = Some((attempt, failure));
        }
    }

    /// The failure of `attempt`'s latest HTTP request, if it failed.
    pub fn last_http_failure(&self, attempt: u32) -> Option<HttpFailure> {
        let last = self.last_http.lock().ok()?;
        match &*last {
            Some((of, failure)) if *of == attempt => failure.clone(),
            _ => None,
        }
    }
}

/// What kind of outbound call a [`CallRecord`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallKind {
    /// `wasi:http/outgoing-handler`.
    Http,
    /// `sluice:plugin/client.request`.
    Request,
}

/// One outbound call made while handling an event: listed in its dead
/// letter (header `sluice-dlq-calls`, a JSON array) so an operator sees what
/// a failed event already did to the world.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CallRecord {
    /// HTTP or a service request.
    pub kind: CallKind,
    /// The attempt that made it.
    pub attempt: u32,
    /// HTTP method, or the client destination's transport (`nats`, `kafka`).
    pub method: String,
    /// HTTP host (`host:port`), or the client destination's name.
    pub target: String,
    /// HTTP path, or the subject/topic the request went to.
    pub path: String,
    /// HTTP status; for a service request, absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed (transport error, timeout, denied, service error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From the request to its answer or failure (milliseconds in JSON).
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    /// The key sent with the request, `<event id>:<n>`: a deterministic
    /// handler sends the same keys on every attempt, so a service can
    /// recognise a retry.
    pub idempotency_key: String,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, attempt: u32) -> Event {
        Event {
            id: id.into(),
            source: "s".into(),
            key: None,
            payload: vec![],
            headers: vec![crate::event::text_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
            timestamp_ms: 0,
            attempt,
            reply_to: None,
        }
    }

    #[test]
    fn idempotency_keys_count_from_zero_and_repeat_on_every_attempt() {
        let mut first = EventScope::new(&event("orders/0/7", 1), CallLog::default());
        let keys: Vec<_> = (0..3).map(|_| first.next_idempotency_key()).collect();
        assert_eq!(keys, ["orders/0/7:0", "orders/0/7:1", "orders/0/7:2"]);
        let mut retry = EventScope::new(&event("orders/0/7", 2), CallLog::default());
        assert_eq!(retry.next_idempotency_key(), "orders/0/7:0");
        assert_eq!(retry.attempt, 2);
        assert_eq!(first.calls_made(), 3);
    }

    #[test]
    fn the_trace_context_comes_from_the_event() {
        let scope = EventScope::new(&event("e", 1), CallLog::default());
        assert_eq!(scope.traceparent.as_deref(), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    }

    #[test]
    fn a_call_record_is_json_with_milliseconds() {
        let record = CallRecord {
            kind: CallKind::Http,
            attempt: 2,
            method: "POST".into(),
            target: "api.example.com:443".into(),
            path: "/hooks".into(),
            status: Some(503),
            error: None,
            duration: Duration::from_micros(12_345),
            idempotency_key: "e:0".into(),
        };
        let json = serde_json::to_string(&record).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"kind":"http","attempt":2,"method":"POST","target":"api.example.com:443","path":"/hooks","status":503,"duration":12.345,"idempotency_key":"e:0"}"#
        );
    }
}
