//! Exactly-once mode: one transactional producer per pipeline, shared by
//! its sinks (outputs, routes, dead letter) and its source (input offsets).
//!
//! The source commits at intervals. To commit, it stops taking events,
//! waits until every event handed out has settled (its records are in the
//! transaction and acknowledged by the brokers), then sends the input
//! offsets to the transaction and commits it. So a transaction holds exactly
//! the outputs of the events whose offsets it commits: a crash at any point
//! either commits both or neither, and the restarted host (same
//! transactional id) fences the old producer, whose open transaction the
//! broker aborts. `read_committed` readers see each output once.
//!
//! The cost is the drain at every commit: throughput drops with a shorter
//! `commit_interval` (measured in docs/benchmarks.md).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::TopicPartition;
use super::Context;

/// The default `transaction.timeout.ms` (unless the source's `options` or
/// `producer_options` set it): five commit intervals, at least 10 s.
///
/// The broker aborts a transaction open longer than this. A transaction is
/// open for one `commit_interval` plus the drain before its commit, so five
/// intervals leave room for slow events. librdkafka's own default, 60 s, is
/// what a killed host costs the others: until the broker aborts the dead
/// host's open transaction (this timeout, plus up to the broker's
/// `transaction.abort.timed.out.transaction.cleanup.interval.ms`, 10 s by
/// default), `read_committed` readers of the partitions it wrote see nothing
/// new, not even the survivors' committed records. The price of a shorter
/// timeout: librdkafka lowers `message.timeout.ms` and `socket.timeout.ms`
/// to it, so a broker unreachable for longer fails the open transaction
/// (the pipeline stops and its events are read again after a restart).
pub fn default_timeout(commit_interval: Duration) -> Duration {
    commit_interval.saturating_mul(5).max(Duration::from_secs(10))
}

/// The transaction timeout a source's librdkafka properties give.
pub fn timeout(commit_interval: Duration, properties: &rdkafka::ClientConfig) -> Duration {
    properties
        .get("transaction.timeout.ms")
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_else(|| default_timeout(commit_interval))
}

/// How long a transaction call may take (init, commit, abort).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A transactional producer's call that failed; the transaction is then
/// aborted or the pipeline stops.
#[derive(Debug, Clone, thiserror::Error)]
#[error("kafka transaction ({id}): {message}")]
pub struct TransactionError {
    /// The transactional id.
    pub id: String,
    /// What failed, in words.
    pub message: String,
    /// Its producer was fenced (the message says so, and what to do).
    pub fenced: bool,
}

/// A transactional producer's failure in words ([`Transaction::explain`]):
/// the caller tells a fenced producer (another took over its
/// transactional id; the words say what to do) from any other failure by
/// the variant, not by the words.
#[derive(Debug, Clone, PartialEq)]
pub enum Explained {
    /// Another producer took over the transactional id.
    Fenced(String),
    /// Any other failure.
    Other(String),
}

impl Explained {
    /// Whether the producer was fenced.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Explained::Fenced(_))
    }

    /// The words, whichever the variant.
    pub fn into_message(self) -> String {
        match self {
            Explained::Fenced(message) | Explained::Other(message) => message,
        }
    }
}

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Explained::Fenced(message) | Explained::Other(message) => f.write_str(message),
        }
    }
}

/// A Kafka pipeline's exactly-once transaction: one transactional producer
/// whose transaction carries the outputs, the state changelog and the
/// consumed offsets, committed together.
pub struct Transaction {
    /// The transactional producer.
    pub producer: FutureProducer<Context>,
    /// Its `transactional.id`.
    pub id: String,
    /// Sends hold it shared while they enqueue; a commit holds it
    /// exclusively, so no record can slip in between sending the offsets and
    /// committing. Never held across an await.
    pub gate: std::sync::RwLock<()>,
}

impl Transaction {
    /// Creates the producer, fences any earlier producer with the same id
    /// (aborting its open transaction) and begins the first transaction.
    /// `timeout` is the `transaction.timeout.ms` (see `timeout` in this
    /// module).
    pub async fn open(mut config: rdkafka::ClientConfig, id: String, timeout: Duration) -> Result<Arc<Self>, TransactionError> {
        let failed = |e: KafkaError| TransactionError { id: id.clone(), message: e.to_string(), fenced: false };
        config
            .set("transactional.id", &id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("transaction.timeout.ms", timeout.as_millis().to_string());
        let context = Context::new(format!("kafka transactional producer {id}"));
        let last_error = context.last_error();
        let producer: FutureProducer<Context> = config.create_with_context(context).map_err(failed)?;
        let probe = producer.clone();
        let producer = blocking(move || {
            producer.init_transactions(CALL_TIMEOUT)?;
            producer.begin_transaction()?;
            Ok(producer)
        })
        .await
        .map_err(|e| {
            let explained = match (fenced(&probe), last_error.get()) {
                (false, Some(last)) => Explained::Other(format!(
                    "{e}; the last error of its connection to the brokers: {last}; check the source's `tls` and `sasl` settings"
                )),
                _ => explain_failure(&probe, &id, e),
            };
            let fenced = explained.is_fenced();
            TransactionError { id: id.clone(), message: format!("cannot start transactions: {explained}"), fenced }
        })?;
        tracing::info!(transactional_id = %id, timeout_ms = timeout.as_millis() as u64, "kafka transactions started");
        Ok(Arc::new(Self { producer, id, gate: std::sync::RwLock::new(()) }))
    }

    /// Why a call of this producer failed, in words: a fenced producer is
    /// named as such, with what to do.
    pub fn explain(&self, error: impl std::fmt::Display) -> Explained {
        explain_failure(&self.producer, &self.id, error.to_string())
    }

    /// Whether another producer with this transactional id took over.
    pub fn fenced(&self) -> bool {
        fenced(&self.producer)
    }

    /// Commits the open transaction and begins the next one, if `settled`
    /// (called once the gate is held, so no record can be sent meanwhile)
    /// returns the consumer's commit points: `None` means events are still
    /// in flight, and nothing is committed (`Ok(false)`). Computing the
    /// points under the gate is what keeps a transaction's records and
    /// offsets in step. Blocks: call it off the async threads.
    pub fn commit_blocking(
        &self,
        settled: impl FnOnce() -> Option<Vec<(TopicPartition, i64)>>,
        group: &ConsumerGroupMetadata,
    ) -> Result<bool, TransactionError> {
        let _exclusive = self.gate.write().map_err(|_| self.error("a sender panicked".into()))?;
        let Some(offsets) = settled() else { return Ok(false) };
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for ((topic, partition), offset) in &offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|e| self.error(format!("bad offset for {topic}/{partition}: {e}")))?;
        }
        let result = (|| {
            if list.count() > 0 {
                self.producer.send_offsets_to_transaction(&list, group, CALL_TIMEOUT)?;
            }
            self.producer.commit_transaction(CALL_TIMEOUT)?;
            self.producer.begin_transaction()
        })();
        result.map(|()| true).map_err(|e| {
            // A commit can fail before librdkafka knows it was fenced: Kafka 4
            // may answer a fenced producer's EndTxn with an error code
            // librdkafka does not name ("Unknown broker error"). Aborting
            // asks the broker again (a fenced producer's abort fails fatally,
            // which `fenced` then sees), and an abortable error needs the
            // abort anyway before this producer can be used again.
            if !self.fenced() {
                if let Err(abort) = self.producer.abort_transaction(CALL_TIMEOUT) {
                    tracing::debug!(transactional_id = %self.id, "abort after a failed commit failed too: {abort}");
                }
            }
            if self.fenced() {
                let explained = self.explain(e);
                TransactionError { fenced: explained.is_fenced(), ..self.error(explained.into_message()) }
            } else {
                self.error(format!("commit failed ({e}); the broker aborts the transaction and its events are read again"))
            }
        })
    }

    /// [`Transaction::commit_blocking`] on a blocking thread.
    pub async fn commit(
        self: &Arc<Self>,
        settled: impl FnOnce() -> Option<Vec<(TopicPartition, i64)>> + Send + 'static,
        group: ConsumerGroupMetadata,
    ) -> Result<bool, TransactionError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.commit_blocking(settled, &group))
            .await
            .unwrap_or_else(|e| Err(self.error(format!("the commit stopped: {e}"))))
    }

    /// Aborts the open transaction: its records are never seen by
    /// `read_committed` readers.
    pub async fn abort(self: &Arc<Self>) -> Result<(), TransactionError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _exclusive = this.gate.write().map_err(|_| this.error("a sender panicked".into()))?;
            this.producer.abort_transaction(CALL_TIMEOUT).map_err(|e| this.error(format!("abort failed: {e}")))
        })
        .await
        .unwrap_or_else(|e| Err(self.error(format!("the abort stopped: {e}"))))
    }

    fn error(&self, message: String) -> TransactionError {
        TransactionError { id: self.id.clone(), message, fenced: false }
    }
}

/// Error codes that mean another producer with the same transactional id
/// was initialised after this one (this one is a zombie to the broker).
fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::Fenced | RDKafkaErrorCode::InvalidProducerEpoch)
}

fn fenced(producer: &FutureProducer<Context>) -> bool {
    producer.client().fatal_error().is_some_and(|(code, _)| is_fencing(code))
}

/// `error`, or, when the producer was fenced, what that means and what to
/// do. After fencing librdkafka fails every queued record with `PurgeQueue`,
/// which names nothing.
fn explain_failure(producer: &FutureProducer<Context>, id: &str, error: String) -> Explained {
    match producer.client().fatal_error() {
        Some((code, reason)) if is_fencing(code) => Explained::Fenced(format!(
            "this host's producer was fenced ({reason}): another producer started with the same transactional id `{id}` and took over. \
             Two hosts running at once must not share a transactional id: give each its own `runtime.instance_id` (or `source.transactional_id`). \
             This pipeline stops; its open transaction is aborted and its events are handled by the other producer's host ({error})"
        )),
        Some((code, reason)) => Explained::Other(format!("{error} (fatal producer error {code:?}: {reason})")),
        None => Explained::Other(error),
    }
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> Result<T, KafkaError> + Send + 'static) -> Result<T, String> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the call stopped: {e}")),
    }
}
