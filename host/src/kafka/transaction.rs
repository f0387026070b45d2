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
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::TopicPartition;
use super::Context;

/// The broker aborts a transaction open longer than this
/// (`transaction.timeout.ms`, unless the source's `options` set it).
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// How long a transaction call may take (init, commit, abort).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
#[error("kafka transaction ({id}): {message}")]
pub struct TransactionError {
    pub id: String,
    pub message: String,
}

pub struct Transaction {
    pub producer: FutureProducer<Context>,
    pub id: String,
    /// Sends hold it shared while they enqueue; a commit holds it
    /// exclusively, so no record can slip in between sending the offsets and
    /// committing. Never held across an await.
    pub gate: std::sync::RwLock<()>,
}

impl Transaction {
    /// Creates the producer, fences any earlier producer with the same id
    /// (aborting its open transaction) and begins the first transaction.
    pub async fn open(mut config: rdkafka::ClientConfig, id: String) -> Result<Arc<Self>, TransactionError> {
        let failed = |e: KafkaError| TransactionError { id: id.clone(), message: e.to_string() };
        config
            .set("transactional.id", &id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random");
        if config.get("transaction.timeout.ms").is_none() {
            config.set("transaction.timeout.ms", DEFAULT_TIMEOUT_MS.to_string());
        }
        let producer: FutureProducer<Context> =
            config.create_with_context(Context::new(format!("kafka transactional producer {id}"))).map_err(failed)?;
        let producer = blocking(move || {
            producer.init_transactions(CALL_TIMEOUT)?;
            producer.begin_transaction()?;
            Ok(producer)
        })
        .await
        .map_err(|e| TransactionError { id: id.clone(), message: format!("cannot start transactions: {e}") })?;
        Ok(Arc::new(Self { producer, id, gate: std::sync::RwLock::new(()) }))
    }

    /// Commits the open transaction and begins the next one, if `settled`
    /// (called once the gate is held, so no record can be sent meanwhile)
    /// returns the consumer's commit points: `None` means events are still
    /// in flight, and nothing is committed (`Ok(false)`). Computing the
    /// points under the gate is what keeps a transaction's records and
    /// offsets in step. Blocks: call it off the async threads.
    pub fn commit_blocking(&self, settled: impl FnOnce() -> Option<Vec<(TopicPartition, i64)>>, group: &ConsumerGroupMetadata) -> Result<bool, TransactionError> {
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
        result
            .map(|()| true)
            .map_err(|e| self.error(format!("commit failed ({e}); the broker aborts the transaction and its events are read again")))
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
        TransactionError { id: self.id.clone(), message }
    }
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> Result<T, KafkaError> + Send + 'static) -> Result<T, String> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the call stopped: {e}")),
    }
}
