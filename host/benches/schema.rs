//! What event schemas cost: JSON Schema validation per event, alone and as
//! a share of the whole dispatch path.
//!
//! - `check/*`: `Gate::check_input` on one valid payload (parse + validate),
//!   100 B and ~10 KiB of JSON.
//! - `pipeline/*`: the whole dispatcher (in-memory source, passthrough
//!   plugin, sink that accepts at once) over 20,000 events, without schemas
//!   (`plain`) and with an input and an output schema (`schemas`; the
//!   passthrough's outputs keep the event's type headers, so each event is
//!   validated twice), with the Rust `passthrough` component (`wasm`) and a
//!   native handler (`native`, the worst case for the ratio: nothing else
//!   costs anything).
//!
//! After criterion's report, a table of events/s and schemas/plain ratios.
//! Needs the plugins built (`./dev plugins`) for the `wasm` rows.

#[path = "common/allocator.rs"]
mod allocator;
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use sluice::config::{BackoffConfig, SchemaEntry, SchemasConfig, WasiGrants};
use sluice::dispatch::{Dispatcher, HandlerFactory, RetryPolicy, Router};
use sluice::event::{text_header, Event};
use sluice::runtime::{LoadedPlugin, PluginSpec, Runtime, RuntimeOptions};
use sluice::schema::Gate;

use common::{MemorySource, Native, NullSink};

const EVENTS: usize = 20_000;
const BATCH: usize = 256;

/// An order with `items` line items: 0 items is ~100 bytes, 120 ~10 KiB.
fn order(items: usize) -> Vec<u8> {
    let lines: Vec<_> =
        (0..items).map(|i| json!({"sku": format!("SKU-{i:06}"), "qty": i % 7 + 1, "price": 9.99, "note": "gift"})).collect();
    let mut order = json!({"id": "o-000123", "customer": "c-42", "total": 1234.5, "currency": "EUR"});
    if items > 0 {
        order["items"] = json!(lines);
    }
    serde_json::to_vec(&order).unwrap_or_default()
}

fn sizes() -> [(Vec<u8>, &'static str); 2] {
    [(order(0), "100B"), (order(120), "10KiB")]
}

fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "required": ["id", "customer", "total", "currency"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "customer": {"type": "string"},
            "total": {"type": "number", "minimum": 0},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["sku", "qty", "price"],
                    "properties": {
                        "sku": {"type": "string"},
                        "qty": {"type": "integer", "minimum": 1},
                        "price": {"type": "number"},
                        "note": {"type": "string", "maxLength": 200}
                    }
                }
            }
        }
    })
}

fn gate() -> Gate {
    let entry = SchemaEntry {
        event_type: "order-created".into(),
        version: Some("1".into()),
        path: PathBuf::from("order.json"),
        document: Arc::new(schema()),
    };
    let config = SchemasConfig { input: vec![entry.clone()], output: vec![entry], ..SchemasConfig::default() };
    match Gate::new(Some(&config)) {
        Ok(gate) => gate,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}

fn event(i: usize, payload: &[u8]) -> Event {
    Event {
        id: format!("bench:{i}"),
        source: "bench".into(),
        key: None,
        payload: payload.to_vec(),
        headers: vec![text_header("event-type", "order-created"), text_header("event-version", "1")],
        timestamp_ms: 1_700_000_000_000,
        attempt: 1,
        reply_to: None,
    }
}

fn dispatcher(factory: Arc<dyn HandlerFactory>, schemas: Arc<Gate>) -> Dispatcher {
    Dispatcher {
        retry: RetryPolicy { max_attempts: 1, backoff: BackoffConfig::default() },
        batch_size: BATCH,
        batch_bytes: 32 << 20,
        version_header: false,
        schemas,
        ..Dispatcher::new(
            "bench",
            Arc::new(sluice::dispatch::PluginSlot::new(factory)),
            Router::new(Arc::new(NullSink), HashMap::new()),
            Arc::new(NullSink),
        )
    }
}

fn passthrough(runtime: &Runtime) -> Option<LoadedPlugin> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm32-wasip2/release/passthrough.wasm");
    let spec = PluginSpec {
        pipeline: "bench".into(),
        path,
        sha256: None,
        config: Vec::new(),
        wasi: WasiGrants::default(),
        timeout: Duration::from_secs(5),
        init_timeout: Duration::from_secs(10),
        memory: 256 << 20,
        instance: sluice::config::InstancePolicy::Reuse,
        grants: Vec::new(),
        metrics: Default::default(),
        http: None,
        http_stubs: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().ok()?;
    rt.block_on(LoadedPlugin::load(runtime, spec)).map_err(|e| eprintln!("no wasm rows: {e} (build the plugins with ./dev plugins)")).ok()
}

fn bench_check(c: &mut Criterion, gate: &Gate) {
    let mut group = c.benchmark_group("schema-check");
    group.throughput(Throughput::Elements(1));
    for (payload, label) in sizes() {
        let e = event(0, &payload);
        group.bench_function(BenchmarkId::new("input", label), |b| {
            b.iter(|| gate.check_input(std::hint::black_box(&e.headers), std::hint::black_box(&e.payload), None))
        });
    }
    group.finish();
}

fn bench_pipeline(c: &mut Criterion, factories: &[(&'static str, Arc<dyn HandlerFactory>)], gate: &Arc<Gate>) {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else { return };
    let mut group = c.benchmark_group("schema-pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (payload, label) in sizes() {
        let events: Vec<Event> = (0..EVENTS).map(|i| event(i, &payload)).collect();
        for (plugin, factory) in factories {
            for (mode, schemas) in [("plain", Arc::new(Gate::default())), ("schemas", gate.clone())] {
                group.bench_function(BenchmarkId::new(format!("{plugin}-{mode}"), label), |b| {
                    b.iter_batched(
                        || MemorySource(events.clone().into()),
                        |source| rt.block_on(dispatcher(factory.clone(), schemas.clone()).run(Box::new(source), CancellationToken::new())),
                        criterion::BatchSize::LargeInput,
                    )
                });
            }
        }
    }
    group.finish();
}

fn mean_ns(group: &str, function: &str, param: &str) -> Option<f64> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/criterion")
        .join(group)
        .join(function)
        .join(param)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn report(plugins: &[&str]) {
    println!("\n| payload | check_input µs/event | plugin | plain events/s | schemas events/s | schemas/plain |");
    println!("|---|---|---|---|---|---|");
    for (payload, label) in sizes() {
        let check = mean_ns("schema-check", "input", label).map_or("?".into(), |ns| format!("{:.2}", ns / 1e3));
        for plugin in plugins {
            let plain = mean_ns("schema-pipeline", &format!("{plugin}-plain"), label);
            let schemas = mean_ns("schema-pipeline", &format!("{plugin}-schemas"), label);
            if let (Some(plain), Some(schemas)) = (plain, schemas) {
                let rate = |ns: f64| EVENTS as f64 / (ns / 1e9);
                println!(
                    "| {label} ({} B) | {check} | {plugin} | {:.0} | {:.0} | {:.2} |",
                    payload.len(),
                    rate(plain),
                    rate(schemas),
                    rate(schemas) / rate(plain)
                );
            }
        }
    }
}

fn main() {
    let gate = Arc::new(gate());
    let mut factories: Vec<(&'static str, Arc<dyn HandlerFactory>)> = vec![("native", Arc::new(Native))];
    if let Ok(runtime) = Runtime::new(&RuntimeOptions::default()) {
        if let Some(plugin) = passthrough(&runtime) {
            factories.push(("wasm", Arc::new(plugin)));
        }
    }
    let mut c = Criterion::default().configure_from_args();
    bench_check(&mut c, &gate);
    bench_pipeline(&mut c, &factories, &gate);
    c.final_summary();
    let names: Vec<&str> = factories.iter().map(|(n, _)| *n).collect();
    report(&names);
}
