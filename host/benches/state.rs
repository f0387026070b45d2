//! What plugin state costs per event, as a lane and its completer use it:
//! the batch's applied check + per event `is_uncommitted` + `begin` + 1
//! `get` + 1 `set` + `conclude`, then `ready_all` for the batch of 256
//! events (64 keys, 100 B values): one group commit per batch.
//!
//! - `state/memory`, `state/embedded` (redb, fsync per commit, a temp file),
//!   `state/embedded-deferred` (redb, fsync every 200 ms: the default with
//!   a file source, whose position is committed with the state);
//! - `state/none`: the same loop without state (ids and values only);
//! - `state/kafka-changelog` (when `SLUICE_BENCH_KAFKA=host:port` names a
//!   broker, e.g. `scripts/kafka.sh start`): records produced into an open
//!   Kafka transaction and awaited, the transaction committed every second
//!   as an exactly-once source does at its default `commit_interval`;
//! - `state/pipeline-native`: the whole dispatcher with the native
//!   passthrough (in-memory source, null sink), batch 256, the per-event cost
//!   state is added to once wired in.
//!
//! After criterion's report, a table of ns/event and state/pipeline ratios.
//!
//! `SLUICE_BENCH_ROUNDS=N` skips criterion and measures whole pipelines
//! the way users run them instead (one lane on a one-worker runtime, an
//! in-memory source of 100 B events keyed over 64 keys, a sink that accepts
//! at once, batch 256): the Rust `passthrough` component without state (the
//! baseline) against `state_passthrough` (the same plus one `get` and one
//! `set` of the event's key per event) on `memory`, `embedded` (deferred
//! fsync, 200 ms) and, with `SLUICE_BENCH_KAFKA`, `kafka-changelog` (the
//! transaction committed at the end of each run). Each stateful case runs
//! twice: `batched` as the host calls such a plugin (the lane's batch in
//! one call) and `per-event` as it did before (one event per call, forced
//! by declaring the plugin per-event, as an outbound capability would).
//! N interleaved rounds of `SLUICE_BENCH_EVENTS` events (default 100,000);
//! printed: median and spread of events/s, CPU µs per event (`getrusage`,
//! the whole process, so redb's blocking threads and librdkafka's count)
//! and each round's ratio of CPU per event to the stateless pipeline's.
//! `SLUICE_BENCH_CASE=embedded` keeps the baseline and the cases whose name
//! has that in it (to profile one).
//! Needs the plugins built (`./dev plugins`; `SLUICE_PLUGIN_DIR`
//! overrides where they are).

#[path = "common/allocator.rs"]
mod allocator;
mod common;
#[path = "state/pipelines.rs"]
mod pipelines;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput};
use tokio_util::sync::CancellationToken;

use sluice::config::BackoffConfig;
use sluice::dispatch::{Dispatcher, RetryPolicy, Router};
use sluice::event::Event;
use sluice::kafka::Transaction;
use sluice::state::embedded::{EmbeddedDb, EmbeddedOptions};
use sluice::state::kafka_changelog::{ChangelogBackend, ChangelogOptions};
use sluice::state::memory::MemoryBackend;
use sluice::state::{Backend, Limits, Store};

use common::{MemorySource, Native, NullSink};

const BATCH: usize = 256;
const KEYS: usize = 64;
const PIPELINE_EVENTS: usize = 10_240;

/// One batch through the state path as a lane and its completer take it:
/// the batch's applied markers looked up at once (redeliveries), then every
/// event reads and writes its key and concludes, and all are readied
/// together.
async fn state_batch(store: &Arc<Store>, round: usize, value: &[u8]) {
    // Shaped like a Kafka event id (`topic/partition/offset`): the
    // changelog places a write by its writer's partition.
    let ids: Vec<String> = (0..BATCH).map(|i| format!("bench/0/{}", round * BATCH + i)).collect();
    let refs: Vec<&str> = if store.keeps_markers() { ids.iter().map(String::as_str).collect() } else { Vec::new() };
    match store.applied_among(&refs).await {
        Ok(applied) if applied.iter().any(|a| *a) => eprintln!("unexpected applied marker"),
        Ok(_) => {}
        Err(e) => eprintln!("applied check failed: {e}"),
    }
    let mut tickets = Vec::with_capacity(BATCH);
    for (i, id) in ids.into_iter().enumerate() {
        let _ = store.is_uncommitted(&id);
        let mut state = store.begin(id);
        let key = format!("key-{}", i % KEYS);
        let _ = std::hint::black_box(state.get(&key).await);
        let _ = state.set(&key, value.to_vec());
        match store.conclude(state) {
            Ok(ticket) => tickets.push(ticket),
            Err(conflict) => eprintln!("unexpected conflict: {conflict}"),
        }
    }
    if let Err(e) = store.ready_all(tickets).await {
        eprintln!("commit failed: {e}");
    }
}

/// The same loop with no state: what the ids and values cost alone.
fn no_state_batch(round: usize, value: &[u8]) {
    for i in 0..BATCH {
        std::hint::black_box((format!("bench:{round}:{i}"), format!("key-{}", i % KEYS), value.to_vec()));
    }
}

fn event(i: usize, payload: &[u8]) -> Event {
    Event {
        id: format!("bench:{i}"),
        source: "bench".into(),
        key: None,
        payload: payload.to_vec(),
        headers: Vec::new(),
        timestamp_ms: 1_700_000_000_000,
        attempt: 1,
        reply_to: None,
    }
}

fn dispatcher() -> Dispatcher {
    Dispatcher {
        retry: RetryPolicy { max_attempts: 1, backoff: BackoffConfig::default() },
        batch_size: BATCH,
        batch_bytes: 32 << 20,
        version_header: false,
        ..Dispatcher::new(
            "bench",
            Arc::new(sluice::dispatch::PluginSlot::new(Arc::new(Native))),
            Router::new(Arc::new(NullSink), HashMap::new()),
            Arc::new(NullSink),
        )
    }
}

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let value = vec![b'x'; 100];
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Elements(BATCH as u64));

    group.bench_function(BenchmarkId::new("none", BATCH), |b| {
        let mut round = 0;
        b.iter(|| {
            round += 1;
            no_state_batch(round, &value)
        })
    });

    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let store = Store::new(memory, Limits::default());
    group.bench_function(BenchmarkId::new("memory", BATCH), |b| {
        let mut round = 0;
        b.iter(|| {
            round += 1;
            rt.block_on(state_batch(&store, round, &value))
        })
    });
    commits_per_event("memory", &store);

    match rt.block_on(EmbeddedDb::open(dir.join("bench.redb"))) {
        Ok(db) => {
            let store = Store::new(Arc::new(db.backend("bench", EmbeddedOptions::default())), Limits::default());
            group.bench_function(BenchmarkId::new("embedded", BATCH), |b| {
                let mut round = 0;
                b.iter(|| {
                    round += 1;
                    rt.block_on(state_batch(&store, round, &value))
                })
            });
            commits_per_event("embedded", &store);
            let options = EmbeddedOptions { sync_interval: std::time::Duration::from_millis(200), ..EmbeddedOptions::default() };
            let backend = {
                let _runtime = rt.enter();
                db.backend("bench-deferred", options)
            };
            let store = Store::new(Arc::new(backend), Limits::default());
            group.bench_function(BenchmarkId::new("embedded-deferred", BATCH), |b| {
                let mut round = 0;
                b.iter(|| {
                    round += 1;
                    rt.block_on(state_batch(&store, round, &value))
                })
            });
            commits_per_event("embedded-deferred", &store);
        }
        Err(e) => eprintln!("no embedded row: {e}"),
    }
    match std::env::var("SLUICE_BENCH_KAFKA") {
        Ok(bootstrap) => match rt.block_on(changelog(&bootstrap, "loop")) {
            Ok((transaction, store, consumer)) => {
                let mut last_commit = std::time::Instant::now();
                group.bench_function(BenchmarkId::new("kafka-changelog", BATCH), |b| {
                    let mut round = 0;
                    b.iter(|| {
                        round += 1;
                        rt.block_on(state_batch(&store, round, &value));
                        if last_commit.elapsed() >= std::time::Duration::from_secs(1) {
                            let committed = match rdkafka::consumer::Consumer::group_metadata(&consumer) {
                                Some(metadata) => rt.block_on(transaction.commit(|| Some(Vec::new()), metadata)).map_err(|e| e.to_string()),
                                None => Err("no group metadata".to_owned()),
                            };
                            if let Err(e) = committed {
                                eprintln!("transaction commit failed: {e}");
                            }
                            last_commit = std::time::Instant::now();
                        }
                    })
                });
                commits_per_event("kafka-changelog", &store);
            }
            Err(e) => eprintln!("no kafka-changelog row: {e}"),
        },
        Err(_) => eprintln!("no kafka-changelog row: set SLUICE_BENCH_KAFKA=host:port (scripts/kafka.sh start)"),
    }
    group.finish();

    let mut group = c.benchmark_group("state-pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PIPELINE_EVENTS as u64));
    let events: Vec<Event> = (0..PIPELINE_EVENTS).map(|i| event(i, &value)).collect();
    group.bench_function(BenchmarkId::new("native", BATCH), |b| {
        b.iter_batched(
            || MemorySource(events.clone().into()),
            |source| rt.block_on(dispatcher().run(Box::new(source), CancellationToken::new())),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// A Kafka changelog on `bootstrap` (a fresh topic, named by the process
/// and `name`), its transaction, and a consumer for the group metadata a
/// transaction commit needs.
async fn changelog(
    bootstrap: &str,
    name: &str,
) -> Result<(Arc<Transaction>, Arc<Store>, rdkafka::consumer::BaseConsumer), Box<dyn std::error::Error>> {
    use rdkafka::consumer::BaseConsumer;
    let run = format!("{}-{name}", std::process::id());
    let client = sluice::kafka::client_config(bootstrap, &Default::default());
    let transaction = Transaction::open(client.clone(), format!("bench-state-{run}"), std::time::Duration::from_secs(10)).await?;
    let options = ChangelogOptions {
        topic: format!("bench-state-{run}-changelog"),
        client: client.clone(),
        input_topics: Vec::new(),
        restore_timeout: std::time::Duration::from_secs(60),
    };
    let backend = Arc::new(ChangelogBackend::open(transaction.clone(), options).await?);
    let consumer: BaseConsumer = client.clone().set("group.id", format!("bench-state-{run}")).create()?;
    Ok((transaction, Store::new(backend, Limits::default()), consumer))
}

/// How well group commit grouped: events per backend transaction.
fn commits_per_event(row: &str, store: &Store) {
    let m = store.metrics().snapshot();
    if m.commits > 0 {
        println!(
            "state/{row}: {} events in {} commits ({:.1} events/commit, {:.1} µs/commit)",
            m.committed_events,
            m.commits,
            m.committed_events as f64 / m.commits as f64,
            m.commit_time.as_secs_f64() * 1e6 / m.commits as f64
        );
    }
}

fn mean_ns(group: &str, function: &str) -> Option<f64> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/criterion")
        .join(group)
        .join(function)
        .join(BATCH.to_string())
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn report() {
    let pipeline = mean_ns("state-pipeline", "native").map(|ns| ns / PIPELINE_EVENTS as f64);
    println!("\n| row | ns/event | events/s | vs native pipeline per event |");
    println!("|---|---|---|---|");
    if let Some(p) = pipeline {
        println!("| pipeline, native passthrough (no state) | {p:.0} | {:.0} | 1.00 |", 1e9 / p);
    }
    for row in ["none", "memory", "embedded", "embedded-deferred", "kafka-changelog"] {
        if let Some(ns) = mean_ns("state", row).map(|ns| ns / BATCH as f64) {
            let ratio = pipeline.map_or("?".into(), |p| format!("+{:.2}", ns / p));
            println!("| state/{row} (begin+get+set+conclude+ready) | {ns:.0} | {:.0} | {ratio} |", 1e9 / ns);
        }
    }
}

fn main() {
    if let Some(n) = std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()) {
        let events = std::env::var("SLUICE_BENCH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
        pipelines::rounds(n, events);
        return;
    }
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        eprintln!("no tokio runtime");
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        eprintln!("no temp dir");
        return;
    };
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &rt, dir.path());
    c.final_summary();
    report();
}
