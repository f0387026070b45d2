//! The JetStream KV backend: a pipeline's state in a NATS KV bucket, so it
//! lives with the broker instead of on one host's disk.
//!
//! # Layout
//!
//! Two buckets, both `history = 1`:
//!
//! - `<bucket>` (default `sluice-state-<pipeline>`):
//!   - `s.<b1>.<b2>…`: a user key, one token per UTF-8 byte as two lowercase
//!     hex digits (`"ab"` → `s.61.62`, `""` → `s`). Any string becomes a
//!     valid KV key, user keys cannot collide with the internal ones (which
//!     start with `_`), byte order is kept (so sorting decoded keys is the
//!     store's order), and a key prefix is a subject prefix, so `scan` asks
//!     the server for `s.<prefix tokens>.>` only.
//!   - `_c.head`, `_c.0.<i>`: the commit record of the commit in progress
//!     (see below); absent between commits.
//!   - `_p.x<hex source>`: a source's position, decimal text.
//! - `<bucket>-applied`: the applied markers, `e<hex event id>` → `1`. A
//!   separate bucket because nats-server 2.9 has no per-message TTL: the
//!   bucket's `max_age` (the marker retention, 24 h default) prunes them.
//!
//! # Commit: exactly-once without multi-key transactions
//!
//! KV writes one key at a time, so [`Backend::commit`] is made atomic with a
//! redo record, written before anything it describes:
//!
//! 1. The batch (writes as absolute values, applied ids, position) is
//!    serialised. If it fits one message it goes inline in `_c.head`;
//!    otherwise it is split into parts `_c.0.<i>` (written first), and the
//!    head names how many. **The acknowledged put of `_c.head` is the commit
//!    point**: before it, nothing the batch describes has been written; after
//!    it, the batch will be completed by this call or by recovery.
//! 2. Every write is applied (put or delete of the final value), then the
//!    position, then the markers (in the markers bucket).
//! 3. `_c.head` is deleted, then the parts.
//!
//! Recovery runs when the backend opens (and again before the next operation
//! if a commit failed part-way): if `_c.head` exists, its record is applied
//! again from step 2. Every step is a put of an absolute value or a delete,
//! so applying it twice is the same as once. No later commit can have
//! started after the interrupted one: the store commits one batch at a time,
//! in order, and the writer that wrote the head is the one that died. A head
//! whose parts are missing cannot happen (parts are deleted only after the
//! head); leftover parts without a head are a commit that never reached its
//! commit point and are deleted. `was_applied` is answered only after
//! recovery, so a redelivery of an event whose commit was interrupted is
//! recognised.
//!
//! Durability is JetStream's: a put is acknowledged once the server has
//! stored it (file storage, fsync on the server's sync interval, replicas if
//! configured). A host killed at any point loses nothing acknowledged.
//!
//! One writer per pipeline: like the embedded backend this assumes one host
//! runs the pipeline (the store's conflict checks are in-process). Two hosts
//! sharing a bucket would interleave read-modify-writes.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use async_nats::Client;
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::backend::{Backend, CommitBatch, Position};
use super::memory::DEFAULT_MARKER_RETENTION;
use super::StateError;

/// Most keys one `scan` may find under its prefix: a scan lists the keys
/// under the prefix (KV lists in write order, not key order), sorts them in
/// memory and returns a page. 100,000 keys of up to 1 KiB bound that list to
/// about 100 MiB in the worst case; a larger prefix fails with an error that
/// says so.
pub const DEFAULT_MAX_SCAN_KEYS: usize = 100_000;

/// KV operations in flight at once while applying a commit: enough to hide
/// the round trip (~0.3 ms locally), bounded so a large batch does not flood
/// the connection.
const IN_FLIGHT: usize = 64;

/// How long one listing (a scan or recovery) may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

const HEAD: &str = "_c.head";
const PARTS: &str = "_c.0";

/// How a pipeline's KV state is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvOptions {
    /// The state bucket; the markers go to `<bucket>-applied`.
    pub bucket: String,
    /// The markers bucket's `max_age`: longer than any redelivery delay.
    pub marker_retention: Duration,
    /// See [`DEFAULT_MAX_SCAN_KEYS`].
    pub max_scan_keys: usize,
}

impl KvOptions {
    /// Options for `bucket`, the rest at their defaults.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self { bucket: bucket.into(), marker_retention: DEFAULT_MARKER_RETENTION, max_scan_keys: DEFAULT_MAX_SCAN_KEYS }
    }
}

/// The default bucket of a pipeline: `sluice-state-<pipeline>`, with every
/// character KV refuses in a bucket name (anything but `[A-Za-z0-9_-]`)
/// replaced by `_`.
pub fn default_bucket(pipeline: &str) -> String {
    let name: String = pipeline.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    format!("sluice-state-{name}")
}

/// Whether KV accepts `name` as a bucket name.
pub fn valid_bucket(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Where a test stops a commit, to simulate a crash there. Not for
/// production use.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CrashPoint {
    None = 0,
    /// After the commit record (the commit point), before any write.
    AfterRecord = 1,
    /// After the writes and position, before the markers.
    AfterWrites = 2,
    /// After the markers, before the record is deleted.
    AfterMarkers = 3,
}

/// One pipeline's state in a KV bucket.
pub struct KvBackend {
    state: kv::Store,
    markers: kv::Store,
    client: Client,
    /// Largest commit record part: the server's message size limit, less
    /// room for the head's tag.
    part_bytes: usize,
    max_scan_keys: usize,
    /// A commit failed after its record may have been written: run recovery
    /// before the next operation.
    needs_recovery: AtomicBool,
    /// Serialises recovery with itself.
    recovery: tokio::sync::Mutex<()>,
    crash_at: AtomicU8,
}

impl std::fmt::Debug for KvBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvBackend").field("bucket", &self.state.name).finish_non_exhaustive()
    }
}

/// The commit record: the batch, values base64.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Record {
    writes: Vec<(String, Option<String>)>,
    applied: Vec<String>,
    position: Option<(String, u64)>,
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("JetStream KV state: {what}: {error}"))
}

impl KvBackend {
    /// Opens (creating if missing) the state and markers buckets, then
    /// recovers a commit a crash interrupted.
    pub async fn open(client: Client, options: &KvOptions) -> Result<Self, StateError> {
        if !valid_bucket(&options.bucket) {
            return Err(unavailable("bucket", format!("{:?} is not a valid bucket name ([A-Za-z0-9_-])", options.bucket)));
        }
        let js = jetstream::new(client.clone());
        let state = bucket(&js, &options.bucket, Duration::ZERO).await?;
        let markers = bucket(&js, &format!("{}-applied", options.bucket), options.marker_retention).await?;
        let max_age = markers.stream.cached_info().config.max_age;
        if max_age != options.marker_retention {
            // The operator's bucket wins; say so, since markers that expire
            // before a redelivery let an event run twice.
            tracing::warn!(
                bucket = %markers.name,
                bucket_max_age = ?max_age,
                marker_retention = ?options.marker_retention,
                "the applied-markers bucket exists with a max_age other than state.marker_retention; it is used as it is"
            );
        }
        let max_payload = client.server_info().max_payload;
        let backend = Self {
            state,
            markers,
            client,
            part_bytes: max_payload.saturating_sub(1024).max(1024),
            max_scan_keys: options.max_scan_keys.max(1),
            needs_recovery: AtomicBool::new(true),
            recovery: tokio::sync::Mutex::new(()),
            crash_at: AtomicU8::new(CrashPoint::None as u8),
        };
        backend.ensure_recovered().await?;
        Ok(backend)
    }

    /// Makes the next commit stop at `point`, as if the process died there.
    #[doc(hidden)]
    pub fn crash_at(&self, point: CrashPoint) {
        self.crash_at.store(point as u8, Ordering::SeqCst);
    }

    /// Overrides the part size, so a test can split small records.
    #[doc(hidden)]
    pub fn set_part_bytes(&mut self, bytes: usize) {
        self.part_bytes = bytes.max(1);
    }

    fn crash_here(&self, point: CrashPoint) -> Result<(), StateError> {
        if self.crash_at.load(Ordering::SeqCst) == point as u8 {
            self.crash_at.store(CrashPoint::None as u8, Ordering::SeqCst);
            return Err(StateError::Unavailable(format!("test hook: commit stopped at {point:?}")));
        }
        Ok(())
    }

    async fn ensure_recovered(&self) -> Result<(), StateError> {
        if !self.needs_recovery.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _guard = self.recovery.lock().await;
        if !self.needs_recovery.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.recover().await?;
        self.needs_recovery.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Completes an interrupted commit, or clears parts of one that never
    /// reached its commit point.
    async fn recover(&self) -> Result<(), StateError> {
        match self.state.get(HEAD).await.map_err(|e| unavailable("reading the commit record", e))? {
            Some(head) => {
                let (record, parts) = self.read_record(&head).await?;
                tracing::warn!(bucket = %self.state.name, events = record.applied.len(), "completing a state commit interrupted by a crash");
                self.apply(record, parts).await
            }
            None => {
                let parts = list(&self.client, &self.state, &format!("{PARTS}.>"), self.max_scan_keys).await?;
                try_all(
                    parts
                        .into_iter()
                        .map(|key| {
                            async move { self.state.delete(&key).await.map_err(|e| unavailable("deleting a stale commit part", e)) }.boxed()
                        })
                        .collect(),
                )
                .await
            }
        }
    }

    /// The record a head describes, and how many parts it was split into.
    async fn read_record(&self, head: &[u8]) -> Result<(Record, usize), StateError> {
        let (bytes, parts) = match head.split_first() {
            Some((b'I', inline)) => (inline.to_vec(), 0),
            Some((b'P', count)) => {
                let count: usize = std::str::from_utf8(count)
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| unavailable("commit record", "a corrupt head"))?;
                let mut bytes = Vec::new();
                for i in 0..count {
                    let part = self
                        .state
                        .get(format!("{PARTS}.{i}"))
                        .await
                        .map_err(|e| unavailable("reading a commit part", e))?
                        .ok_or_else(|| unavailable("commit record", format!("part {i} of {count} is missing")))?;
                    bytes.extend_from_slice(&part);
                }
                (bytes, count)
            }
            _ => return Err(unavailable("commit record", "a corrupt head")),
        };
        let record = serde_json::from_slice(&bytes).map_err(|e| unavailable("decoding the commit record", e))?;
        Ok((record, parts))
    }

    /// Steps 2 and 3 of a commit: everything after the commit point. `parts`:
    /// how many parts the record was split into (0: inline in the head).
    async fn apply(&self, record: Record, parts: usize) -> Result<(), StateError> {
        let engine = base64::engine::general_purpose::STANDARD;
        let mut writes = Vec::with_capacity(record.writes.len());
        for (key, value) in record.writes {
            let value = match value {
                Some(v) => Some(Bytes::from(engine.decode(v).map_err(|e| unavailable("decoding the commit record", e))?)),
                None => None,
            };
            writes.push((key, value));
        }
        try_all(
            writes
                .into_iter()
                .map(|(key, value)| {
                    async move {
                        let kv_key = encode_key(&key);
                        match value {
                            Some(value) => {
                                self.state.put(&kv_key, value).await.map(drop).map_err(|e| unavailable(&format!("writing {key:?}"), e))
                            }
                            None => self.state.delete(&kv_key).await.map_err(|e| unavailable(&format!("deleting {key:?}"), e)),
                        }
                    }
                    .boxed()
                })
                .collect(),
        )
        .await?;
        if let Some((source, offset)) = &record.position {
            self.state
                .put(position_key(source), Bytes::from(offset.to_string()))
                .await
                .map_err(|e| unavailable("writing the position", e))?;
        }
        self.crash_here(CrashPoint::AfterWrites)?;
        try_all(
            record
                .applied
                .iter()
                .map(|id| {
                    async move {
                        self.markers
                            .put(marker_key(id), Bytes::from_static(b"1"))
                            .await
                            .map(drop)
                            .map_err(|e| unavailable("writing an applied marker", e))
                    }
                    .boxed()
                })
                .collect(),
        )
        .await?;
        self.crash_here(CrashPoint::AfterMarkers)?;
        // The head first: parts without a head are garbage, a head without
        // its parts would be unrecoverable.
        self.state.delete(HEAD).await.map_err(|e| unavailable("deleting the commit record", e))?;
        if parts > 0 {
            try_all(
                (0..parts)
                    .map(|i| {
                        async move { self.state.delete(format!("{PARTS}.{i}")).await.map_err(|e| unavailable("deleting a commit part", e)) }
                            .boxed()
                    })
                    .collect(),
            )
            .await?;
        }
        Ok(())
    }

    async fn commit_inner(&self, batch: CommitBatch) -> Result<(), StateError> {
        let engine = base64::engine::general_purpose::STANDARD;
        let record = Record {
            writes: batch.writes.iter().map(|(k, v)| (k.clone(), v.as_ref().map(|v| engine.encode(v)))).collect(),
            applied: batch.applied,
            position: batch.position.map(|Position { source, offset }| (source, offset)),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| unavailable("encoding the commit record", e))?;
        let (head, parts) = if bytes.len() < self.part_bytes {
            let mut head = Vec::with_capacity(bytes.len() + 1);
            head.push(b'I');
            head.extend_from_slice(&bytes);
            (head, 0)
        } else {
            let chunks: Vec<&[u8]> = bytes.chunks(self.part_bytes).collect();
            let count = chunks.len();
            try_all(
                chunks
                    .into_iter()
                    .enumerate()
                    .map(|(i, chunk)| {
                        async move {
                            self.state
                                .put(format!("{PARTS}.{i}"), Bytes::copy_from_slice(chunk))
                                .await
                                .map(drop)
                                .map_err(|e| unavailable("writing a commit part", e))
                        }
                        .boxed()
                    })
                    .collect(),
            )
            .await?;
            (format!("P{count}").into_bytes(), count)
        };
        // The commit point.
        self.state.put(HEAD, Bytes::from(head)).await.map_err(|e| unavailable("writing the commit record", e))?;
        self.crash_here(CrashPoint::AfterRecord)?;
        self.apply(record, parts).await
    }
}

#[async_trait]
impl Backend for KvBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.ensure_recovered().await?;
        let value = self.state.get(encode_key(key)).await.map_err(|e| unavailable(&format!("reading {key:?}"), e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.ensure_recovered().await?;
        let exact = encode_key(prefix);
        let listed = list(&self.client, &self.state, &format!("{exact}.>"), self.max_scan_keys).await?;
        let mut keys: Vec<String> = listed.iter().filter_map(|k| decode_key(k)).collect();
        // `s.<prefix>.>` excludes the prefix itself; it is a key too.
        keys.push(prefix.to_owned());
        keys.retain(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a));
        keys.sort_unstable();
        keys.dedup();
        let mut page = Vec::with_capacity(limit.min(keys.len()));
        // Keys deleted since the listing are skipped, so fetch in rounds
        // until the page is full or the keys run out.
        let mut rest = keys.into_iter();
        while page.len() < limit {
            let round: Vec<String> = rest.by_ref().take(limit - page.len()).collect();
            if round.is_empty() {
                break;
            }
            let values: Vec<(String, Option<Bytes>)> = futures::stream::iter(round.into_iter().map(|key| {
                async move {
                    let value = self.state.get(encode_key(&key)).await.map_err(|e| unavailable(&format!("reading {key:?}"), e))?;
                    Ok::<_, StateError>((key, value))
                }
                .boxed()
            }))
            .buffered(IN_FLIGHT)
            .try_collect()
            .await?;
            page.extend(values.into_iter().filter_map(|(k, v)| Some((k, v?.to_vec()))));
        }
        Ok(page)
    }

    async fn commit(&self, batch: CommitBatch) -> Result<(), StateError> {
        self.ensure_recovered().await?;
        let result = self.commit_inner(batch).await;
        if result.is_err() {
            self.needs_recovery.store(true, Ordering::SeqCst);
        }
        result
    }

    /// The marker, read after recovery: a commit record left by a crash (or
    /// by a failed commit of this backend) is completed first, so its events
    /// read as applied. A commit still in flight in this process is not
    /// consulted: its events are "uncommitted" in the [`super::Store`],
    /// which the dispatcher asks first.
    async fn was_applied(&self, event_id: &str) -> Result<bool, StateError> {
        self.ensure_recovered().await?;
        let marker = self.markers.get(marker_key(event_id)).await.map_err(|e| unavailable("reading an applied marker", e))?;
        Ok(marker.is_some())
    }

    async fn position(&self, source: &str) -> Result<Option<u64>, StateError> {
        self.ensure_recovered().await?;
        let value = self.state.get(position_key(source)).await.map_err(|e| unavailable("reading the position", e))?;
        match value {
            None => Ok(None),
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| unavailable("the position", "not a number")),
        }
    }
}

/// The bucket, created if missing ([`crate::nats::key_value_bucket`]).
async fn bucket(js: &jetstream::Context, name: &str, max_age: Duration) -> Result<kv::Store, StateError> {
    crate::nats::key_value_bucket(js, name, max_age).await.map_err(|why| StateError::Unavailable(format!("JetStream KV state: {why}")))
}

/// Runs the futures with at most [`IN_FLIGHT`] at once; the first error wins
/// (the others still in flight are dropped: they are idempotent, and the
/// commit will be recovered).
/// The futures are boxed (`BoxFuture`): an unboxed closure-made future that
/// borrows `self` defeats the `Send` proof of `async_trait`'s futures.
async fn try_all(futures: Vec<BoxFuture<'_, Result<(), StateError>>>) -> Result<(), StateError> {
    futures::stream::iter(futures).buffer_unordered(IN_FLIGHT).try_for_each(|()| async { Ok(()) }).await
}

/// The KV keys (not deleted) matching a subject filter relative to the
/// bucket, in no particular order, through an ordered headers-only consumer
/// (the server sends the last entry of each key once). At most `cap` keys.
async fn list(client: &Client, store: &kv::Store, filter: &str, cap: usize) -> Result<Vec<String>, StateError> {
    let consumer = store
        .stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("sluice state listing".into()),
            filter_subject: format!("{}{filter}", store.prefix),
            headers_only: true,
            replay_policy: consumer::ReplayPolicy::Instant,
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("listing keys", e))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = consumer.messages().await.map_err(|e| unavailable("listing keys", e))?;
    let mut keys = Vec::new();
    let listing = async {
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| unavailable("listing keys", e))?;
            let pending = message.info().map_err(|e| unavailable("listing keys", e))?.pending;
            let deleted =
                message.headers.as_ref().and_then(|h| h.get("KV-Operation")).is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            if !deleted {
                if let Some(key) = message.subject.strip_prefix(store.prefix.as_str()) {
                    if keys.len() >= cap {
                        return Err(unavailable("scan", format!("more than {cap} keys under one prefix")));
                    }
                    keys.push(key.to_owned());
                }
            }
            if pending == 0 {
                break;
            }
        }
        Ok(())
    };
    tokio::time::timeout(LIST_TIMEOUT, listing)
        .await
        .map_err(|_| unavailable("listing keys", format!("no answer within {LIST_TIMEOUT:?}")))??;
    Ok(keys)
}

/// A user key as a KV key: `s` and one token per byte (two hex digits).
pub fn encode_key(key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(1 + key.len() * 3);
    out.push('s');
    for byte in key.bytes() {
        out.push('.');
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

/// The user key of a KV key made by [`encode_key`]; `None` for any other.
pub fn decode_key(kv_key: &str) -> Option<String> {
    let rest = kv_key.strip_prefix('s')?;
    if rest.is_empty() {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(rest.len() / 3);
    for token in rest.strip_prefix('.')?.split('.') {
        if token.len() != 2 {
            return None;
        }
        bytes.push(u8::from_str_radix(token, 16).ok()?);
    }
    String::from_utf8(bytes).ok()
}

fn position_key(source: &str) -> String {
    format!("_p.x{}", hex::encode(source))
}

fn marker_key(event_id: &str) -> String {
    format!("e{}", hex::encode(event_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_keep_order_and_prefixes() {
        let keys = ["", "a", "a b", "a.b", "a..b", "*", ">", "é", "日本", "a/b=c", "\u{0}", "zz", "a\u{7f}"];
        let valid = |k: &str| k.chars().all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c)) && !k.ends_with('.');
        for key in keys {
            let encoded = encode_key(key);
            assert!(valid(&encoded), "{encoded}");
            assert_eq!(decode_key(&encoded).as_deref(), Some(key));
        }
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        let mut by_encoding = keys.to_vec();
        by_encoding.sort_by_key(|k| encode_key(k));
        assert_eq!(sorted, by_encoding);
        assert!(encode_key("abc").starts_with(&format!("{}.", encode_key("ab"))));
        for internal in [HEAD, "_c.0.1", "_p.x61", "s.6", "s.zz", "s.61.", "x"] {
            assert_eq!(decode_key(internal), None, "{internal}");
        }
    }

    #[test]
    fn bucket_names() {
        assert_eq!(default_bucket("orders.eu v2"), "sluice-state-orders_eu_v2");
        assert!(valid_bucket(&default_bucket("a.b")) && !valid_bucket("a.b") && !valid_bucket(""));
    }
}
