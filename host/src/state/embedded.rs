//! The embedded backend: redb, a transactional copy-on-write B-tree in one
//! file. One database per host ([`EmbeddedDb`]), a table namespace per
//! pipeline ([`EmbeddedDb::backend`]):
//!
//! - `state:<pipeline>`: key → value;
//! - `markers:<pipeline>:<generation>`: event id (bytes) → (), the applied
//!   markers (see [`CommitBatch::applied`] for why they exist), in
//!   generations: a commit writes into the current one, and once it is
//!   `marker_retention` old the next commit drops the generation before it
//!   whole and starts a new one. A marker thus lives between one and two
//!   retentions, and pruning costs no per-marker work (no index by age, no
//!   range reads);
//! - `marker_generations`: pipeline → (current generation, its start in ms
//!   since the Unix epoch);
//! - `applied:<pipeline>` (event id → ms): the markers of hosts before
//!   generations, still answered, and dropped at the first rotation (every
//!   one of them is older than a retention by then);
//! - `positions`: (pipeline, source) → resume position.
//!
//! Every commit is one write transaction: state, markers and position land
//! together or not at all, so a kill -9 anywhere leaves them consistent.
//! With `sync_interval` zero each commit is fsynced before it returns
//! (`Durability::Immediate`). Otherwise commits are `Durability::None` and
//! a flusher makes them durable at most `sync_interval` later: a crash then
//! reverts state, markers *and* position to the last durable commit
//! together, and the source re-reads from there. That is only sound when the
//! position lives in the same transaction (a file source), never when the
//! acknowledgement leaves the host (a broker), which the config enforces.
//! redb calls block (file I/O, fsync), so each runs on tokio's blocking pool.
//!
//! Reads of keys written since the backend opened are answered from a
//! bounded cache filled **only by commits** (write-through, after the
//! transaction commits): a read never waits for a blocking thread for a hot
//! key, and since commits are the only writers of this pipeline's table
//! (one store, one committer; redb allows one process), the cache never
//! holds a value older than the table's.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use lru::LruCache;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::backend::{Backend, CommitBatch};
use super::memory::DEFAULT_MARKER_RETENTION;
use super::StateError;

const POSITIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("positions");

/// Pipeline → (current marker generation, its start in ms since the epoch).
const GENERATIONS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("marker_generations");

/// Most bytes (keys plus values) the read cache of one pipeline holds: the
/// hot keys of a stream fit many times over; colder ones are read from the
/// file.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// How one pipeline's markers are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// How long an applied marker is kept at least (at most twice that): it
    /// must exceed the longest time a source may take to redeliver an
    /// unacknowledged event. 24 h default.
    pub marker_retention: Duration,
    /// Longest time a commit stays without fsync (zero: every commit is
    /// fsynced before it returns). Only for a source whose position is
    /// committed with the state.
    pub sync_interval: Duration,
    /// Most bytes of keys and values kept in the read cache (zero: none).
    pub cache_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self { marker_retention: DEFAULT_MARKER_RETENTION, sync_interval: Duration::ZERO, cache_bytes: DEFAULT_CACHE_BYTES }
    }
}

/// The host's state database. redb refuses to open one file twice in a
/// process, so the host opens it once and hands each pipeline a backend.
#[derive(Debug, Clone)]
pub struct EmbeddedDb {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl EmbeddedDb {
    /// Opens (or creates) the database file, creating its directory.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StateError> {
        let path = Arc::new(path.into());
        let opened = Arc::clone(&path);
        let db = blocking(move || {
            if let Some(dir) = opened.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| unavailable(&opened, e))?;
            }
            Database::create(opened.as_path()).map_err(|e| unavailable(&opened, e))
        })
        .await?;
        Ok(Self { db: Arc::new(db), path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backend of one pipeline: its own tables in this database. With a
    /// `sync_interval`, starts its flusher (on the current tokio runtime;
    /// it ends when the backend is dropped).
    pub fn backend(&self, pipeline: &str, options: EmbeddedOptions) -> EmbeddedBackend {
        let unsynced = Arc::new(AtomicBool::new(false));
        if !options.sync_interval.is_zero() {
            tokio::spawn(flush_every(options.sync_interval, self.clone(), Arc::downgrade(&unsynced)));
        }
        EmbeddedBackend {
            unsynced,
            db: self.clone(),
            tables: Arc::new(Tables {
                pipeline: pipeline.to_owned(),
                state: format!("state:{pipeline}"),
                legacy_applied: format!("applied:{pipeline}"),
                legacy_applied_at: format!("applied_at:{pipeline}"),
            }),
            cache: Mutex::new(Cache::new(options.cache_bytes)),
            options,
            generation: Arc::new(Mutex::new(None)),
        }
    }
}

#[derive(Debug)]
struct Tables {
    pipeline: String,
    state: String,
    legacy_applied: String,
    legacy_applied_at: String,
}

/// The name of one generation's markers table.
fn markers_name(pipeline: &str, generation: u64) -> String {
    format!("markers:{pipeline}:{generation}")
}

fn markers(name: &str) -> TableDefinition<'_, &'static [u8], ()> {
    TableDefinition::new(name)
}

impl Tables {
    fn state(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.state)
    }
    fn legacy_applied(&self) -> TableDefinition<'_, &'static str, u64> {
        TableDefinition::new(&self.legacy_applied)
    }
    fn legacy_applied_at(&self) -> TableDefinition<'_, (u64, &'static str), ()> {
        TableDefinition::new(&self.legacy_applied_at)
    }

    /// Which of `ids` have a marker: in the current generation, the one
    /// before it, or the legacy table.
    fn applied_among(&self, txn: &redb::ReadTransaction, ids: &[&[u8]]) -> Result<Vec<bool>, redb::Error> {
        let mut found = vec![false; ids.len()];
        let current = match open_if_exists(txn, GENERATIONS)? {
            Some(table) => table.get(self.pipeline.as_str())?.map(|g| g.value().0),
            None => None,
        };
        let names: Vec<String> = match current {
            Some(g) => [Some(g), g.checked_sub(1)].into_iter().flatten().map(|g| markers_name(&self.pipeline, g)).collect(),
            None => Vec::new(),
        };
        for name in &names {
            let Some(table) = open_if_exists(txn, markers(name))? else { continue };
            for (i, id) in ids.iter().enumerate() {
                if !found[i] {
                    found[i] = table.get(*id)?.is_some();
                }
            }
        }
        if let Some(table) = open_if_exists(txn, self.legacy_applied())? {
            for (i, id) in ids.iter().enumerate() {
                if !found[i] {
                    // A legacy key is a `&str`; an id that is not UTF-8
                    // was never written there.
                    if let Ok(id) = std::str::from_utf8(id) {
                        found[i] = table.get(id)?.is_some();
                    }
                }
            }
        }
        Ok(found)
    }
}

/// A table as a read sees it, or `None` before the first write made it
/// (redb creates a table at its first write; until then it reads empty).
fn open_if_exists<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<'_, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, redb::Error> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The current marker generation and when it started (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Generation {
    number: u64,
    started_ms: u64,
}

/// One pipeline's state in the host's database.
#[derive(Debug)]
pub struct EmbeddedBackend {
    /// Whether a commit since the last fsync is not durable yet.
    unsynced: Arc<AtomicBool>,
    db: EmbeddedDb,
    tables: Arc<Tables>,
    options: EmbeddedOptions,
    /// The current marker generation, read from the file by the first
    /// commit; this backend is its pipeline's only writer, so it stays true.
    generation: Arc<Mutex<Option<Generation>>>,
    cache: Mutex<Cache>,
}

/// Committed values of recently written keys (`None`: deleted), least
/// recently used out first once over its byte budget.
#[derive(Debug)]
struct Cache {
    entries: LruCache<String, Option<Bytes>>,
    bytes: usize,
    budget: usize,
}

impl Cache {
    fn new(budget: usize) -> Self {
        Self { entries: LruCache::unbounded(), bytes: 0, budget }
    }

    fn cost(key: &str, value: &Option<Bytes>) -> usize {
        key.len() + value.as_ref().map_or(0, Bytes::len)
    }

    fn get(&mut self, key: &str) -> Option<Option<Bytes>> {
        self.entries.get(key).cloned()
    }

    fn put(&mut self, key: &str, value: &Option<Bytes>) {
        if self.budget == 0 {
            return;
        }
        let cost = Self::cost(key, value);
        match self.entries.get_mut(key) {
            Some(cached) => {
                self.bytes = self.bytes - Self::cost(key, cached) + cost;
                *cached = value.clone();
            }
            None => {
                self.bytes += cost;
                self.entries.put(key.to_owned(), value.clone());
            }
        }
        while self.bytes > self.budget {
            let Some((key, value)) = self.entries.pop_lru() else { break };
            self.bytes -= Self::cost(&key, &value);
        }
    }
}
impl EmbeddedBackend {
    /// Runs a blocking redb operation on the blocking pool, with errors
    /// naming the database file.
    async fn run<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Tables) -> Result<T, redb::Error> + Send + 'static,
    {
        let db = Arc::clone(&self.db.db);
        let tables = Arc::clone(&self.tables);
        let path = Arc::clone(&self.db.path);
        blocking(move || f(&db, &tables).map_err(|e| unavailable(&path, e))).await
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(cached) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(key) {
            return Ok(cached.map(|v| v.to_vec()));
        }
        let key = key.to_owned();
        self.run(move |db, tables| {
            let txn = db.begin_read()?;
            let Some(table) = open_if_exists(&txn, tables.state())? else { return Ok(None) };
            Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        self.run(move |db, tables| {
            let txn = db.begin_read()?;
            let Some(table) = open_if_exists(&txn, tables.state())? else { return Ok(Vec::new()) };
            let start = match after.as_deref() {
                Some(after) if after >= prefix.as_str() => Bound::Excluded(after),
                _ => Bound::Included(prefix.as_str()),
            };
            let mut page = Vec::new();
            for entry in table.range::<&str>((start, Bound::Unbounded))? {
                let (key, value) = entry?;
                if !key.value().starts_with(prefix.as_str()) || page.len() >= limit {
                    break;
                }
                page.push((key.value().to_owned(), value.value().to_vec()));
            }
            Ok(page)
        })
        .await
    }

    async fn commit(&self, batch: CommitBatch) -> Result<(), StateError> {
        let retention_ms = u64::try_from(self.options.marker_retention.as_millis()).unwrap_or(u64::MAX);
        let durability = if self.options.sync_interval.is_zero() { Durability::Immediate } else { Durability::None };
        let unsynced = Arc::clone(&self.unsynced);
        let generation = Arc::clone(&self.generation);
        let committed = self
            .run(move |db, tables| {
                let now = now_ms();
                let mut txn = db.begin_write()?;
                txn.set_durability(durability)?;
                let known = *generation.lock().unwrap_or_else(PoisonError::into_inner);
                let mut current = match known {
                    Some(current) => current,
                    None => {
                        let table = txn.open_table(GENERATIONS)?;
                        let stored = table.get(tables.pipeline.as_str())?.map(|g| g.value());
                        stored.map_or(Generation { number: 0, started_ms: now }, |(number, started_ms)| Generation { number, started_ms })
                    }
                };
                let rotate = now.saturating_sub(current.started_ms) >= retention_ms;
                if rotate {
                    // Every marker of the generation before the current one,
                    // and every legacy marker, is older than a retention.
                    if let Some(old) = current.number.checked_sub(1) {
                        txn.delete_table(markers(&markers_name(&tables.pipeline, old)))?;
                    }
                    txn.delete_table(tables.legacy_applied())?;
                    txn.delete_table(tables.legacy_applied_at())?;
                    current = Generation { number: current.number + 1, started_ms: now };
                }
                if rotate || known.is_none() {
                    txn.open_table(GENERATIONS)?.insert(tables.pipeline.as_str(), (current.number, current.started_ms))?;
                }
                {
                    let mut state = txn.open_table(tables.state())?;
                    for (key, value) in &batch.writes {
                        match value {
                            Some(value) => drop(state.insert(key.as_str(), value.as_ref())?),
                            None => drop(state.remove(key.as_str())?),
                        }
                    }
                    let name = markers_name(&tables.pipeline, current.number);
                    let mut applied = txn.open_table(markers(&name))?;
                    for id in &batch.applied {
                        applied.insert(id.as_bytes(), ())?;
                    }
                    if let Some(position) = &batch.position {
                        let mut positions = txn.open_table(POSITIONS)?;
                        positions.insert((tables.pipeline.as_str(), position.source.as_str()), position.offset)?;
                    }
                }
                txn.commit()?;
                // Only once committed: a failed transaction leaves the file's
                // generation as it was.
                *generation.lock().unwrap_or_else(PoisonError::into_inner) = Some(current);
                if matches!(durability, Durability::None) {
                    unsynced.store(true, Ordering::Release);
                }
                Ok(batch.writes)
            })
            .await?;
        // Before returning: the store drops a key's pending entry only after
        // its commit returned, so a read then finds it here or in the file.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, value) in &committed {
            cache.put(key, value);
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), StateError> {
        if !self.unsynced.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let db = self.db.clone();
        blocking(move || sync(&db.db).map_err(|e| unavailable(&db.path, e))).await
    }

    async fn was_applied(&self, event_id: &str) -> Result<bool, StateError> {
        Ok(self.applied_among(&[event_id]).await?.first().copied().unwrap_or(false))
    }

    /// One read transaction on one blocking thread for the whole batch.
    async fn applied_among(&self, event_ids: &[&str]) -> Result<Vec<bool>, StateError> {
        let event_ids: Vec<String> = event_ids.iter().map(|id| (*id).to_owned()).collect();
        self.run(move |db, tables| {
            let txn = db.begin_read()?;
            let ids: Vec<&[u8]> = event_ids.iter().map(|id| id.as_bytes()).collect();
            tables.applied_among(&txn, &ids)
        })
        .await
    }

    async fn position(&self, source: &str) -> Result<Option<u64>, StateError> {
        let source = source.to_owned();
        self.run(move |db, tables| {
            let txn = db.begin_read()?;
            let Some(table) = open_if_exists(&txn, POSITIONS)? else { return Ok(None) };
            Ok(table.get((tables.pipeline.as_str(), source.as_str()))?.map(|v| v.value()))
        })
        .await
    }
}

/// An empty transaction with `Durability::Immediate`: redb makes every
/// earlier non-durable commit durable with it.
fn sync(db: &Database) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.commit()?;
    Ok(())
}

/// Fsyncs a backend's commits every `interval` while there are unsynced
/// ones; ends when the backend is gone. A failed fsync is retried on the
/// next tick and logged: the commits stay consistent, only less durable.
async fn flush_every(interval: Duration, db: EmbeddedDb, unsynced: std::sync::Weak<AtomicBool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(flag) = unsynced.upgrade() else { return };
        if !flag.swap(false, Ordering::AcqRel) {
            continue;
        }
        let synced = db.clone();
        let result = blocking(move || sync(&synced.db).map_err(|e| unavailable(&synced.path, e))).await;
        if let Err(err) = result {
            flag.store(true, Ordering::Release);
            tracing::error!("state: {err}");
        }
    }
}

/// Runs blocking work off the async runtime's worker threads.
async fn blocking<T, F>(f: F) -> Result<T, StateError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StateError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(StateError::Unavailable(format!("state database task failed: {e}"))))
}

fn unavailable(path: &Path, error: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("state database {}: {error}", path.display()))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

#[cfg(test)]
mod tests;
