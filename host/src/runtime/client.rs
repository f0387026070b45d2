//! The `client` import (`sluice:plugin/client@0.2.0`): requests and emits
//! to the destinations of the pipeline's `[pipelines.<name>.clients.*]`,
//! made on behalf of the event being handled (see [`super::effects`]).
//!
//! A request goes out at once, with the event's correlation id, its trace
//! context and an `Idempotency-Key` of `<event id>:<n>`, and is recorded
//! in the event's call log (its dead letter lists it). An emit is only
//! queued as an output of the event: the lane publishes it with the
//! event's outputs if the event succeeds, and drops it with a failed
//! attempt, so a retried event does not emit twice.

use std::time::{Duration, Instant};

use super::bindings::current::client::{self, CallError, Reply};
use super::bindings::current::types::Header;
use super::effects::{CallKind, CallRecord};
use super::instance::PluginState;
use crate::client::{describe, emit_route, outcome, ClientScope, Outgoing};
use crate::config::ClientUse;
use crate::event::{text_header, Output};

pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

fn detached() -> CallError {
    CallError::Unavailable("service calls are only possible while handling an event (not in `init`)".into())
}

/// `headers` plus the host's own (correlation id, trace context), each
/// only when the plugin did not set it.
fn with_context(mut headers: Vec<Header>, client: &ClientScope, traceparent: Option<&str>) -> Vec<Header> {
    let mut add = |header: Header| {
        if !headers.iter().any(|h| h.key.eq_ignore_ascii_case(&header.key)) {
            headers.push(header);
        }
    };
    if let Some(correlation) = &client.correlation {
        add(correlation.clone());
    }
    if let Some(traceparent) = traceparent {
        add(text_header("traceparent", traceparent));
    }
    headers
}

impl client::Host for PluginState {
    async fn request(
        &mut self,
        destination: String,
        payload: Vec<u8>,
        headers: Vec<Header>,
        timeout_ms: Option<u32>,
    ) -> Result<Reply, CallError> {
        let scope = self.scope.as_mut().ok_or_else(detached)?;
        if scope.shadow {
            scope.refused += 1;
            return Err(CallError::Unavailable("refused: a shadowed candidate version makes no service requests".into()));
        }
        let client = scope.client.as_mut().ok_or_else(detached)?;
        client.admit(&destination, ClientUse::Request, payload.len())?;
        let clients = client.clients.clone();
        let Some(target) = clients.get(&destination) else {
            return Err(CallError::UnknownDestination(destination));
        };
        let (span, traceparent) = scope.call_trace(CallKind::Request);
        let client = scope.client.as_mut().ok_or_else(detached)?;
        let mut headers = with_context(headers, client, traceparent.as_deref());
        let deadline = client.deadline;
        let key = scope.next_idempotency_key();
        headers.retain(|h| !h.key.eq_ignore_ascii_case(IDEMPOTENCY_HEADER));
        headers.push(text_header(IDEMPOTENCY_HEADER, key.clone()));
        let asked = timeout_ms.map_or(target.config.timeout, |ms| Duration::from_millis(u64::from(ms)));
        let timeout = asked.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let started = Instant::now();
        let result =
            if timeout.is_zero() { Err(CallError::Timeout(0)) } else { target.request(Outgoing { payload, headers, timeout }).await };
        let took = started.elapsed();
        clients.metrics.record(&destination, outcome(&result), Some(took));
        let record = CallRecord {
            kind: CallKind::Request,
            attempt: scope.attempt,
            method: match target.config.transport {
                crate::config::Transport::Nats => "nats".into(),
                crate::config::Transport::Kafka => "kafka".into(),
            },
            target: destination,
            path: target.address.clone(),
            status: None,
            error: result.as_ref().err().map(describe),
            duration: took,
            idempotency_key: key,
        };
        if let Some(span) = span {
            span.end(&record);
        }
        scope.calls.push(record);
        result
    }

    async fn emit(&mut self, destination: String, payload: Vec<u8>, headers: Vec<Header>) -> Result<(), CallError> {
        let scope = self.scope.as_mut().ok_or_else(detached)?;
        let client = scope.client.as_mut().ok_or_else(detached)?;
        client.admit(&destination, ClientUse::Emit, payload.len())?;
        let clients = client.clients.clone();
        let Some(target) = clients.get(&destination) else {
            return Err(CallError::UnknownDestination(destination));
        };
        let headers = with_context(headers, client, scope.traceparent.as_deref());
        scope.emits.push(Output {
            destination: Some(emit_route(&destination)),
            key: None,
            payload: target.emit_payload(&payload),
            headers,
            reply: false,
        });
        Ok(())
    }
}
