//! The in-memory backend: for tests and `sluice plugin test`. Nothing
//! survives the process; commits are atomic because they take one lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;

use super::backend::{Backend, CommitBatch};
use super::StateError;

/// How long applied markers are kept by default: a day, far longer than any
/// broker's redelivery delay.
pub const DEFAULT_MARKER_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A `BTreeMap` behind a mutex.
#[derive(Debug)]
pub struct MemoryBackend {
    inner: Mutex<Inner>,
    marker_retention: Duration,
}

#[derive(Debug)]
struct Inner {
    values: BTreeMap<String, Bytes>,
    /// Applied markers in two generations, as the embedded backend keeps
    /// them: the first commit after `current` is a retention old drops
    /// `previous` whole and starts a new `current`. A marker lives one to
    /// two retentions, and pruning costs nothing per marker (a queue of
    /// (time, id) pruned one by one cost a second copy of every id and
    /// ~10% of a stateful pipeline's CPU, measured).
    current: Markers,
    previous: Markers,
    /// When `current` started.
    started: Instant,
    positions: HashMap<String, u64>,
}

/// Event ids, hashed with foldhash (seeded per set): SipHash and its
/// rehashing as the set grew were most of a commit's time. Ids come from
/// brokers and clients, so the seed stays random.
type Markers = HashSet<String, foldhash::quality::RandomState>;

impl Inner {
    fn new(now: Instant) -> Self {
        Self { values: BTreeMap::new(), current: Markers::default(), previous: Markers::default(), started: now, positions: HashMap::new() }
    }

    fn is_applied(&self, id: &str) -> bool {
        self.current.contains(id) || self.previous.contains(id)
    }

    /// Starts a new generation if `current` is `retention` old at `now`.
    fn rotate(&mut self, now: Instant, retention: Duration) {
        if now.duration_since(self.started) < retention {
            return;
        }
        // The new generation will likely hold as many as the last did.
        let expected = self.current.len();
        self.previous = std::mem::take(&mut self.current);
        self.current.reserve(expected);
        self.started = now;
    }
}

/// Why a seed file was refused.
#[derive(thiserror::Error, Debug)]
pub enum SeedError {
    /// The seed file cannot be read.
    #[error("cannot read state seed file {path}: {source}")]
    Read {
        /// The seed file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The seed is not a JSON object.
    #[error("state seed {origin} is not a JSON object of key → value: {source}")]
    Json {
        /// The seed file (or whatever the caller named the JSON text).
        origin: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A value that is neither a string nor `{"base64": "…"}`.
    #[error("state seed {origin}, key {key:?}: {reason}")]
    Value {
        /// The seed file (or whatever the caller named the JSON text).
        origin: String,
        /// The key at fault.
        key: String,
        /// Why its value is refused.
        reason: String,
    },
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty backend, keeping idempotency markers for the default
    /// retention.
    pub fn new() -> Self {
        Self::with_retention(DEFAULT_MARKER_RETENTION)
    }

    /// An empty backend keeping idempotency markers for `marker_retention`.
    pub fn with_retention(marker_retention: Duration) -> Self {
        Self { inner: Mutex::new(Inner::new(Instant::now())), marker_retention }
    }

    /// A backend holding the entries of a seed file: a JSON object whose
    /// values are strings (stored as their UTF-8 bytes) or `{"base64": "…"}`
    /// for arbitrary bytes. Lets plugin authors test stateful handlers.
    pub fn from_seed_file(path: &Path) -> Result<Self, SeedError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read { path: path.to_owned(), source })?;
        Self::from_seed_json(&text, &path.display().to_string())
    }

    /// As [`Self::from_seed_file`], from the JSON text; `origin` names it in
    /// errors.
    pub fn from_seed_json(text: &str, origin: &str) -> Result<Self, SeedError> {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|source| SeedError::Json { origin: origin.to_owned(), source })?;
        let backend = Self::new();
        {
            let mut inner = backend.lock();
            for (key, value) in object {
                let bytes =
                    seed_value(&value).map_err(|reason| SeedError::Value { origin: origin.to_owned(), key: key.clone(), reason })?;
                inner.values.insert(key, Bytes::from(bytes));
            }
        }
        Ok(backend)
    }

    /// Every committed entry, for tests and for printing after `plugin test`.
    pub fn entries(&self) -> BTreeMap<String, Vec<u8>> {
        self.lock().values.iter().map(|(k, v)| (k.clone(), v.to_vec())).collect()
    }

    /// A commit as of `now`: one lock, so it is atomic.
    fn commit_at(&self, batch: CommitBatch, now: Instant) {
        let mut inner = self.lock();
        inner.rotate(now, self.marker_retention);
        for (key, value) in batch.writes {
            match value {
                Some(value) => inner.values.insert(key, value),
                None => inner.values.remove(&key),
            };
        }
        inner.current.extend(batch.applied);
        if let Some(position) = batch.position {
            inner.positions.insert(position.source, position.offset);
        }
    }

    /// The lock is held only for map operations, never across an await.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn seed_value(value: &serde_json::Value) -> Result<Vec<u8>, String> {
    match value {
        serde_json::Value::String(s) => Ok(s.as_bytes().to_vec()),
        serde_json::Value::Object(o) if o.len() == 1 => match o.get("base64") {
            Some(serde_json::Value::String(b)) => {
                base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| format!("invalid base64: {e}"))
            }
            _ => Err("expected a string or {\"base64\": \"…\"}".into()),
        },
        _ => Err("expected a string or {\"base64\": \"…\"}".into()),
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.lock().values.get(key).map(|v| v.to_vec()))
    }

    async fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let inner = self.lock();
        let start = match after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(after),
            _ => std::ops::Bound::Included(prefix),
        };
        Ok(inner
            .values
            .range::<str, _>((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.to_vec()))
            .collect())
    }

    async fn commit(&self, batch: CommitBatch) -> Result<(), StateError> {
        self.commit_at(batch, Instant::now());
        Ok(())
    }

    async fn was_applied(&self, event_id: &str) -> Result<bool, StateError> {
        Ok(self.lock().is_applied(event_id))
    }

    async fn applied_among(&self, event_ids: &[&str]) -> Result<Vec<bool>, StateError> {
        let inner = self.lock();
        Ok(event_ids.iter().map(|id| inner.is_applied(id)).collect())
    }

    async fn position(&self, source: &str) -> Result<Option<u64>, StateError> {
        Ok(self.lock().positions.get(source).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    #[tokio::test]
    async fn a_seed_holds_strings_and_base64_bytes() -> Result {
        let backend = MemoryBackend::from_seed_json(r#"{"sku:1": "5", "blob": {"base64": "AAEC"}}"#, "seed.json")?;
        assert_eq!(backend.get("sku:1").await?, Some(b"5".to_vec()));
        assert_eq!(backend.get("blob").await?, Some(vec![0, 1, 2]));
        Ok(())
    }

    #[test]
    fn a_bad_seed_names_the_key() {
        let Err(error) = MemoryBackend::from_seed_json(r#"{"n": 5}"#, "seed.json") else { unreachable!("a number is not a seed value") };
        assert!(error.to_string().contains("seed.json, key \"n\""), "{error}");
        assert!(MemoryBackend::from_seed_json("[1]", "x").is_err());
        assert!(MemoryBackend::from_seed_json(r#"{"k": {"base64": "!!"}}"#, "x").is_err());
    }

    #[tokio::test]
    async fn markers_live_one_to_two_retentions() -> Result {
        let retention = Duration::from_secs(60);
        let backend = MemoryBackend::with_retention(retention);
        let start = backend.lock().started;
        let applied = |ids: &[&str]| CommitBatch { applied: ids.iter().map(|id| (*id).to_owned()).collect(), ..Default::default() };
        backend.commit_at(applied(&["e1"]), start);
        backend.commit_at(applied(&["e2"]), start + retention / 2);
        // The first commit a retention after the generation began starts
        // the next: e1 and e2 are kept, though e1 is a retention old.
        backend.commit_at(applied(&["e3"]), start + retention);
        assert_eq!(backend.applied_among(&["e1", "e2", "e3", "e4"]).await?, [true, true, true, false]);
        // Applied again, a marker is kept from then on.
        backend.commit_at(applied(&["e2"]), start + retention + retention / 2);
        // The next rotation drops the first generation whole.
        backend.commit_at(applied(&["e4"]), start + 2 * retention);
        assert_eq!(backend.applied_among(&["e1", "e2", "e3", "e4"]).await?, [false, true, true, true]);
        assert!(!backend.was_applied("e1").await?);
        Ok(())
    }
}
