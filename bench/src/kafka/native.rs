//! `sluice-bench native-kafka`: the native baselines of the Kafka bench, a
//! process of their own as `sluice run` is, so both are measured the same
//! way (CPU time from `/proc/<pid>/stat`, pinned with the same affinity)
//! and neither shares threads or an allocator with the load generator.
//! Stops on SIGTERM, committing what it has done.
//!
//! - at-least-once: an rdkafka `StreamConsumer` → `FutureProducer`
//!   passthrough, the standard at-least-once pattern: auto-commit on, but
//!   `enable.auto.offset.store=false` and an input's offset stored only once
//!   its output's delivery report came back (in input order).
//! - exactly-once: a transactional passthrough (read_committed
//!   `BaseConsumer`, transactional `BaseProducer`): every `interval`, the
//!   consumer's positions are sent to the transaction and it is committed.
//!
//! Every producer is idempotent, `acks=all`, `linger.ms=5`,
//! `partitioner=murmur2_random`: sluice's sink defaults.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message};
use tokio::sync::oneshot;

use super::processor::Topics;

/// Inputs whose output is not yet acknowledged, at most, for the
/// at-least-once passthrough.
const MAX_IN_FLIGHT: usize = 4096;

/// Runs a passthrough until SIGTERM; `exactly_once`: the transaction
/// interval, or at-least-once.
pub async fn run(topics: Topics, exactly_once: Option<Duration>) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    match exactly_once {
        None => {
            let (stop, stopped) = oneshot::channel();
            tokio::spawn(async move {
                term.recv().await;
                let _ = stop.send(());
            });
            at_least_once(&topics, stopped).await
        }
        Some(interval) => {
            // A blocking loop of its own: the textbook transactional loop
            // polls with timeouts.
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            tokio::spawn(async move {
                term.recv().await;
                flag.store(true, Ordering::Release);
            });
            tokio::task::spawn_blocking(move || transactional(&topics, interval, &stop)).await?
        }
    }
}

/// The producer settings sluice's sink uses by default.
fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random");
    config
}

/// The consumer settings sluice's source uses (less the commit ones).
fn consumer_config(topics: &Topics) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &topics.brokers)
        .set("group.id", &topics.group)
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "8192");
    config
}

/// At-least-once: consume, produce, and store the input's offset for the
/// next auto-commit once the output's delivery report succeeded. Delivery
/// futures are awaited in input order (up to [`MAX_IN_FLIGHT`] pending), so
/// a stored offset never passes an undelivered output.
async fn at_least_once(topics: &Topics, stop: oneshot::Receiver<()>) -> Result<()> {
    let consumer: StreamConsumer = consumer_config(topics)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000") // sluice's default commit_interval
        .set("enable.auto.offset.store", "false")
        .create()?;
    let producer: FutureProducer = producer_config(&topics.brokers).create()?;
    consumer.subscribe(&[&topics.input])?;
    let input_topic = topics.input.as_str();
    let mut inputs = consumer.stream().take_until(stop);
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let (partition, offset) = done?;
                consumer.store_offset(input_topic, partition, offset)?;
            }
            next = inputs.next(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(input) = next else { break };
                let input = input?;
                let (partition, offset) = (input.partition(), input.offset());
                let record = FutureRecord::<(), [u8]>::to(&topics.output).payload(input.payload().unwrap_or_default());
                let delivery = producer.send_result(record).map_err(|(e, _)| anyhow!(e).context("producing"))?;
                in_flight.push_back(async move {
                    match delivery.await {
                        Ok(Ok(_)) => Ok((partition, offset)),
                        Ok(Err((e, _))) => Err(anyhow!(e).context("an output was not delivered")),
                        Err(_) => Err(anyhow!("a delivery was cancelled")),
                    }
                });
            }
            else => break,
        }
    }
    drop(inputs);
    while let Some(done) = in_flight.next().await {
        let (partition, offset) = done?;
        consumer.store_offset(input_topic, partition, offset)?;
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Exactly-once: a read_committed consumer and a transactional producer on
/// one thread. Outputs go into the open transaction; `interval` after the
/// transaction's first output, the consumer's positions are added to it and
/// it is committed, and the next begins.
fn transactional(topics: &Topics, interval: Duration, stop: &AtomicBool) -> Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(30);
    let consumer: BaseConsumer =
        consumer_config(topics).set("enable.auto.commit", "false").set("isolation.level", "read_committed").create()?;
    let producer: BaseProducer = producer_config(&topics.brokers)
        .set("transactional.id", format!("native-{}", topics.group))
        .set("transaction.timeout.ms", "60000")
        .create()?;
    producer.init_transactions(TIMEOUT)?;
    consumer.subscribe(&[&topics.input])?;
    producer.begin_transaction()?;
    let commit = || -> Result<()> {
        let positions = consumer.position()?;
        let group = consumer.group_metadata().context("no consumer group metadata")?;
        producer.send_offsets_to_transaction(&positions, &group, TIMEOUT)?;
        producer.commit_transaction(TIMEOUT)?;
        producer.begin_transaction()?;
        Ok(())
    };
    let mut opened: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        if let Some(input) = consumer.poll(Duration::from_millis(10)) {
            let input = input?;
            let payload = input.payload().unwrap_or_default();
            loop {
                match producer.send(BaseRecord::<(), [u8]>::to(&topics.output).payload(payload)) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(anyhow!(e).context("producing")),
                }
            }
            opened.get_or_insert_with(Instant::now);
        }
        producer.poll(Duration::ZERO); // delivery reports
        if opened.is_some_and(|at| at.elapsed() >= interval) {
            commit()?;
            opened = None;
        }
    }
    if opened.is_some() {
        commit()?;
    }
    producer.abort_transaction(TIMEOUT)?; // the empty one begun last
    Ok(())
}
