//! Kafka: a consumer group, at-least-once by default, exactly-once on request.
//!
//! At-least-once: librdkafka's auto-commit is off. Each event's offset is
//! marked done when its ack settles (its outputs or dead-letter record
//! acknowledged by their sinks), and a committer task commits, every
//! `commit_interval`, each partition's commit point: the lowest offset not
//! yet done ([`Tracker`]). So offsets advance in order per partition even
//! when events finish out of order, and a crash redelivers only work that
//! was not finished.
//!
//! Rebalances: before partitions are revoked, intake is already stopped (the
//! callback runs inside [`Source::next`]); the source waits up to
//! `REVOKE_DRAIN` for their in-flight events to finish, then commits their
//! commit points synchronously. Events still in flight after that are
//! finished but not committed: the partition's next owner handles them
//! again, which at-least-once allows.
//!
//! Exactly-once: see [`crate::kafka::transaction`]; the source commits the
//! transaction instead of committing offsets, reads `read_committed`, and a
//! revoke drains everything in flight and commits the transaction.
//!
//! Bounded work: the dispatcher takes events only when a lane has room, and
//! librdkafka's prefetch is capped (`queued.max.messages.kbytes`), so a slow
//! plugin or sink slows consumption instead of growing memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::Deserialize;

use super::{Ack, Acknowledge, Delivery, Settlement, Source, SourceError};
use crate::config::{KafkaSasl, KafkaTls, Secret};
use crate::kafka::offsets::{Position, TopicPartition, Tracker};
use crate::kafka::transaction::{Transaction, TransactionError};
use crate::kafka::{client_config, message_event, Context, OPEN_TIMEOUT};

/// How long a revoke waits for the revoked partitions' events to finish.
const REVOKE_DRAIN: Duration = Duration::from_secs(10);

/// What must follow the partitions this host owns: the Kafka changelog
/// state backend ([`crate::state::kafka_changelog`]). Called from the
/// consumer's rebalance callback, with intake stopped: `assigned` runs
/// before librdkafka is told to fetch the partitions, so none of their
/// events is handed out before it returns; `revoked` after the revoked
/// partitions' work is committed. Both may block.
pub trait PartitionState: Send + Sync {
    /// Makes the partitions' state ready (restores it). An error stops the
    /// source before any event of theirs is handed out.
    fn assigned(&self, partitions: &[(String, i32)]) -> Result<(), String>;
    /// Forgets the partitions' state: the next owner has it.
    fn revoked(&self, partitions: &[(String, i32)]);
}

/// Kafka: a consumer group reading topics, at-least-once. An event's
/// offset is committed only after its outputs (or its dead-letter record)
/// are acknowledged by their sinks, in order per partition even when
/// events finish out of order. With `exactly_once`, outputs and offsets
/// are committed together in Kafka transactions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, comma-separated `host:port`. Default `127.0.0.1:9092`.
    #[serde(default = "crate::kafka::default_brokers")]
    pub brokers: String,
    /// Consumer group. Hosts with the same group share the partitions.
    pub group: String,
    /// Topics to read. Give `topics` or `pattern`, not both.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression over topic names (e.g. `^orders\\..*`):
    /// every matching topic, including ones created later.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Where a group with no committed offset starts: `earliest`
    /// (default) or `latest`.
    #[serde(default)]
    pub start: StartFrom,
    /// How often done offsets are committed. Default 1s. A crash
    /// redelivers at most this much work (plus what was in flight).
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Kafka → plugin → Kafka with transactions: outputs, dead letters
    /// and input offsets of each interval commit together or not at all.
    /// Every sink of the pipeline must then be a `kafka` sink on the same
    /// `brokers`, and readers of the outputs should use `read_committed`.
    #[serde(default)]
    pub exactly_once: bool,
    /// The transactional id of this host's producer (`exactly_once`).
    /// Must be stable across restarts of one host and differ between
    /// hosts of a group. Default `sluice-<group>-<pipeline>-<instance>`,
    /// where `<instance>` is `runtime.instance_id` (default: the host
    /// name, `-N` added for a second host on one machine).
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// TLS to the brokers (`security.protocol` `ssl`, or `sasl_ssl` with
    /// `sasl`). Unset: plaintext, unless `options` say otherwise.
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    /// SASL authentication (`sasl_plaintext`, or `sasl_ssl` with `tls`).
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka properties for every client of the source: its
    /// consumer and, with `exactly_once`, its transactional producer
    /// (which leaves out the properties only consumers know). Passed as
    /// they are. Values are never printed.
    #[serde(default)]
    pub options: BTreeMap<String, Secret>,
    /// librdkafka properties for the consumer only (`session.timeout.ms`,
    /// `fetch.max.bytes`, …), applied after `options`.
    #[serde(default)]
    pub consumer_options: BTreeMap<String, Secret>,
    /// librdkafka properties for the exactly-once producer only
    /// (`transaction.timeout.ms`, `linger.ms`, `compression.type`, …),
    /// applied after `options`. Only with `exactly_once`.
    #[serde(default)]
    pub producer_options: BTreeMap<String, Secret>,
}

/// Where a Kafka consumer group with no committed offset starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartFrom {
    /// The oldest offset the partition still holds.
    #[default]
    Earliest,
    /// Only messages produced after the group first joins.
    Latest,
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}

impl KafkaSourceConfig {
    /// Joins the group and subscribes; exactly-once when `cx` carries the
    /// pipeline's transaction.
    pub async fn build(&self, cx: super::SourceContext<'_>) -> Result<KafkaSource, SourceError> {
        KafkaSource::open(self, cx.transaction, cx.lag, cx.partition_state).await
    }

    /// The transaction of pipeline `pipeline` when this source is
    /// exactly-once: its producer has the source's connection settings and
    /// `producer_options`.
    pub async fn open_transaction(&self, pipeline: &str) -> Result<Option<Arc<Transaction>>, String> {
        if !self.exactly_once {
            return Ok(None);
        }
        let id = self
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}-{pipeline}-{}", self.group, crate::kafka::instance::instance_id()));
        let mut properties = crate::kafka::producer_config(&self.brokers, &self.connection_options());
        for (key, value) in &self.producer_options {
            properties.set(key, &value.0);
        }
        let timeout = crate::kafka::transaction::timeout(self.commit_interval, &properties);
        Transaction::open(properties, id, timeout).await.map(Some).map_err(|e| e.to_string())
    }

    /// The librdkafka properties of every client of the source: TLS, SASL
    /// and `options`.
    pub fn connection_options(&self) -> BTreeMap<String, Secret> {
        crate::kafka::connection_options(self.tls.as_ref(), self.sasl.as_ref(), &self.options)
    }

    /// The consumer's properties: [`Self::connection_options`], then
    /// `consumer_options`.
    fn consumer_options(&self) -> BTreeMap<String, Secret> {
        let mut options = self.connection_options();
        options.extend(self.consumer_options.iter().map(|(k, v)| (k.clone(), v.clone())));
        options
    }
}

/// What the source, its acks, the committer and the rebalance callback share.
struct Shared {
    tracker: Mutex<Tracker>,
    /// Signalled when an event settles while a drain waits on it.
    settled: Condvar,
    /// Threads waiting on `settled`: settling skips the (system call of the)
    /// signal when nobody waits, which is nearly always.
    waiting: std::sync::atomic::AtomicUsize,
    /// The same, for async waiters.
    settled_async: tokio::sync::Notify,
    /// Exactly-once: set when an event was abandoned, so the open
    /// transaction holds outputs whose offsets it must not commit.
    tainted: std::sync::atomic::AtomicBool,
    /// The source commits through a transaction (only then does an
    /// abandoned event taint anything: at-least-once just re-reads it).
    exactly_once: bool,
    /// Set by `close`, which commits by itself: the revoke that leaving the
    /// group triggers then only forgets the partitions.
    closing: std::sync::atomic::AtomicBool,
    /// Exactly-once: when the transaction was last committed.
    last_commit: Mutex<Instant>,
    /// Exactly-once: a commit by the keeper task, or a restore of state in
    /// a rebalance, failed; the source stops.
    failure: Mutex<Option<Failure>>,
    describe: String,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        lock(&self.tracker)
    }

    /// Waits (blocking) until `ready` holds for the tracker or `deadline`.
    fn wait_blocking(&self, deadline: Instant, ready: impl Fn(&Tracker) -> bool) -> bool {
        let mut tracker = self.tracker();
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut done = true;
        while !ready(&tracker) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                done = false;
                break;
            }
            tracker = match self.settled.wait_timeout(tracker, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        self.waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        done
    }
}

/// Client callbacks of the consumer: logging, plus the revoke handling.
pub struct SourceContext {
    base: Context,
    shared: Arc<Shared>,
    transaction: Option<Arc<Transaction>>,
    lag: Arc<std::sync::atomic::AtomicI64>,
    partition_state: Option<Arc<dyn PartitionState>>,
}

impl ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.base.log(level, fac, log_message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason)
    }
    /// librdkafka's statistics (every `statistics.interval.ms`): the
    /// consumer lag of the assigned partitions, summed.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.lag.store(lag, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(list), Some(state)) = (rebalance, &self.partition_state) {
            // Before the partitions are assigned: nothing of theirs is
            // fetched, let alone handed out, until their state is restored.
            let assigned: Vec<(String, i32)> = list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
            if let Err(e) = blocking_wait(|| state.assigned(&assigned)) {
                tracing::error!(source = %self.shared.describe, "cannot restore the state of the assigned partitions: {e}");
                self.shared.tainted.store(true, std::sync::atomic::Ordering::SeqCst);
                *lock(&self.shared.failure) = Some(Failure::Restore(format!("restoring the state of the assigned partitions failed: {e}")));
            }
            return;
        }
        let Rebalance::Revoke(list) = rebalance else { return };
        let revoked: Vec<(String, i32)> = list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        if revoked.is_empty() {
            return;
        }
        self.revoke(consumer, &revoked);
        // After the commit: the revoked partitions' state belongs to their
        // next owner.
        if let Some(state) = &self.partition_state {
            state.revoked(&revoked);
        }
    }
}

impl SourceContext {
    /// Commits what the revoked partitions finished (at-least-once: their
    /// offsets; exactly-once: the whole transaction) and forgets them.
    fn revoke(&self, consumer: &BaseConsumer<Self>, revoked: &[(String, i32)]) {
        if self.shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
            self.shared.tracker().revoke(revoked);
            return;
        }
        // Lanes settle events on other threads; waiting here (inside the
        // consumer's poll, with intake stopped) lets them finish.
        let deadline = Instant::now() + REVOKE_DRAIN;
        let drained = blocking_wait(|| match &self.transaction {
            // A transaction commits everything at once: all must settle.
            Some(_) => self.shared.wait_blocking(deadline, |t| t.outstanding() == 0),
            None => self.shared.wait_blocking(deadline, |t| t.outstanding_in(revoked) == 0),
        });
        match &self.transaction {
            None => {
                let points = self.shared.tracker().revoke(revoked);
                if let Err(e) = commit(consumer, &points, CommitMode::Sync) {
                    tracing::warn!(source = %self.shared.describe, "commit before a rebalance failed ({e}); the new owner re-reads from the last commit");
                }
                tracing::info!(
                    source = %self.shared.describe,
                    partitions = revoked.len(),
                    drained,
                    "partitions revoked{}",
                    if drained { "" } else { "; events still in flight are handled again by the next owner" }
                );
            }
            Some(transaction) => {
                let tainted = self.shared.tainted.load(std::sync::atomic::Ordering::SeqCst);
                let result = match (drained && !tainted, consumer.group_metadata()) {
                    (true, Some(group)) => match blocking_wait(|| transaction.commit_blocking(settled_points(&self.shared), &group)) {
                        Ok(true) => Ok(()),
                        Ok(false) => Err("in-flight events did not finish in time".into()),
                        Err(e) => Err(e.to_string()),
                    },
                    _ => Err("in-flight events did not finish in time".into()),
                };
                match result {
                    Ok(()) => tracing::info!(source = %self.shared.describe, "transaction committed before a rebalance"),
                    Err(e) => {
                        // The open transaction cannot be committed: mark it,
                        // so the source aborts it and stops (its events are
                        // read again from the committed offsets).
                        self.shared.tainted.store(true, std::sync::atomic::Ordering::SeqCst);
                        tracing::error!(source = %self.shared.describe, "exactly-once: cannot commit before a rebalance: {e}");
                    }
                }
                self.shared.tracker().revoke(revoked);
            }
        }
    }
}

/// The commit points of an exactly-once source if nothing is in flight,
/// evaluated by the transaction under its gate.
fn settled_points(shared: &Arc<Shared>) -> impl FnOnce() -> Option<Vec<(TopicPartition, i64)>> + Send + 'static {
    let shared = shared.clone();
    move || {
        let tracker = shared.tracker();
        (tracker.outstanding() == 0).then(|| tracker.commit_points())
    }
}

/// Runs a blocking wait from inside the consumer's poll, which runs on an
/// async worker thread: on a multi-threaded runtime the worker is handed
/// over first, so other tasks keep running.
fn blocking_wait<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

fn commit<C: ConsumerContext>(consumer: &impl Consumer<C>, points: &[(TopicPartition, i64)], mode: CommitMode) -> Result<(), KafkaError> {
    if points.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::with_capacity(points.len());
    for ((topic, partition), offset) in points {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&list, mode)
}

pub struct KafkaSource {
    consumer: Arc<StreamConsumer<SourceContext>>,
    shared: Arc<Shared>,
    committer: Option<tokio::task::JoinHandle<()>>,
    transaction: Option<Arc<Transaction>>,
    commit_interval: Duration,
    /// A transaction commit in progress (kept across a cancelled `next`).
    committing: Option<tokio::task::JoinHandle<Result<(), TransactionError>>>,
    describe: String,
    errors_in_a_row: u32,
    partition_state: Option<Arc<dyn PartitionState>>,
}

impl KafkaSource {
    /// Joins the group and subscribes. `transaction` makes it exactly-once.
    async fn open(
        settings: &KafkaSourceConfig,
        transaction: Option<Arc<Transaction>>,
        lag: Arc<std::sync::atomic::AtomicI64>,
        partition_state: Option<Arc<dyn PartitionState>>,
    ) -> Result<Self, SourceError> {
        let options = settings.consumer_options();
        let subscription = match &settings.pattern {
            Some(pattern) if pattern.starts_with('^') => vec![pattern.clone()],
            Some(pattern) => vec![format!("^{pattern}")],
            None => settings.topics.clone(),
        };
        let describe = format!("kafka:{}/{}", settings.group, subscription.join(","));
        let failed = |message: String| SourceError::Broker { what: describe.clone(), message };
        let mut config = client_config(&settings.brokers, &options);
        config
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match settings.start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set("isolation.level", if transaction.is_some() { "read_committed" } else { "read_uncommitted" });
        if !options.contains_key("queued.max.messages.kbytes") {
            // Prefetch per partition; the default (64 MiB) is a lot of memory
            // for a host running many pipelines.
            config.set("queued.max.messages.kbytes", "8192");
        }
        let shared = Arc::new(Shared {
            tracker: Mutex::new(Tracker::default()),
            settled: Condvar::new(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            settled_async: tokio::sync::Notify::new(),
            tainted: std::sync::atomic::AtomicBool::new(false),
            exactly_once: transaction.is_some(),
            closing: std::sync::atomic::AtomicBool::new(false),
            last_commit: Mutex::new(Instant::now()),
            failure: Mutex::new(None),
            describe: describe.clone(),
        });
        if !options.contains_key("statistics.interval.ms") {
            // Consumer lag for `sluice_source_lag`.
            config.set("statistics.interval.ms", "5000");
        }
        let context = SourceContext {
            base: Context::new(describe.clone()),
            shared: shared.clone(),
            transaction: transaction.clone(),
            lag,
            partition_state: partition_state.clone(),
        };
        let consumer: StreamConsumer<SourceContext> =
            config.create_with_context(context).map_err(|e| failed(format!("cannot create the consumer: {e}")))?;
        let consumer = Arc::new(consumer);

        // Fail now, with the reason, rather than wait forever for a cluster
        // that is not there or topics that do not exist.
        let probe = consumer.clone();
        let topics = settings.topics.clone();
        let brokers = settings.brokers.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let metadata = probe.fetch_metadata(None, OPEN_TIMEOUT).map_err(Err)?;
            for topic in &topics {
                if !metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none()) {
                    return Err(Ok(format!(
                        "topic `{topic}` does not exist on {brokers}; create it (sluice does not create input topics)"
                    )));
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| failed(format!("metadata request stopped: {e}")))?;
        match checked {
            Ok(()) => {}
            Err(Ok(message)) => return Err(failed(message)),
            Err(Err(error)) => {
                // A consumer's errors and logs (a refused password, a bad
                // certificate) wait in its queue until it is polled: poll it
                // briefly, so the error says why.
                let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
                return Err(failed(consumer.context().base.last_error().unreachable(&settings.brokers, error)));
            }
        }

        let names: Vec<&str> = subscription.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| failed(format!("cannot subscribe: {e}")))?;
        let committer = Some(match &transaction {
            Some(transaction) => tokio::spawn(run_transaction_keeper(
                Arc::downgrade(&consumer),
                shared.clone(),
                transaction.clone(),
                settings.commit_interval,
            )),
            None => tokio::spawn(run_committer(Arc::downgrade(&consumer), shared.clone(), settings.commit_interval)),
        });
        Ok(Self {
            consumer,
            shared,
            committer,
            transaction,
            commit_interval: settings.commit_interval,
            committing: None,
            describe,
            errors_in_a_row: 0,
            partition_state,
        })
    }

    fn delivery(&self, message: &BorrowedMessage<'_>) -> Delivery {
        let (position, partition) = self.shared.tracker().handed_out(message.topic(), message.partition(), message.offset());
        let event = message_event(message);
        Delivery { partition, event, defect: None, ack: Ack::new(KafkaAck { position, shared: self.shared.clone() }) }
    }

    /// Exactly-once: commits the open transaction when the interval is up.
    /// Intake stops until every handed-out event has settled.
    async fn commit_transaction_if_due(&mut self) -> Result<(), SourceError> {
        let Some(transaction) = self.transaction.clone() else { return Ok(()) };
        if let Some(failure) = lock(&self.shared.failure).take() {
            return Err(self.failed(failure));
        }
        if self.committing.is_none() {
            if lock(&self.shared.last_commit).elapsed() < self.commit_interval {
                return Ok(());
            }
            loop {
                let settled = self.shared.settled_async.notified();
                if self.shared.tracker().outstanding() == 0 {
                    break;
                }
                settled.await;
            }
            if self.shared.tainted.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(self.broker_error(
                    "an event was abandoned inside the open transaction; aborting it (its events are read again after a restart)".into(),
                ));
            }
            let Some(group) = self.consumer.group_metadata() else {
                return Err(self.broker_error("no consumer group metadata for the transaction".into()));
            };
            let settled = settled_points(&self.shared);
            self.committing = Some(tokio::spawn(async move { transaction.commit(settled, group).await.map(|_| ()) }));
        }
        if let Some(committing) = self.committing.as_mut() {
            let joined = committing.await;
            self.committing = None;
            *lock(&self.shared.last_commit) = Instant::now();
            let result = joined.map_err(|e| self.broker_error(format!("commit task stopped: {e}")))?;
            result.map_err(|e| self.failed(Failure::Commit(e)))?;
        }
        Ok(())
    }

    fn broker_error(&self, message: String) -> SourceError {
        SourceError::Broker { what: self.describe.clone(), message }
    }

    /// The source's error for a failure found by its keeper or in a
    /// rebalance: [`SourceError::Fenced`] when the transaction's producer
    /// was fenced, so the pipeline's end can tell.
    fn failed(&self, failure: Failure) -> SourceError {
        match failure {
            Failure::Commit(e) if e.fenced => SourceError::Fenced { what: self.describe.clone(), message: e.to_string() },
            Failure::Commit(e) => self.broker_error(e.to_string()),
            Failure::Restore(message) => self.broker_error(message),
        }
    }
}

/// Why an exactly-once source stops, found off its own task.
#[derive(Debug)]
enum Failure {
    /// A transaction commit failed (its producer perhaps fenced).
    Commit(TransactionError),
    /// Restoring the state of newly assigned partitions failed.
    Restore(String),
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        self.commit_transaction_if_due().await?;
        loop {
            let received = match self.transaction {
                // Wake up at the commit interval even when no message comes.
                Some(_) => match tokio::time::timeout(self.commit_interval, self.consumer.recv()).await {
                    Ok(received) => received,
                    Err(_) => {
                        self.commit_transaction_if_due().await?;
                        continue;
                    }
                },
                None => self.consumer.recv().await,
            };
            match received {
                Ok(message) => {
                    // A restore that failed in the rebalance this `recv` ran:
                    // hand out nothing of the partitions it was for.
                    if self.partition_state.is_some() {
                        if let Some(failure) = lock(&self.shared.failure).take() {
                            return Err(self.failed(failure));
                        }
                    }
                    if self.errors_in_a_row > 0 {
                        tracing::info!(source = %self.describe, "receiving messages again");
                        self.errors_in_a_row = 0;
                    }
                    return Ok(Some(self.delivery(&message)));
                }
                Err(err) => {
                    if self.errors_in_a_row == 0 || self.errors_in_a_row.is_power_of_two() {
                        tracing::warn!(source = %self.describe, errors = self.errors_in_a_row + 1, "consuming failed, retrying: {err}");
                    }
                    self.errors_in_a_row += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        if let Some(committer) = self.committer.take() {
            committer.abort();
        }
        self.shared.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut outcome = Ok(());
        match self.transaction.clone() {
            None => {
                let points = self.shared.tracker().uncommitted();
                let consumer = self.consumer.clone();
                let committed = tokio::task::spawn_blocking(move || commit(&*consumer, &points, CommitMode::Sync).map(|()| points)).await;
                match committed {
                    Ok(Ok(points)) => self.shared.tracker().committed(&points),
                    Ok(Err(e)) => {
                        outcome = Err(self.broker_error(format!("final offset commit failed: {e}; the uncommitted events are read again")))
                    }
                    Err(e) => outcome = Err(self.broker_error(format!("final offset commit stopped: {e}"))),
                }
            }
            Some(transaction) => {
                if let Some(committing) = self.committing.take() {
                    let _ = committing.await;
                }
                let clean = self.shared.tracker().outstanding() == 0 && !self.shared.tainted.load(std::sync::atomic::Ordering::SeqCst);
                let group = self.consumer.group_metadata();
                match (clean, group) {
                    (true, Some(group)) => match transaction.commit(settled_points(&self.shared), group).await {
                        Ok(true) => {}
                        Ok(false) => {
                            outcome =
                                Err(self.broker_error("events were still in flight at close; the transaction was not committed".into()))
                        }
                        Err(e) => outcome = Err(self.failed(Failure::Commit(e))),
                    },
                    _ => {
                        tracing::warn!(source = %self.describe, "exactly-once: events unfinished at close; aborting the open transaction (they are read again)");
                        if let Err(e) = transaction.abort().await {
                            outcome = Err(self.broker_error(e.to_string()));
                        }
                    }
                }
            }
        }
        // Leaving the group blocks (a round trip): do it off the async threads.
        let consumer = self.consumer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
        })
        .await;
        outcome
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

struct KafkaAck {
    position: Position,
    shared: Arc<Shared>,
}

impl Acknowledge for KafkaAck {
    fn settle(self: Box<Self>, settlement: Settlement) {
        {
            let mut tracker = self.shared.tracker();
            match settlement {
                Settlement::Done | Settlement::DeadLettered => tracker.done(&self.position),
                // Kafka cannot redeliver one event: it comes again only from
                // the committed offset, after a restart or rebalance.
                Settlement::Redeliver { .. } | Settlement::Abandon => {
                    tracker.abandoned(&self.position);
                    if self.shared.exactly_once {
                        self.shared.tainted.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        }
        // The waiter registers under the tracker lock, which settling held
        // just now, so a drain cannot miss this signal.
        if self.shared.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.shared.settled.notify_all();
        }
        self.shared.settled_async.notify_waiters();
    }
}

/// Commits the done commit points every `interval` (at-least-once mode).
async fn run_committer(consumer: std::sync::Weak<StreamConsumer<SourceContext>>, shared: Arc<Shared>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        ticks.tick().await;
        let Some(consumer) = consumer.upgrade() else { return };
        let points = shared.tracker().uncommitted();
        if points.is_empty() {
            continue;
        }
        let committed = tokio::task::spawn_blocking(move || commit(&*consumer, &points, CommitMode::Sync).map(|()| points)).await;
        match committed {
            Ok(Ok(points)) => {
                shared.tracker().committed(&points);
                if failures > 0 {
                    tracing::info!(source = %shared.describe, "offsets committed again");
                }
                failures = 0;
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(source = %shared.describe, failures, "offset commit failed ({e}); retrying");
                }
            }
            Err(_) => return,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Exactly-once: commits the transaction when intake is not doing it,
/// because the pipeline is paused (intake stopped through the admin API) or
/// its dispatcher is busy: a transaction left open past the broker's
/// `transaction.timeout.ms` would be aborted and the pipeline fail. It
/// commits only when nothing is in flight (checked under the transaction's
/// gate), so it never splits an event's records from its offset.
async fn run_transaction_keeper(
    consumer: std::sync::Weak<StreamConsumer<SourceContext>>,
    shared: Arc<Shared>,
    transaction: Arc<Transaction>,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(consumer) = consumer.upgrade() else { return };
        let due = lock(&shared.last_commit).elapsed() >= interval;
        if !due || shared.tainted.load(std::sync::atomic::Ordering::SeqCst) || shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        let Some(group) = consumer.group_metadata() else { continue };
        drop(consumer);
        match transaction.commit(settled_points(&shared), group).await {
            Ok(true) => *lock(&shared.last_commit) = Instant::now(),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(source = %shared.describe, "exactly-once: {e}");
                shared.tainted.store(true, std::sync::atomic::Ordering::SeqCst);
                *lock(&shared.failure) = Some(Failure::Commit(e));
                return;
            }
        }
    }
}
