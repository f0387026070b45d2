//! `SLUICE_BENCH_ROUNDS`: whole pipelines with a stateful wasm plugin
//! against the same pipeline with the stateless passthrough, in one run
//! (see the bench's doc comment).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use sluice::config::{BackoffConfig, WasiGrants};
use sluice::dispatch::{Dispatcher, Handler, HandlerFactory, RetryPolicy, Router};
use sluice::event::Event;
use sluice::kafka::Transaction;
use sluice::runtime::{Capability, LoadedPlugin, PluginSpec, Runtime, RuntimeOptions};
use sluice::state::embedded::{EmbeddedDb, EmbeddedOptions};
use sluice::state::memory::MemoryBackend;
use sluice::state::{Limits, Store};

use super::common::{cpu_seconds, spread, MemorySource, NullSink};

const BATCH: usize = 256;
const KEYS: usize = 64;

/// A plugin declared per-event (as one importing HTTP would be): how the
/// host called every stateful plugin before batched state calls.
struct PerEvent(LoadedPlugin);

#[async_trait::async_trait]
impl HandlerFactory for PerEvent {
    async fn create(&self) -> Result<Box<dyn Handler>, sluice::runtime::LoadError> {
        HandlerFactory::create(&self.0).await
    }
    fn name(&self) -> &str {
        HandlerFactory::name(&self.0)
    }
    fn digest(&self) -> &str {
        HandlerFactory::digest(&self.0)
    }
    fn per_event(&self) -> bool {
        true
    }
}

/// One pipeline of the rounds.
struct Case {
    name: String,
    factory: Arc<dyn HandlerFactory>,
    store: Option<Arc<Store>>,
    /// The Kafka transaction the changelog writes into, committed after
    /// each run (an exactly-once source commits it every second).
    kafka: Option<Kafka>,
}

struct Kafka {
    transaction: Arc<Transaction>,
    consumer: rdkafka::consumer::BaseConsumer,
}

fn plugin_dir() -> PathBuf {
    std::env::var_os("SLUICE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm32-wasip2/release"))
}

fn load(runtime: &Runtime, rt: &tokio::runtime::Runtime, name: &str, grants: Vec<Capability>) -> Result<LoadedPlugin, String> {
    let spec = PluginSpec {
        pipeline: "bench".into(),
        path: plugin_dir().join(format!("{name}.wasm")),
        sha256: None,
        config: Vec::new(),
        wasi: WasiGrants::default(),
        timeout: Duration::from_secs(5),
        init_timeout: Duration::from_secs(10),
        memory: 256 << 20,
        instance: sluice::config::InstancePolicy::Reuse,
        grants,
        metrics: Default::default(),
        http: None,
        http_stubs: None,
    };
    rt.block_on(LoadedPlugin::load(runtime, spec)).map_err(|e| format!("cannot load {name} ({e}); build it with ./dev plugins"))
}

/// 100 B events keyed over 64 keys, with ids unique to `run` (shaped like
/// Kafka ids: the changelog places a write by its event's partition, and
/// a repeated id would be skipped as already applied).
fn events(run: usize, count: usize) -> Vec<Event> {
    (0..count)
        .map(|i| Event {
            id: format!("bench/0/{}", run * count + i),
            source: "bench".into(),
            key: Some(format!("key-{}", i % KEYS).into_bytes()),
            payload: vec![b'x'; 100],
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000,
            attempt: 1,
            reply_to: None,
        })
        .collect()
}

fn dispatcher(case: &Case) -> Dispatcher {
    Dispatcher {
        retry: RetryPolicy { max_attempts: 1, backoff: BackoffConfig::default() },
        batch_size: BATCH,
        batch_bytes: 32 << 20,
        state: case.store.clone(),
        ..Dispatcher::new(
            "bench",
            Arc::new(sluice::dispatch::PluginSlot::new(case.factory.clone())),
            Router::new(Arc::new(NullSink), HashMap::new()),
            Arc::new(NullSink),
        )
    }
}

fn one_worker_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| e.to_string())
}

/// The cases: stateless passthrough, then each backend per-event and
/// batched.
fn cases(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Result<Vec<Case>, String> {
    let runtime = Runtime::new(&RuntimeOptions::default()).map_err(|e| e.to_string())?;
    let stateless = load(&runtime, rt, "passthrough", Vec::new())?;
    let stateful = load(&runtime, rt, "state_passthrough", vec![Capability::State])?;
    let mut cases = vec![Case { name: "passthrough, no state".into(), factory: Arc::new(stateless), store: None, kafka: None }];
    let mut backends: Vec<(&str, Arc<Store>, Option<Kafka>)> = Vec::new();
    backends.push(("memory", Store::new(Arc::new(MemoryBackend::new()), Limits::default()), None));
    let db = rt.block_on(EmbeddedDb::open(dir.join("bench.redb"))).map_err(|e| e.to_string())?;
    for mode in ["per-event", "batched"] {
        // A table namespace per case: markers and values of one do not
        // slow the other.
        let options = EmbeddedOptions { sync_interval: Duration::from_millis(200), ..EmbeddedOptions::default() };
        let backend = {
            let _runtime = rt.enter();
            db.backend(&format!("bench-{mode}"), options)
        };
        backends.push(("embedded", Store::new(Arc::new(backend), Limits::default()), None));
    }
    match std::env::var("SLUICE_BENCH_KAFKA") {
        Ok(bootstrap) => {
            for mode in ["per-event", "batched"] {
                let (transaction, store, consumer) = rt.block_on(super::changelog(&bootstrap, mode)).map_err(|e| e.to_string())?;
                backends.push(("kafka-changelog", store, Some(Kafka { transaction, consumer })));
            }
        }
        Err(_) => eprintln!("no kafka-changelog case: set SLUICE_BENCH_KAFKA=host:port (scripts/kafka.sh start)"),
    }
    // memory is shared by its two modes (no markers to grow); the others
    // come in pairs, the first per-event.
    let mut seen = HashMap::new();
    for (backend, store, kafka) in backends {
        let nth = seen.entry(backend).or_insert(0);
        *nth += 1;
        let modes: &[bool] = match backend {
            "memory" => &[false, true],
            _ if *nth == 1 => &[false],
            _ => &[true],
        };
        let mut kafka = kafka;
        for &batched in modes {
            let factory: Arc<dyn HandlerFactory> = match batched {
                true => Arc::new(stateful.clone()),
                false => Arc::new(PerEvent(stateful.clone())),
            };
            let mode = if batched { "batched" } else { "per-event" };
            cases.push(Case { name: format!("state {backend}, {mode}"), factory, store: Some(store.clone()), kafka: kafka.take() });
        }
    }
    Ok(cases)
}

/// `rounds` interleaved rounds of every case, `count` events per run.
pub fn rounds(rounds: usize, count: usize) {
    if let Err(e) = try_rounds(rounds, count) {
        eprintln!("{e}");
        std::process::exit(2);
    }
}

fn try_rounds(rounds: usize, count: usize) -> Result<(), String> {
    let rt = one_worker_runtime()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cases = cases(&rt, dir.path())?;
    // `SLUICE_BENCH_CASE=embedded`: the stateless baseline and the cases
    // whose name has that in it (to profile one).
    if let Ok(only) = std::env::var("SLUICE_BENCH_CASE") {
        let mut first = true;
        cases.retain(|case| std::mem::take(&mut first) || case.name.contains(&only));
    }
    let mut runs = 0;
    let mut run = |case: &Case| -> Result<(f64, f64, u64), String> {
        runs += 1;
        let source = MemorySource(events(runs, count).into());
        let d = dispatcher(case);
        let stats = d.stats.clone();
        let (cpu, started) = (cpu_seconds(), std::time::Instant::now());
        rt.block_on(rt.spawn(d.run(Box::new(source), CancellationToken::new())))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", case.name))?;
        if let Some(kafka) = &case.kafka {
            let metadata = rdkafka::consumer::Consumer::group_metadata(&kafka.consumer).ok_or("no group metadata")?;
            rt.block_on(kafka.transaction.commit(|| Some(Vec::new()), metadata)).map_err(|e| e.to_string())?;
        }
        Ok((started.elapsed().as_secs_f64(), cpu_seconds() - cpu, stats.snapshot().calls))
    };
    // Warm up each case once (instances, caches, the changelog topic).
    let mut calls = Vec::new();
    for case in &cases {
        calls.push(run(case)?.2);
    }
    let mut rates = vec![Vec::new(); cases.len()];
    let mut cpu = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (wall, seconds, _) = run(&cases[i])?;
            rates[i].push(count as f64 / wall);
            cpu[i].push(seconds / count as f64 * 1e6);
        }
    }
    println!("\none lane, one worker, {count} 100 B events over {KEYS} keys per run, batch {BATCH}, {rounds} rounds (median, min–max)");
    println!("| case | plugin calls per run | events/s | µs CPU per event | CPU per event ÷ no state (per round) |");
    println!("|---|---:|---:|---:|---:|");
    for (i, case) in cases.iter().enumerate() {
        let ratios: Vec<f64> = cpu[i].iter().zip(&cpu[0]).map(|(c, base)| c / base).collect();
        let (r, c, q) = (spread(&rates[i]), spread(&cpu[i]), spread(&ratios));
        println!(
            "| {} | {} | {:.0} ({:.0}–{:.0}) | {:.3} ({:.3}–{:.3}) | {:.2} ({:.2}–{:.2}) |",
            case.name, calls[i], r.0, r.1, r.2, c.0, c.1, c.2, q.0, q.1, q.2
        );
    }
    for case in &cases {
        if let Some(store) = &case.store {
            let m = store.metrics().snapshot();
            if m.commits > 0 {
                println!(
                    "{}: {:.1} events/commit, {:.1} µs/commit (all runs of its store)",
                    case.name,
                    m.committed_events as f64 / m.commits as f64,
                    m.commit_time.as_secs_f64() * 1e6 / m.commits as f64
                );
            }
        }
    }
    Ok(())
}
