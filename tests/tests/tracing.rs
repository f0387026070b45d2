//! Correlation ids and OpenTelemetry export through the real binary. The
//! spans are received over OTLP/HTTP by a small collector in this test and
//! decoded with the OpenTelemetry protocol's own message types, so what is
//! checked is what a real collector would receive.

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod nats_fixture;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};

use common::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN: &str = "b7ad6b7169203331";

/// Each request received: its path and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP trace receiver: keeps every `POST /v1/traces` body.
struct Collector {
    port: u16,
    requests: Received,
}

impl Collector {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve(stream, &kept));
            }
        });
        Ok(Self { port, requests })
    }

    /// Every span received, checking they came from `service`.
    fn spans(&self, service: &str) -> Result<Vec<Span>> {
        let requests = self.requests.lock().map(|r| r.clone()).unwrap_or_default();
        let mut spans = Vec::new();
        for (path, body) in requests {
            ensure!(path == "/v1/traces", "spans are posted to /v1/traces, not {path}");
            let request = ExportTraceServiceRequest::decode(body.as_slice()).context("an OTLP protobuf trace export")?;
            for resource in request.resource_spans {
                let named = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| text(a.value.as_ref()?.value.as_ref()?));
                ensure!(named.as_deref() == Some(service), "service.name is the configured one: {named:?}");
                spans.extend(resource.scope_spans.into_iter().flat_map(|s| s.spans));
            }
        }
        Ok(spans)
    }
}

/// Answers each request on one connection (keep-alive) with 200.
fn serve(stream: std::net::TcpStream, kept: &Mutex<Vec<(String, Vec<u8>)>>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(mut kept) = kept.lock() {
            kept.push((path, body));
        }
        let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn text(value: &Any) -> Option<String> {
    match value {
        Any::StringValue(s) => Some(s.clone()),
        Any::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
}

#[test]
fn a_span_per_event_continues_the_trace_and_outputs_carry_the_ids() -> Result<()> {
    let collector = Collector::start()?;
    let scratch = Scratch::new()?;
    let mut config = one_pipeline("orders", "chaos", "", "max_attempts = 3\nbackoff = { initial = \"1ms\", max = \"1ms\" }");
    config.push_str("\n[pipelines.orders.correlation]\n");
    config.push_str(&format!("\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{}\"\nservice_name = \"orders-service\"\n", collector.port));
    scratch.write("sluice.toml", config)?;
    let traceparent = format!("00-{TRACE}-{PARENT_SPAN}-01");
    scratch.write_events(
        "events.jsonl",
        &[
            json!({ "payload": "ok:first", "headers": { "traceparent": traceparent, "x-correlation-id": "order-7" } }),
            json!({ "payload": "reject:no such order" }),
            json!({ "payload": "retry:1" }),
        ],
    )?;
    let finished = scratch.run(&["run", "sluice.toml"])?;
    finished.ensure_success()?;

    // Outputs and dead letters carry the correlation id and the trace.
    let out = scratch.read_jsonl("out.jsonl")?;
    assert_eq!(payloads(&out), ["first", "recovered after 1 failures"]);
    assert_eq!(header(&out[0], "x-correlation-id"), Some("order-7"));
    let made = header(&out[1], "x-correlation-id").unwrap_or_default();
    ensure!(made.len() == 36 && made != "order-7", "a correlation id is made for an event without one: {made:?}");
    let dead = scratch.read_jsonl("dlq.jsonl")?;
    ensure!(header(&dead[0], "x-correlation-id").is_some_and(|id| id.len() == 36 && id != made), "{:?}", dead[0]);

    // One span per event, exported when the host stopped.
    let spans = collector.spans("orders-service")?;
    ensure!(spans.len() == 3, "three spans: {spans:#?}");
    let by_outcome = |outcome: &str| spans.iter().find(|s| attribute(s, "sluice.outcome").as_deref() == Some(outcome));
    let first = spans
        .iter()
        .find(|s| attribute(s, "messaging.message.conversation_id").as_deref() == Some("order-7"))
        .context("the first event's span")?;
    assert_eq!(hex::encode(&first.trace_id), TRACE, "continues the incoming trace");
    assert_eq!(hex::encode(&first.parent_span_id), PARENT_SPAN, "as a child of the incoming span");
    assert_eq!(first.name, "process orders");
    assert_eq!(attribute(first, "sluice.outcome").as_deref(), Some("delivered"));
    assert_eq!(attribute(first, "sluice.plugin").as_deref(), Some("chaos"));
    assert_eq!(attribute(first, "sluice.attempts").as_deref(), Some("1"));
    assert_eq!(
        header(&out[0], "traceparent"),
        Some(format!("00-{TRACE}-{}-01", hex::encode(&first.span_id)).as_str()),
        "the output's parent is the event's span"
    );

    let dead_span = by_outcome("dead-lettered").context("the rejected event's span")?;
    assert_eq!(attribute(dead_span, "sluice.dead_letter.reason").as_deref(), Some("rejected"));
    let status = dead_span.status.as_ref().context("an error status")?;
    assert_eq!((status.code, status.message.as_str()), (2, "no such order"), "status ERROR with the reason");
    ensure!(dead_span.parent_span_id.is_empty(), "an event without a traceparent starts a trace");

    let retried = spans.iter().find(|s| attribute(s, "sluice.attempts").as_deref() == Some("2")).context("the retried event's span")?;
    assert_eq!(attribute(retried, "sluice.outcome").as_deref(), Some("delivered"));
    let retried_out: Value = out[1].clone();
    assert_eq!(
        header(&retried_out, "traceparent"),
        Some(format!("00-{}-{}-01", hex::encode(&retried.trace_id), hex::encode(&retried.span_id)).as_str())
    );
    ensure!(spans.iter().all(|s| s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0));
    Ok(())
}

/// `examples/tracing/sluice.toml` as shipped, pointed at this test's
/// collector through `OTEL_EXPORTER_OTLP_ENDPOINT`.
#[test]
fn the_tracing_example_runs_as_documented() -> Result<()> {
    let collector = Collector::start()?;
    let scratch = Scratch::new()?;
    for file in ["sluice.toml", "events.jsonl"] {
        scratch.write(&format!("examples/tracing/{file}"), std::fs::read(root().join("examples/tracing").join(file))?)?;
    }
    scratch.write("plugins/target/wasm32-wasip2/release/json_enricher.wasm", std::fs::read(plugin("json_enricher"))?)?;
    let mut command = scratch.sluice(&["run", "examples/tracing/sluice.toml"]);
    command.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", collector.port));
    let finished = Running::spawn(command)?.wait(Duration::from_secs(60))?;
    finished.ensure_success()?;
    let out = parse_jsonl(&finished.stdout)?;
    assert_eq!(out.len(), 2);
    assert_eq!(header(&out[0], "x-correlation-id"), Some("order-1001"));
    ensure!(header(&out[1], "x-correlation-id").is_some_and(|id| id.len() == 36), "{}", out[1]);
    let spans = collector.spans("orders")?;
    ensure!(spans.len() == 2, "{spans:#?}");
    let first = spans.iter().find(|s| hex::encode(&s.trace_id) == TRACE).context("the first order's span continues its trace")?;
    assert_eq!(
        header(&out[0], "traceparent"),
        Some(format!("00-{TRACE}-{}-01", hex::encode(&first.span_id)).as_str()),
        "the enricher copied the input's traceparent; the output names the event's span"
    );
    Ok(())
}

/// A collector that is not there costs spans, never events.
#[test]
fn an_unreachable_collector_does_not_stop_the_pipeline() -> Result<()> {
    let scratch = Scratch::new()?;
    let port = free_port()?;
    let mut config = one_pipeline("orders", "chaos", "", "");
    config.push_str(&format!("\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n"));
    scratch.write("sluice.toml", config)?;
    scratch.write_events("events.jsonl", &(0..50).map(|i| event(&format!("ok:{i}"))).collect::<Vec<_>>())?;
    let started = std::time::Instant::now();
    let finished = scratch.run(&["run", "sluice.toml"])?;
    finished.ensure_success()?;
    assert_eq!(scratch.read_jsonl("out.jsonl")?.len(), 50);
    // The exporter gives up on the last spans after its 5 s shutdown limit.
    ensure!(started.elapsed() < Duration::from_secs(30), "shutdown is not held up by the missing collector: {:?}", started.elapsed());
    Ok(())
}

/// An HTTP server on 127.0.0.1 that answers every request with the
/// `traceparent` and `idempotency-key` it got, as JSON.
fn echo_callee() -> Result<(u16, tokio::runtime::Runtime)> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        axum::Json(json!({ "traceparent": header("traceparent"), "key": header("idempotency-key") }))
    });
    runtime.spawn(async move { axum::serve(listener, app).await });
    Ok((port, runtime))
}

/// With an exporter, an outbound HTTP call gets a span of its own
/// (`http.request`, a child of the event's), and the callee gets that
/// span, not the event's upstream, as its parent.
#[test]
fn an_http_call_has_a_span_and_the_callee_gets_it_as_parent() -> Result<()> {
    let collector = Collector::start()?;
    let (port, _callee) = echo_callee()?;
    let scratch = Scratch::new()?;
    let url = format!("http://127.0.0.1:{port}/score");
    let mut config = one_pipeline("enrich", "http_enrich", &format!("url = {}", toml_str(&url)), "");
    config.push_str(&format!("\n[pipelines.enrich.plugin.http]\nallow = [\"http://127.0.0.1:{port}\"]\n"));
    config.push_str(&format!("\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{}\"\nservice_name = \"enrich\"\n", collector.port));
    scratch.write("sluice.toml", config)?;
    let traceparent = format!("00-{TRACE}-{PARENT_SPAN}-01");
    scratch.write_events("events.jsonl", &[json!({ "id": "order-1", "payload": "{}", "headers": { "traceparent": traceparent } })])?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;

    let out = scratch.read_jsonl("out.jsonl")?;
    ensure!(out.len() == 1, "{out:?} / dead letters {:?}", scratch.read_jsonl("dlq.jsonl")?);
    let echoed: Value = serde_json::from_str(out[0]["payload"].as_str().context("a text payload")?)?;

    let spans = collector.spans("enrich")?;
    ensure!(spans.len() == 2, "the event's span and the call's: {spans:#?}");
    let event = spans.iter().find(|s| s.name == "process enrich").context("the event's span")?;
    let call = spans.iter().find(|s| s.name == "http.request").context("the call's span")?;
    assert_eq!(hex::encode(&call.trace_id), TRACE, "in the event's trace");
    assert_eq!(call.parent_span_id, event.span_id, "a child of the event's span");
    assert_eq!(
        echoed["traceparent"],
        json!(format!("00-{TRACE}-{}-01", hex::encode(&call.span_id))),
        "the callee's parent is the call's span"
    );
    assert_eq!(call.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(attribute(call, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(attribute(call, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attribute(call, "server.port"), Some(port.to_string()));
    assert_eq!(attribute(call, "url.path").as_deref(), Some("/score"));
    assert_eq!(attribute(call, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attribute(call, "sluice.idempotency_key").as_deref(), Some("order-1:0"));
    assert_eq!(echoed["key"], json!("order-1:0"));
    let duration =
        call.attributes.iter().find(|a| a.key == "sluice.call.duration_ms").and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            Any::DoubleValue(ms) => Some(*ms),
            _ => None,
        });
    ensure!(duration.is_some_and(|ms| ms > 0.0), "a duration in ms: {duration:?}");
    ensure!(attribute(call, "error.type").is_none(), "no error on a 200");
    ensure!(
        call.start_time_unix_nano >= event.start_time_unix_nano && call.end_time_unix_nano <= event.end_time_unix_nano,
        "within the event's span"
    );
    Ok(())
}

/// The same for a service request (`client.request` over NATS): a
/// `client.request` span under the event's, whose context the service
/// gets in the request's `traceparent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_request_has_a_span_and_the_service_gets_it_as_parent() -> Result<()> {
    use futures::StreamExt;
    let collector = Collector::start()?;
    let server = nats_fixture::NatsServer::start()?;
    let client = server.client().await?;
    // Answers each request with the traceparent it came with.
    let mut requests = client.subscribe("inventory.reserve").await?;
    client.flush().await?;
    let answering = client.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let traceparent = request.headers.as_ref().and_then(|h| h.get("traceparent")).map(|v| v.to_string()).unwrap_or_default();
            if let Some(reply) = request.reply {
                let _ = answering.publish(reply, traceparent.into()).await;
                let _ = answering.flush().await;
            }
        }
    });

    let scratch = Scratch::new()?;
    let mut config = one_pipeline("ask", "ask", "request = \"inventory\"", "");
    config.push_str(&format!(
        "\n[pipelines.ask.clients.inventory]\ntransport = \"nats\"\nurl = \"{}\"\nsubject = \"inventory.reserve\"\n",
        server.url()
    ));
    config.push_str(&format!("\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{}\"\nservice_name = \"ask\"\n", collector.port));
    scratch.write("sluice.toml", config)?;
    scratch.write_events(
        "events.jsonl",
        &[json!({ "id": "order-2", "payload": "sku-1", "headers": { "traceparent": format!("00-{TRACE}-{PARENT_SPAN}-01") } })],
    )?;
    let dir = scratch.dir().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(sluice_bin());
        command.args(["run", "sluice.toml"]).current_dir(dir);
        Running::spawn(command)?.wait(RUN_TIMEOUT)
    })
    .await??
    .ensure_success()?;

    let out = scratch.read_jsonl("out.jsonl")?;
    ensure!(out.len() == 1, "{out:?} / dead letters {:?}", scratch.read_jsonl("dlq.jsonl")?);
    let spans = collector.spans("ask")?;
    let event = spans.iter().find(|s| s.name == "process ask").context("the event's span")?;
    let call = spans.iter().find(|s| s.name == "client.request").with_context(|| format!("the request's span: {spans:#?}"))?;
    assert_eq!(call.parent_span_id, event.span_id, "a child of the event's span");
    assert_eq!(
        out[0]["payload"],
        json!(format!("00-{TRACE}-{}-01", hex::encode(&call.span_id))),
        "the service's parent is the request's span"
    );
    assert_eq!(attribute(call, "sluice.client.destination").as_deref(), Some("inventory"));
    assert_eq!(attribute(call, "messaging.system").as_deref(), Some("nats"));
    assert_eq!(attribute(call, "messaging.destination.name").as_deref(), Some("inventory.reserve"));
    assert_eq!(attribute(call, "sluice.idempotency_key").as_deref(), Some("order-2:0"));
    ensure!(attribute(call, "error.type").is_none(), "answered");
    Ok(())
}
