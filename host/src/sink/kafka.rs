//! Kafka produce. A record's receipt resolves with its delivery report: the
//! partition leader has it with every in-sync replica (`acks=all`). The
//! producer is idempotent, so librdkafka's own retries (a broker restart, a
//! leader change) never write a record twice or out of order.
//!
//! In exactly-once mode the records go through the pipeline's
//! [`Transaction`] instead, and become visible to `read_committed` readers
//! when the source commits it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::{Receipt, Record, Sink, SinkContext, SinkError};
use crate::config::{valid_topic, KafkaSasl, KafkaTls, Secret};
use crate::event::Output;
use crate::kafka::transaction::{Explained, Transaction};
use crate::kafka::{client_config, Context, OPEN_TIMEOUT};

/// Kafka's default largest record (`message.max.bytes`), used unless the
/// sink's options set another.
const DEFAULT_MAX_BYTES: usize = 1_000_000;

/// Kafka produce with an idempotent producer: a record is accepted
/// once the partition leader and its in-sync replicas have it
/// (`acks=all`). Keys choose partitions the way Java clients do
/// (murmur2), so keyed outputs land where a Java producer would put them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, comma-separated `host:port`. Default `127.0.0.1:9092`.
    #[serde(default = "crate::kafka::default_brokers")]
    pub brokers: String,
    /// Topic for outputs without a destination; an output's destination
    /// (that names no route) is its topic. Unset: every output needs one.
    #[serde(default)]
    pub topic: Option<String>,
    /// TLS to the brokers, as for a Kafka source.
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    /// SASL authentication, as for a Kafka source.
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka properties (`compression.type` — `zstd`, `lz4`,
    /// `snappy`, `gzip` —, `linger.ms`, …). Values are never printed.
    /// In an exactly-once pipeline, records go through the source's
    /// producer: the source's `tls`, `sasl`, `options` and
    /// `producer_options` apply, not these.
    #[serde(default)]
    pub options: BTreeMap<String, Secret>,
}

impl KafkaSinkConfig {
    /// A sink on the process's shared idempotent producer for these
    /// brokers and options.
    pub async fn build(&self, cx: &SinkContext<'_>) -> Result<KafkaSink, SinkError> {
        let options = self.connection_options();
        Ok(KafkaSink::new(cx.producers.get(&self.brokers, &options).await?, &self.brokers, self.topic.clone(), &options))
    }

    /// A sink writing into an exactly-once pipeline's `transaction` (whose
    /// producer has the source's connection settings).
    pub fn build_transactional(&self, transaction: &Arc<Transaction>) -> KafkaSink {
        KafkaSink::transactional(transaction.clone(), &self.brokers, self.topic.clone(), &self.options)
    }

    /// The librdkafka properties of the sink's producer: TLS, SASL and
    /// `options`.
    pub fn connection_options(&self) -> BTreeMap<String, Secret> {
        crate::kafka::connection_options(self.tls.as_ref(), self.sasl.as_ref(), &self.options)
    }
}

/// The process's idempotent producers, one per cluster and option set:
/// pipelines writing to one cluster share a producer (its threads, buffers
/// and connections).
#[derive(Default)]
pub struct Producers {
    open: Mutex<HashMap<ClusterKey, FutureProducer<Context>>>,
}

/// Brokers and extra options: what makes two producers different.
type ClusterKey = (String, BTreeMap<String, Secret>);

impl Producers {
    pub(crate) async fn get(&self, brokers: &str, options: &BTreeMap<String, Secret>) -> Result<FutureProducer<Context>, SinkError> {
        let mut open = self.open.lock().await;
        let key = (brokers.to_owned(), options.clone());
        if let Some(producer) = open.get(&key) {
            return Ok(producer.clone());
        }
        let what = format!("kafka producer for {brokers}");
        let mut config = client_config(brokers, options);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Keys pick partitions as Java clients do.
            .set("partitioner", "murmur2_random");
        if !options.contains_key("linger.ms") {
            config.set("linger.ms", "5");
        }
        let context = Context::new(what.clone());
        let last_error = context.last_error();
        let producer: FutureProducer<Context> =
            config.create_with_context(context).map_err(|e| SinkError::Open { what: what.clone(), message: e.to_string() })?;
        reachable(&producer, brokers, last_error).await.map_err(|message| SinkError::Open { what, message })?;
        open.insert(key, producer.clone());
        Ok(producer)
    }

    /// Flushes every producer: what was sent is delivered or has failed.
    pub async fn flush_all(&self) {
        let producers: Vec<_> = self.open.lock().await.drain().map(|(_, p)| p).collect();
        for producer in producers {
            let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        }
    }
}

/// Fails with a clear message when no broker of the cluster answers.
async fn reachable(producer: &FutureProducer<Context>, brokers: &str, last_error: crate::kafka::LastError) -> Result<(), String> {
    let producer = producer.clone();
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        producer.client().fetch_metadata(None, OPEN_TIMEOUT).map(|_| ()).map_err(|e| last_error.unreachable(&brokers, e))
    })
    .await
    .unwrap_or_else(|e| Err(format!("metadata request stopped: {e}")))
}

enum Via {
    Idempotent(FutureProducer<Context>),
    Transaction(Arc<Transaction>),
}

pub struct KafkaSink {
    via: Via,
    /// Shared, not copied, into every record's delivery future (below).
    topic: Option<Arc<str>>,
    max_bytes: usize,
    describe: Arc<str>,
    /// Partition counts of the topics replies named partitions of, and when
    /// each was read ([`Sink::has_partition`]).
    partitions: std::sync::Mutex<HashMap<String, (i32, Instant)>>,
}

/// How often a topic's partition count is read again when a reply names a
/// partition beyond it (partitions may have been added since): often
/// enough to notice, rarely enough that a caller sending bad headers does
/// not turn each reply into a metadata request.
const PARTITIONS_REREAD: Duration = Duration::from_secs(1);

/// How long reading a topic's partition count may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

impl KafkaSink {
    /// A sink on a shared idempotent producer.
    pub fn new(producer: FutureProducer<Context>, brokers: &str, topic: Option<String>, options: &BTreeMap<String, Secret>) -> Self {
        Self::with(Via::Idempotent(producer), brokers, topic, options)
    }

    /// A sink writing into an exactly-once pipeline's transaction.
    pub fn transactional(transaction: Arc<Transaction>, brokers: &str, topic: Option<String>, options: &BTreeMap<String, Secret>) -> Self {
        Self::with(Via::Transaction(transaction), brokers, topic, options)
    }

    fn with(via: Via, brokers: &str, topic: Option<String>, options: &BTreeMap<String, Secret>) -> Self {
        let max_bytes = options.get("message.max.bytes").and_then(|v| v.0.parse().ok()).unwrap_or(DEFAULT_MAX_BYTES);
        let describe = match &topic {
            Some(topic) => format!("kafka:{brokers}/{topic}"),
            None => format!("kafka:{brokers}"),
        };
        Self { via, topic: topic.map(Arc::from), max_bytes, describe: Arc::from(describe), partitions: std::sync::Mutex::default() }
    }

    fn producer(&self) -> &FutureProducer<Context> {
        match &self.via {
            Via::Idempotent(producer) => producer,
            Via::Transaction(transaction) => &transaction.producer,
        }
    }

    /// The error in words, naming a fenced transactional producer as such.
    fn explain(&self, error: KafkaError) -> Explained {
        match &self.via {
            Via::Transaction(transaction) => transaction.explain(error),
            Via::Idempotent(_) => Explained::Other(error.to_string()),
        }
    }

    /// The partition count of `topic` as last read, and when.
    fn known_partitions(&self, topic: &str) -> Option<(i32, Instant)> {
        self.partitions.lock().ok()?.get(topic).copied()
    }

    /// Reads `topic`'s partition count from the broker; `None` if it cannot
    /// tell (no answer, no such topic).
    async fn read_partitions(&self, topic: &str) -> Option<i32> {
        let producer = self.producer().clone();
        let name = topic.to_owned();
        let count = tokio::task::spawn_blocking(move || {
            let metadata = producer.client().fetch_metadata(Some(&name), METADATA_TIMEOUT).ok()?;
            let topic = metadata.topics().iter().find(|t| t.name() == name && t.error().is_none())?;
            i32::try_from(topic.partitions().len()).ok().filter(|n| *n > 0)
        })
        .await
        .ok()??;
        if let Ok(mut partitions) = self.partitions.lock() {
            partitions.insert(topic.to_owned(), (count, Instant::now()));
        }
        Some(count)
    }

    fn write_error(&self, topic: &str, error: impl std::fmt::Display) -> SinkError {
        SinkError::Write { what: self.topic_what(topic), message: error.to_string() }
    }

    /// What a write to `topic` is called in errors.
    fn topic_what(&self, topic: &str) -> String {
        format!("{} topic `{topic}`", self.describe)
    }
}

/// A failed write to `what`: [`SinkError::Fenced`] when the transactional
/// producer was fenced, so the pipeline's end can tell.
fn write_failure(what: String, explained: Explained) -> SinkError {
    match explained {
        Explained::Fenced(message) => SinkError::Fenced { what, message },
        Explained::Other(message) => SinkError::Write { what, message },
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    async fn send(&self, record: Record) -> Result<Receipt, SinkError> {
        let Some(topic) = record.destination.as_deref().or(self.topic.as_deref()) else {
            return Err(SinkError::Write {
                what: self.describe.to_string(),
                message: "an output has no destination and the sink has no `topic`".into(),
            });
        };
        let mut headers = OwnedHeaders::new_with_capacity(record.header_count());
        for (key, value) in record.all_headers() {
            headers = headers.insert(KafkaHeader { key, value: Some(value) });
        }
        let mut message = FutureRecord::to(topic).payload(&record.payload).headers(headers);
        if let Some(key) = &record.key {
            message = message.key(key);
        }
        if let Some(partition) = record.partition {
            message = message.partition(partition);
        }
        let delivery = loop {
            let enqueued = {
                let _open = match &self.via {
                    Via::Transaction(transaction) => {
                        Some(transaction.gate.read().map_err(|_| self.write_error(topic, "transaction gate poisoned"))?)
                    }
                    Via::Idempotent(_) => None,
                };
                self.producer().send_result(message)
            };
            match enqueued {
                Ok(delivery) => break delivery,
                // The producer's queue is full: wait for deliveries to make
                // room. This is the sink's backpressure.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    message = returned;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, _)) => return Err(write_failure(self.topic_what(topic), self.explain(error))),
            }
        };
        // What a failed delivery names: formatted only when one fails (a
        // `format!` per record was 2% of the Kafka path's CPU).
        let (describe, named, default) = (self.describe.clone(), record.destination, self.topic.clone());
        let what = move || format!("{describe} topic `{}`", named.as_deref().or(default.as_deref()).unwrap_or_default());
        // A fenced producer fails its records with `PurgeQueue`: say why.
        let transaction = match &self.via {
            Via::Transaction(transaction) => Some(transaction.clone()),
            Via::Idempotent(_) => None,
        };
        Ok(Receipt::pending(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(write_failure(
                    what(),
                    match transaction {
                        Some(transaction) => transaction.explain(error),
                        None => Explained::Other(error.to_string()),
                    },
                )),
                Err(_) => Err(SinkError::Closed { what: what() }),
            }
        })))
    }

    fn check(&self, destination: Option<&str>, output: &Output) -> Result<(), String> {
        let topic = match destination.or(self.topic.as_deref()) {
            Some(topic) => topic,
            None => return Err("the output has no destination and the sink has no default `topic`".into()),
        };
        if !valid_topic(topic) {
            return Err(format!("{topic:?} is not a valid Kafka topic name (1 to 249 characters of a-z, A-Z, 0-9, `.`, `_`, `-`)"));
        }
        // librdkafka takes header names as C strings: a NUL would cut the
        // name short without an error.
        if let Some(header) = output.headers.iter().find(|h| h.key.contains('\0')) {
            return Err(format!("header name {:?} contains a NUL byte, which Kafka header names cannot carry", header.key));
        }
        let size = output.payload.len()
            + output.key.as_ref().map_or(0, Vec::len)
            + output.headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>();
        if size > self.max_bytes {
            return Err(format!("the record is {size} bytes, over the {} byte limit (`message.max.bytes`)", self.max_bytes));
        }
        Ok(())
    }

    async fn has_partition(&self, destination: Option<&str>, partition: i32) -> Result<(), String> {
        let Some(topic) = destination.or(self.topic.as_deref()) else { return Ok(()) };
        let known = self.known_partitions(topic);
        let count = match known {
            Some((count, _)) if partition < count => return Ok(()),
            Some((count, read)) if read.elapsed() < PARTITIONS_REREAD => count,
            // Unknown, or partitions may have been added since: read again.
            // A broker that cannot tell now leaves it to the write.
            _ => match self.read_partitions(topic).await {
                Some(count) => count,
                None => return Ok(()),
            },
        };
        if partition < count {
            Ok(())
        } else {
            Err(format!("topic `{topic}` has {count} partition{}, no partition {partition}", if count == 1 { "" } else { "s" }))
        }
    }

    async fn close(&self) -> Result<(), SinkError> {
        if let Via::Idempotent(producer) = &self.via {
            let producer = producer.clone();
            let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
            if let Ok(Err(e)) = flushed {
                return Err(SinkError::Write { what: self.describe.to_string(), message: format!("flush at close: {e}") });
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.describe.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::event::Header;

    fn sink(options: &BTreeMap<String, Secret>) -> Result<KafkaSink, KafkaError> {
        // Creating a producer does not connect: nothing listens on port 1.
        let producer: FutureProducer<Context> = client_config("127.0.0.1:1", options).create_with_context(Context::new("test".into()))?;
        Ok(KafkaSink::new(producer, "127.0.0.1:1", Some("out".into()), options))
    }

    fn output(payload: &[u8], headers: Vec<Header>) -> Output {
        Output { destination: None, key: None, payload: payload.to_vec(), headers, reply: false }
    }

    #[test]
    fn outputs_kafka_cannot_carry_are_refused_with_why() -> Result<(), KafkaError> {
        let options = BTreeMap::from([("message.max.bytes".to_owned(), Secret("1000".into()))]);
        let sink = sink(&options)?;
        assert_eq!(sink.check(None, &output(b"fine", vec![])), Ok(()));
        let nul = output(b"x", vec![Header { key: "a\0b".into(), value: vec![] }]);
        assert!(sink.check(None, &nul).is_err_and(|why| why.contains("NUL")));
        let big = output(&[b'x'; 1001], vec![]);
        assert!(sink.check(None, &big).is_err_and(|why| why.contains("over the 1000 byte limit")));
        assert!(sink.check(Some("bad topic"), &output(b"x", vec![])).is_err_and(|why| why.contains("not a valid Kafka topic name")));
        Ok(())
    }

    /// The error of a record that is never delivered names the sink and
    /// the topic that record was for: its own destination, else the sink's.
    #[tokio::test]
    async fn an_undelivered_record_names_its_topic() -> Result<(), Box<dyn std::error::Error>> {
        // Nothing listens on port 1: each record times out after 200 ms.
        let options = BTreeMap::from([("message.timeout.ms".to_owned(), Secret("200".into()))]);
        let sink = sink(&options)?;
        let record = |destination: Option<&str>| Record {
            destination: destination.map(str::to_owned),
            key: None,
            payload: b"x".to_vec(),
            headers: vec![Header { key: "h".into(), value: b"v".to_vec() }],
            id: None,
            partition: None,
            version: None,
        };
        for (destination, topic) in [(None, "out"), (Some("elsewhere"), "elsewhere")] {
            let receipt = sink.send(record(destination)).await?;
            let failed = tokio::time::timeout(Duration::from_secs(30), receipt.wait()).await?;
            match failed {
                Err(SinkError::Write { what, message }) => {
                    assert_eq!(what, format!("kafka:127.0.0.1:1/out topic `{topic}`"));
                    assert!(message.contains("timed out"), "{message}");
                }
                other => return Err(format!("expected a write error, got {other:?}").into()),
            }
        }
        Ok(())
    }
}
