//! The dispatch path, WASM against native, in one run.
//!
//! - `call/*`: one plugin call over a batch, the guest being the Rust
//!   `passthrough` component, against a native function doing the same work
//!   (copy key, payload and headers into one output).
//! - `pipeline/*`: the whole dispatcher (intake, lane, plugin, router, sink,
//!   completer, ack) from an in-memory source to a sink that accepts at once,
//!   with the wasm plugin and with a native handler; `/1worker` runs one lane
//!   on a tokio runtime with one worker thread (issue 20's one-core case),
//!   `wasm-nestjs` the same with a source decoding NestJS packets.
//!   `*-threads` runs the lanes on plugin threads (`runtime::executor`, as
//!   the host does by default: one per CPU, one for the `/1worker` rows),
//!   intake on the runtime; the others run everything on the runtime (as
//!   the host did before, and does with `[runtime] plugin_threads = 0`).
//!
//! `wasm-canonical` is `wasm` with the batch passed through `handle-batch`
//! (the canonical ABI) although the plugin exports `handle-packed`: what
//! packing saves, in the same run.
//!
//! `SLUICE_BENCH_ROUNDS=N` skips criterion and runs the one-worker cases in
//! N interleaved rounds instead, printing the median and spread of events/s,
//! CPU time per event (`getrusage`, the whole process) and heap
//! allocations per event (a counting allocator, switched on for one
//! separate run of each case so it does not slow the timed ones);
//! `SLUICE_BENCH_CASE=wasm` keeps only the cases of that name
//! (`SLUICE_BENCH_CASE="wasm 100B"`: of that name and size; several,
//! comma-separated: `"native 100B,wasm 100B,wasm-canonical 100B"`).
//!
//! After criterion's own report, a table of events/s and WASM/native ratios
//! is printed from criterion's estimates. Needs the plugins built
//! (`./dev plugins`); `SLUICE_PLUGIN_DIR` overrides where they are.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use tokio_util::sync::CancellationToken;

use sluice::config::{BackoffConfig, WasiGrants};
use sluice::dispatch::{Dispatcher, HandlerFactory, RetryPolicy, Router};
use sluice::event::{Event, Header};
use sluice::runtime::executor::Executor;
use sluice::runtime::{LoadedPlugin, PluginSpec, Runtime, RuntimeOptions};

use common::{cpu_seconds, native_passthrough, spread, MemorySource, Native, NullSink};

/// Counts heap allocations while [`COUNTING`] is on (a relaxed load per
/// allocation otherwise), then hands them to [`INNER`].
struct CountingAlloc;

/// The allocator the `sluice` binary is built with (`host/src/main.rs`),
/// so the pipeline here allocates as the host does.
#[cfg(feature = "mimalloc")]
const INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(not(feature = "mimalloc"))]
const INNER: std::alloc::System = std::alloc::System;

static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: every call is forwarded to `INNER` unchanged.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    use std::sync::atomic::Ordering::Relaxed;
    if COUNTING.load(Relaxed) {
        ALLOCATIONS.fetch_add(1, Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

const SIZES: [(usize, &str); 2] = [(100, "100B"), (10 * 1024, "10KiB")];
const BATCHES: [usize; 3] = [1, 64, 256];
const PIPELINE_EVENTS: usize = 20_000;
/// Batch size of the pipeline runs (the config default is 64).
const PIPE_BATCH: usize = 256;
/// Lanes of the pipeline runs (events spread over them by key).
const LANES: [usize; 2] = [1, 2];

/// The criterion parameter of a pipeline run.
fn pipeline_param(label: &str, lanes: usize) -> String {
    match lanes {
        1 => format!("{label}/batch{PIPE_BATCH}"),
        n => format!("{label}/batch{PIPE_BATCH}/lanes{n}"),
    }
}

/// The criterion parameter of a one-lane run on a one-worker runtime.
fn one_worker_param(label: &str) -> String {
    format!("{label}/batch{PIPE_BATCH}/1worker")
}

/// A tokio runtime with one worker thread: the pipeline on one core (the
/// wasm engine's epoch ticker is a thread of its own, asleep between ticks).
fn one_worker_runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}

fn plugin_path() -> PathBuf {
    let dir = std::env::var_os("SLUICE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm32-wasip2/release"));
    dir.join("passthrough.wasm")
}

fn event(i: usize, size: usize) -> Event {
    Event {
        id: format!("bench:{i}"),
        source: "bench".into(),
        key: Some(format!("k{}", i % 16).into_bytes()),
        payload: vec![b'x'; size],
        headers: vec![Header { key: "content-type".into(), value: b"text/plain".to_vec() }],
        timestamp_ms: 1_700_000_000_000,
        attempt: 1,
        reply_to: None,
    }
}

/// `event` as a NestJS packet of about the same size on the wire
/// (`{"pattern":…,"data":"xx…","id":"…"}`), for a source decoding them.
fn nestjs_event(i: usize, size: usize) -> Event {
    let mut event = event(i, size);
    let head = format!(r#"{{"pattern":"bench","id":"{i}","data":""#);
    let data = "x".repeat(size.saturating_sub(head.len() + 2));
    event.payload = format!(r#"{head}{data}"}}"#).into_bytes();
    event
}

/// An in-memory source of `events`, decoding NestJS packets if `nestjs`.
fn memory_source(events: &[Event], nestjs: bool) -> Box<dyn sluice::source::Source> {
    let source = Box::new(MemorySource(events.to_vec().into()));
    match nestjs {
        true => sluice::codec::decoding(source, sluice::config::Codec::Nestjs, false),
        false => source,
    }
}

fn load(runtime: &Runtime) -> LoadedPlugin {
    let spec = PluginSpec {
        pipeline: "bench".into(),
        path: plugin_path(),
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
    let loaded = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(LoadedPlugin::load(runtime, spec)).map_err(|e| e.to_string()));
    match loaded {
        Ok(plugin) => plugin,
        Err(err) => {
            eprintln!("cannot load the passthrough plugin ({err}); build it with ./dev plugins");
            std::process::exit(2);
        }
    }
}

fn bench_calls(c: &mut Criterion, plugin: &LoadedPlugin) {
    // Calls are futures: run each measured loop inside one `block_on` of a
    // current-thread runtime, so entering the runtime is not counted.
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_time().build() else {
        eprintln!("cannot start a tokio runtime");
        std::process::exit(2);
    };
    let mut group = c.benchmark_group("call");
    for (size, label) in SIZES {
        for batch in BATCHES {
            let events: Vec<Event> = (0..batch).map(|i| event(i, size)).collect();
            group.throughput(Throughput::Elements(batch as u64));
            let id = format!("{label}/batch{batch}");
            group.bench_function(BenchmarkId::new("native", &id), |b| b.iter(|| std::hint::black_box(native_passthrough(&events))));
            let mut instance = match rt.block_on(plugin.instantiate()) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
            };
            group.bench_function(BenchmarkId::new("wasm", &id), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let started = std::time::Instant::now();
                        for _ in 0..iters {
                            std::hint::black_box(instance.handle(&events).await.map(|r| r.len()).unwrap_or(0));
                        }
                        started.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
}

fn dispatcher(factory: Arc<dyn HandlerFactory>, batch: usize, lanes: usize, executor: Option<&Executor>) -> Dispatcher {
    Dispatcher {
        executor: executor.cloned(),
        retry: RetryPolicy { max_attempts: 1, backoff: BackoffConfig::default() },
        batch_size: batch,
        concurrency: lanes,
        ordering: sluice::config::Ordering::Key,
        batch_bytes: 32 << 20,
        ..Dispatcher::new(
            "bench",
            Arc::new(sluice::dispatch::PluginSlot::new(factory)),
            Router::new(Arc::new(NullSink), HashMap::new()),
            Arc::new(NullSink),
        )
    }
}

/// Plugin threads, `threads` of them (at least one).
fn plugin_threads(threads: usize) -> Executor {
    match Executor::start(threads) {
        Ok(executor) => executor,
        Err(e) => {
            eprintln!("cannot start plugin threads: {e}");
            std::process::exit(2);
        }
    }
}

fn bench_pipeline(c: &mut Criterion, plugin: &LoadedPlugin) {
    let threads = plugin_threads(sluice::runtime::executor::default_threads());
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    for (size, label) in SIZES {
        let events: Vec<Event> = (0..PIPELINE_EVENTS).map(|i| event(i, size)).collect();
        group.throughput(Throughput::Elements(PIPELINE_EVENTS as u64));
        let variants = [
            ("native", Arc::new(Native) as Arc<dyn HandlerFactory>, false, false),
            ("wasm", Arc::new(plugin.clone()), false, false),
            ("native-threads", Arc::new(Native) as Arc<dyn HandlerFactory>, false, true),
            ("wasm-threads", Arc::new(plugin.clone()), false, true),
            ("wasm-traced", Arc::new(plugin.clone()), true, false),
        ];
        for ((name, factory, traced, on_threads), lanes) in variants.into_iter().flat_map(|v| LANES.map(|l| (v.clone(), l))) {
            if traced && lanes > 1 {
                continue;
            }
            let executor = on_threads.then_some(&threads);
            group.bench_function(BenchmarkId::new(name, pipeline_param(label, lanes)), |b| {
                b.iter_batched(
                    || MemorySource(events.clone().into()),
                    |source| {
                        let mut d = dispatcher(factory.clone(), PIPE_BATCH, lanes, executor);
                        if traced {
                            d.tracing = traced_pipeline();
                        }
                        rt.block_on(d.run(Box::new(source), CancellationToken::new()))
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
        }
    }
    let one = one_worker_runtime();
    let one_thread = plugin_threads(1);
    for case in one_worker_cases(plugin) {
        group.throughput(Throughput::Elements(PIPELINE_EVENTS as u64));
        let events = case.events(PIPELINE_EVENTS);
        let executor = case.threads.then_some(&one_thread);
        group.bench_function(BenchmarkId::new(case.name, one_worker_param(case.label)), |b| {
            b.iter_batched(
                || memory_source(&events, case.nestjs),
                |source| run_on_worker(&one, dispatcher(case.factory.clone(), PIPE_BATCH, 1, executor), source),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// Runs the pipeline as a task of `rt` (as the host does), so with one
/// worker its intake shares that thread with the lane, publisher and
/// completer; `block_on` would poll intake on the bench's own thread.
fn run_on_worker(rt: &tokio::runtime::Runtime, d: Dispatcher, source: Box<dyn sluice::source::Source>) {
    let _ = rt.block_on(rt.spawn(d.run(source, CancellationToken::new())));
}

/// One pipeline of the one-worker runs.
struct Case {
    name: &'static str,
    label: &'static str,
    size: usize,
    factory: Arc<dyn HandlerFactory>,
    nestjs: bool,
    /// The lane on a plugin thread.
    threads: bool,
}

impl Case {
    fn events(&self, count: usize) -> Vec<Event> {
        let make = if self.nestjs { nestjs_event } else { event };
        (0..count).map(|i| make(i, self.size)).collect()
    }
}

/// The plugin with its batches sent through `handle-batch` even though it
/// exports `handle-packed`.
struct Canonical(LoadedPlugin);

#[async_trait::async_trait]
impl HandlerFactory for Canonical {
    async fn create(&self) -> Result<Box<dyn sluice::dispatch::Handler>, sluice::runtime::LoadError> {
        let mut instance = self.0.instantiate().await?;
        instance.unpack();
        Ok(Box::new(instance))
    }
    fn name(&self) -> &str {
        self.0.name()
    }
    fn digest(&self) -> &str {
        self.0.digest()
    }
}

/// Native and wasm at both sizes (wasm packed and canonical), and wasm
/// behind a NestJS-decoding source at 100 B.
fn one_worker_cases(plugin: &LoadedPlugin) -> Vec<Case> {
    let native = || Arc::new(Native) as Arc<dyn HandlerFactory>;
    let wasm = || Arc::new(plugin.clone()) as Arc<dyn HandlerFactory>;
    let mut cases = Vec::new();
    for (size, label) in SIZES {
        cases.push(Case { name: "native", label, size, factory: native(), nestjs: false, threads: false });
        cases.push(Case { name: "wasm", label, size, factory: wasm(), nestjs: false, threads: false });
        let canonical = Arc::new(Canonical(plugin.clone()));
        cases.push(Case { name: "wasm-canonical", label, size, factory: canonical, nestjs: false, threads: false });
        cases.push(Case { name: "native-threads", label, size, factory: native(), nestjs: false, threads: true });
        cases.push(Case { name: "wasm-threads", label, size, factory: wasm(), nestjs: false, threads: true });
    }
    cases.push(Case { name: "wasm-nestjs", label: "100B", size: 100, factory: wasm(), nestjs: true, threads: false });
    cases.push(Case { name: "wasm-nestjs-threads", label: "100B", size: 100, factory: wasm(), nestjs: true, threads: true });
    cases
}

/// `SLUICE_BENCH_ROUNDS` rounds of every one-worker case, interleaved
/// (the order reversed every other round), `count` events per run.
fn rounds(plugin: &LoadedPlugin, rounds: usize, count: usize) {
    let rt = one_worker_runtime();
    let one_thread = plugin_threads(1);
    // `SLUICE_BENCH_CASE=wasm`: only the cases of that name (to profile one).
    let only = std::env::var("SLUICE_BENCH_CASE").ok();
    let cases: Vec<Case> = one_worker_cases(plugin)
        .into_iter()
        .filter(|c| only.as_deref().is_none_or(|names| names.split(',').any(|n| n == c.name || n == format!("{} {}", c.name, c.label))))
        .collect();
    let inputs: Vec<Vec<Event>> = cases.iter().map(|c| c.events(count)).collect();
    let run = |case: &Case, events: &[Event]| {
        let source = memory_source(events, case.nestjs);
        let d = dispatcher(case.factory.clone(), PIPE_BATCH, 1, case.threads.then_some(&one_thread));
        let (cpu, started) = (cpu_seconds(), std::time::Instant::now());
        run_on_worker(&rt, d, source);
        (started.elapsed().as_secs_f64(), cpu_seconds() - cpu)
    };
    // Warm up, and count allocations in a run of its own.
    let mut allocations = Vec::new();
    for (case, events) in cases.iter().zip(&inputs) {
        run(case, events);
        ALLOCATIONS.store(0, std::sync::atomic::Ordering::Relaxed);
        COUNTING.store(true, std::sync::atomic::Ordering::Relaxed);
        run(case, events);
        COUNTING.store(false, std::sync::atomic::Ordering::Relaxed);
        allocations.push(ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) as f64 / count as f64);
    }
    let mut rates = vec![Vec::new(); cases.len()];
    let mut cpu = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (wall, seconds) = run(&cases[i], &inputs[i]);
            rates[i].push(count as f64 / wall);
            cpu[i].push(seconds / count as f64 * 1e6);
        }
    }
    println!("\none lane, one worker, {count} events per run, {rounds} rounds (median, min–max)");
    println!("| case | events/s | µs CPU per event | allocations per event | events/s ÷ native (per round) |");
    println!("|---|---:|---:|---:|---:|");
    for (i, case) in cases.iter().enumerate() {
        let native = cases.iter().position(|c| c.name == "native" && c.label == case.label).unwrap_or(i);
        let ratios: Vec<f64> = rates[i].iter().zip(&rates[native]).map(|(r, n)| r / n).collect();
        let (r, c, q) = (spread(&rates[i]), spread(&cpu[i]), spread(&ratios));
        println!(
            "| {} {} | {:.0} ({:.0}–{:.0}) | {:.3} ({:.3}–{:.3}) | {:.1} | {:.2} ({:.2}–{:.2}) |",
            case.name, case.label, r.0, r.1, r.2, c.0, c.1, c.2, allocations[i], q.0, q.1, q.2
        );
    }
}

/// Correlation ids made for every event and a recorded span per event
/// (a tracer with no exporter: the export runs on the SDK's own thread and
/// is not on the pipeline's path).
fn traced_pipeline() -> sluice::dispatch::Tracing {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "bench");
    sluice::dispatch::Tracing { correlation: Some(sluice::config::CorrelationConfig::default()), tracer: Some(tracer) }
}

/// Reads criterion's mean estimate (ns per iteration) for one benchmark.
fn mean_ns(group: &str, function: &str, param: &str) -> Option<f64> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/criterion")
        .join(group)
        .join(function)
        .join(param.replace('/', "_"))
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn report() {
    println!("\n| path | payload | batch | native events/s | wasm events/s | wasm/native |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (_, label) in SIZES {
        for batch in BATCHES {
            rows.push(("call", label, batch, format!("{label}/batch{batch}"), batch as f64));
        }
        for lanes in LANES {
            rows.push(("pipeline", label, PIPE_BATCH, pipeline_param(label, lanes), PIPELINE_EVENTS as f64));
        }
    }
    for (_, label) in SIZES {
        rows.push(("pipeline", label, PIPE_BATCH, one_worker_param(label), PIPELINE_EVENTS as f64));
    }
    println!("(pipeline rows: `/lanesN` is N lanes, keyed; `/1worker` one lane on a one-worker runtime; otherwise one lane)");
    for (group, label, batch, param, per_iter) in rows {
        if let (Some(native), Some(wasm)) = (mean_ns(group, "native", &param), mean_ns(group, "wasm", &param)) {
            let rate = |ns: f64| per_iter / (ns / 1e9);
            println!(
                "| {group} {param} | {label} | {batch} | {:.0} | {:.0} | {:.2} |",
                rate(native),
                rate(wasm),
                rate(wasm) / rate(native)
            );
        }
    }
    println!("\nLanes on plugin threads (`*-threads`) against everything on the runtime, same run:");
    println!("| pipeline | native events/s | wasm events/s | wasm/native | native-threads events/s | wasm-threads events/s | wasm-threads/native | wasm-threads/native-threads |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut params: Vec<String> = SIZES.iter().flat_map(|(_, label)| LANES.map(|lanes| pipeline_param(label, lanes))).collect();
    params.extend(SIZES.iter().map(|(_, label)| one_worker_param(label)));
    for param in params {
        let rate = |name: &str| mean_ns("pipeline", name, &param).map(|ns| PIPELINE_EVENTS as f64 / (ns / 1e9));
        if let (Some(native), Some(wasm), Some(native_threads), Some(wasm_threads)) =
            (rate("native"), rate("wasm"), rate("native-threads"), rate("wasm-threads"))
        {
            println!(
                "| {param} | {native:.0} | {wasm:.0} | {:.2} | {native_threads:.0} | {wasm_threads:.0} | {:.2} | {:.2} |",
                wasm / native,
                wasm_threads / native,
                wasm_threads / native_threads
            );
        }
    }
    println!("\n| payload | wasm events/s | with correlation ids and spans | traced/untraced |");
    println!("|---|---|---|---|");
    for (_, label) in SIZES {
        let param = format!("{label}/batch{PIPE_BATCH}");
        if let (Some(plain), Some(traced)) = (mean_ns("pipeline", "wasm", &param), mean_ns("pipeline", "wasm-traced", &param)) {
            let rate = |ns: f64| PIPELINE_EVENTS as f64 / (ns / 1e9);
            println!("| {label} | {:.0} | {:.0} | {:.2} |", rate(plain), rate(traced), rate(traced) / rate(plain));
        }
    }
    let param = one_worker_param("100B");
    if let (Some(plain), Some(nestjs)) = (mean_ns("pipeline", "wasm", &param), mean_ns("pipeline", "wasm-nestjs", &param)) {
        let rate = |ns: f64| PIPELINE_EVENTS as f64 / (ns / 1e9);
        println!(
            "\none worker, 100 B: wasm {:.0} events/s, NestJS-decoding {:.0} ({:.2})",
            rate(plain),
            rate(nestjs),
            rate(nestjs) / rate(plain)
        );
    }
}

/// One pipeline run outside criterion, to show the batch sizes it formed.
fn batch_sizes(plugin: &LoadedPlugin) {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else { return };
    for (name, factory) in [("native", Arc::new(Native) as Arc<dyn HandlerFactory>), ("wasm", Arc::new(plugin.clone()))] {
        let d = dispatcher(factory, PIPE_BATCH, 1, None);
        let stats = d.stats.clone();
        let source = MemorySource((0..PIPELINE_EVENTS).map(|i| event(i, 100)).collect());
        let started = std::time::Instant::now();
        let _ = rt.block_on(d.run(Box::new(source), CancellationToken::new()));
        let s = stats.snapshot();
        println!(
            "pipeline {name}: {} events in {} plugin calls (mean batch {:.1}) in {:?}",
            s.received,
            s.calls,
            s.received as f64 / s.calls.max(1) as f64,
            started.elapsed()
        );
    }
}

fn main() {
    let runtime = match Runtime::new(&RuntimeOptions::default()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let plugin = load(&runtime);
    if let Some(n) = std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()) {
        let events = std::env::var("SLUICE_BENCH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
        rounds(&plugin, n, events);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_calls(&mut c, &plugin);
    bench_pipeline(&mut c, &plugin);
    c.final_summary();
    batch_sizes(&plugin);
    report();
}
