//! Kafka end to end: the real `sluice` binary against a real Apache Kafka
//! broker (KRaft, single node, started from the jars `scripts/kafka.sh
//! install` fetched), driven and checked by an rdkafka client written here,
//! never through sluice's own code.
//!
//! Most tests share one broker per test binary, each with its own topics and
//! group; the broker-restart test starts its own.

#[allow(dead_code)]
mod common;
#[path = "common/kafka.rs"]
#[allow(dead_code)]
mod fixture;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use common::*;
use fixture::{create_topics, KafkaBroker};

const WITHIN: Duration = Duration::from_secs(90);

/// A unique name per test (topics and groups), so tests can share a broker.
fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// One input message: partition, key, payload, headers.
struct Input {
    partition: i32,
    key: Option<String>,
    payload: String,
    headers: Vec<(String, String)>,
}

impl Input {
    fn new(partition: i32, payload: impl Into<String>) -> Self {
        Self { partition, key: None, payload: payload.into(), headers: Vec::new() }
    }
}

async fn produce(bootstrap: &str, topic: &str, inputs: &[Input]) -> Result<()> {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("enable.idempotence", "true").set("linger.ms", "5").create()?;
    for window in inputs.chunks(2_000) {
        let mut pending = Vec::with_capacity(window.len());
        for input in window {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &input.headers {
                headers = headers.insert(Header { key, value: Some(value) });
            }
            let mut record = FutureRecord::to(topic).partition(input.partition).payload(&input.payload).headers(headers);
            if let Some(key) = &input.key {
                record = record.key(key);
            }
            pending.push(producer.send(record, Duration::from_secs(30)));
        }
        for delivery in futures::future::join_all(pending).await {
            delivery.map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
        }
    }
    Ok(())
}

/// Produces `inputs` in the background at about `per_second`, so a run
/// lasts long enough for a kill to land in its middle.
fn produce_paced(bootstrap: &str, topic: &str, inputs: Vec<Input>, per_second: usize) -> tokio::task::JoinHandle<Result<()>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::spawn(async move {
        let chunk = (per_second / 10).max(1);
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        for window in inputs.chunks(chunk) {
            ticks.tick().await;
            produce(&bootstrap, &topic, window).await?;
        }
        Ok(())
    })
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
struct Read {
    partition: i32,
    offset: i64,
    key: Option<String>,
    payload: String,
    headers: Vec<(String, String)>,
}

impl Read {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads `topic` (all partitions, from the start) until `done` says the
/// messages read so far are enough; `read_committed` skips aborted
/// transactions. Fails after `within`.
fn read_until(
    bootstrap: &str,
    topic: &str,
    read_committed: bool,
    within: Duration,
    mut done: impl FnMut(&[Read], &BaseConsumer) -> Result<bool>,
) -> Result<Vec<Read>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" })
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
    ensure!(partitions > 0, "topic {topic} has no partitions");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while !done(&got, &consumer)? {
        ensure!(Instant::now() < deadline, "timed out after {within:?} reading {topic} ({} messages read)", got.len());
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => got.push(Read {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter().map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(e)) => eprintln!("reader: {e}"),
            None => {}
        }
    }
    Ok(got)
}

/// The first `want` messages of `topic`.
fn read_topic(bootstrap: &str, topic: &str, want: usize, read_committed: bool, within: Duration) -> Result<Vec<Read>> {
    read_until(bootstrap, topic, read_committed, within, |got, _| Ok(got.len() >= want))
}

/// Reads `topic` until `n` distinct payloads arrived (duplicates allowed).
fn read_distinct(bootstrap: &str, topic: &str, n: usize, within: Duration) -> Result<Vec<Read>> {
    let mut seen = HashSet::new();
    let mut counted = 0;
    read_until(bootstrap, topic, false, within, |got, _| {
        for read in &got[counted..] {
            seen.insert(read.payload.clone());
        }
        counted = got.len();
        Ok(seen.len() >= n)
    })
}

/// Everything `topic` holds now: reads until every partition's position
/// reaches its end (the topic must have no open transaction).
fn read_to_end(bootstrap: &str, topic: &str, partitions: i32, read_committed: bool) -> Result<Vec<Read>> {
    let ends = end_offsets(bootstrap, topic, partitions)?;
    read_until(bootstrap, topic, read_committed, WITHIN, |_, consumer| {
        let positions = consumer.position()?;
        Ok((0..partitions).all(|p| match positions.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o >= ends[p as usize],
            _ => ends[p as usize] == 0,
        }))
    })
}

/// Offsets the group committed for each partition of `topic` (-1: none).
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let offsets = consumer.committed_offsets(list, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match offsets.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect())
}

fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    (0..partitions).map(|p| Ok(consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?.1)).collect()
}

/// Reads how many output records of an exactly-once pipeline are in
/// transactions not (yet) committed: a passthrough writes one output per
/// input, so the output's end offsets minus the inputs the group committed,
/// minus the commit markers, are records of an open transaction.
struct TransactionProbe {
    bootstrap: String,
    group: String,
    input: String,
    output: String,
    started: std::time::Instant,
}

impl TransactionProbe {
    fn new(bootstrap: &str, group: &str, input: &str, output: &str) -> Self {
        let owned = |s: &str| s.to_owned();
        Self {
            bootstrap: owned(bootstrap),
            group: owned(group),
            input: owned(input),
            output: owned(output),
            started: std::time::Instant::now(),
        }
    }

    fn committed_inputs(&self) -> Result<i64> {
        Ok(committed(&self.bootstrap, &self.group, &self.input, 2)?.iter().filter(|o| **o > 0).sum())
    }

    /// The output's high watermarks: records of open transactions
    /// included (a default, read_committed, client is told the last stable
    /// offset instead).
    fn written(&self) -> Result<i64> {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &self.bootstrap).set("isolation.level", "read_uncommitted").create()?;
        (0..2).map(|p| Ok(consumer.fetch_watermarks(&self.output, p, Duration::from_secs(10))?.1)).sum()
    }

    /// Records in an open transaction, or 0 when a commit came between the
    /// reads or none has committed yet (then the count is not known).
    fn open_records(&self) -> Result<i64> {
        let before = self.committed_inputs()?;
        let written = self.written()?;
        let after = self.committed_inputs()?;
        if before != after || after == 0 {
            return Ok(0);
        }
        // At most one marker per output partition per transaction, and at
        // most a transaction per 2 s (the commit interval), plus aborts.
        let markers = 2 * (self.started.elapsed().as_secs() as i64 / 2 + 4);
        Ok(written - after - markers)
    }
}

/// Waits until the group has committed every partition's end offset.
fn wait_committed_to_end(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let ends = end_offsets(bootstrap, topic, partitions)?;
    poll_until(&format!("group {group} to commit the end offsets {ends:?} of {topic}"), WITHIN, || {
        // The group coordinator may still be loading: not yet, not a failure.
        let now = committed(bootstrap, group, topic, partitions).unwrap_or_default();
        // An empty partition has nothing to commit (-1).
        let done = now.len() == ends.len() && now.iter().zip(&ends).all(|(c, e)| c == e || (*e == 0 && *c == -1));
        Ok(done.then_some(now))
    })
}

/// One Kafka pipeline's config.
fn pipeline(name: &str, plugin_name: &str, source: &str, sink: &str, dead_letter: &str, policy: &str) -> String {
    broker_pipeline(name, plugin_name, [source, sink, dead_letter], policy, "10s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_across_four_partitions_keep_order_and_commit_the_end() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topics(&bootstrap, &[(&input, 4), (&output, 4)]).await?;
    let n = 10_000;
    let inputs: Vec<Input> = (0..n)
        .map(|i| {
            let p = (i % 4) as i32;
            Input {
                partition: p,
                key: Some(format!("k{p}")),
                payload: format!("word {i}"),
                headers: vec![("seq".into(), (i / 4).to_string())],
            }
        })
        .collect();
    produce(&bootstrap, &input, &inputs).await?;

    let scratch = Scratch::new()?;
    let config = pipeline(
        "upper",
        "uppercase",
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], commit_interval = "200ms" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}"#),
        r#"{ kind = "file", path = "dlq.jsonl" }"#,
        "concurrency = 4",
    );
    let host = start(&scratch, &config, "sluice.toml")?;
    let outputs = read_topic(&bootstrap, &output, n, false, WITHIN)?;
    let commits = wait_committed_to_end(&bootstrap, &group, &input, 4)?;
    assert_eq!(commits, vec![2_500; 4], "each partition committed to its end offset");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    assert_eq!(outputs.len(), n, "no duplicates in a clean run");
    // Each input partition's key lands on one output partition, in order.
    let mut by_key: BTreeMap<String, Vec<(i64, u64, String)>> = BTreeMap::new();
    for out in &outputs {
        let seq: u64 = out.header("seq").context("seq header kept")?.parse()?;
        by_key.entry(out.key.clone().context("key kept")?).or_default().push((out.offset, seq, out.payload.clone()));
    }
    assert_eq!(by_key.len(), 4);
    for (key, mut records) in by_key {
        records.sort();
        let seqs: Vec<u64> = records.iter().map(|r| r.1).collect();
        assert_eq!(seqs, (0..2_500).collect::<Vec<_>>(), "key {key}: outputs in input order");
        let p: usize = key[1..].parse()?;
        for (_, seq, payload) in &records {
            assert_eq!(payload, &format!("WORD {}", seq * 4 + p as u64));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_dead_letter_topic_then_the_partition_moves_on() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    create_topics(&bootstrap, &[(&input, 1), (&output, 1), (&dlq, 1)]).await?;
    let mut poison = Input::new(0, "retry:9");
    poison.key = Some("poison-key".into());
    poison.headers = vec![("origin".into(), "test".into())];
    produce(&bootstrap, &input, &[Input::new(0, "retry:2"), poison, Input::new(0, "ok:after")]).await?;

    let scratch = Scratch::new()?;
    let config = pipeline(
        "chaos",
        "chaos",
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], commit_interval = "100ms" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{dlq}" }}"#),
        "max_attempts = 3\nbackoff = { initial = \"10ms\", max = \"20ms\" }",
    );
    let host = start(&scratch, &config, "sluice.toml")?;
    let outputs = read_topic(&bootstrap, &output, 2, false, WITHIN)?;
    let dead = read_topic(&bootstrap, &dlq, 1, false, WITHIN)?;
    let commits = wait_committed_to_end(&bootstrap, &group, &input, 1)?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    let payloads: Vec<&str> = outputs.iter().map(|o| o.payload.as_str()).collect();
    assert_eq!(payloads, ["recovered after 2 failures", "after"], "the retried event, then the one behind the poison");
    assert_eq!(commits, vec![3]);
    let dead = &dead[0];
    assert_eq!(dead.payload, "retry:9", "the original event");
    assert_eq!(dead.key.as_deref(), Some("poison-key"));
    assert_eq!(dead.header("origin"), Some("test"), "its headers kept");
    assert_eq!(dead.header("sluice-dlq-reason"), Some("retries-exhausted"));
    assert_eq!(dead.header("sluice-dlq-attempts"), Some("3"));
    assert_eq!(dead.header("sluice-dlq-event-id"), Some(format!("{input}/0/1").as_str()));
    assert!(dead.header("sluice-dlq-message").is_some_and(|m| m.contains("transient failure (attempt 3 of 9)")), "{dead:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_a_group_and_a_kill_9_loses_nothing() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (input, out_a, out_b, group) = (unique("in"), unique("out-a"), unique("out-b"), unique("group"));
    create_topics(&bootstrap, &[(&input, 4), (&out_a, 1), (&out_b, 1)]).await?;
    let n = 20_000;
    let config = |output: &str| {
        pipeline(
            "shared",
            "passthrough",
            &format!(
                r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], commit_interval = "100ms", options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }} }}"#
            ),
            &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}"#),
            r#"{ kind = "file", path = "dlq.jsonl" }"#,
            "",
        )
    };
    let (a_dir, b_dir) = (Scratch::new()?, Scratch::new()?);
    let mut a = start(&a_dir, &config(&out_a), "a.toml")?;
    let b = start(&b_dir, &config(&out_b), "b.toml")?;
    let producing = produce_paced(&bootstrap, &input, (0..n).map(|i| Input::new((i % 4) as i32, format!("e{i}"))).collect(), 2_000);
    // Kill once both hosts hold partitions (each has written outputs).
    poll_until("both hosts to produce outputs", WITHIN, || {
        // A metadata hiccup under load is "not yet", not a failure.
        let count = |topic: &str| end_offsets(&bootstrap, topic, 1).ok().and_then(|e| e.first().copied()).unwrap_or(0);
        Ok((count(&out_a) > 500 && count(&out_b) > 500).then_some(()))
    })?;
    a.kill()?;
    let killed_at = end_offsets(&bootstrap, &out_a, 1)?[0] + end_offsets(&bootstrap, &out_b, 1)?[0];
    ensure!(killed_at < n as i64 * 3 / 4, "the run was nearly over before the kill ({killed_at} outputs); the test proves nothing");
    producing.await??;
    // Every input reaches an output: the survivor takes the dead host's
    // partitions after the session timeout and resumes from its commits.
    let from_a = read_to_end(&bootstrap, &out_a, 1, false)?;
    let from_b = read_distinct(&bootstrap, &out_b, 1, WITHIN)?;
    let mut seen: HashSet<String> = from_a.iter().map(|o| o.payload.clone()).collect();
    poll_until("every input to reach an output", WITHIN * 2, || {
        let now = read_to_end(&bootstrap, &out_b, 1, false)?;
        seen.extend(now.into_iter().map(|o| o.payload));
        Ok((seen.len() >= n).then_some(()))
    })?;
    let missing: Vec<usize> = (0..n).filter(|i| !seen.contains(&format!("e{i}"))).collect();
    assert!(missing.is_empty(), "{} inputs never reached an output, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]);
    ensure!(!from_b.is_empty());
    wait_committed_to_end(&bootstrap, &group, &input, 4)?;
    b.terminate()?;
    b.wait(WITHIN)?.ensure_success()?;
    let total = end_offsets(&bootstrap, &out_a, 1)?[0] + end_offsets(&bootstrap, &out_b, 1)?[0];
    eprintln!("outputs: {total} for {n} inputs ({} handled twice after the kill)", total - n as i64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_kill_9_and_restart() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    create_topics(&bootstrap, &[(&input, 2), (&output, 2), (&dlq, 1)]).await?;
    let n = 10_000;
    let scratch = Scratch::new()?;
    let config = pipeline(
        "eos",
        "passthrough",
        &format!(
            r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], exactly_once = true, commit_interval = "2s", transactional_id = "{group}-tx", options = {{ "session.timeout.ms" = "6000" }} }}"#
        ),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{dlq}" }}"#),
        "",
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let producing = produce_paced(&bootstrap, &input, (0..n).map(|i| Input::new((i % 2) as i32, format!("e{i}"))).collect(), 2_500);
    // Kill while a transaction is open with records in it. The group's
    // committed offsets move only when a transaction commits, so the
    // committed offsets read on both sides of the output's end mark a
    // moment with no commit in between; then the kill. A commit can still
    // slip in before the kill lands: after the kill nothing moves, so
    // measure again, and if no records were left open, start the host and
    // try once more at a later transaction.
    let probe = TransactionProbe::new(&bootstrap, &group, &input, &output);
    for attempt in 1.. {
        poll_until("an open transaction with records in it", WITHIN, || {
            // The group coordinator may still be loading: not yet.
            let open = probe.open_records().unwrap_or_default();
            Ok((open >= 100).then_some(()))
        })?;
        host.kill()?;
        let killed_at = probe.written()?;
        ensure!(killed_at < n as i64 * 9 / 10, "the run was nearly over before the kill ({killed_at} records); the test proves nothing");
        let left_open = poll_until("the records the kill left open", WITHIN, || Ok(probe.open_records().ok()))?;
        if left_open >= 20 {
            break;
        }
        ensure!(attempt < 3, "{attempt} kills in a row came just after a commit ({left_open} records left open)");
        eprintln!("the kill came just after a commit ({left_open} records left open): again");
        host = start(&scratch, &config, "sluice.toml")?;
    }
    producing.await??;
    let host = start(&scratch, &config, "sluice.toml")?;
    wait_committed_to_end(&bootstrap, &group, &input, 2)?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    let committed_outputs = read_to_end(&bootstrap, &output, 2, true)?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for out in &committed_outputs {
        *counts.entry(out.payload.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).map(|(p, _)| *p).take(10).collect();
    assert!(twice.is_empty(), "outputs seen more than once by a read_committed reader: {twice:?}");
    assert_eq!(counts.len(), n, "every input's output");
    assert_eq!(committed_outputs.len(), n, "and nothing else");
    // The kill did leave records behind, of the transaction it aborted: a
    // read_uncommitted reader sees them, a read_committed one did not.
    let everything = read_to_end(&bootstrap, &output, 2, false)?;
    assert!(everything.len() > n, "no aborted records: the kill did not hit an open transaction ({} records)", everything.len());
    eprintln!("read_uncommitted sees {} records, read_committed {n}", everything.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_nothing() -> Result<()> {
    let mut broker = KafkaBroker::start()?;
    let bootstrap = broker.bootstrap();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topics(&bootstrap, &[(&input, 2), (&output, 2)]).await?;
    let n = 10_000;
    let inputs: Vec<Input> = (0..n / 2).map(|i| Input::new((i % 2) as i32, format!("e{i}"))).collect();
    produce(&bootstrap, &input, &inputs).await?;

    let scratch = Scratch::new()?;
    let config = pipeline(
        "restart",
        "passthrough",
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], commit_interval = "100ms" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}"#),
        r#"{ kind = "file", path = "dlq.jsonl" }"#,
        "",
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    read_topic(&bootstrap, &output, n / 5, false, WITHIN)?;
    let mark = host.log_mark();
    broker.kill()?;

    // The host keeps running without a broker: it logs the lost
    // connection (the sign it noticed) and carries on.
    host.wait_for_log("(librdkafka retries by itself", mark, WITHIN)?;
    ensure!(host.is_running()?, "sluice exited while the broker was down");
    broker.restart()?;
    // The second half arrives after the restart.
    let rest: Vec<Input> = (n / 2..n).map(|i| Input::new((i % 2) as i32, format!("e{i}"))).collect();
    produce(&bootstrap, &input, &rest).await?;
    let all = read_distinct(&bootstrap, &output, n, WITHIN * 2)?;
    let seen: HashSet<&str> = all.iter().map(|o| o.payload.as_str()).collect();
    let missing = (0..n).filter(|i| !seen.contains(format!("e{i}").as_str())).count();
    assert_eq!(missing, 0, "inputs lost across the broker restart");
    wait_committed_to_end(&bootstrap, &group, &input, 2)?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// A request's reply (and error reply) goes to the reply topic's partition
/// that its `kafka_replyPartition` names (NestJS's `ClientKafka` reads only
/// its own), as text (NestJS) or a 4-byte big-endian integer (Spring). One
/// that names none goes to partition 0; one that cannot be used (not a
/// number, or a partition the topic lacks) goes to partition 0 too, logged
/// and counted, and the pipeline carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_reply_topic_gets_its_reply() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (requests, replies, group) = (unique("requests"), unique("replies"), unique("group"));
    create_topics(&bootstrap, &[(&requests, 1), (&replies, 3)]).await?;
    let scratch = Scratch::new()?;
    let config = pipeline(
        "rpc",
        "chaos",
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{requests}"], start = "earliest" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}" }}"#),
        r#"{ kind = "file", path = "dlq.jsonl" }"#,
        "max_attempts = 1",
    );
    let host = start(&scratch, &config, "sluice.toml")?;
    // The NestJS Kafka transport's request headers.
    let request = |payload: &str, id: &str, partition: Option<&str>| Input {
        partition: 0,
        key: None,
        payload: payload.into(),
        headers: [("kafka_correlationId", Some(id)), ("kafka_replyTopic", Some(replies.as_str())), ("kafka_replyPartition", partition)]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect(),
    };
    let spring_one = String::from_utf8(1i32.to_be_bytes().to_vec())?;
    let sent = [
        request("reply:pong", "call-1", Some("2")),
        request("reject:bad input", "call-2", Some("2")),
        request("reply:spring", "call-3", Some(&spring_one)),
        request("reply:unnamed", "call-4", None),
        request("reply:unreadable", "call-5", Some("two")),
        request("reject:beyond", "call-6", Some("7")),
    ];
    produce(&bootstrap, &requests, &sent).await?;
    let got = read_topic(&bootstrap, &replies, sent.len(), false, WITHIN)?;
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;

    let by_id: HashMap<&str, &Read> = got.iter().filter_map(|r| Some((r.header("kafka_correlationId")?, r))).collect();
    let pong = by_id.get("call-1").context("reply to call-1")?;
    assert_eq!(pong.payload, "pong");
    assert_eq!(pong.partition, 2, "sent to the partition the caller named");
    let error = by_id.get("call-2").context("error reply to call-2")?;
    let body: serde_json::Value = serde_json::from_str(&error.payload)?;
    assert_eq!(body["error"]["reason"], "rejected");
    assert_eq!(body["error"]["message"], "bad input");
    assert_eq!(error.partition, 2);
    let partition_of = |id: &str| by_id.get(id).map(|r| r.partition).with_context(|| format!("reply to {id}: {got:?}"));
    assert_eq!(partition_of("call-3")?, 1, "Spring's 4-byte header");
    assert_eq!(partition_of("call-4")?, 0, "no partition named");
    assert_eq!(partition_of("call-5")?, 0, "an unreadable header");
    assert_eq!(partition_of("call-6")?, 0, "a partition the topic lacks");
    // Partition 2 holds exactly the two answers that asked for it.
    let mut on_two: Vec<&str> = got.iter().filter(|r| r.partition == 2).filter_map(|r| r.header("kafka_correlationId")).collect();
    on_two.sort_unstable();
    assert_eq!(on_two, ["call-1", "call-2"]);
    ensure!(finished.stderr.contains("2 reply partition fallbacks"), "the two unusable headers counted:\n{}", finished.stderr);
    ensure!(finished.stderr.contains(r#"kafka_replyPartition "two" is not a partition number"#), "{}", finished.stderr);
    ensure!(finished.stderr.contains(&format!("topic `{replies}` has 3 partitions, no partition 7")), "{}", finished.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_or_broker_is_a_clear_startup_error() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let scratch = Scratch::new()?;
    let missing = unique("nope");
    let config = pipeline(
        "bad",
        "passthrough",
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "g", topics = ["{missing}"] }}"#),
        r#"{ kind = "stdout" }"#,
        r#"{ kind = "file", path = "dlq.jsonl" }"#,
        "",
    );
    scratch.write("missing.toml", &config)?;
    let finished = scratch.run(&["run", "missing.toml"])?;
    finished.ensure_failure()?;
    assert!(finished.stderr.contains(&format!("topic `{missing}` does not exist on {bootstrap}")), "{}", finished.stderr);

    let port = free_port()?;
    let config = pipeline(
        "bad",
        "passthrough",
        &format!(r#"{{ kind = "kafka", brokers = "127.0.0.1:{port}", group = "g", topics = ["t"] }}"#),
        r#"{ kind = "stdout" }"#,
        r#"{ kind = "file", path = "dlq.jsonl" }"#,
        "",
    );
    scratch.write("unreachable.toml", &config)?;
    let finished = scratch.run(&["run", "unreachable.toml"])?;
    finished.ensure_failure()?;
    assert!(finished.stderr.contains(&format!("no broker of 127.0.0.1:{port} answered")), "{}", finished.stderr);
    Ok(())
}

/// `examples/kafka/sluice.toml` runs as documented against a real broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_example_runs_as_documented() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    // The example's fixed names: only this test uses them on the shared broker.
    create_topics(&bootstrap, &[("orders", 3), ("orders-enriched", 3), ("orders-dlq", 1)]).await?;
    let mut command = std::process::Command::new(sluice_bin());
    command.args(["run", "examples/kafka/sluice.toml"]).current_dir(root()).env("KAFKA_BROKERS", &bootstrap);
    let host = Running::spawn(command)?;
    let order = |key: &str, payload: &str| Input { partition: 0, key: Some(key.into()), payload: payload.into(), headers: Vec::new() };
    produce(
        &bootstrap,
        "orders",
        &[
            order("alice", r#"{"order":1,"user":"alice","total":30}"#),
            order("bob", r#"{"order":2,"total":5}"#),
            order("carol", "this is not JSON"),
        ],
    )
    .await?;
    let enriched = read_topic(&bootstrap, "orders-enriched", 1, true, WITHIN)?;
    let dead = read_topic(&bootstrap, "orders-dlq", 1, true, WITHIN)?;
    wait_committed_to_end(&bootstrap, "sluice-orders", "orders", 3)?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    let value: serde_json::Value = serde_json::from_str(&enriched[0].payload)?;
    assert_eq!(value["user"], "alice");
    assert_eq!(value["env"], "kafka-example");
    assert_eq!(value["event_id"], "orders/0/0");
    assert_eq!(enriched[0].key.as_deref(), Some("alice"), "the key carries over");
    assert_eq!(dead[0].payload, "this is not JSON");
    assert_eq!(dead[0].header("sluice-dlq-reason"), Some("rejected"));
    let all = read_to_end(&bootstrap, "orders-enriched", 3, true)?;
    assert_eq!(all.len(), 1, "bob's order (no user) was dropped: {all:?}");
    Ok(())
}

/// A pattern subscription reads every matching topic, and `ordering = "key"`
/// keeps each key's order while keys of one partition run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_pattern_and_per_key_order() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let prefix = unique("pattern");
    let (a, b, output, group) = (format!("{prefix}.a"), format!("{prefix}.b"), unique("out"), unique("group"));
    create_topics(&bootstrap, &[(&a, 1), (&b, 1), (&output, 1)]).await?;
    let per_key = 500;
    for topic in [&a, &b] {
        let inputs: Vec<Input> = (0..per_key * 4)
            .map(|i| Input {
                partition: 0,
                key: Some(format!("k{}", i % 4)),
                payload: format!("{topic}:{}:{}", i % 4, i / 4),
                headers: Vec::new(),
            })
            .collect();
        produce(&bootstrap, topic, &inputs).await?;
    }
    let scratch = Scratch::new()?;
    let pattern = format!("^{}\\\\..*", prefix.replace('-', "\\\\-"));
    let config = pipeline(
        "pattern",
        "passthrough",
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", pattern = "{pattern}", commit_interval = "100ms" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}"#),
        r#"{ kind = "file", path = "dlq.jsonl" }"#,
        "ordering = \"key\"\nconcurrency = 4\nbatch_size = 8",
    );
    let config = format!("[admin]\nlisten = \"{ANY_PORT}\"\n{config}");
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let admin = host.admin_port()?;
    let outputs = read_topic(&bootstrap, &output, per_key * 8, false, WITHIN)?;
    wait_committed_to_end(&bootstrap, &group, &a, 1)?;
    wait_committed_to_end(&bootstrap, &group, &b, 1)?;
    // The consumer lag (librdkafka statistics, every 5 s) reaches the
    // metrics, and is 0 once everything is committed.
    host.wait_until("sluice_source_lag 0", WITHIN, || {
        http_request(admin, "GET", "/metrics", None, b"")
            .is_ok_and(|(_, body)| body.lines().any(|l| l == r#"sluice_source_lag{pipeline="pattern",plugin="passthrough"} 0"#))
    })?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    let mut by_stream: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for out in &outputs {
        let mut parts = out.payload.rsplitn(3, ':');
        let seq: usize = parts.next().context("seq")?.parse()?;
        let key = parts.next().context("key")?.to_owned();
        let topic = parts.next().context("topic")?.to_owned();
        by_stream.entry((topic, key)).or_default().push(seq);
    }
    assert_eq!(by_stream.len(), 8, "both topics, four keys each: {:?}", by_stream.keys().collect::<Vec<_>>());
    for (stream, seqs) in by_stream {
        assert_eq!(seqs, (0..per_key).collect::<Vec<_>>(), "{stream:?} out of order");
    }
    Ok(())
}

/// An exactly-once pipeline paused (admin API) while its events are in
/// flight: they finish, and their transaction is committed even though
/// intake is stopped, instead of being left open until the broker aborts it.
/// After resuming, every output is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_exactly_once_pipeline_still_commits_what_finished() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    create_topics(&bootstrap, &[(&input, 1), (&output, 1), (&dlq, 1)]).await?;
    let scratch = Scratch::new()?;
    let config = pipeline(
        "eos",
        "chaos",
        &format!(
            r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], exactly_once = true, commit_interval = "500ms", transactional_id = "{group}-tx", options = {{ "transaction.timeout.ms" = "5000" }} }}"#
        ),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{dlq}" }}"#),
        "batch_size = 1",
    );
    let config = format!("[admin]\nlisten = \"{ANY_PORT}\"\ntoken = \"t\"\n{config}");
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let admin = host.admin_port()?;
    // Slow events (50 ms each), so some are in flight when intake pauses.
    let inputs: Vec<Input> = (0..200).map(|_| Input::new(0, "sleep:50")).collect();
    produce(&bootstrap, &input, &inputs).await?;
    read_topic(&bootstrap, &output, 5, false, WITHIN)?;
    let (status, body) = http_request(admin, "POST", "/pipelines/eos/pause", Some("t"), b"")?;
    ensure!(status == 200, "pause: {status} {body}");
    // Paused: what was taken finishes, and a read_committed reader sees all
    // of it once the keeper commits (no resume needed).
    let received = || -> Result<i64> {
        let (_, body) = http_request(admin, "GET", "/metrics", None, b"")?;
        let line = body.lines().find(|l| l.starts_with("sluice_events_received_total{")).context("received metric")?;
        Ok(line.rsplit(' ').next().unwrap_or("0").parse::<f64>()? as i64)
    };
    let mut taken = 0;
    host.wait_until("everything taken before the pause committed", WITHIN, || {
        let Ok(now) = received() else { return false };
        taken = now;
        read_to_end(&bootstrap, &output, 1, true).is_ok_and(|committed| committed.len() as i64 == now)
    })?;
    ensure!(taken < 200, "the pause came after everything was taken; the test proves nothing");
    // Longer than the transaction timeout: a transaction left open would be
    // aborted by now and the resumed pipeline would fail.
    std::thread::sleep(Duration::from_secs(6));
    http_request(admin, "POST", "/pipelines/eos/resume", Some("t"), b"")?;
    wait_committed_to_end(&bootstrap, &group, &input, 1)?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    let outputs = read_to_end(&bootstrap, &output, 1, true)?;
    assert_eq!(outputs.len(), 200, "each input's output once");
    Ok(())
}

/// `sluice dlq replay` from a dead-letter topic a pipeline wrote: to another
/// topic with `--to`, and to the event's own source topic by default, the
/// original key, payload and headers restored; a dry run and a filter that
/// match nothing send nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_from_a_topic_to_a_topic() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (orders, out, dlq, retry, group) = (unique("orders"), unique("out"), unique("dlq"), unique("retry"), unique("group"));
    create_topics(&bootstrap, &[(&orders, 2), (&out, 1), (&dlq, 2), (&retry, 1)]).await?;
    let scratch = Scratch::new()?;
    let config = pipeline(
        "kafka-dlq",
        "chaos",
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{orders}"], start = "earliest" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{out}" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{dlq}" }}"#),
        "max_attempts = 1",
    );
    let host = start(&scratch, &config, "sluice.toml")?;
    let mut rejected = Input::new(1, "reject:r1");
    rejected.key = Some("k1".into());
    rejected.headers = vec![("trace".into(), "t-1".into())];
    produce(&bootstrap, &orders, &[Input::new(0, "ok:a"), rejected, Input::new(0, "ok:b")]).await?;
    read_topic(&bootstrap, &dlq, 1, false, WITHIN)?;
    read_topic(&bootstrap, &out, 2, false, WITHIN)?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    let replay = |extra: &[&str]| -> Result<Finished> {
        let from = format!("kafka:{dlq}");
        let mut args = vec!["dlq", "replay", "--from", from.as_str(), "--brokers", bootstrap.as_str()];
        args.extend_from_slice(extra);
        let finished = scratch.run(&args)?;
        finished.ensure_success()?;
        Ok(finished)
    };
    let dry = replay(&["--dry-run"])?;
    ensure!(dry.stdout.contains("rejected at ") && dry.stdout.contains(&format!(": r1) to kafka:{orders}")), "{}", dry.stdout);
    ensure!(dry.stdout.contains("would replay 1 of 1 records"), "{}", dry.stdout);
    let none = replay(&["--pipeline", "another"])?;
    ensure!(none.stdout.contains("replayed 0 of 1 records (1 filtered out"), "{}", none.stdout);
    ensure!(end_offsets(&bootstrap, &orders, 2)?.iter().sum::<i64>() == 3, "nothing sent by a dry run or an empty filter");

    let to_retry = format!("kafka:{retry}");
    ensure!(replay(&["--to", &to_retry])?.stdout.contains("replayed 1 of 1 records"));
    let got = read_topic(&bootstrap, &retry, 1, false, WITHIN)?;
    assert_eq!((got[0].key.as_deref(), got[0].payload.as_str()), (Some("k1"), "reject:r1"));
    assert_eq!(got[0].headers, [("trace".to_owned(), "t-1".to_owned())], "sluice-dlq-* headers stripped");

    // By default, back to the topic it came from.
    replay(&["--pipeline", "kafka-dlq", "--reason", "rejected"])?;
    let all = read_to_end(&bootstrap, &orders, 2, false)?;
    assert_eq!(all.len(), 4);
    let back = all.iter().filter(|r| r.payload == "reject:r1").count();
    assert_eq!(back, 2, "the original and its replay");
    Ok(())
}

/// The admin API's dead letters on a Kafka dead-letter topic (two
/// partitions): listed newest first with ids `partition:offset`, the
/// credential redacted, limited; a dry run sends nothing; after the fixed
/// plugin is uploaded, a replay by id sends them back to their topic and
/// they come out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_and_replays_dead_letters_of_a_topic() -> Result<()> {
    const TOKEN: &str = "kafka-dlq-token";
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (orders, out, dlq, group) = (unique("orders"), unique("out"), unique("dlq"), unique("group"));
    create_topics(&bootstrap, &[(&orders, 2), (&out, 1), (&dlq, 2)]).await?;
    let scratch = Scratch::new()?;
    let config = pipeline(
        "orders",
        "chaos",
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{orders}"], start = "earliest" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{out}" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{dlq}" }}"#),
        "max_attempts = 2\nbackoff = { initial = \"10ms\" }",
    )
    .replacen("[pipelines.", &format!("[admin]\nlisten = \"{ANY_PORT}\"\ntoken = \"{TOKEN}\"\n\n[pipelines."), 1);
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let port = host.admin_port()?;
    let secret = |payload: &str, partition| {
        let mut input = Input::new(partition, payload);
        input.headers = vec![("trace".into(), format!("t-{payload}")), ("Authorization".into(), "Bearer hunter2".into())];
        input
    };
    produce(&bootstrap, &orders, &[Input::new(0, "ok:a"), secret("reject:r1", 1), Input::new(0, "retry:9"), secret("reject:r2", 0)])
        .await?;
    let listed = poll_until("three dead letters listed", WITHIN, || {
        let (status, body) = http_request(port, "GET", "/pipelines/orders/dead-letters", None, b"")?;
        let listed: serde_json::Value = if status == 200 { serde_json::from_str(&body)? } else { serde_json::Value::Null };
        Ok((listed["dead_letters"].as_array().map(Vec::len) == Some(3)).then_some((listed, body)))
    });
    let (listed, body) = listed?;
    let records = listed["dead_letters"].as_array().context("a list")?;
    let mut reasons: Vec<&str> = records.iter().filter_map(|r| r["reason"].as_str()).collect();
    reasons.sort();
    assert_eq!(reasons, ["rejected", "rejected", "retries-exhausted"], "{listed:#}");
    let times: Vec<&str> = records.iter().filter_map(|r| r["time"].as_str()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    assert!(records.iter().all(|r| r["id"].as_str().is_some_and(|id| id.split_once(':').is_some())), "ids are partition:offset");
    let by_message = |m: &str| records.iter().find(|r| r["message"] == m).cloned().context(format!("the dead letter {m}"));
    let (r1, r2) = (by_message("r1")?, by_message("r2")?);
    assert_eq!(r1["payload"]["text"], "reject:r1");
    assert_eq!(r1["source"], orders.as_str());
    let authorization = r1["headers"].as_array().and_then(|h| h.iter().find(|h| h[0] == "Authorization")).context("the header")?;
    assert_eq!(authorization[1]["text"], "<redacted>");
    ensure!(!body.contains("hunter2"), "a credential shown: {body}");
    let (_, one) = http_request(port, "GET", "/pipelines/orders/dead-letters?limit=1&reason=rejected", None, b"")?;
    let one: serde_json::Value = serde_json::from_str(&one)?;
    assert_eq!((one["dead_letters"].as_array().map(Vec::len), &one["more"]), (Some(1), &serde_json::json!(true)), "{one:#}");

    let ids = serde_json::json!([r1["id"], r2["id"]]);
    let replay = |dry_run: bool| -> Result<serde_json::Value> {
        let body = serde_json::json!({ "ids": ids, "dry_run": dry_run }).to_string();
        let (status, text) = http_request(port, "POST", "/pipelines/orders/dead-letters/replay", Some(TOKEN), body.as_bytes())?;
        ensure!(status == 200, "replay answered {status}: {text}");
        Ok(serde_json::from_str(&text)?)
    };
    let before: i64 = end_offsets(&bootstrap, &orders, 2)?.iter().sum();
    let dry = replay(true)?;
    assert_eq!(dry["would_replay"], 2, "{dry:#}");
    assert_eq!(dry["records"][0]["to"], format!("kafka:{orders}"));
    assert_eq!(end_offsets(&bootstrap, &orders, 2)?.iter().sum::<i64>(), before, "a dry run sends nothing");

    let fixed = std::fs::read(plugin("passthrough"))?;
    let (status, text) = http_request(port, "PUT", "/pipelines/orders/plugin", Some(TOKEN), &fixed)?;
    ensure!(status == 200, "upload answered {status}: {text}");
    let done = replay(false)?;
    assert_eq!(done["replayed"], 2, "{done:#}");
    let got = read_distinct(&bootstrap, &out, 3, WITHIN)?;
    let mut payloads: Vec<&str> = got.iter().map(|r| r.payload.as_str()).collect();
    payloads.sort();
    assert_eq!(payloads, ["a", "reject:r1", "reject:r2"]);
    let replayed = got.iter().find(|r| r.payload == "reject:r1").context("r1 out")?;
    assert_eq!(replayed.header("trace"), Some("t-reject:r1"), "its own headers restored");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// NestJS interoperability on the Kafka transport: a real NestJS
/// `ClientProxy` (`tests/nestjs/kafka-client.mjs`, kafkajs) calls a pipeline
/// with `codec = "nestjs"` reading the pattern topics. Its `send` resolves
/// (and completes: the reply carries `kafka_nest-is-disposed`), a rejected
/// call rejects with NestJS's error shape (`kafka_nest-err`), and the
/// emitted event reaches the plugin. Then two `ClientProxy` instances of
/// one consumer group (`tests/nestjs/kafka-clients.mjs`) share the reply
/// topic's three partitions: each gets its answer on the partition it
/// reads. Needs `scripts/nestjs-client.sh install`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nestjs_kafka_client_proxy_gets_replies_errors_and_emits_events() -> Result<()> {
    let client_dir = root().join(".cache/nestjs-client");
    let app = client_dir.join("kafka-client.mjs");
    ensure!(
        app.is_file() && std::fs::read(&app)? == std::fs::read(root().join("tests/nestjs/kafka-client.mjs"))?,
        "the NestJS client at {} is missing or stale: run `bash scripts/nestjs-client.sh install`",
        client_dir.display()
    );
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    // NestJS names topics after patterns, and replies after `<pattern>.reply`.
    let out = unique("user-events");
    create_topics(&bootstrap, &[("get-user", 1), ("get-user.reply", 3), ("user-created", 1), (&out, 1)]).await?;
    let scratch = Scratch::new()?;
    let config = pipeline(
        "users",
        "users",
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{}", topics = ["get-user", "user-created"] }}"#, unique("sluice")),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{out}" }}"#),
        r#"{ kind = "file", path = "dlq.jsonl" }"#,
        "max_attempts = 1",
    )
    .replace("[pipelines.users]\n", "[pipelines.users]\ncodec = \"nestjs\"\n");
    let host = start(&scratch, &config, "sluice.toml")?;

    let mut node = std::process::Command::new("node");
    node.arg("kafka-client.mjs").arg(&bootstrap).arg(unique("nestjs")).current_dir(&client_dir);
    let finished = Running::spawn(node)?.wait(RUN_TIMEOUT)?;
    ensure!(finished.status.success(), "the NestJS client failed\n--- stdout\n{}\n--- stderr\n{}", finished.stdout, finished.stderr);
    let last = finished.stdout.lines().last().unwrap_or_default();
    let results: serde_json::Value = serde_json::from_str(last).with_context(|| format!("not JSON: {}", finished.stdout))?;
    assert_eq!(results.get("failed"), None, "{results}\n{}", finished.stderr);
    assert_eq!(results["user"], serde_json::json!({"id": 42, "name": "Ada Lovelace"}));
    let rejected = &results["missing"]["rejected"];
    assert_eq!((rejected["status"].as_str(), rejected["message"].as_str()), (Some("error"), Some("user 99 not found")), "{results}");
    assert_eq!(results["emitted"], true);
    let events = read_topic(&bootstrap, &out, 1, false, WITHIN)?;
    let payload: serde_json::Value = serde_json::from_str(&events[0].payload)?;
    assert_eq!(payload, serde_json::json!({"event": "user-created", "user": {"id": 43, "name": "Alan Turing"}}));

    // Two clients, one group: run from a scratch folder beside the
    // installed packages (the script comes from the source tree).
    let clients_dir = Scratch::new()?;
    std::fs::copy(root().join("tests/nestjs/kafka-clients.mjs"), clients_dir.path("kafka-clients.mjs"))?;
    std::os::unix::fs::symlink(client_dir.join("node_modules"), clients_dir.path("node_modules"))?;
    let mut node = std::process::Command::new("node");
    node.arg("kafka-clients.mjs").arg(&bootstrap).arg(unique("nestjs-pair")).current_dir(clients_dir.dir());
    let finished = Running::spawn(node)?.wait(RUN_TIMEOUT)?;
    ensure!(finished.status.success(), "the NestJS clients failed\n--- stdout\n{}\n--- stderr\n{}", finished.stdout, finished.stderr);
    let last = finished.stdout.lines().last().unwrap_or_default();
    let results: serde_json::Value = serde_json::from_str(last).with_context(|| format!("not JSON: {}", finished.stdout))?;
    assert_eq!(results.get("failed"), None, "{results}\n{}", finished.stderr);
    let ada = serde_json::json!({"id": 42, "name": "Ada Lovelace"});
    assert_eq!(results["users"], serde_json::json!([ada, ada]), "each client got its answer");
    let asked: Vec<i32> = serde_json::from_value(results["partitions"].clone())?;
    ensure!(asked.len() == 2 && asked[0] != asked[1], "two reply partitions: {results}");
    // Four answers in all: the first client's two (it alone in its group
    // asked for partition 0), then one on each partition the pair asked for.
    let replies = read_topic(&bootstrap, "get-user.reply", 4, false, WITHIN)?;
    for partition in &asked {
        ensure!(replies.iter().any(|r| r.partition == *partition), "no answer on partition {partition}: {replies:?}");
    }
    ensure!(replies.iter().all(|r| r.partition == 0 || asked.contains(&r.partition)), "{replies:?}");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// The `tls = {…}` and `sasl = {…}` tables of a Kafka source or sink for
/// the secured broker's listeners (see `fixture::Secured`).
struct SecuredTables {
    /// `brokers` and `tls` for the SSL listener, with the client certificate.
    ssl: String,
    /// `brokers`, `tls` (CA only) and `sasl` for the SASL_SSL listener; the
    /// password comes from `${KAFKA_PASSWORD}`.
    sasl: String,
}

fn secured_tables(broker: &KafkaBroker) -> Result<SecuredTables> {
    let secured = broker.secured()?;
    let certs = broker.certs();
    let ca = toml_path(&certs.join("ca.pem"));
    Ok(SecuredTables {
        ssl: format!(
            r#"brokers = "127.0.0.1:{}", tls = {{ ca_file = {ca}, cert_file = {}, key_file = {} }}"#,
            secured.ssl_port,
            toml_path(&certs.join("client.pem")),
            toml_path(&certs.join("client.key"))
        ),
        sasl: format!(
            r#"brokers = "127.0.0.1:{}", tls = {{ ca_file = {ca} }}, sasl = {{ mechanism = "scram-sha-512", username = "{}", password = "${{KAFKA_PASSWORD}}" }}"#,
            secured.sasl_port,
            fixture::SCRAM_USER
        ),
    })
}

/// A real broker with a TLS listener that requires client certificates and
/// a SASL_SSL listener with a SCRAM-SHA-512 user: pipeline `tls` reads over
/// TLS (client certificate) and writes over SASL_SSL; pipeline `scram`
/// reads that over SASL_SSL exactly once, its transactional producer
/// writing over SASL_SSL too. Every input arrives once, both groups commit
/// to the end, and the password (from the environment) is printed nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_sasl_scram_listeners_as_source_and_sink_exactly_once_included() -> Result<()> {
    let broker = KafkaBroker::shared_secured()?;
    let plain = broker.bootstrap();
    let password = broker.secured()?.password.clone();
    let (input, mid, output, dlq) = (unique("in"), unique("mid"), unique("out"), unique("dlq"));
    let (group_tls, group_scram) = (unique("group-tls"), unique("group-scram"));
    create_topics(&plain, &[(&input, 2), (&mid, 2), (&output, 2), (&dlq, 1)]).await?;
    let n = 500;
    produce(&plain, &input, &(0..n).map(|i| Input::new((i % 2) as i32, format!("word {i}"))).collect::<Vec<_>>()).await?;

    let t = secured_tables(broker)?;
    let scratch = Scratch::new()?;
    let config = format!(
        r#"{runtime}
[pipelines.tls]
source = {{ kind = "kafka", {ssl}, group = "{group_tls}", topics = ["{input}"], commit_interval = "100ms" }}
sink = {{ kind = "kafka", {sasl}, topic = "{mid}" }}
dead_letter = {{ kind = "kafka", {ssl}, topic = "{dlq}" }}
[pipelines.tls.plugin]
path = {uppercase}

[pipelines.scram]
source = {{ kind = "kafka", {sasl}, group = "{group_scram}", topics = ["{mid}"], exactly_once = true, commit_interval = "200ms" }}
sink = {{ kind = "kafka", {sasl}, topic = "{output}" }}
dead_letter = {{ kind = "kafka", {sasl}, topic = "{dlq}" }}
[pipelines.scram.plugin]
path = {passthrough}
"#,
        runtime = runtime_table(),
        ssl = t.ssl,
        sasl = t.sasl,
        uppercase = toml_path(&plugin("uppercase")),
        passthrough = toml_path(&plugin("passthrough")),
    );
    scratch.write("sluice.toml", &config)?;
    let mut command = scratch.sluice(&["run", "sluice.toml"]);
    command.env("KAFKA_PASSWORD", &password);
    let host = Running::spawn(command)?;
    let outputs = read_topic(&plain, &output, n, true, WITHIN)?;
    wait_committed_to_end(&plain, &group_tls, &input, 2)?;
    wait_committed_to_end(&plain, &group_scram, &mid, 2)?;
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;

    let mut payloads: Vec<String> = outputs.iter().map(|o| o.payload.clone()).collect();
    payloads.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("WORD {i}")).collect();
    expected.sort();
    assert_eq!(payloads, expected, "every input once, through both listeners");
    assert_eq!(read_to_end(&plain, &output, 2, true)?.len(), n, "nothing else committed");
    assert!(finished.stderr.contains("kafka transactions started"), "{}", finished.stderr);
    assert!(!finished.stderr.contains(&password) && !finished.stdout.contains(&password), "the password was printed:\n{}", finished.stderr);
    Ok(())
}

/// A wrong SCRAM password fails the pipeline at start with an error that
/// names the pipeline, the broker and the cause, in both log formats, and
/// no byte of either password is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_kafka_password_names_the_pipeline_and_broker_and_prints_no_secret() -> Result<()> {
    let broker = KafkaBroker::shared_secured()?;
    let secured = broker.secured()?;
    let wrong = format!("not-{}", secured.password);
    let (input, group) = (unique("in"), unique("group"));
    create_topics(&broker.bootstrap(), &[(&input, 1)]).await?;
    let t = secured_tables(broker)?;
    let scratch = Scratch::new()?;
    let config = broker_pipeline(
        "secure-in",
        "passthrough",
        [
            &format!(r#"{{ kind = "kafka", {}, group = "{group}", topics = ["{input}"] }}"#, t.sasl),
            r#"{ kind = "file", path = "out.jsonl" }"#,
            r#"{ kind = "file", path = "dlq.jsonl" }"#,
        ],
        "",
        "5s",
    );
    scratch.write("sluice.toml", &config)?;
    let run = |format: &str| -> Result<Running> {
        let mut command = scratch.sluice(&["run", "sluice.toml"]);
        command.env("KAFKA_PASSWORD", &wrong).env("SLUICE_LOG_FORMAT", format);
        Running::spawn(command)
    };
    let (human, json) = (run("human")?, run("json")?);
    for (format, host) in [("human", human), ("json", json)] {
        let finished = host.wait(WITHIN)?;
        finished.ensure_failure()?;
        let all = format!("{}{}", finished.stdout, finished.stderr);
        let failure = all
            .lines()
            .find(|l| l.contains("pipeline `secure-in` failed"))
            .with_context(|| format!("{format}: no failure line for the pipeline:\n{all}"))?;
        assert!(failure.contains(&format!("127.0.0.1:{}", secured.sasl_port)), "{format}: the broker is named: {failure}");
        assert!(failure.contains("Authentication failed") && failure.contains("SCRAM-SHA-512"), "{format}: the cause is named: {failure}");
        assert!(!all.contains(&wrong) && !all.contains(&secured.password), "{format}: a password was printed:\n{all}");
        let tail = &wrong[wrong.len() - 10..];
        assert!(!all.contains(tail), "{format}: part of the password was printed:\n{all}");
    }
    Ok(())
}

/// The transactional id a host logged when its transactions started.
fn transactional_id(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("kafka transactions started"))?;
    let start = line.find("transactional_id=")? + "transactional_id=".len();
    Some(line[start..].split_whitespace().next()?.trim_matches('"').to_owned())
}

/// Two exactly-once hosts with one config (no `transactional_id`, as in
/// `examples/kafka`) on one machine get different transactional ids, so
/// neither fences the other and both make progress. One is killed in the
/// middle of a transaction: the survivor's outputs committed after the kill
/// are visible to a `read_committed` reader once the broker aborts the dead
/// transaction, within the default transaction timeout (15 s for a 3s
/// commit interval) plus the broker's abort-check interval (10 s) plus a
/// margin; with librdkafka's 60 s default this took over a minute. The
/// killed host, restarted, gets its old id back (so it would fence its own
/// zombie), and every input's output is committed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exactly_once_hosts_on_one_machine_progress_and_a_kill_stalls_readers_only_for_the_timeout() -> Result<()> {
    // The default transaction timeout for a 3s commit interval: 5 × 3s. A
    // longer interval than the default 1s makes the kill likelier to land
    // in an open transaction rather than in a commit (which the broker
    // completes without the dead host).
    const TIMEOUT: Duration = Duration::from_secs(15);
    const BROKER_ABORT_CHECK: Duration = Duration::from_secs(10);
    const MARGIN: Duration = Duration::from_secs(10);
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    // One output partition: every open transaction holds records on it.
    create_topics(&bootstrap, &[(&input, 4), (&output, 1), (&dlq, 1)]).await?;
    let config = pipeline(
        "orders",
        "passthrough",
        &format!(
            r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], exactly_once = true, commit_interval = "3s", consumer_options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }} }}"#
        ),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{dlq}" }}"#),
        "",
    );
    // The hosts' instance slots live here, away from other tests' hosts.
    let slots = tempfile::tempdir()?;
    let scratch = Scratch::new()?;
    // The same config but for the admin port, which tells how much each
    // host took.
    let host = |name: &str| -> Result<(Running, u16)> {
        scratch.write(name, format!("[admin]\nlisten = \"{ANY_PORT}\"\n{config}"))?;
        let mut command = scratch.sluice(&["run", name]);
        command.env("XDG_RUNTIME_DIR", slots.path());
        let mut host = Running::spawn(command)?;
        let admin = host.admin_port()?;
        Ok((host, admin))
    };
    let (mut a, admin_a) = host("a.toml")?;
    let (mut b, admin_b) = host("b.toml")?;
    let received = |admin: u16| -> f64 {
        metrics(admin)
            .ok()
            .and_then(|m| m.into_iter().find(|(k, _)| k.starts_with("sluice_events_received_total{")).map(|(_, v)| v))
            .unwrap_or(0.0)
    };

    let n = 40_000;
    let producing = produce_paced(&bootstrap, &input, (0..n).map(|i| Input::new((i % 4) as i32, format!("e{i}"))).collect(), 2_000);
    // Both hosts take events and commit them while both run.
    poll_until("both hosts to handle events", WITHIN, || {
        let commits = committed(&bootstrap, &group, &input, 4).unwrap_or_default();
        Ok((received(admin_a) >= 500.0 && received(admin_b) >= 500.0 && commits.iter().all(|c| *c > 0)).then_some(()))
    })?;
    ensure!(a.is_running()? && b.is_running()?, "a host stopped while both should run");
    let (taken_a, taken_b) = (received(admin_a), received(admin_b));
    // Keep going a little, so the kill lands in a transaction with records.
    poll_until("both hosts to keep handling events", WITHIN, || {
        Ok((received(admin_a) > taken_a + 200.0 && received(admin_b) > taken_b + 200.0).then_some(()))
    })?;
    let produced: i64 = end_offsets(&bootstrap, &input, 4)?.iter().sum();
    ensure!(produced < n as i64 * 3 / 4, "the input was nearly all produced before the kill ({produced}); the test proves nothing");

    a.kill()?;
    let killed = Instant::now();
    // Fresh inputs on every partition: the survivor handles its own at once
    // and commits them; a read_committed reader sees them once the dead
    // host's open transaction is aborted.
    produce(&bootstrap, &input, &(0..4).map(|p| Input::new(p, format!("after-kill-{p}"))).collect::<Vec<_>>()).await?;
    read_until(&bootstrap, &output, true, WITHIN, |got, _| Ok(got.iter().any(|r| r.payload.starts_with("after-kill-"))))?;
    let stall = killed.elapsed();
    eprintln!("read_committed readers saw the survivor's new outputs {stall:?} after the kill");
    assert!(stall < TIMEOUT + BROKER_ABORT_CHECK + MARGIN, "the survivor's outputs were hidden for {stall:?} after the kill");

    let (restarted, _) = host("a.toml")?;
    producing.await??;
    wait_committed_to_end(&bootstrap, &group, &input, 4)?;
    restarted.terminate()?;
    b.terminate()?;
    let (restarted, b) = (restarted.wait(WITHIN)?, b.wait(WITHIN)?);
    restarted.ensure_success()?;
    b.ensure_success()?;
    let a_log = a.wait(WITHIN)?.stderr;
    let ids = [&a_log, &restarted.stderr, &b.stderr].map(|log| transactional_id(log));
    eprintln!("transactional ids: killed {:?}, restarted {:?}, survivor {:?}", ids[0], ids[1], ids[2]);
    let [Some(killed_id), Some(restarted_id), Some(survivor_id)] = ids else {
        anyhow::bail!("a host did not log its transactional id:\n--- a\n{a_log}\n--- b\n{}", b.stderr);
    };
    assert_ne!(killed_id, survivor_id, "two running hosts shared a transactional id");
    assert_eq!(restarted_id, killed_id, "the restarted host got its old transactional id back");
    for log in [&restarted.stderr, &b.stderr] {
        assert!(!log.contains("fenced") && !log.contains("PurgeQueue"), "a host was fenced:\n{log}");
    }

    let committed_outputs = read_to_end(&bootstrap, &output, 1, true)?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for out in &committed_outputs {
        *counts.entry(out.payload.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).map(|(p, _)| *p).take(10).collect();
    assert!(twice.is_empty(), "outputs seen more than once by a read_committed reader: {twice:?}");
    assert_eq!(counts.len(), n + 4, "every input's output");
    // Records of the transaction the kill left open stay in the log, marked
    // aborted (none: the kill fell between a commit and the next record,
    // and the stall above was bounded trivially).
    let everything = read_to_end(&bootstrap, &output, 1, false)?.len();
    eprintln!(
        "read_uncommitted sees {everything} records, read_committed {} (the kill aborted {})",
        committed_outputs.len(),
        everything.saturating_sub(committed_outputs.len())
    );
    Ok(())
}

/// Two hosts given one `transactional_id`: the second fences the first,
/// whose pipeline stops with an error naming the id, the cause and what to
/// do, not librdkafka's bare `PurgeQueue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_exactly_once_host_says_which_transactional_id_and_what_to_do() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    create_topics(&bootstrap, &[(&input, 2), (&output, 1), (&dlq, 1)]).await?;
    let id = format!("{group}-shared-tx");
    let config = pipeline(
        "eos",
        "passthrough",
        &format!(
            r#"{{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], exactly_once = true, commit_interval = "200ms", transactional_id = "{id}" }}"#
        ),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}"#),
        &format!(r#"{{ kind = "kafka", brokers = "{bootstrap}", topic = "{dlq}" }}"#),
        "",
    );
    let (a_dir, b_dir) = (Scratch::new()?, Scratch::new()?);
    let a = start(&a_dir, &config, "sluice.toml")?;
    let producing = produce_paced(&bootstrap, &input, (0..6_000i32).map(|i| Input::new(i % 2, format!("e{i}"))).collect(), 1_000);
    read_topic(&bootstrap, &output, 100, true, WITHIN)?;
    let b = start(&b_dir, &config, "sluice.toml")?;
    let fenced = a.wait(WITHIN)?;
    fenced.ensure_failure()?;
    let failure = fenced
        .stderr
        .lines()
        .find(|l| l.contains("pipeline `eos` failed"))
        .with_context(|| format!("no failure line:\n{}", fenced.stderr))?;
    assert!(failure.contains("was fenced") && failure.contains(&format!("`{id}`")), "the fencing and the id are named: {failure}");
    assert!(failure.contains("runtime.instance_id"), "what to do is said: {failure}");
    assert_eq!(failure.matches("was fenced").count(), 1, "said once, not explained again at the end: {failure}");
    producing.await??;
    b.terminate()?;
    b.wait(WITHIN)?.ensure_success()?;
    Ok(())
}
