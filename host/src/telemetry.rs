//! OpenTelemetry export (`[tracing]`): the process's span exporter, off
//! unless configured. Pipelines make a span per event with it
//! (`dispatch/trace.rs`), and a child of it per outbound call the plugin
//! makes while handling the event ([`CallTracer`]: `http.request`,
//! `client.request`), whose context is the `traceparent` the callee gets.
//! The SDK batches spans and posts them to the OTLP collector from a
//! thread of its own, so a slow or absent collector costs the pipelines
//! nothing: when its queue is full, spans are dropped, never events.

use std::time::Duration;

use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;

use crate::config::{OtlpProtocol, TracingConfig};
use crate::runtime::effects::{CallKind, CallRecord};

#[derive(Debug, thiserror::Error)]
#[error("cannot start the OpenTelemetry exporter for {endpoint}: {message}")]
pub struct TelemetryError {
    endpoint: String,
    message: String,
}

/// The span exporter, shared by every pipeline.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// Starts the exporter. Blocking (the HTTP client must not be built on
    /// an async thread): call it from `spawn_blocking`.
    pub fn start(config: &TracingConfig) -> Result<Self, TelemetryError> {
        let endpoint = traces_url(&config.otlp_endpoint);
        let error = |message: String| TelemetryError { endpoint: endpoint.clone(), message };
        let protocol = match config.protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.clone())
            .with_protocol(protocol)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| error(e.to_string()))?;
        // Traces that arrive sampled (or not) stay so; traces started here
        // are kept at `sample_ratio`.
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(Resource::builder().with_service_name(config.service_name.clone()).build())
            .build();
        let tracer = provider.tracer("sluice");
        tracing::info!(endpoint = %endpoint, "exporting a span per event to OpenTelemetry");
        Ok(Self { provider, tracer })
    }

    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Sends the spans still queued. Blocking, like [`Telemetry::start`].
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!("OpenTelemetry exporter: the last spans may be lost: {e}");
        }
    }
}

/// A W3C `traceparent` (version 00) naming `context` as the parent.
pub fn format_traceparent(context: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8())
}

/// Starts the spans of one event's outbound calls, as children of the
/// event's span. Lent to the plugin call with the event's scope.
#[derive(Clone)]
pub struct CallTracer {
    tracer: SdkTracer,
    /// The event's span, as the parent of each call's.
    parent: Context,
}

impl std::fmt::Debug for CallTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTracer").field("parent", &self.parent.span().span_context()).finish()
    }
}

impl CallTracer {
    /// Calls under the span `event` (`None` if it is not a valid span).
    pub fn new(tracer: SdkTracer, event: &SpanContext) -> Option<Self> {
        // The event's span is owned by the lane, not by this call: its
        // context stands in for it (a parent id is all a child needs).
        event.is_valid().then(|| Self { tracer, parent: Context::new().with_remote_span_context(event.clone()) })
    }

    /// A span for one call of `kind`, started now: `http.request` or
    /// `client.request`. End it with [`CallSpan::end`] when the call's
    /// outcome is known; dropped unended, it is ended as it is.
    pub fn start(&self, kind: CallKind) -> CallSpan {
        let name = match kind {
            CallKind::Http => "http.request",
            CallKind::Request => "client.request",
        };
        let span = self.tracer.span_builder(name).with_kind(SpanKind::Client).start_with_context(&self.tracer, &self.parent);
        CallSpan { span }
    }
}

/// The span of one outbound call.
pub struct CallSpan {
    span: Span,
}

impl CallSpan {
    /// The `traceparent` the callee gets: this span as its parent.
    pub fn traceparent(&self) -> Option<String> {
        let context = self.span.span_context();
        context.is_valid().then(|| format_traceparent(context))
    }

    /// Ends the span with what the call log says of the call: method,
    /// destination, path, status, idempotency key, duration and error.
    pub fn end(mut self, call: &CallRecord) {
        let mut attributes = vec![
            KeyValue::new("sluice.idempotency_key", call.idempotency_key.clone()),
            KeyValue::new("sluice.attempt", i64::from(call.attempt)),
            KeyValue::new("sluice.call.duration_ms", call.duration.as_secs_f64() * 1e3),
        ];
        match call.kind {
            CallKind::Http => {
                let (host, port) = match call.target.rsplit_once(':') {
                    Some((host, port)) => (host, port.parse::<i64>().ok()),
                    None => (call.target.as_str(), None),
                };
                attributes.push(KeyValue::new("http.request.method", call.method.clone()));
                attributes.push(KeyValue::new("server.address", host.to_owned()));
                if let Some(port) = port {
                    attributes.push(KeyValue::new("server.port", port));
                }
                attributes.push(KeyValue::new("url.path", call.path.clone()));
                if let Some(status) = call.status {
                    attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
                }
            }
            CallKind::Request => {
                attributes.push(KeyValue::new("messaging.system", call.method.clone()));
                attributes.push(KeyValue::new("sluice.client.destination", call.target.clone()));
                attributes.push(KeyValue::new("messaging.destination.name", call.path.clone()));
            }
        }
        // OpenTelemetry's rule for client spans: a 4xx or 5xx is an error.
        let error = call.error.clone().or_else(|| call.status.filter(|s| *s >= 400).map(|s| format!("HTTP {s}")));
        if let Some(error) = error {
            attributes.push(KeyValue::new("error.type", error.clone()));
            self.span.set_status(Status::error(error));
        }
        self.span.set_attributes(attributes);
        self.span.end();
    }
}

/// The OTLP/HTTP traces URL from a collector's base URL (as in
/// `OTEL_EXPORTER_OTLP_ENDPOINT`), or as given if it names the path.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}
