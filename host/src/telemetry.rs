//! OpenTelemetry export (`[tracing]`): the process's span exporter, off
//! unless configured. Pipelines make a span per event with it
//! (`dispatch/trace.rs`); the SDK batches them and posts them to the OTLP
//! collector from a thread of its own, so a slow or absent collector costs
//! the pipelines nothing: when its queue is full, spans are dropped, never
//! events.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::{OtlpProtocol, TracingConfig};

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
