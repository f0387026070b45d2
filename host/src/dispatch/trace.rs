//! Correlation ids and trace context, per event.
//!
//! A correlation id (`correlation`) is read from its header, or made (a
//! random UUID) and added to the event before the plugin sees it; every
//! output, reply and error reply of the event then carries it, and so does
//! its dead-letter record (built from the event's headers).
//!
//! W3C trace context (`traceparent`, `tracestate`) is carried the same way.
//! Without an exporter the outputs carry the input's context unchanged, so
//! downstream spans hang off the upstream one (a span of ours that is never
//! exported would leave a hole in the trace). With `[tracing]`, each event
//! gets a span (a child of its `traceparent`, or the root of a new trace),
//! with its plugin, attempts and outcome, and the outputs carry that span as
//! their parent.
//!
//! A header the plugin set on an output itself is left as it is, except a
//! `traceparent` equal to the input's (copied along with the input's
//! headers), which gets the event's span when there is one.

use std::borrow::Cow;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::config::CorrelationConfig;
use crate::event::{text_header, Event, Header, Output};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// A pipeline's correlation and tracing settings.
#[derive(Default)]
pub struct Tracing {
    /// The pipeline's `correlation` (which header carries the id, and
    /// whether a missing one is made up); `None`: ids are not handled.
    pub correlation: Option<CorrelationConfig>,
    /// The exporter's tracer (`[tracing]`); `None`: no spans.
    pub tracer: Option<SdkTracer>,
}

/// What one event carries through the lane: the headers its outputs get,
/// and its span.
#[derive(Default)]
pub struct EventTrace {
    /// Added to each output, reply and error reply that lacks them.
    pub propagate: Vec<Header>,
    pub correlation: Option<String>,
    /// The input's `traceparent`, when our span replaces it: an output that
    /// carries it was copied from the input by the plugin, and gets ours.
    incoming: Option<Vec<u8>>,
    span: Option<Span>,
    /// The exporter's tracer, with `span`: the event's outbound calls get
    /// spans of their own under it.
    tracer: Option<SdkTracer>,
}

/// How an event ended, for its span.
pub enum Fate<'a> {
    Delivered {
        outputs: usize,
    },
    DeadLettered {
        reason: &'a str,
        message: &'a str,
    },
    /// Handed back to the broker for a later delivery (after a failure).
    Redelivered {
        message: &'a str,
    },
    /// A repeat skipped by idempotency.
    Duplicate,
}

impl Tracing {
    /// Whether there is nothing to do per event (no correlation, no
    /// exporter): the lane then skips the per-event work.
    pub fn is_off(&self) -> bool {
        self.correlation.is_none() && self.tracer.is_none()
    }

    /// Takes or makes `event`'s correlation id, and starts its span.
    pub fn begin(&self, event: &mut Event, pipeline: &str) -> EventTrace {
        let mut trace = EventTrace::default();
        if let Some(config) = &self.correlation {
            let id = match find(&event.headers, &config.header) {
                Some(value) => Some(String::from_utf8_lossy(value).into_owned()),
                None if config.generate => {
                    let id = uuid::Uuid::new_v4().to_string();
                    event.headers.push(text_header(&config.header, id.clone()));
                    Some(id)
                }
                None => None,
            };
            if let Some(id) = id {
                trace.propagate.push(text_header(&config.header, id.clone()));
                trace.correlation = Some(id);
            }
        }
        let parent = find(&event.headers, TRACEPARENT).and_then(|v| std::str::from_utf8(v).ok()).and_then(parse_traceparent);
        let state = find(&event.headers, TRACESTATE).and_then(|v| std::str::from_utf8(v).ok()).map(str::to_owned);
        let Some(tracer) = &self.tracer else {
            if let Some(parent) = parent {
                trace.propagate.push(text_header(TRACEPARENT, format_traceparent(&parent)));
                if let Some(state) = state {
                    trace.propagate.push(text_header(TRACESTATE, state));
                }
            }
            return trace;
        };
        let context = match parent {
            Some(parent) => {
                let state = state.and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
                let remote = SpanContext::new(parent.trace_id(), parent.span_id(), parent.trace_flags(), true, state);
                Context::new().with_remote_span_context(remote)
            }
            None => Context::new(),
        };
        let mut attributes = vec![
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", event.source.clone()),
            KeyValue::new("messaging.message.id", event.id.clone()),
            KeyValue::new("sluice.pipeline", pipeline.to_owned()),
        ];
        if let Some(id) = &trace.correlation {
            attributes.push(KeyValue::new("messaging.message.conversation_id", id.clone()));
        }
        let span = tracer
            .span_builder(Cow::Owned(format!("process {pipeline}")))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(tracer, &context);
        let own = span.span_context().clone();
        if own.is_valid() {
            trace.incoming = find(&event.headers, TRACEPARENT).map(<[u8]>::to_vec);
            trace.propagate.push(text_header(TRACEPARENT, format_traceparent(&own)));
            let state = own.trace_state().header();
            if !state.is_empty() {
                trace.propagate.push(text_header(TRACESTATE, state));
            }
        }
        trace.span = Some(span);
        trace.tracer = Some(tracer.clone());
        trace
    }
}

impl EventTrace {
    /// What the event's outbound calls need for their spans, when the
    /// event has one.
    pub fn calls(&self) -> Option<crate::telemetry::CallTracer> {
        let (tracer, span) = (self.tracer.as_ref()?, self.span.as_ref()?);
        crate::telemetry::CallTracer::new(tracer.clone(), span.span_context())
    }

    /// Puts the propagated headers on an output that lacks them.
    pub fn stamp(&self, output: &mut Output) {
        if let Some(incoming) = &self.incoming {
            // Plugins that copy the input's headers copy its traceparent:
            // that one names the upstream span; the output's parent is ours.
            let ours = self.propagate.iter().find(|h| h.key == TRACEPARENT);
            for header in output.headers.iter_mut().filter(|h| h.key.eq_ignore_ascii_case(TRACEPARENT) && h.value == *incoming) {
                if let Some(ours) = ours {
                    header.value.clone_from(&ours.value);
                }
            }
        }
        stamp(&self.propagate, &mut output.headers);
    }

    /// Ends the span with the event's fate, the plugin that decided it and
    /// the attempts it took.
    pub fn end(&mut self, fate: Fate<'_>, plugin: &str, digest: &str, attempts: u32) {
        let Some(mut span) = self.span.take() else { return };
        let (outcome, error) = match fate {
            Fate::Delivered { outputs: 0 } => ("filtered", None),
            Fate::Delivered { outputs } => {
                span.set_attribute(KeyValue::new("sluice.outputs", outputs as i64));
                ("delivered", None)
            }
            Fate::DeadLettered { reason, message } => {
                span.set_attribute(KeyValue::new("sluice.dead_letter.reason", reason.to_owned()));
                ("dead-lettered", Some(message))
            }
            Fate::Redelivered { message } => ("redelivered", Some(message)),
            Fate::Duplicate => ("duplicate", None),
        };
        span.set_attributes([
            KeyValue::new("sluice.outcome", outcome),
            KeyValue::new("sluice.plugin", plugin.to_owned()),
            KeyValue::new("sluice.plugin.digest", digest.to_owned()),
            KeyValue::new("sluice.attempts", i64::from(attempts)),
        ]);
        if let Some(message) = error {
            span.set_status(Status::error(message.to_owned()));
        }
        span.end();
    }
}

impl Drop for EventTrace {
    /// An event dropped unfinished (shutdown, a sink failure, the breaker
    /// holding it at shutdown) goes back to its source: the span says so.
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.set_attribute(KeyValue::new("sluice.outcome", "abandoned"));
            span.end();
        }
    }
}

/// Puts `propagate` on an error reply, over the request's copies of the
/// same headers (the event's span is the reply's parent, not the caller's).
pub fn replace(propagate: &[Header], headers: &mut Vec<Header>) {
    headers.retain(|h| !propagate.iter().any(|p| p.key.eq_ignore_ascii_case(&h.key)));
    headers.extend(propagate.iter().cloned());
}

/// Adds each of `propagate` that `headers` lacks (names compared without
/// regard to case).
pub fn stamp(propagate: &[Header], headers: &mut Vec<Header>) {
    for header in propagate {
        if find(headers, &header.key).is_none() {
            headers.push(header.clone());
        }
    }
}

fn find<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.key.eq_ignore_ascii_case(name)).map(|h| h.value.as_slice())
}

/// A W3C `traceparent` (version 00): `00-<trace id>-<parent id>-<flags>`.
/// Invalid ones (all-zero ids, bad lengths) are ignored, as the spec says.
fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, TraceState::default());
    context.is_valid().then_some(context)
}

fn format_traceparent(context: &SpanContext) -> String {
    crate::telemetry::format_traceparent(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(headers: &[(&str, &str)]) -> Event {
        Event {
            id: "e1".into(),
            source: "orders".into(),
            key: None,
            payload: b"{}".to_vec(),
            headers: headers.iter().map(|(k, v)| text_header(k, *v)).collect(),
            timestamp_ms: 0,
            attempt: 1,
            reply_to: None,
        }
    }

    fn value<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
        find(headers, name).and_then(|v| std::str::from_utf8(v).ok())
    }

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn an_incoming_correlation_id_is_kept_and_propagated() {
        let tracing = Tracing { correlation: Some(CorrelationConfig::default()), tracer: None };
        let mut e = event(&[("X-Correlation-ID", "abc")]);
        let trace = tracing.begin(&mut e, "p");
        assert_eq!(trace.correlation.as_deref(), Some("abc"));
        assert_eq!(e.headers.len(), 1, "not added twice");
        let mut out = Output { destination: None, key: None, payload: vec![], headers: vec![], reply: false };
        trace.stamp(&mut out);
        assert_eq!(value(&out.headers, "x-correlation-id"), Some("abc"));
    }

    #[test]
    fn a_missing_correlation_id_is_made_and_shown_to_the_plugin() {
        let tracing = Tracing { correlation: Some(CorrelationConfig::default()), tracer: None };
        let mut e = event(&[]);
        let trace = tracing.begin(&mut e, "p");
        let id = trace.correlation.clone().unwrap_or_default();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "a UUID: {id}");
        assert_eq!(value(&e.headers, "x-correlation-id"), Some(id.as_str()));
        let other = tracing.begin(&mut event(&[]), "p");
        assert_ne!(other.correlation, trace.correlation, "one per event");
    }

    #[test]
    fn generation_can_be_turned_off() {
        let tracing = Tracing { correlation: Some(CorrelationConfig { header: "cid".into(), generate: false }), tracer: None };
        let mut e = event(&[]);
        let trace = tracing.begin(&mut e, "p");
        assert!(trace.correlation.is_none() && trace.propagate.is_empty() && e.headers.is_empty());
    }

    #[test]
    fn without_an_exporter_the_trace_context_passes_through_unchanged() {
        let tracing = Tracing::default();
        let mut e = event(&[("traceparent", PARENT), ("tracestate", "vendor=1")]);
        let trace = tracing.begin(&mut e, "p");
        assert_eq!(value(&trace.propagate, "traceparent"), Some(PARENT));
        assert_eq!(value(&trace.propagate, "tracestate"), Some("vendor=1"));
        let mut out =
            Output { destination: None, key: None, payload: vec![], headers: vec![text_header("traceparent", "mine")], reply: false };
        trace.stamp(&mut out);
        assert_eq!(value(&out.headers, "traceparent"), Some("mine"), "the plugin's own context wins");
        assert_eq!(value(&out.headers, "tracestate"), Some("vendor=1"));
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-xyz-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let parsed = parse_traceparent(PARENT).map(|c| format_traceparent(&c));
        assert_eq!(parsed.as_deref(), Some(PARENT));
    }

    #[test]
    fn with_a_tracer_outputs_get_a_child_of_the_incoming_trace() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
        let tracing = Tracing { correlation: None, tracer: Some(tracer) };
        let trace = tracing.begin(&mut event(&[("traceparent", PARENT)]), "p");
        let child = value(&trace.propagate, "traceparent").unwrap_or_default().to_owned();
        let parts: Vec<&str> = child.split('-').collect();
        assert_eq!(parts.len(), 4, "{child}");
        assert_eq!(parts[1], "0af7651916cd43dd8448eb211c80319c", "same trace");
        assert_ne!(parts[2], "b7ad6b7169203331", "our span is the parent now");
        assert_eq!(parts[3], "01", "still sampled");
        let mut copied =
            Output { destination: None, key: None, payload: vec![], headers: vec![text_header("traceparent", PARENT)], reply: false };
        trace.stamp(&mut copied);
        assert_eq!(value(&copied.headers, "traceparent"), Some(child.as_str()), "a copied input traceparent is replaced by ours");
        assert_eq!(copied.headers.len(), 1);
        let root = tracing.begin(&mut event(&[]), "p");
        assert!(value(&root.propagate, "traceparent").is_some(), "an event without context starts a trace");
    }
}
