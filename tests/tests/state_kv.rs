//! The jetstream-kv state backend against a real `nats-server`: commits,
//! reads, scans, applied markers, and recovery of commits interrupted at
//! each step (the backend's test hook stops a commit where a crash would).
//! Raw bucket contents are read with plain async-nats, not through sluice.

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod fixture;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use sluice::state::jetstream_kv::{encode_key, CrashPoint, KvBackend, KvOptions};
use sluice::state::{Backend, CommitBatch, Position};

use common::wait_async;
use fixture::NatsServer;

fn write(key: &str, value: &str) -> (String, Option<Bytes>) {
    (key.to_owned(), Some(Bytes::copy_from_slice(value.as_bytes())))
}

fn batch(writes: Vec<(String, Option<Bytes>)>, applied: &[&str]) -> CommitBatch {
    CommitBatch { writes, writers: Vec::new(), applied: applied.iter().map(|s| s.to_string()).collect(), position: None }
}

async fn value(backend: &KvBackend, key: &str) -> Result<Option<String>> {
    Ok(backend.get(key).await?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// The raw keys of a bucket, read with async-nats.
async fn raw_keys(client: &async_nats::Client, bucket: &str) -> Result<Vec<String>> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(bucket).await.context("bucket")?;
    let mut keys: Vec<String> = kv.keys().await?.try_collect().await?;
    keys.sort();
    Ok(keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_reads_scans_and_markers() -> Result<()> {
    let server = NatsServer::start()?;
    let client = server.client().await?;
    let backend = KvBackend::open(client.clone(), &KvOptions::new("st")).await?;

    let odd = ["a b", "é", "日本", "a..b", "*", ">", "a.*.>", "_c.head", "s.61", "", "count:7"];
    let writes: Vec<_> = odd.iter().map(|k| write(k, &format!("v-{k}"))).collect();
    let mut commit = batch(writes, &["e1", "stream:42", "id with spaces.*"]);
    commit.position = Some(Position { source: "file.txt".into(), offset: 17 });
    backend.commit(commit).await?;

    for key in odd {
        ensure!(value(&backend, key).await?.as_deref() == Some(format!("v-{key}").as_str()), "key {key:?}");
    }
    ensure!(value(&backend, "missing").await?.is_none());
    for id in ["e1", "stream:42", "id with spaces.*"] {
        ensure!(backend.was_applied(id).await?, "marker {id}");
    }
    ensure!(!backend.was_applied("e2").await?);
    ensure!(backend.position("file.txt").await? == Some(17));
    ensure!(backend.position("other").await?.is_none());

    // Scan: every key, sorted by bytes; then by prefix, `after` and `limit`.
    let all: Vec<String> = backend.scan("", None, 100).await?.into_iter().map(|(k, _)| k).collect();
    let mut sorted: Vec<String> = odd.iter().map(|k| k.to_string()).collect();
    sorted.sort();
    ensure!(all == sorted, "{all:?} != {sorted:?}");
    let a: Vec<String> = backend.scan("a", None, 100).await?.into_iter().map(|(k, _)| k).collect();
    ensure!(a == ["a b", "a.*.>", "a..b"], "{a:?}");
    let page: Vec<String> = backend.scan("a", Some("a b"), 1).await?.into_iter().map(|(k, _)| k).collect();
    ensure!(page == ["a.*.>"], "{page:?}");
    ensure!(backend.scan("zzz", None, 10).await?.is_empty());
    let exact = backend.scan("count:7", None, 10).await?;
    ensure!(exact == vec![("count:7".to_string(), b"v-count:7".to_vec())], "{exact:?}");

    // A delete, then a second backend on the same bucket sees it all.
    backend.commit(batch(vec![("a b".into(), None), write("é", "2")], &["e2"])).await?;
    let again = KvBackend::open(client.clone(), &KvOptions::new("st")).await?;
    ensure!(value(&again, "a b").await?.is_none());
    ensure!(value(&again, "é").await?.as_deref() == Some("2"));
    ensure!(again.was_applied("e2").await? && again.was_applied("e1").await?);
    let a: Vec<String> = again.scan("a", None, 100).await?.into_iter().map(|(k, _)| k).collect();
    ensure!(a == ["a.*.>", "a..b"], "{a:?}");

    // The longest key the default limits allow (1 KiB) is a 3 KiB subject:
    // still under the server's 4 KiB control line, for puts and direct gets.
    let long = "é".repeat(512);
    again.commit(batch(vec![write(&long, "long")], &["e3"])).await?;
    ensure!(value(&again, &long).await?.as_deref() == Some("long"));
    ensure!(again.scan("éé", None, 10).await?.len() == 1);

    // User keys live under `s.`; nothing of the commit record is left.
    let raw = raw_keys(&client, "st").await?;
    ensure!(raw.iter().all(|k| k.starts_with("s") || k.starts_with("_p.")), "{raw:?}");
    ensure!(raw.contains(&encode_key("_c.head")), "{raw:?}");
    ensure!(raw_keys(&client, "st-applied").await?.len() == 5);
    Ok(())
}

/// A commit stopped at each step (after its record, after the writes,
/// after the markers), with the record inline or split into parts: a
/// reopened backend completes it, and nothing of the record is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_commit_is_completed_on_open() -> Result<()> {
    let server = NatsServer::start()?;
    let client = server.client().await?;
    let points = [CrashPoint::AfterRecord, CrashPoint::AfterWrites, CrashPoint::AfterMarkers];
    for (round, point) in points.into_iter().enumerate() {
        for split in [false, true] {
            let bucket = format!("crash-{round}-{split}");
            let mut backend = KvBackend::open(client.clone(), &KvOptions::new(&bucket)).await?;
            backend.commit(batch(vec![write("n", "1"), write("gone", "x")], &["first"])).await?;
            if split {
                backend.set_part_bytes(16);
            }
            backend.crash_at(point);
            let mut commit = batch(vec![write("n", "2"), ("gone".into(), None), write("new key", "3")], &["second", "third"]);
            commit.position = Some(Position { source: "src".into(), offset: 9 });
            let stopped = backend.commit(commit).await;
            ensure!(stopped.is_err(), "the hook stops the commit at {point:?}");
            drop(backend);

            let head = async_nats::jetstream::new(client.clone()).get_key_value(bucket.as_str()).await?.get("_c.head").await?;
            ensure!(head.is_some(), "{point:?}: the record is left after the crash");

            let reopened = KvBackend::open(client.clone(), &KvOptions::new(&bucket)).await?;
            ensure!(value(&reopened, "n").await?.as_deref() == Some("2"), "{point:?} split={split}");
            ensure!(value(&reopened, "gone").await?.is_none(), "{point:?} split={split}");
            ensure!(value(&reopened, "new key").await?.as_deref() == Some("3"), "{point:?} split={split}");
            ensure!(reopened.was_applied("second").await? && reopened.was_applied("third").await?);
            ensure!(reopened.position("src").await? == Some(9));
            let raw = raw_keys(&client, &bucket).await?;
            ensure!(!raw.iter().any(|k| k.starts_with("_c.")), "{point:?} split={split}: record left: {raw:?}");
            // And it keeps working.
            reopened.commit(batch(vec![write("n", "3")], &["fourth"])).await?;
            ensure!(value(&reopened, "n").await?.as_deref() == Some("3"));
        }
    }
    Ok(())
}

/// Parts written by a commit that died before its head (the commit point):
/// nothing was applied, and opening removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_without_a_head_are_discarded() -> Result<()> {
    let server = NatsServer::start()?;
    let client = server.client().await?;
    let backend = KvBackend::open(client.clone(), &KvOptions::new("orphans")).await?;
    backend.commit(batch(vec![write("k", "1")], &["a"])).await?;
    drop(backend);
    let kv = async_nats::jetstream::new(client.clone()).get_key_value("orphans").await?;
    let record = br#"{"writes":[["k","OTk="]],"applied":["b"],"position":null}"#;
    kv.put("_c.0.0", Bytes::from_static(record)).await?;

    let reopened = KvBackend::open(client.clone(), &KvOptions::new("orphans")).await?;
    ensure!(value(&reopened, "k").await?.as_deref() == Some("1"));
    ensure!(!reopened.was_applied("b").await?);
    ensure!(kv.get("_c.0.0").await?.is_none());
    Ok(())
}

/// The markers bucket prunes by age: created with the retention as max_age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_expire_with_the_markers_bucket() -> Result<()> {
    let server = NatsServer::start()?;
    let client = server.client().await?;
    let options = KvOptions { marker_retention: Duration::from_secs(1), ..KvOptions::new("short") };
    let backend = KvBackend::open(client.clone(), &options).await?;
    backend.commit(batch(vec![write("k", "1")], &["old"])).await?;
    ensure!(backend.was_applied("old").await?);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while backend.was_applied("old").await? {
        ensure!(std::time::Instant::now() < deadline, "the marker outlived its retention");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(value(&backend, "k").await?.as_deref() == Some("1"), "state itself does not expire");
    Ok(())
}

/// The KV key of a user key, written out here rather than taken from
/// sluice: `s` and one token per byte in lowercase hex.
fn kv_key(key: &str) -> String {
    std::iter::once("s".to_owned()).chain(key.bytes().map(|b| format!("{b:02x}"))).collect::<Vec<_>>().join(".")
}

/// The real binary: JetStream → `counter` → JetStream, state in KV, the host
/// killed with SIGKILL at three points while 50,000 events over 64 keys flow
/// and restarted each time. At the end every key's count in the bucket is
/// exactly its number of inputs (no increment lost, none applied twice), and
/// every event has exactly one output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_and_every_count_is_exact() -> Result<()> {
    use common::{broker_pipeline, start, Scratch};
    use std::collections::{BTreeMap, BTreeSet};

    const WITHIN: Duration = Duration::from_secs(300);
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    fixture::create_stream(&client, "IN", &["in.counts"]).await?;
    fixture::create_stream(&client, "OUT", &["out.counts"]).await?;
    fixture::create_stream(&client, "DLQ", &["dlq.counts"]).await?;
    let n = 50_000usize;
    let keys = 64;
    fixture::publish_all(&client, "in.counts", (0..n).map(|i| format!("k{}:{i}", i % keys))).await?;

    let url = server.url();
    let mut config = broker_pipeline(
        "counts",
        "counter",
        [
            &format!(
                r#"{{ kind = "jetstream", url = "{url}", stream = "IN", consumer = "sluice", ack_wait = "2s", max_ack_pending = 1000 }}"#
            ),
            &format!(r#"{{ kind = "jetstream", url = "{url}", subject = "out.counts" }}"#),
            &format!(r#"{{ kind = "jetstream", url = "{url}", subject = "dlq.counts" }}"#),
        ],
        "max_attempts = 3\nconcurrency = 2\nbackoff = { initial = \"10ms\" }",
        "5s",
    );
    config.push_str("\n[pipelines.counts.state]\nbackend = \"jetstream-kv\"\nbucket = \"counts\"\n");

    // Kill points spread over the run, shifted by the clock so each run
    // kills somewhere else.
    let jitter = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos() as u64 % 4_000;
    for (round, at) in [6_000 + jitter, 18_000 + jitter, 30_000 + jitter].into_iter().enumerate() {
        let host = start(&scratch, &config, "sluice.toml")?;
        wait_async(&format!("{at} outputs before kill {round}"), WITHIN, async || {
            Ok((fixture::stream_len(&client, "OUT").await? >= at).then_some(()))
        })
        .await?;
        let status = std::process::Command::new("kill").args(["-KILL", &host.pid().to_string()]).status()?;
        ensure!(status.success(), "kill -9 failed");
        drop(host);
        let killed_at = fixture::stream_len(&client, "OUT").await?;
        ensure!(killed_at < n as u64, "kill {round} came after the last event ({killed_at} outputs); it proves nothing");
    }
    let last = start(&scratch, &config, "sluice.toml")?;
    let kv = async_nats::jetstream::new(client.clone()).get_key_value("counts").await?;
    let expected = |k: usize| (0..n).filter(|i| i % keys == k).count();
    wait_async("every event to be handled and acknowledged", WITHIN, async || {
        let done = fixture::consumer_backlog(&client, "IN", "sluice").await? == Some((0, 0));
        Ok(done.then_some(()))
    })
    .await?;
    last.terminate()?;
    last.wait(WITHIN)?.ensure_success()?;

    ensure!(fixture::stream_len(&client, "DLQ").await? == 0, "nothing is dead-lettered");
    for k in 0..keys {
        let value = kv.get(kv_key(&format!("count:k{k}"))).await?.context("a count is missing")?;
        let count: usize = std::str::from_utf8(&value)?.parse()?;
        ensure!(count == expected(k), "key k{k}: state {count}, {} events", expected(k));
    }
    // One output per event (the sink's message ids deduplicate re-runs).
    // Their values need not be exactly 1..=n: an event whose outputs were
    // stored but whose state commit was lost to the kill runs again, and a
    // redelivery in another order can give it a different count than the
    // output already stored (which the message id keeps). So: the right
    // number per key, each within 1..=n, and the largest one is n.
    let mut outputs: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for output in fixture::read_stream(&client, "OUT").await? {
        let id = output.header("Nats-Msg-Id").context("an output without Nats-Msg-Id")?.to_owned();
        ensure!(ids.insert(id.clone()), "output {id} stored twice");
        let (key, count) = output.payload.split_once('=').context("an output is key=count")?;
        outputs.entry(key.to_owned()).or_default().push(count.parse()?);
    }
    ensure!(ids.len() == n, "{} outputs for {n} events", ids.len());
    ensure!(outputs.len() == keys, "{} keys in the outputs", outputs.len());
    let mut reordered = 0;
    for (key, counts) in &outputs {
        let k: usize = key.trim_start_matches('k').parse()?;
        let distinct: BTreeSet<usize> = counts.iter().copied().collect();
        ensure!(counts.len() == expected(k), "key {key}: {} outputs, {} events", counts.len(), expected(k));
        ensure!(distinct.first() == Some(&1) && distinct.last() == Some(&expected(k)), "key {key}: outputs {distinct:?}");
        reordered += counts.len() - distinct.len();
    }
    eprintln!("outputs whose count was repeated by a re-run after a kill: {reordered}");
    Ok(())
}

/// `[pipelines.X.state] backend = "jetstream-kv"` as the host opens it: the
/// default bucket is named after the pipeline (sanitised), and `url` wins
/// over the source's (which here points nowhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_table_opens_a_bucket_named_after_the_pipeline() -> Result<()> {
    let server = NatsServer::start()?;
    let client = server.client().await?;
    let dead = common::free_port()?;
    let text = format!(
        r#"
[pipelines.counts]
source = {{ kind = "jetstream", url = "nats://127.0.0.1:{dead}", stream = "IN", consumer = "c" }}
sink = {{ kind = "stdout" }}
dead_letter = {{ kind = "stdout" }}
plugin = {{ path = "counter.wasm" }}
state = {{ backend = "jetstream-kv", url = "{url}", marker_retention = "1h" }}
"#,
        url = server.url()
    );
    let config = sluice::config::parse(&text, std::path::Path::new("sluice.toml"), |_| None)?;
    let pipeline = config.pipelines.get("counts").context("the pipeline")?;
    let state = pipeline.state.as_ref().context("the state table")?;
    let connections = sluice::nats::Connections::default();
    let store = sluice::state::open("orders.eu v2", state, &pipeline.source, &connections).await?;
    let mut event = store.begin("e".into());
    event.set("k", b"1".to_vec())?;
    let ticket = store.conclude(event)?;
    store.ready(ticket).await?;
    ensure!(store.was_applied("e").await?);

    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("sluice-state-orders_eu_v2").await.context("the default bucket")?;
    ensure!(kv.get(kv_key("k")).await?.as_deref() == Some(&b"1"[..]));
    let markers = js.get_key_value("sluice-state-orders_eu_v2-applied").await?;
    let max_age = markers.stream.cached_info().config.max_age;
    ensure!(max_age == Duration::from_secs(3600), "markers max_age {max_age:?}");
    connections.close_all().await;
    Ok(())
}

/// A measurement, not a check (`--ignored --nocapture`): commits per second
/// of one event with one write, and of 256 events with one write each, and
/// gets per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_commit_and_get_rates() -> Result<()> {
    let server = NatsServer::start()?;
    let client = server.client().await?;
    let backend = KvBackend::open(client.clone(), &KvOptions::new("rates")).await?;
    let started = std::time::Instant::now();
    for i in 0..500 {
        backend.commit(batch(vec![write(&format!("k{}", i % 16), &i.to_string())], &[&format!("one-{i}")])).await?;
    }
    let single = started.elapsed();
    let started = std::time::Instant::now();
    for round in 0..20 {
        let writes = (0..256).map(|i| write(&format!("key-{i}"), &round.to_string())).collect();
        let ids: Vec<String> = (0..256).map(|i| format!("batch-{round}-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        backend.commit(batch(writes, &ids)).await?;
    }
    let batched = started.elapsed();
    let started = std::time::Instant::now();
    for i in 0..1000 {
        backend.get(&format!("key-{}", i % 256)).await?;
    }
    let gets = started.elapsed();
    eprintln!(
        "single-event commits: {:.0}/s; 256-event commits: {:.0} events/s; gets: {:.0}/s",
        500.0 / single.as_secs_f64(),
        20.0 * 256.0 / batched.as_secs_f64(),
        1000.0 / gets.as_secs_f64()
    );
    Ok(())
}
