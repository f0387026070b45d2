//! The Kafka backend of the plugin store: a compacted topic (default
//! `sluice-plugins`) and a compacted chunks topic beside it
//! (`<topic>-chunks`); [`records`] has the layout.
//!
//! # Reading
//!
//! Each process that opens the store tails the store topic: a consumer
//! without a group (all partitions assigned, from the beginning,
//! `read_committed`) folds every record into an [`Index`], the latest state
//! of each key, and keeps folding what comes after. The chunks topic is not
//! tailed: a version's chunks (MBs each, every version ever pushed) are
//! read only when the version is loaded, at the positions its manifest
//! names. So a host start reads kilobytes, not every version.
//!
//! To read its own writes, or anything written before a moment, a reader
//! writes a barrier (a tombstone keyed `sync/<nonce>`) to each partition
//! and waits until its tail reads them back ([`KafkaStore::sync`]; the
//! Confluent Schema Registry reads its topic the same way).
//!
//! # Pointer updates: one writer at a time
//!
//! A pointer is written in a Kafka transaction by a producer whose
//! transactional id is the same for every writer of the store
//! (`sluice-plugin-store-<topic>`). Starting it (`init_transactions`)
//! fences every earlier producer of that id: its open transaction is
//! aborted and it can commit nothing more. The writer then reads the store
//! to its end, computes the new pointer from the current one and commits.
//! If another writer started in between, this one was fenced: its commit
//! fails, nothing of it is visible (readers are `read_committed`), and
//! [`StoreError::Conflict`] makes `push` try again from a fresh read. So
//! two concurrent pushes both land, one after the other, and none is lost
//! from the history. A compare-and-set on offsets would not do: compaction
//! keeps the *last* record of a key, which may be the loser's.
//!
//! Versions, signatures and heartbeats are plain (idempotent, `acks=all`)
//! writes: a version is named by its sha256, so two writers of one version
//! write the same thing.

pub mod records;
pub mod topic;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use self::records::{Applied, Index, Manifest};
use super::config::KafkaStoreConfig;
use super::{Heartbeat, PluginStore, Pointer, StoreError, StoredVersion, HEARTBEAT_TTL};
use crate::kafka::Context;

/// How long a write, or reading back a barrier, may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `transaction.timeout.ms` of the pointer writer: a push killed inside
/// its (millisecond-long) transaction holds `read_committed` readers of
/// the store back at most this long before the broker aborts it.
const POINTER_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long reading a version's chunks may take.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

pub struct KafkaStore {
    topic: String,
    chunks_topic: String,
    /// Brokers, TLS, SASL and `options`: the base of every client.
    client: ClientConfig,
    partitions: i32,
    producer: FutureProducer<Context>,
    state: Arc<State>,
    /// Stops the tail when the store is dropped.
    _tail: DropGuard,
}

/// What the tail builds and the store reads.
struct State {
    index: Mutex<Index>,
    /// Barriers written and not read back yet, by nonce.
    barriers: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Bumped at each pointer record.
    pointers: watch::Sender<u64>,
}

impl State {
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn barriers(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.barriers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl KafkaStore {
    /// Opens (creating if missing) the two topics, starts the tail and
    /// reads the store to its end.
    pub async fn open(config: &KafkaStoreConfig) -> Result<Self, StoreError> {
        let began = std::time::Instant::now();
        let client = crate::kafka::client_config(&config.brokers, &config.connection_options());
        let partitions = topic::ensure(&client, &config.brokers, &config.topic).await?;
        let chunks_topic = format!("{}-chunks", config.topic);
        topic::ensure(&client, &config.brokers, &chunks_topic).await?;

        let mut producer_config = client.clone();
        producer_config.set("enable.idempotence", "true").set("acks", "all");
        let producer: FutureProducer<Context> = producer_config
            .create_with_context(Context::new(format!("plugin store producer {}", config.topic)))
            .map_err(|e| unavailable(format!("creating the plugin store producer: {e}")))?;

        let consumer = tail_consumer(&client, &config.topic, partitions)?;
        let (pointers, _) = watch::channel(0);
        let state = Arc::new(State { index: Mutex::default(), barriers: Mutex::default(), pointers });
        let stop = CancellationToken::new();
        tokio::spawn(tail(consumer, state.clone(), stop.clone()));
        let store = Self { topic: config.topic.clone(), chunks_topic, client, partitions, producer, state, _tail: stop.drop_guard() };
        tracing::debug!(topic = %config.topic, elapsed = ?began.elapsed(), "plugin store: topics checked");
        store.sync().await?;
        tracing::debug!(topic = %config.topic, elapsed = ?began.elapsed(), "plugin store: read to its end");
        Ok(store)
    }

    /// Returns once the tail has read everything written to the store
    /// before the call: a barrier per partition, read back.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let nonce = uuid::Uuid::new_v4().to_string();
        let mut waits = Vec::with_capacity(self.partitions as usize);
        for partition in 0..self.partitions {
            let key = format!("{}{nonce}-{partition}", records::SYNC_PREFIX);
            let (sent, read) = oneshot::channel();
            self.state.barriers().insert(format!("{nonce}-{partition}"), sent);
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic).key(key.as_str()).partition(partition);
            waits.push(read);
            if let Err((e, _)) = self.producer.send(record, CALL_TIMEOUT).await {
                self.forget(&nonce);
                return Err(unavailable(format!("writing to topic `{}`: {e}", self.topic)));
            }
        }
        let read_back = tokio::time::timeout(CALL_TIMEOUT, futures::future::join_all(waits)).await;
        self.forget(&nonce);
        match read_back {
            Ok(_) => Ok(()),
            Err(_) => Err(unavailable(format!(
                "topic `{}` did not give back this host's own write within {CALL_TIMEOUT:?} (a stuck transaction, or a broker down?)",
                self.topic
            ))),
        }
    }

    fn forget(&self, nonce: &str) {
        self.state.barriers().retain(|key, _| !key.starts_with(nonce));
    }

    /// Writes `value` (or a tombstone) at `key` of `topic`; its position.
    async fn write(&self, topic: &str, key: &str, value: Option<&[u8]>) -> Result<(i32, i64), StoreError> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let delivery = self.producer.send(record, CALL_TIMEOUT).await;
        let delivery = delivery.map_err(|(e, _)| unavailable(format!("writing {key} to topic `{topic}`: {e}")))?;
        Ok((delivery.partition, delivery.offset))
    }

    /// The chunks `manifest` names, in its order.
    async fn read_chunks(&self, manifest: &Manifest) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut config = self.client.clone();
        config
            .set("group.id", format!("sluice-plugin-store-{}", self.chunks_topic))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer<Context> = config
            .create_with_context(Context::new(format!("plugin store reader {}", self.chunks_topic)))
            .map_err(|e| unavailable(format!("creating a reader of topic `{}`: {e}", self.chunks_topic)))?;
        // Each partition from its first chunk on; chunks are written in a
        // burst, so they are (nearly) contiguous.
        let mut first: BTreeMap<i32, i64> = BTreeMap::new();
        let mut wanted: HashMap<(i32, i64), usize> = HashMap::new();
        for (index, chunk) in manifest.chunks.iter().enumerate() {
            let start = first.entry(chunk.partition).or_insert(chunk.offset);
            *start = (*start).min(chunk.offset);
            wanted.insert((chunk.partition, chunk.offset), index);
        }
        let mut assignment = TopicPartitionList::new();
        for (partition, offset) in &first {
            assignment.add_partition_offset(&self.chunks_topic, *partition, Offset::Offset(*offset)).map_err(unavailable)?;
        }
        consumer.assign(&assignment).map_err(unavailable)?;
        let mut chunks: Vec<Option<Vec<u8>>> = vec![None; manifest.chunks.len()];
        let mut left = manifest.chunks.len();
        let reading = async {
            while left > 0 {
                let message = consumer.recv().await.map_err(|e| unavailable(format!("reading topic `{}`: {e}", self.chunks_topic)))?;
                let at = (message.partition(), message.offset());
                if let Some(&index) = wanted.get(&at) {
                    if chunks[index].is_none() {
                        chunks[index] = Some(message.payload().unwrap_or_default().to_vec());
                        left -= 1;
                    }
                    continue;
                }
                // Past a chunk not read: compaction removed it (the same
                // chunk written again later, by a repeated push).
                if let Some((index, chunk)) =
                    manifest.chunks.iter().enumerate().find(|(i, c)| c.partition == at.0 && c.offset < at.1 && chunks[*i].is_none())
                {
                    return Err(StoreError::Malformed(format!(
                        "chunk {index} of version {} is gone from topic `{}` (partition {}, offset {}): push the version again",
                        manifest.digest, self.chunks_topic, chunk.partition, chunk.offset
                    )));
                }
            }
            Ok(())
        };
        tokio::time::timeout(READ_TIMEOUT, reading).await.map_err(|_| {
            unavailable(format!("reading version {} from topic `{}` took over {READ_TIMEOUT:?}", manifest.digest, self.chunks_topic))
        })??;
        Ok(chunks.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Starts the pointer writer: fences every earlier one.
    async fn pointer_writer(&self) -> Result<FutureProducer<Context>, StoreError> {
        let id = format!("sluice-plugin-store-{}", self.topic);
        let mut config = self.client.clone();
        config
            .set("transactional.id", &id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("transaction.timeout.ms", POINTER_TRANSACTION_TIMEOUT.as_millis().to_string());
        let producer: FutureProducer<Context> = config
            .create_with_context(Context::new(format!("plugin store pointer writer {id}")))
            .map_err(|e| unavailable(format!("creating the pointer writer: {e}")))?;
        let writer = producer.clone();
        tokio::task::spawn_blocking(move || writer.init_transactions(CALL_TIMEOUT))
            .await
            .map_err(unavailable)?
            .map_err(|e| unavailable(format!("starting transactions on topic `{}` (transactional id `{id}`): {e}", self.topic)))?;
        Ok(producer)
    }
}

/// The tail's consumer: every partition of `topic`, from the beginning.
fn tail_consumer(client: &ClientConfig, topic: &str, partitions: i32) -> Result<StreamConsumer<Context>, StoreError> {
    let mut config = client.clone();
    // Never joined (the partitions are assigned, nothing is committed):
    // librdkafka wants a group id all the same.
    config
        .set("group.id", format!("sluice-plugin-store-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer<Context> = config
        .create_with_context(Context::new(format!("plugin store tail {topic}")))
        .map_err(|e| unavailable(format!("creating a reader of topic `{topic}`: {e}")))?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).map_err(unavailable)?;
    }
    consumer.assign(&assignment).map_err(unavailable)?;
    Ok(consumer)
}

/// Folds every record of the store topic into the index, until `stop`.
async fn tail(consumer: StreamConsumer<Context>, state: Arc<State>, stop: CancellationToken) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                // librdkafka reconnects by itself; its connection errors
                // are logged (rate-limited) by the context.
                tracing::debug!("reading the plugin store: {e}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        };
        let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
        let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
        let applied = state.index().apply(key, message.payload(), at);
        match applied {
            Applied::Pointer(_) => state.pointers.send_modify(|n| *n += 1),
            Applied::Barrier(nonce) => {
                if let Some(sent) = state.barriers().remove(&nonce) {
                    let _ = sent.send(());
                }
            }
            Applied::Other => {}
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Error codes that mean another writer started after this one.
fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::Fenced | RDKafkaErrorCode::InvalidProducerEpoch)
}

fn fenced(error: &KafkaError) -> bool {
    error.rdkafka_error_code().is_some_and(is_fencing)
}

#[async_trait::async_trait]
impl PluginStore for KafkaStore {
    async fn put(&self, bytes: &[u8], signature: Option<&str>) -> Result<String, StoreError> {
        let digest = crate::runtime::plugin::digest_of(bytes);
        self.sync().await?;
        let stored = self.state.index().manifest(&digest).is_some_and(|m| m.size == bytes.len());
        if !stored {
            let digest = &digest;
            let sends = bytes.chunks(records::CHUNK_SIZE).enumerate().map(|(index, chunk)| async move {
                let (partition, offset) = self.write(&self.chunks_topic, &records::chunk_key(digest, index), Some(chunk)).await?;
                Ok::<_, StoreError>(records::ChunkRef {
                    partition,
                    offset,
                    size: chunk.len(),
                    sha256: crate::runtime::plugin::digest_of(chunk),
                })
            });
            let chunks = futures::future::try_join_all(sends).await?;
            let manifest = Manifest { digest: digest.clone(), size: bytes.len(), chunks };
            let value = serde_json::to_vec(&manifest).map_err(|e| StoreError::Malformed(e.to_string()))?;
            self.write(&self.topic, &records::manifest_key(digest), Some(&value)).await?;
        }
        if let Some(signature) = signature {
            self.write(&self.topic, &records::signature_key(&digest), Some(signature.trim().as_bytes())).await?;
        }
        Ok(digest)
    }

    async fn get(&self, digest: &str) -> Result<StoredVersion, StoreError> {
        // Whatever was written before the pointer naming it is read.
        self.sync().await?;
        let manifest = self.state.index().manifest(digest).ok_or_else(|| StoreError::NoVersion(digest.to_owned()))?;
        if manifest.digest != digest {
            return Err(StoreError::Malformed(format!("the manifest of version {digest} names version {}", manifest.digest)));
        }
        let chunks = self.read_chunks(&manifest).await?;
        let bytes = manifest.assemble(chunks)?;
        let signature = self.state.index().signature(digest);
        Ok(StoredVersion { digest: digest.to_owned(), bytes, signature })
    }

    async fn pointer(&self, pipeline: &str) -> Result<Option<Pointer>, StoreError> {
        Ok(self.state.index().pointer(pipeline))
    }

    async fn update_pointer(
        &self,
        pipeline: &str,
        change: &(dyn Fn(Option<Pointer>) -> Result<Pointer, StoreError> + Send + Sync),
    ) -> Result<Pointer, StoreError> {
        let began = std::time::Instant::now();
        let writer = self.pointer_writer().await?;
        tracing::debug!(elapsed = ?began.elapsed(), "plugin store: pointer writer started");
        // Every writer before this one is fenced: what is read now is
        // what this one changes.
        self.sync().await?;
        let current = self.state.index().pointer(pipeline);
        let next = change(current.clone())?;
        if Some(&next) == current.as_ref() {
            return Ok(next);
        }
        let value = serde_json::to_vec(&next).map_err(|e| StoreError::Malformed(e.to_string()))?;
        let (topic, key) = (self.topic.clone(), records::pointer_key(pipeline));
        let committed = tokio::task::spawn_blocking(move || {
            writer.begin_transaction().map_err(|e| (e, false))?;
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).key(key.as_str()).payload(value.as_slice());
            // The delivery is part of the commit, which flushes.
            let _delivery = writer.send_result(record).map_err(|(e, _)| (e, false))?;
            writer.commit_transaction(CALL_TIMEOUT).map_err(|e| {
                // A fenced commit may come back with a code librdkafka does
                // not name (Kafka 4); the abort asks again, and a fenced
                // producer's abort fails fatally with the fencing code.
                let aborted = writer.abort_transaction(CALL_TIMEOUT);
                let fatal = writer.client().fatal_error().map(|(code, _)| code);
                let fenced = fenced(&e) || aborted.as_ref().err().is_some_and(fenced) || fatal.is_some_and(is_fencing);
                (e, fenced)
            })
        })
        .await
        .map_err(unavailable)?;
        match committed {
            Ok(()) => {}
            Err((_, true)) => {
                tracing::info!(pipeline, "another push or rollback started while this one was writing; trying again");
                return Err(StoreError::Conflict(pipeline.to_owned()));
            }
            Err((e, false)) => return Err(unavailable(format!("writing the pointer of `{pipeline}`: {e}"))),
        }
        tracing::debug!(elapsed = ?began.elapsed(), "plugin store: pointer committed");
        self.sync().await?;
        Ok(next)
    }

    async fn watch(&self, pipeline: &str) -> Result<BoxStream<'static, Result<Pointer, StoreError>>, StoreError> {
        let changes = self.state.pointers.subscribe();
        let start = (self.state.clone(), changes, pipeline.to_owned(), None::<Pointer>, true);
        let pointers = futures::stream::unfold(start, |(state, mut changes, pipeline, mut last, mut first)| async move {
            loop {
                if !first && changes.changed().await.is_err() {
                    return None;
                }
                first = false;
                let pointer = state.index().pointer(&pipeline);
                if pointer.is_some() && pointer != last {
                    last = pointer.clone();
                    let item = pointer.map(Ok)?;
                    return Some((item, (state, changes, pipeline, last, first)));
                }
            }
        });
        Ok(pointers.boxed())
    }

    async fn beat(&self, heartbeat: &Heartbeat) -> Result<(), StoreError> {
        let value = serde_json::to_vec(heartbeat).map_err(|e| StoreError::Malformed(e.to_string()))?;
        self.write(&self.topic, &records::heartbeat_key(&heartbeat.pipeline, &heartbeat.host), Some(&value)).await?;
        Ok(())
    }

    async fn leave(&self, pipeline: &str, host: &str) -> Result<(), StoreError> {
        self.write(&self.topic, &records::heartbeat_key(pipeline, host), None).await?;
        Ok(())
    }

    async fn heartbeats(&self) -> Result<Vec<Heartbeat>, StoreError> {
        Ok(self.state.index().heartbeats(now_ms(), HEARTBEAT_TTL))
    }
}
