//! The kafka-changelog state backend end to end: the real `sluice` binary,
//! two hosts in one consumer group with exactly-once Kafka, a real broker
//! (KRaft), and the `counter` plugin. Outputs and the changelog are read
//! back with a plain rdkafka client, never through sluice.

#[allow(dead_code)]
mod common;
#[path = "common/kafka.rs"]
#[allow(dead_code)]
mod fixture;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use common::*;
use fixture::{create_topics, KafkaBroker};

const WITHIN: Duration = Duration::from_secs(180);
const PARTITIONS: i32 = 4;

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_micros()).unwrap_or(0)
    )
}

/// Key `k<NN>` of event `i`, and its partition (keys never change partition).
fn key_of(i: usize, keys: usize) -> (String, i32) {
    let k = i % keys;
    (format!("k{k:02}"), (k % PARTITIONS as usize) as i32)
}

/// Produces events `range` at about `per_second`, in the background, so the
/// run lasts long enough for kills to land in its middle.
fn produce_paced(
    bootstrap: &str,
    topic: &str,
    range: std::ops::Range<usize>,
    keys: usize,
    per_second: usize,
) -> tokio::task::JoinHandle<Result<()>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::spawn(async move {
        let producer: FutureProducer =
            ClientConfig::new().set("bootstrap.servers", &bootstrap).set("enable.idempotence", "true").set("linger.ms", "5").create()?;
        let chunk = (per_second / 10).max(1);
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        let all: Vec<usize> = range.collect();
        for window in all.chunks(chunk) {
            ticks.tick().await;
            let records: Vec<(String, i32, String)> = window
                .iter()
                .map(|&i| {
                    let (key, partition) = key_of(i, keys);
                    let payload = format!("{key}:{i}");
                    (key, partition, payload)
                })
                .collect();
            let mut pending = Vec::with_capacity(records.len());
            for (key, partition, payload) in &records {
                pending
                    .push(producer.send(FutureRecord::to(&topic).partition(*partition).key(key).payload(payload), Duration::from_secs(30)));
            }
            for delivery in futures::future::join_all(pending).await {
                delivery.map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
            }
        }
        Ok(())
    })
}

/// Every record of `topic` now, key and value (`None`: a tombstone), in
/// partition order; reads each partition to its end.
fn read_all(bootstrap: &str, topic: &str, partitions: i32, read_committed: bool) -> Result<Vec<(String, Option<String>)>> {
    let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let ends: Vec<i64> =
        (0..partitions).map(|p| Ok(probe.fetch_watermarks(topic, p, Duration::from_secs(10))?.1)).collect::<Result<_>>()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" })
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let deadline = Instant::now() + WITHIN;
    let mut got = Vec::new();
    loop {
        let positions = consumer.position()?;
        let done = (0..partitions).all(|p| match positions.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o >= ends[p as usize],
            _ => ends[p as usize] == 0,
        });
        if done {
            return Ok(got);
        }
        ensure!(Instant::now() < deadline, "timed out reading {topic} to {ends:?} ({} records read)", got.len());
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => got.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
            )),
            Some(Err(e)) => eprintln!("reader: {e}"),
            None => {}
        }
    }
}

fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    (0..partitions).map(|p| Ok(consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?.1)).sum()
}

/// Offsets the group committed, summed over the partitions (-1s excluded).
fn committed(bootstrap: &str, group: &str, topic: &str) -> Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    let offsets = consumer.committed_offsets(list, Duration::from_secs(10))?;
    Ok(offsets
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .sum())
}

/// One host's config: its own transactional id, the shared group and
/// changelog.
fn host_config(bootstrap: &str, group: &str, input: &str, output: &str, dlq: &str, changelog: &str, host: &str) -> String {
    let config = broker_pipeline(
        "counts",
        "counter",
        [
            &format!(
                r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], exactly_once = true, commit_interval = "500ms", transactional_id = "{group}-{host}", options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }} }}"#
            ),
            &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}"#),
            &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{dlq}" }}"#),
        ],
        "",
        "20s",
    );
    format!("{config}\n[pipelines.counts.state]\nbackend = \"kafka-changelog\"\ntopic = \"{changelog}\"\n")
}

/// `key=count` outputs per key, in the order a read_committed reader sees
/// them (one key's outputs share a partition, so this is their order).
fn counts(records: &[(String, Option<String>)]) -> Result<BTreeMap<String, Vec<u64>>> {
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, payload) in records {
        let text = payload.as_deref().context("an output without a payload")?;
        let (key, value) = text.split_once('=').with_context(|| format!("not key=count: {text}"))?;
        per_key.entry(key.to_owned()).or_default().push(value.parse()?);
    }
    Ok(per_key)
}

/// Counter events over 64 keys into a 4-partition topic, two hosts sharing
/// the group with exactly-once Kafka and the Kafka changelog, hosts killed
/// (SIGKILL) at three random points and restarted each time (each kill and
/// each restart is a rebalance: the survivor takes over, then gives back,
/// the dead host's partitions and their state). Afterwards:
/// - the outputs a read_committed reader sees carry, for every key, exactly
///   1, 2, …, its number of events, in order: no gap, no duplicate;
/// - the changelog's last committed value of every key is that number;
/// - a fresh host restores it: one more event per key outputs number + 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_through_kill_9_and_rebalances() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    let changelog = format!("{group}-changelog");
    create_topics(&bootstrap, &[(&input, PARTITIONS), (&output, PARTITIONS), (&dlq, 1)]).await?;
    let keys = 64;
    let total: usize = std::env::var("SLUICE_STATE_KAFKA_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(50_000);
    let config = |host: &str| host_config(&bootstrap, &group, &input, &output, &dlq, &changelog, host);
    let (a_dir, b_dir) = (Scratch::new()?, Scratch::new()?);
    let mut a = start(&a_dir, &config("a"), "sluice.toml")?;
    let mut b = start(&b_dir, &config("b"), "sluice.toml")?;
    let producing = produce_paced(&bootstrap, &input, 0..total, keys, 2_000);

    // Kill a, b, a at random points past 15%, 40% and 65% of the outputs
    // written (read_uncommitted: aborted records count too, which only
    // moves the point earlier), restarting each at once.
    let mut kills = 0;
    for (round, fraction) in [0.15, 0.4, 0.65].into_iter().enumerate() {
        let jitter = f64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos() % 1000) / 10_000.0;
        let at = ((fraction + jitter) * total as f64) as i64;
        poll_until(&format!("{at} outputs"), WITHIN, || {
            Ok((end_offsets(&bootstrap, &output, PARTITIONS).unwrap_or(0) >= at).then_some(()))
        })?;
        let (victim, dir, name) = if round == 1 { (&mut b, &b_dir, "b") } else { (&mut a, &a_dir, "a") };
        victim.kill()?;
        kills += 1;
        *victim = start(dir, &config(name), "sluice.toml")?;
    }
    ensure!(kills == 3);
    producing.await??;
    let end = total as i64;
    poll_until("the group to commit every input", WITHIN * 2, || {
        Ok((committed(&bootstrap, &group, &input).unwrap_or(0) >= end).then_some(()))
    })?;
    a.terminate()?;
    b.terminate()?;
    let (a_done, b_done) = (a.wait(WITHIN)?, b.wait(WITHIN)?);
    a_done.ensure_success()?;
    b_done.ensure_success()?;
    // Both survivors of the last kill restored state they had not written
    // themselves (the partitions a restarted host takes over hold counts).
    for (name, done) in [("a", &a_done), ("b", &b_done)] {
        let log = format!("{}{}", done.stdout, done.stderr);
        ensure!(
            log.lines().any(|l| l.contains("state restored from the changelog") && !l.contains("keys=0")),
            "host {name} never restored a non-empty state:\n{log}"
        );
    }

    let expected = |k: usize| (total / keys + usize::from(k < total % keys)) as u64;
    let outputs = read_all(&bootstrap, &output, PARTITIONS, true)?;
    let per_key = counts(&outputs)?;
    ensure!(per_key.len() == keys, "{} keys in the outputs", per_key.len());
    for (k, (key, values)) in per_key.iter().enumerate() {
        let want: Vec<u64> = (1..=expected(k)).collect();
        ensure!(
            values == &want,
            "{key}: {} outputs, first {:?}, last {:?}; expected 1..={} once each, in order",
            values.len(),
            values.first(),
            values.last(),
            expected(k)
        );
    }
    ensure!(end_offsets(&bootstrap, &dlq, 1)? == 0, "nothing dead-lettered");
    let everything = read_all(&bootstrap, &output, PARTITIONS, false)?.len();
    eprintln!(
        "{total} events: {} committed outputs; read_uncommitted sees {everything} (aborted by the kills: {})",
        outputs.len(),
        everything - outputs.len()
    );

    // The state on the broker: the changelog's last committed value per key.
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in read_all(&bootstrap, &changelog, PARTITIONS, true)? {
        match value {
            Some(v) => state.insert(key, v),
            None => state.remove(&key),
        };
    }
    ensure!(state.len() == keys, "{} keys in the changelog", state.len());
    for k in 0..keys {
        let key = format!("count:k{k:02}");
        ensure!(
            state.get(&key).map(String::as_str) == Some(expected(k).to_string().as_str()),
            "{key}: the changelog holds {:?}, expected {}",
            state.get(&key),
            expected(k)
        );
    }

    // A fresh host restores every partition's state: one more event per key.
    let c_dir = Scratch::new()?;
    let c = start(&c_dir, &config("c"), "sluice.toml")?;
    produce_paced(&bootstrap, &input, total..total + keys, keys, 10_000).await??;
    poll_until("the probes to be committed", WITHIN, || {
        Ok((committed(&bootstrap, &group, &input).unwrap_or(0) >= end + keys as i64).then_some(()))
    })?;
    c.terminate()?;
    c.wait(WITHIN)?.ensure_success()?;
    let after = counts(&read_all(&bootstrap, &output, PARTITIONS, true)?)?;
    ensure!(after.len() == keys, "{} keys in the outputs", after.len());
    for (k, (key, values)) in after.iter().enumerate() {
        ensure!(
            values.len() as u64 == expected(k) + 1 && values.last() == Some(&(expected(k) + 1)),
            "{key}: the probe read {:?}, expected {}",
            values.last(),
            expected(k) + 1
        );
    }
    Ok(())
}

/// The backend itself against the broker: what a restore reads back is what
/// committed transactions wrote (values, tombstones), never an aborted
/// one's; each write lands in its writer's input partition; a revoke
/// forgets the partition; and a restore waits for an earlier owner's open
/// transaction to end instead of reading past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_reads_committed_transactions_only() -> Result<()> {
    use sluice::kafka::Transaction;
    use sluice::source::PartitionState;
    use sluice::state::kafka_changelog::{ChangelogBackend, ChangelogOptions};
    use sluice::state::{Backend, CommitBatch};
    use std::sync::Arc;

    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (input, changelog) = (unique("in"), unique("changelog"));
    create_topics(&bootstrap, &[(&input, 3)]).await?;
    let client = sluice::kafka::client_config(&bootstrap, &Default::default());
    let open = |id: &str| {
        let (client, id, input, changelog) = (client.clone(), id.to_owned(), input.clone(), changelog.clone());
        async move {
            let transaction = Transaction::open(client.clone(), id, std::time::Duration::from_secs(10)).await?;
            let options = ChangelogOptions { topic: changelog, client, input_topics: vec![input], restore_timeout: Duration::from_secs(3) };
            let backend = Arc::new(ChangelogBackend::open(transaction.clone(), options).await?);
            anyhow::Ok((transaction, backend))
        }
    };
    // Commits a transaction that holds no input offsets.
    let group: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &bootstrap).set("group.id", unique("group")).create()?;
    let commit = |transaction: &Arc<Transaction>| {
        let metadata = group.group_metadata().context("group metadata");
        let transaction = transaction.clone();
        async move { anyhow::Ok(transaction.commit(|| Some(Vec::new()), metadata?).await?) }
    };
    let batch = |writes: &[(&str, Option<&str>, &str)]| CommitBatch {
        writes: writes.iter().map(|(k, v, _)| (k.to_string(), v.map(|v| bytes::Bytes::copy_from_slice(v.as_bytes())))).collect(),
        writers: writes.iter().map(|(_, _, w)| w.to_string()).collect(),
        ..CommitBatch::default()
    };
    let all: Vec<(String, i32)> = (0..3).map(|p| (input.clone(), p)).collect();
    let restore = |backend: &Arc<ChangelogBackend>, partitions: Vec<(String, i32)>| {
        let backend = backend.clone();
        async move { tokio::task::spawn_blocking(move || backend.assigned(&partitions)).await?.map_err(anyhow::Error::msg) }
    };
    let value = |backend: &Arc<ChangelogBackend>, key: &'static str| {
        let backend = backend.clone();
        async move { anyhow::Ok(backend.get(key).await?.map(|v| String::from_utf8_lossy(&v).into_owned())) }
    };

    let (tx, first) = open(&unique("tx")).await?;
    // One changelog partition per input partition, created compacted.
    ensure!(end_offsets(&bootstrap, &changelog, 3)? == 0);
    first.commit(batch(&[("a", Some("1"), &format!("{input}/0/0")), ("b", Some("2"), &format!("{input}/2/5"))])).await?;
    ensure!(commit(&tx).await?);
    first.commit(batch(&[("a", None, &format!("{input}/0/1")), ("c", Some("3"), &format!("{input}/1/0"))])).await?;
    ensure!(commit(&tx).await?);
    first.commit(batch(&[("d", Some("4"), &format!("{input}/1/1"))])).await?;
    ensure!(value(&first, "d").await?.as_deref() == Some("4"), "the writer reads its own commit from the cache");
    // The records reach the log before the abort (an abort racing their
    // produce was once refused by the broker as an invalid transaction
    // state), so the restore below really has aborted records to skip.
    let producer = tx.clone();
    tokio::task::spawn_blocking(move || producer.producer.flush(Duration::from_secs(10))).await??;
    tx.abort().await?;
    let out_of_range = first.commit(batch(&[("e", Some("5"), &format!("{input}/7/0"))])).await;
    ensure!(
        out_of_range.as_ref().is_err_and(|e| e.to_string().contains("input partition 7 has no changelog partition")),
        "{out_of_range:?}"
    );

    let (_tx2, second) = open(&unique("tx")).await?;
    restore(&second, all.clone()).await?;
    ensure!(value(&second, "a").await?.is_none(), "a tombstone deletes");
    ensure!(value(&second, "b").await?.as_deref() == Some("2"));
    ensure!(value(&second, "c").await?.as_deref() == Some("3"));
    ensure!(value(&second, "d").await?.is_none(), "an aborted transaction's write is not restored");
    ensure!(second.restored().0 == 1, "one restore counted for the metrics");
    let keys: Vec<String> = second.scan("", None, 10).await?.into_iter().map(|(k, _)| k).collect();
    ensure!(keys == ["b", "c"], "{keys:?}");
    // Each record sits in its writer's partition: b in 2, c in 1, a's two in 0.
    let per_partition: Vec<i64> = (0..3).map(|p| committed_records(&bootstrap, &changelog, p)).collect::<Result<_>>()?;
    ensure!(per_partition == [2, 1, 1], "{per_partition:?}");
    second.revoked(&[(input.clone(), 1)]);
    ensure!(value(&second, "c").await?.is_none() && value(&second, "b").await?.is_some(), "a revoke forgets its partition only");

    // A host dies inside a transaction that wrote to partition 2: a restore
    // of partition 2 waits for it to end (here: fails after the timeout),
    // and reads its outcome once the broker ended it.
    let (zombie_tx, zombie) = open(&unique("tx")).await?;
    zombie.commit(batch(&[("b", Some("99"), &format!("{input}/2/6"))])).await?;
    let (_tx3, third) = open(&unique("tx")).await?;
    let waited = restore(&third, all.clone()).await;
    ensure!(waited.as_ref().is_err_and(|e| e.to_string().contains("still open")), "{waited:?}");
    zombie_tx.abort().await?;
    restore(&third, all).await?;
    ensure!(value(&third, "b").await?.as_deref() == Some("2"), "the zombie's aborted write is not restored");
    Ok(())
}

/// Non-control records in one partition of `topic`, read_committed.
fn committed_records(bootstrap: &str, topic: &str, partition: i32) -> Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&list)?;
    let deadline = Instant::now() + WITHIN;
    let mut count = 0;
    loop {
        ensure!(Instant::now() < deadline, "timed out reading {topic}/{partition}");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => count += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(count),
            Some(Err(e)) => eprintln!("reader: {e}"),
            None => {}
        }
    }
}
