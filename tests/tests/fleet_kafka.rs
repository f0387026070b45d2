//! Fleet distribution of plugin versions through a Kafka plugin store
//! (`[plugins.store] kafka = { … }`): three hosts in one consumer group
//! follow the store while events flow, each output checked against a
//! ledger of the ids sent; a version over Kafka's 1 MB record limit goes
//! through in chunks, and a tampered chunk is refused.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "common/kafka.rs"]
mod fixture;
#[path = "common/fleet.rs"]
mod fleet;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use common::*;
use fixture::{create_topics, KafkaBroker};
use fleet::{converge, running};

const WITHIN: Duration = Duration::from_secs(90);
/// The bound on a push reaching every host (measured well under it).
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);
/// Partitions of the input topic: two per host.
const PARTITIONS: i32 = 6;

/// A unique name per test (topics and groups), so tests can share a broker.
fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// The topics of one test.
struct Topics {
    bootstrap: String,
    input: String,
    group: String,
    store: String,
}

impl Topics {
    fn new(bootstrap: String) -> Self {
        Self { bootstrap, input: unique("jobs"), group: unique("workers"), store: unique("plugins") }
    }

    fn done(&self, host: &str) -> String {
        format!("{}-done-{host}", self.input)
    }

    /// Host `host`'s config: one pipeline from the group, its outputs on
    /// its own topic, following the store on the same cluster.
    fn config(&self, host: &str) -> String {
        let Self { bootstrap, input, group, store } = self;
        let pipeline = broker_pipeline(
            "shared",
            "tag_v1",
            [
                &format!(
                    r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], commit_interval = "100ms", options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }} }}"#
                ),
                &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{}" }}"#, self.done(host)),
                &format!(r#"{{ kind = "file", path = "dlq-{host}.jsonl" }}"#),
            ],
            "",
            "10s",
        );
        let pipeline = pipeline.replacen("[runtime]\n", &format!("[runtime]\ninstance_id = \"host-{host}\"\n"), 1);
        format!("{pipeline}\n[admin]\nlisten = \"{ANY_PORT}\"\n\n[plugins.store]\nkafka = {{ brokers = \"{bootstrap}\", topic = \"{store}\" }}\n")
    }
}

/// How many hosts host `port`'s fleet view lists.
fn fleet_hosts(port: u16) -> Result<usize> {
    Ok(running(port)?.1["fleet"]["hosts"].as_array().map_or(0, Vec::len))
}

fn end_offset(bootstrap: &str, topic: &str) -> Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    Ok(consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?.1)
}

/// Members of consumer group `group` once it is stable (0 before).
fn group_members(bootstrap: &str, group: &str) -> Result<usize> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let groups = consumer.fetch_group_list(Some(group), Duration::from_secs(10))?;
    Ok(groups.groups().iter().filter(|g| g.state() == "Stable").map(|g| g.members().len()).sum())
}

/// One output: the id in its payload and its digest header.
#[derive(Debug, Clone)]
struct Seen {
    offset: i64,
    id: u64,
    digest: String,
}

/// Everything output topic `topic` (one partition) holds now.
fn outputs(bootstrap: &str, topic: &str) -> Result<Vec<Seen>> {
    let end = end_offset(bootstrap, topic)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let deadline = Instant::now() + WITHIN;
    let mut seen = Vec::new();
    let mut next = 0;
    while next < end {
        ensure!(Instant::now() < deadline, "reading {topic}: {next} of {end} after {WITHIN:?}");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_lowercase();
                let id = payload.rsplit('-').next().and_then(|n| n.trim().parse().ok()).unwrap_or(u64::MAX);
                let digest = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "sluice-plugin-digest"))
                    .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                    .unwrap_or_default();
                seen.push(Seen { offset: m.offset(), id, digest });
            }
            Some(Err(e)) => eprintln!("reader: {e}"),
            None => {}
        }
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_in_a_group_follow_pushes_and_rollbacks_without_losing_an_event() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let topics = Topics::new(broker.bootstrap());
    let bootstrap = topics.bootstrap.clone();
    let hosts = ["a", "b", "c"];
    let done: Vec<String> = hosts.iter().map(|h| topics.done(h)).collect();
    let mut create: Vec<(&str, i32)> = vec![(&topics.input, PARTITIONS)];
    create.extend(done.iter().map(|t| (t.as_str(), 1)));
    create_topics(&bootstrap, &create).await?;
    let scratch = Scratch::new()?;
    let (v1, v2, v3) = (sha256_hex(&plugin("tag_v1"))?, sha256_hex(&plugin("tag_v2"))?, sha256_hex(&plugin("uppercase"))?);
    for host in hosts {
        scratch.write(&format!("{host}.toml"), topics.config(host))?;
    }

    let mut a = Running::spawn(scratch.sluice(&["run", "a.toml"]))?;
    let mut b = Running::spawn(scratch.sluice(&["run", "b.toml"]))?;
    let mut c = Running::spawn(scratch.sluice(&["run", "c.toml"]))?;
    let (pa, pb, mut pc) = (a.admin_port()?, b.admin_port()?, c.admin_port()?);
    converge(&[pa, pb, pc], &v1, Instant::now(), WITHIN)?;
    // As with the NATS test, events start once the three hosts are in the
    // group (a first assignment is not a rollout).
    poll_until("three hosts in the consumer group", WITHIN, || Ok((group_members(&bootstrap, &topics.group)? == 3).then_some(())))?;

    // Events flow all along, about one a millisecond, round the partitions.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bootstrap, input, sent, stop) = (bootstrap.clone(), topics.input.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("enable.idempotence", "true")
                .set("linger.ms", "1")
                .create()?;
            while !stop.load(Ordering::SeqCst) {
                let id = sent.load(Ordering::SeqCst);
                let payload = format!("job-{id}");
                let record: FutureRecord<'_, (), str> =
                    FutureRecord::to(&input).partition((id % PARTITIONS as u64) as i32).payload(&payload);
                producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| anyhow::anyhow!("producing job-{id}: {e}"))?;
                sent.store(id + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            anyhow::Ok(())
        })
    };

    // All three hold partitions: each has written outputs.
    poll_until("every host to handle events", WITHIN, || {
        Ok(done.iter().all(|t| end_offset(&bootstrap, t).unwrap_or(0) > 0).then_some(()))
    })?;

    // Push v2: all three take it.
    let pushed = Instant::now();
    scratch.run(&["plugin", "push", "--config", "a.toml", "shared", &plugin("tag_v2").display().to_string()])?.ensure_success()?;
    let pushed_in = pushed.elapsed();
    let to_v2 = converge(&[pa, pb, pc], &v2, pushed, WITHIN)?;
    ensure!(to_v2 < CONVERGE_WITHIN, "v2 took {to_v2:?} to reach every host");
    eprintln!("fleet (kafka): `plugin push` took {pushed_in:?}; push v2 → 3 hosts converged in {to_v2:?}");
    std::thread::sleep(Duration::from_millis(300));

    // Host c stops cleanly: it leaves the fleet view at once (its
    // heartbeat's tombstone), not after the TTL.
    c.terminate()?;
    c.wait(WITHIN)?.ensure_success()?;
    let left = Instant::now();
    poll_until("the fleet view to drop the stopped host", WITHIN, || Ok((fleet_hosts(pa)? == 2).then_some(())))?;
    eprintln!("fleet (kafka): the stopped host left the fleet view after {:?}", left.elapsed());

    // v3 is pushed while c is away.
    let pushed = Instant::now();
    scratch.run(&["plugin", "push", "--config", "b.toml", "shared", &plugin("uppercase").display().to_string()])?.ensure_success()?;
    let to_v3 = converge(&[pa, pb], &v3, pushed, WITHIN)?;
    eprintln!("fleet (kafka): push v3 → 2 hosts converged in {to_v3:?}");
    std::thread::sleep(Duration::from_millis(300));

    // c comes back with tag_v1 as its file, and starts on v3.
    let restart_mark = end_offset(&bootstrap, &topics.done("c"))?;
    c = Running::spawn(scratch.sluice(&["run", "c.toml"]))?;
    pc = c.admin_port()?;
    let (digest, plugin_status) = poll_until("c to run its pipeline", WITHIN, || Ok(running(pc).ok()))?;
    ensure!(digest == v3, "c restarted on {digest}, not the store's v3: {plugin_status}");
    ensure!(plugin_status["current"]["origin"] == "start", "c's v3 is its start version: {plugin_status}");
    poll_until("c to handle events again", WITHIN, || {
        Ok((end_offset(&bootstrap, &topics.done("c")).unwrap_or(0) > restart_mark).then_some(()))
    })?;

    // Roll back: v2 again everywhere.
    let rolled = Instant::now();
    scratch.run(&["plugin", "rollback", "--config", "c.toml", "shared"])?.ensure_success()?;
    let back = converge(&[pa, pb, pc], &v2, rolled, WITHIN)?;
    eprintln!("fleet (kafka): rollback → 3 hosts converged in {back:?}");
    std::thread::sleep(Duration::from_millis(300));

    // The fleet view: every host reports v2.
    let fleet = poll_until("the heartbeats to show a converged fleet", WITHIN, || {
        let (_, status) = running(pa)?;
        let fleet = status["fleet"].clone();
        let hosts = fleet["hosts"].as_array().map_or(0, Vec::len);
        Ok((fleet["converged"] == true && fleet["current"] == v2.as_str() && hosts == 3).then_some(fleet))
    })?;
    eprintln!("fleet (kafka): {fleet}");
    let out = scratch.run(&["plugin", "fleet", "--config", "a.toml", "shared"])?;
    out.ensure_success()?;

    stop.store(true, Ordering::SeqCst);
    publisher.await??;
    let total = sent.load(Ordering::SeqCst);
    poll_until("every event sent handled", WITHIN, || {
        let outputs: i64 = done.iter().map(|t| end_offset(&bootstrap, t).unwrap_or(0)).sum();
        Ok((outputs >= total as i64).then_some(()))
    })?;
    for host in [&a, &b, &c] {
        host.terminate()?;
    }
    for host in [a, b, c] {
        host.wait(WITHIN)?.ensure_success()?;
    }

    // The ledger: every id sent handled exactly once, by a version pushed.
    let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
    let mut all = Vec::new();
    for (host, topic) in hosts.iter().zip(&done) {
        for seen in outputs(&bootstrap, topic)? {
            *ids.entry(seen.id).or_default() += 1;
            all.push((*host, seen));
        }
    }
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).take(10).collect();
    let where_twice: Vec<_> = all.iter().filter(|(_, s)| twice.contains(&s.id)).collect();
    ensure!(twice.is_empty(), "handled more than once: {twice:?}: {where_twice:?}");
    let missing: Vec<u64> = (0..total).filter(|id| !ids.contains_key(id)).take(10).collect();
    ensure!(missing.is_empty(), "lost: {missing:?} (of {total})");
    ensure!(ids.len() as u64 == total, "{} ids seen, {total} sent", ids.len());
    let pushed: HashSet<&str> = [v1.as_str(), v2.as_str(), v3.as_str()].into();
    let strange: Vec<_> = all.iter().filter(|(_, s)| !pushed.contains(s.digest.as_str())).take(5).collect();
    ensure!(strange.is_empty(), "outputs from a version never pushed: {strange:?}");
    // c after its restart never ran its own file's v1.
    let c_v1: Vec<_> = all.iter().filter(|(h, s)| *h == "c" && s.offset >= restart_mark && s.digest == v1).take(5).collect();
    ensure!(c_v1.is_empty(), "c ran its local v1 after restarting: {c_v1:?}");
    let versions_used: HashSet<&str> = all.iter().map(|(_, s)| s.digest.as_str()).collect();
    ensure!(versions_used.len() == 3, "outputs of v1, v2 and v3 all seen: {}", versions_used.len());
    eprintln!("fleet (kafka): {total} events, each handled once");
    Ok(())
}

/// `component` with a custom section of `size` bytes of `fill` appended:
/// still a valid component, with its own digest.
fn padded(component: &[u8], size: usize, fill: u8) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"padding";
    let mut body = Vec::with_capacity(size + 16);
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.resize(body.len() + size, fill);
    let mut out = component.to_vec();
    out.push(0);
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_over_a_megabyte_goes_in_chunks_and_a_tampered_chunk_is_refused() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let topics = Topics::new(broker.bootstrap());
    let bootstrap = topics.bootstrap.clone();
    create_topics(&bootstrap, &[(&topics.input, 1), (&topics.done("a"), 1)]).await?;
    let scratch = Scratch::new()?;
    scratch.write("a.toml", topics.config("a"))?;
    let mut a = Running::spawn(scratch.sluice(&["run", "a.toml"]))?;
    let port = a.admin_port()?;
    converge(&[port], &sha256_hex(&plugin("tag_v1"))?, Instant::now(), WITHIN)?;

    // 2.5 MB: five chunks.
    let base = std::fs::read(plugin("tag_v2"))?;
    let big = padded(&base, 2_500_000, 1);
    let big_digest = sha256(&big);
    scratch.write("big.wasm", &big)?;
    let pushed = Instant::now();
    scratch.run(&["plugin", "push", "--config", "a.toml", "shared", "big.wasm"])?.ensure_success()?;
    let took = converge(&[port], &big_digest, pushed, WITHIN)?;
    eprintln!("fleet (kafka): a {} byte version pushed and loaded in {took:?}", big.len());

    // Another version whose chunk 1 was altered in the topic: its chunks
    // and manifest written here as `sluice plugin push` writes them, but
    // the manifest names the altered record.
    let other = padded(&base, 1_200_000, 2);
    let other_digest = sha256(&other);
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).set("acks", "all").create()?;
    let mut chunks = Vec::new();
    for (index, chunk) in other.chunks(512 * 1024).enumerate() {
        let mut stored = chunk.to_vec();
        if index == 1 {
            stored[100] ^= 0xff;
        }
        let (key, chunks_topic) = (format!("{other_digest}/{index}"), format!("{}-chunks", topics.store));
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&chunks_topic).key(key.as_str()).payload(stored.as_slice());
        let delivery = producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        chunks.push(
            serde_json::json!({ "partition": delivery.partition, "offset": delivery.offset, "size": chunk.len(), "sha256": sha256(chunk) }),
        );
    }
    let manifest = serde_json::json!({ "digest": other_digest, "size": other.len(), "chunks": chunks }).to_string();
    let key = format!("version/{other_digest}");
    let record: FutureRecord<'_, str, str> = FutureRecord::to(&topics.store).key(key.as_str()).payload(manifest.as_str());
    producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| anyhow::anyhow!("{e}"))?;

    // Pushed: the manifest is there, so only the pointer is written.
    scratch.write("other.wasm", &other)?;
    scratch.run(&["plugin", "push", "--config", "a.toml", "shared", "other.wasm"])?.ensure_success()?;
    let (digest, status) = poll_until("the host to refuse the tampered version", WITHIN, || {
        let (digest, status) = running(port)?;
        let refused = status["fleet"]["hosts"][0]["refused"]["reason"].as_str().is_some();
        Ok(refused.then_some((digest, status)))
    })?;
    let reason = status["fleet"]["hosts"][0]["refused"]["reason"].as_str().unwrap_or_default().to_owned();
    ensure!(reason.contains("chunk 1 of 3") && reason.contains("damaged"), "the reason names the chunk: {reason}");
    ensure!(digest == big_digest, "the host keeps the version it ran: {status}");
    ensure!(status["fleet"]["converged"] == false, "a refusal splits the fleet: {status}");
    let split = scratch.run(&["plugin", "fleet", "--config", "a.toml"])?;
    ensure!(split.code() == Some(2), "`plugin fleet` exits 2 on a split fleet: {:?}", split.code());
    a.terminate()?;
    a.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// Two pushes at once: the pointer writer of each fences the other's, so
/// one lands after the other and both are in the pointer (the current
/// version and, for rollback, the one before it); none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_pushes_both_land() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let topics = Topics::new(broker.bootstrap());
    let scratch = Scratch::new()?;
    scratch.write("a.toml", topics.config("a"))?;
    let (v1, v2) = (sha256_hex(&plugin("tag_v1"))?, sha256_hex(&plugin("tag_v2"))?);
    // The store's topics exist before the race (created by the first open).
    scratch.run(&["plugin", "fleet", "--config", "a.toml"])?.ensure_success()?;
    for round in 0..3 {
        let push = |name: &str| {
            Running::spawn(scratch.sluice(&["plugin", "push", "--config", "a.toml", "shared", &plugin(name).display().to_string()]))
        };
        let (one, two) = (push("tag_v1")?, push("tag_v2")?);
        let (one, two) = (one.wait(WITHIN)?, two.wait(WITHIN)?);
        one.ensure_success()?;
        two.ensure_success()?;
        let retried = [&one, &two].iter().filter(|p| p.stderr.contains("trying again")).count();
        eprintln!("round {round}: {retried} push(es) fenced by the other and tried again");
        let fleet = scratch.run(&["plugin", "fleet", "--config", "a.toml", "shared"])?;
        let current = if fleet.stdout.contains(&format!("current {}", &v1[..12])) { &v1 } else { &v2 };
        let other = if current == &v1 { &v2 } else { &v1 };
        let back = scratch.run(&["plugin", "rollback", "--config", "a.toml", "shared"])?;
        back.ensure_success()?;
        ensure!(
            back.stdout.contains(&other[..12]),
            "round {round}: rolling back from {} gives {}: {}",
            &current[..12],
            &other[..12],
            back.stdout
        );
    }
    Ok(())
}

/// A store topic that exists without compaction is refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_topic_that_is_not_compacted_is_refused() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let topics = Topics::new(broker.bootstrap());
    create_topics(&topics.bootstrap, &[(&topics.store, 1)]).await?;
    let scratch = Scratch::new()?;
    scratch.write("a.toml", topics.config("a"))?;
    let out = scratch.run(&["plugin", "fleet", "--config", "a.toml"])?;
    out.ensure_failure()?;
    ensure!(out.stderr.contains(&format!("topic `{}` exists with `cleanup.policy=delete`, not `compact`", topics.store)), "{}", out.stderr);
    Ok(())
}
