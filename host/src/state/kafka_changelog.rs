//! The Kafka changelog backend (the Kafka Streams model): a pipeline's state
//! is a compacted topic written **inside the exactly-once transaction** that
//! also holds the events' outputs and input offsets, and a local cache that
//! answers every read.
//!
//! # Layout
//!
//! One record per state write: key = the state key (UTF-8), value = the new
//! value, a tombstone (no value) for a delete. `cleanup.policy=compact`
//! keeps the last value of each key. The record goes to the changelog
//! partition **numbered like the input partition of the event that wrote
//! it**, so the state of input partition `p` is exactly changelog partition
//! `p` (Kafka Streams: changelog partition = task partition). The topic is
//! created at open when missing, with as many partitions as the input topic
//! with the most; an existing one must have at least that many.
//!
//! # Commit
//!
//! [`Backend::commit`] produces the batch's records through the pipeline's
//! transactional producer (holding the transaction's gate while enqueuing,
//! like the sinks), then updates the cache. It does not wait for delivery
//! reports: the transaction commit is the barrier (a record that failed to
//! deliver fails the commit, and the pipeline restarts from the changelog),
//! as it is for the outputs. The source commits the transaction only once every handed-out
//! event has settled, and an event settles only after its state commit
//! returned: so a Kafka transaction holds an event's outputs, its state
//! changes and its offset, or none of them. A host killed at any point
//! leaves an open transaction that the broker aborts (at once when the host
//! restarts with the same transactional id, else after
//! `transaction.timeout.ms`): its outputs, changelog records and offsets all
//! vanish together, and the events are read again against the state as of
//! the last committed transaction.
//!
//! Hence no applied markers: nothing committed can be redelivered, so
//! [`Backend::was_applied`] is always `false`, and the position is Kafka's
//! committed offset, not ours ([`Backend::position`] is `None`).
//!
//! # Restore
//!
//! On every assignment (the first one at start included), before librdkafka
//! is told to fetch the assigned input partitions, [`ChangelogBackend`]
//! restores their changelog partitions into the cache: a `read_committed`
//! consumer reads each from the beginning to its end. An open transaction of
//! an earlier owner (a host killed mid-transaction) holds the partition's
//! last stable offset below its high watermark; the restore waits for it to
//! be committed or aborted first (at most `restore_timeout`), so it never
//! misses committed records written after it. On revoke, the revoked
//! partitions' entries leave the cache: they belong to the next owner, and
//! if they come back they are restored again.
//!
//! # What it assumes
//!
//! - A state key is written by events of one input partition only (the
//!   plugin keys its state by the event key, and the input is partitioned by
//!   that key). A key written from two partitions lives in two changelog
//!   partitions, and which value a host sees depends on what it owns.
//! - With several input topics, partition `p` of each is assigned to the
//!   same host (co-partitioned topics and the default `range` assignor).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::backend::{Backend, CommitBatch};
use super::StateError;
use crate::kafka::transaction::Transaction;
use crate::source::kafka::PartitionState;

/// How long a restore may take, by default: long enough for the broker to
/// abort a killed host's transaction (`transaction.timeout.ms`, 60 s by
/// default) and read the partitions back.
pub const DEFAULT_RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one metadata or admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The default changelog topic of a pipeline: `sluice-<pipeline>-state-changelog`,
/// with every character Kafka refuses in a topic name replaced by `_`.
pub fn default_topic(pipeline: &str) -> String {
    let name: String = pipeline.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    format!("sluice-{name}-state-changelog")
}

/// How a pipeline's changelog is kept.
pub struct ChangelogOptions {
    /// The changelog topic (see [`default_topic`]).
    pub topic: String,
    /// The base client settings (brokers and the source's options) for the
    /// restore consumers and the admin client.
    pub client: ClientConfig,
    /// The source's input topics: the changelog needs as many partitions as
    /// the largest.
    pub input_topics: Vec<String>,
    /// How long restoring assigned partitions may take, waiting out an
    /// earlier owner's open transaction included; past it the restore
    /// fails rather than run on partial state.
    pub restore_timeout: Duration,
}

/// One pipeline's state: the changelog topic and its cache.
pub struct ChangelogBackend {
    transaction: Arc<Transaction>,
    topic: String,
    partitions: i32,
    client: ClientConfig,
    restore_timeout: Duration,
    cache: Mutex<Cache>,
    /// Restores done, and their time in nanoseconds (for the metrics).
    restores: AtomicU64,
    restore_nanos: AtomicU64,
}

impl std::fmt::Debug for ChangelogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogBackend").field("topic", &self.topic).finish_non_exhaustive()
    }
}

/// The committed state of the partitions this host owns.
#[derive(Debug, Default)]
struct Cache {
    /// Key → (changelog partition, value).
    values: BTreeMap<String, (i32, Bytes)>,
    /// Changelog partitions restored and owned.
    owned: BTreeSet<i32>,
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("Kafka changelog state: {what}: {error}"))
}

impl ChangelogBackend {
    /// Makes sure the changelog topic exists with enough partitions
    /// (creating it compacted when missing). Restores nothing: that happens
    /// on assignment, through [`PartitionState`].
    pub async fn open(transaction: Arc<Transaction>, options: ChangelogOptions) -> Result<Self, StateError> {
        let ChangelogOptions { topic, client, input_topics, restore_timeout } = options;
        let partitions = {
            let (client, topic) = (client.clone(), topic.clone());
            tokio::task::spawn_blocking(move || ensure_topic(&client, &topic, &input_topics))
                .await
                .map_err(|e| unavailable("opening the changelog", e))??
        };
        Ok(Self {
            transaction,
            topic,
            partitions,
            client,
            restore_timeout,
            cache: Mutex::default(),
            restores: AtomicU64::new(0),
            restore_nanos: AtomicU64::new(0),
        })
    }

    /// The changelog topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads changelog partitions `partitions` from the beginning to their
    /// end, `read_committed`. Blocks.
    fn restore_blocking(&self, partitions: &BTreeSet<i32>) -> Result<BTreeMap<String, (i32, Bytes)>, StateError> {
        let deadline = Instant::now() + self.restore_timeout;
        let consumer = |isolation: &str| -> Result<BaseConsumer, StateError> {
            let mut config = self.client.clone();
            config
                .set("group.id", format!("sluice-restore-{}", self.topic))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "true")
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", isolation);
            config.create().map_err(|e| unavailable("creating the restore consumer", e))
        };
        let reader = consumer("read_committed")?;
        let probe = consumer("read_uncommitted")?;
        let mut from_beginning = TopicPartitionList::new();
        let mut waiting: BTreeSet<i32> = BTreeSet::new();
        for &p in partitions {
            // An earlier owner's open transaction (a host killed in one)
            // holds the last stable offset below the high watermark: wait
            // for the broker to end it, so no committed record after it is
            // missed.
            let mut logged = false;
            loop {
                let (low, stable) =
                    reader.fetch_watermarks(&self.topic, p, CALL_TIMEOUT).map_err(|e| unavailable("reading the changelog's end", e))?;
                let (_, high) =
                    probe.fetch_watermarks(&self.topic, p, CALL_TIMEOUT).map_err(|e| unavailable("reading the changelog's end", e))?;
                if stable >= high {
                    if high > low {
                        waiting.insert(p);
                        from_beginning.add_partition_offset(&self.topic, p, Offset::Beginning).map_err(|e| unavailable("restore", e))?;
                    }
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(unavailable(
                        &format!("restoring partition {p}"),
                        format!("a transaction of an earlier owner is still open after {:?}", self.restore_timeout),
                    ));
                }
                if !logged {
                    tracing::info!(topic = %self.topic, partition = p, "waiting for an earlier owner's open transaction to end before restoring state");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let mut values = BTreeMap::new();
        if waiting.is_empty() {
            return Ok(values);
        }
        reader.assign(&from_beginning).map_err(|e| unavailable("restore", e))?;
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(unavailable(
                    "restore",
                    format!("partitions {waiting:?} not read to their end within {:?}", self.restore_timeout),
                ));
            }
            match reader.poll(left.min(Duration::from_millis(500))) {
                None => {}
                Some(Ok(message)) => {
                    let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                        tracing::warn!(topic = %self.topic, partition = message.partition(), offset = message.offset(), "skipping a changelog record without a UTF-8 key");
                        continue;
                    };
                    match message.payload() {
                        Some(value) => values.insert(key.to_owned(), (message.partition(), Bytes::copy_from_slice(value))),
                        None => values.remove(key),
                    };
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    waiting.remove(&p);
                }
                Some(Err(e)) => return Err(unavailable("restore", e)),
            }
        }
        Ok(values)
    }
}

/// The changelog's partition count: creates the topic (compacted, as many
/// partitions as the largest input topic) or checks the existing one.
fn ensure_topic(client: &ClientConfig, topic: &str, input_topics: &[String]) -> Result<i32, StateError> {
    let metadata_client: BaseConsumer = client.create().map_err(|e| unavailable("creating a metadata client", e))?;
    let partitions_of = |name: &str| -> Result<Option<i32>, StateError> {
        let metadata = metadata_client.fetch_metadata(Some(name), CALL_TIMEOUT).map_err(|e| unavailable("reading metadata", e))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32))
    };
    let mut needed = 1;
    for input in input_topics {
        // Not created here with a guessed partition count: the source fails
        // on a missing input topic with the same advice.
        let Some(partitions) = partitions_of(input)? else {
            return Err(unavailable(
                "opening the changelog",
                format!("input topic `{input}` does not exist; create it (sluice does not create input topics)"),
            ));
        };
        needed = needed.max(partitions);
    }
    if let Some(existing) = partitions_of(topic)? {
        if existing < needed {
            return Err(unavailable(
                &format!("topic `{topic}`"),
                format!("it has {existing} partitions but the input has {needed}; the changelog needs one partition per input partition (add partitions or name a new topic)"),
            ));
        }
        return Ok(existing);
    }
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(|e| unavailable("creating an admin client", e))?;
    let new = NewTopic::new(topic, needed, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT)).request_timeout(Some(CALL_TIMEOUT));
    let created = futures::executor::block_on(admin.create_topics([&new], &options))
        .map_err(|e| unavailable(&format!("creating topic `{topic}`"), e))?;
    for result in created {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(unavailable(&format!("creating topic `{topic}`"), code)),
        }
    }
    tracing::info!(topic, partitions = needed, "created the state changelog topic (compacted)");
    Ok(needed)
}

/// The input partition of a Kafka event id (`<topic>/<partition>/<offset>`).
fn partition_of(event_id: &str) -> Option<i32> {
    let mut parts = event_id.rsplitn(3, '/');
    let _offset = parts.next()?;
    let partition = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(partition)
}

#[async_trait]
impl Backend for ChangelogBackend {
    fn places_by_writer(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.cache().values.get(key).map(|(_, v)| v.to_vec()))
    }

    async fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let cache = self.cache();
        Ok(cache
            .values
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, (_, v))| (k.clone(), v.to_vec()))
            .collect())
    }

    async fn commit(&self, batch: CommitBatch) -> Result<(), StateError> {
        // Each write's partition: its writer's input partition; for a write
        // not made by a Kafka event (an operator's delete), the partition the
        // key lives in, and nothing when this host does not hold the key.
        let placed: Vec<(String, Option<Bytes>, i32)> = {
            let cache = self.cache();
            batch
                .writes
                .into_iter()
                .enumerate()
                .filter_map(|(i, (key, value))| {
                    let partition =
                        batch.writers.get(i).and_then(|w| partition_of(w)).or_else(|| cache.values.get(&key).map(|(p, _)| *p))?;
                    Some((key, value, partition))
                })
                .collect()
        };
        if let Some((key, _, p)) = placed.iter().find(|(_, _, p)| *p >= self.partitions || *p < 0) {
            return Err(unavailable(
                &format!("writing {key:?}"),
                format!("input partition {p} has no changelog partition (topic `{}` has {})", self.topic, self.partitions),
            ));
        }
        // Enqueued into the open transaction, not awaited: like the
        // pipeline's own outputs, the records become visible only when the
        // transaction commits, and a record that fails to deliver fails that
        // commit (librdkafka flushes in `commit_transaction` and refuses to
        // commit a transaction with a failed record), which stops the
        // pipeline; its restart restores this cache from the changelog.
        // Waiting for each batch's `acks=all` round trip here cost ~6.8 ms per
        // group commit (docs/benchmarks.md, "Kafka changelog row").
        for (key, value, partition) in &placed {
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic).key(key.as_str()).partition(*partition);
            if let Some(value) = value {
                record = record.payload(value.as_ref());
            }
            loop {
                let enqueued = {
                    let _open = self.transaction.gate.read().map_err(|_| unavailable("writing", "transaction gate poisoned"))?;
                    self.transaction.producer.send_result(record)
                };
                match enqueued {
                    // The delivery future is dropped: see above.
                    Ok(_delivery) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((error, _)) => return Err(unavailable(&format!("writing {key:?}"), error)),
                }
            }
        }
        let mut cache = self.cache();
        for (key, value, partition) in placed {
            match value {
                Some(value) => cache.values.insert(key, (partition, value)),
                None => cache.values.remove(&key),
            };
        }
        Ok(())
    }

    /// Always `false`: a commit is durable only with its events' offsets, so
    /// no committed event is ever read again.
    async fn was_applied(&self, _event_id: &str) -> Result<bool, StateError> {
        Ok(false)
    }

    async fn applied_among(&self, event_ids: &[&str]) -> Result<Vec<bool>, StateError> {
        Ok(vec![false; event_ids.len()])
    }

    fn keeps_markers(&self) -> bool {
        false
    }

    /// Kafka keeps the position (the group's committed offsets).
    async fn position(&self, _source: &str) -> Result<Option<u64>, StateError> {
        Ok(None)
    }

    fn restored(&self) -> (u64, u64) {
        (self.restores.load(Ordering::Relaxed), self.restore_nanos.load(Ordering::Relaxed))
    }
}

impl PartitionState for ChangelogBackend {
    fn assigned(&self, partitions: &[(String, i32)]) -> Result<(), String> {
        let wanted: BTreeSet<i32> = {
            let cache = self.cache();
            partitions.iter().map(|(_, p)| *p).filter(|p| !cache.owned.contains(p)).collect()
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let restored = self.restore_blocking(&wanted).map_err(|e| e.to_string())?;
        let keys = restored.len();
        let mut cache = self.cache();
        cache.values.retain(|_, (p, _)| !wanted.contains(p));
        cache.values.extend(restored);
        cache.owned.extend(wanted.iter().copied());
        drop(cache);
        self.restores.fetch_add(1, Ordering::Relaxed);
        self.restore_nanos.fetch_add(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        tracing::info!(topic = %self.topic, partitions = ?wanted, keys, ms = started.elapsed().as_millis() as u64, "state restored from the changelog");
        Ok(())
    }

    fn revoked(&self, partitions: &[(String, i32)]) {
        let gone: BTreeSet<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let mut cache = self.cache();
        cache.values.retain(|_, (p, _)| !gone.contains(p));
        cache.owned.retain(|p| !gone.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_name_their_partition() {
        assert_eq!(partition_of("orders/3/17"), Some(3));
        assert_eq!(partition_of("a.b-c/12/0"), Some(12));
        assert_eq!(partition_of("admin-delete:1234"), None);
        assert_eq!(partition_of("x/y"), None);
    }

    #[test]
    fn default_topics_are_valid_topic_names() {
        assert_eq!(default_topic("orders eu/v2"), "sluice-orders_eu_v2-state-changelog");
        assert!(crate::config::valid_topic(&default_topic("a b")));
    }
}
