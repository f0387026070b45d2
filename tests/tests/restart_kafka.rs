//! The restart policy with an exactly-once Kafka pipeline, against a real
//! broker: a transaction that cannot complete (the output topic refuses
//! the records as too large) stops the pipeline; it restarts with backoff
//! and, once the topic takes them, a `read_committed` reader sees every
//! output exactly once.

#[allow(dead_code)]
mod common;
#[path = "common/kafka.rs"]
#[allow(dead_code)]
mod fixture;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use common::*;
use fixture::KafkaBroker;

const WITHIN: Duration = Duration::from_secs(120);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    )
}

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new().set("bootstrap.servers", bootstrap).create()?)
}

/// The group's committed offset of partition 0 of `topic` (-1: none).
fn committed(bootstrap: &str, group: &str, topic: &str) -> Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    let offsets = consumer.committed_offsets(list, Duration::from_secs(10))?;
    Ok(match offsets.find_partition(topic, 0).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => o,
        _ => -1,
    })
}

/// Every record of partition 0 of `topic` a `read_committed` reader sees,
/// up to the end of the partition.
fn read_committed(bootstrap: &str, topic: &str) -> Result<Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    if high <= low {
        return Ok(Vec::new());
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let deadline = Instant::now() + WITHIN;
    let mut payloads = Vec::new();
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            payloads.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        }
        let position = consumer.position()?.find_partition(topic, 0).map(|e| e.offset());
        if matches!(position, Some(Offset::Offset(p)) if p >= high) {
            return Ok(payloads);
        }
        ensure!(Instant::now() < deadline, "timed out reading {topic} to offset {high} ({} records)", payloads.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_pipeline_whose_transaction_fails_restarts_and_commits_each_output_once() -> Result<()> {
    let broker = KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    let admin = admin(&bootstrap)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    // The output takes records of at most 200 bytes: each output is larger.
    let topics = [
        NewTopic::new(&input, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&output, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "200"),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    for created in admin.create_topics(&topics, &options).await? {
        created.map_err(|(topic, code)| anyhow::anyhow!("creating topic {topic}: {code}"))?;
    }
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    let filler = "x".repeat(300);
    let inputs: Vec<String> = (0..5).map(|i| format!("e{i}-{filler}")).collect();
    for payload in &inputs {
        producer
            .send(FutureRecord::<(), _>::to(&input).partition(0).payload(payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
    }

    let scratch = Scratch::new()?;
    let config = format!(
        r#"{runtime}
shutdown_timeout = "10s"

[admin]
listen = "{ANY_PORT}"

[pipelines.eos]
source = {{ kind = "kafka", brokers = "{bootstrap}", group = "{group}", topics = ["{input}"], exactly_once = true, commit_interval = "300ms", transactional_id = "{group}-tx", options = {{ "session.timeout.ms" = "6000" }} }}
sink = {{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}
dead_letter = {{ kind = "kafka", brokers = "{bootstrap}", topic = "{dlq}" }}
plugin = {{ path = {plugin} }}
restart = {{ initial_backoff = "200ms", max_backoff = "1s" }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("passthrough")),
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let port = host.admin_port()?;
    let restarting = |p: &serde_json::Value| p["state"] == "restarting" || p["restarts"].as_u64() >= Some(1);
    host.wait_until("eos to fail and restart", WITHIN, || {
        http_request(port, "GET", "/pipelines/eos", None, b"")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .is_some_and(|p| restarting(&p))
    })?;
    ensure!(committed(&bootstrap, &group, &input)? <= 0, "nothing committed while the output refuses the records");

    // The topic takes them now.
    let mut raise = AlterConfig::new(ResourceSpecifier::Topic(&output));
    raise = raise.set("max.message.bytes", "1048588");
    for altered in admin.alter_configs([&raise], &options).await? {
        altered.map_err(|(what, code)| anyhow::anyhow!("altering {what:?}: {code}"))?;
    }
    host.wait_until("the input committed to its end", WITHIN, || committed(&bootstrap, &group, &input).is_ok_and(|o| o == 5))?;
    let m = metrics(port)?;
    ensure!(m.get(r#"sluice_pipeline_restarts_total{pipeline="eos"}"#).is_some_and(|r| *r >= 1.0), "{m:#?}");
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    ensure!(finished.stderr.contains("pipeline stopped: sink failed"), "the transaction's failure stopped the run: {}", finished.stderr);

    let outputs = read_committed(&bootstrap, &output)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for payload in &outputs {
        *counts.entry(payload.as_str()).or_default() += 1;
    }
    ensure!(
        outputs.len() == 5 && counts.len() == 5,
        "every output once under read_committed: {} records, {} distinct",
        outputs.len(),
        counts.len()
    );
    ensure!(outputs == inputs, "in order");
    ensure!(read_committed(&bootstrap, &dlq)?.is_empty(), "nothing dead-lettered");
    Ok(())
}
