//! One attempt's view of state: an overlay of its own writes over the
//! store's pending writes over the backend, and a record of what it read.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use super::metrics::StateMetrics;
use super::store::Store;
use super::{check_key, StateError};

/// How many rounds one `scan` call merges before it returns a short page
/// with a cursor: a run of pending deletes over many backend keys must not
/// make one call unbounded.
const MAX_SCAN_ROUNDS: usize = 8;

/// The state of one attempt at one event. Dropping it (a failed, retried,
/// timed-out or dead-lettered attempt) leaves no trace; [`Store::conclude`]
/// publishes its writes.
#[derive(Debug)]
pub struct EventState {
    store: Arc<Store>,
    event_id: String,
    begin_clock: u64,
    epoch: u64,
    /// This attempt's writes; `None` is a delete.
    overlay: BTreeMap<String, Option<Bytes>>,
    /// Keys read from outside the overlay → the clock at the first read.
    reads: Reads,
    scans: Vec<ScanRead>,
    /// How many events share this overlay: 1 for one event, the batch's
    /// size for a lane batch called at once ([`Store::begin_batch`]). The
    /// per-event write and read limits are multiplied by it.
    events: usize,
    /// A write or read was refused for the batch's limit: which event was
    /// at fault is unknown, so the batch must run again one event per call.
    limited: bool,
    /// Whether `into_parts` ran (then `Drop` has nothing to unregister).
    ended: bool,
}

/// A scanned range, for conflict detection: keys under `prefix`, greater
/// than `after`, up to and including `through` (`None`: to the end).
#[derive(Debug, Clone)]
pub(crate) struct ScanRead {
    pub prefix: String,
    pub after: Option<String>,
    pub through: Option<String>,
    pub read_at: u64,
}

/// Keys an attempt read → the clock at the first read. foldhash, seeded per
/// map: the keys come from the guest, and SipHash showed in a stateful
/// pipeline's profile.
pub(crate) type Reads = HashMap<String, u64, foldhash::quality::RandomState>;

/// What `conclude` needs of an attempt.
pub(crate) struct Parts {
    pub event_id: String,
    pub begin_clock: u64,
    pub epoch: u64,
    pub overlay: BTreeMap<String, Option<Bytes>>,
    pub reads: Reads,
    pub scans: Vec<ScanRead>,
}

/// A page of `scan`: entries, and the `after` of the next page (`None` at the
/// end). A page may hold fewer entries than asked even when `next` is set.
pub type ScanPage = (Vec<(String, Vec<u8>)>, Option<String>);

impl EventState {
    pub(crate) fn new(store: Arc<Store>, event_id: String, begin_clock: u64, epoch: u64, events: usize) -> Self {
        Self {
            store,
            event_id,
            begin_clock,
            epoch,
            overlay: BTreeMap::new(),
            reads: Reads::default(),
            scans: Vec::new(),
            events: events.max(1),
            limited: false,
            ended: false,
        }
    }

    /// Whether a batch's write or read limit refused a call (see
    /// [`Store::begin_batch`]): the batch must not conclude, its events run
    /// again one per call, where the limit names the event at fault.
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// The write limit of this overlay: the per-event one, times the events
    /// sharing it.
    fn max_writes(&self) -> usize {
        self.store.limits().max_writes_per_event.saturating_mul(self.events)
    }

    /// The read limit of this overlay, like [`EventState::max_writes`].
    fn max_reads(&self) -> usize {
        self.store.limits().max_reads_per_event.saturating_mul(self.events)
    }

    /// A refusal for a limit: marks a batch overlay as limited; the error
    /// names the per-event limit, which is the one the plugin documents.
    fn over_limit(&mut self, error: StateError) -> StateError {
        if self.events > 1 {
            self.limited = true;
        }
        error
    }

    /// The id of the event this attempt handles.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// Distinct keys this attempt has written so far.
    pub fn writes(&self) -> usize {
        self.overlay.len()
    }

    pub(crate) fn into_parts(mut self) -> Parts {
        self.ended = true;
        Parts {
            event_id: std::mem::take(&mut self.event_id),
            begin_clock: self.begin_clock,
            epoch: self.epoch,
            overlay: std::mem::take(&mut self.overlay),
            reads: std::mem::take(&mut self.reads),
            scans: std::mem::take(&mut self.scans),
        }
    }

    /// A key's value as this attempt sees it. Keys are `&str` or `String`
    /// (an owned key, e.g. lifted from the guest, is kept without a copy).
    pub async fn get<K: Key>(&mut self, key: K) -> Result<Option<Vec<u8>>, StateError> {
        check_key(key.as_ref(), self.store.limits())?;
        StateMetrics::add(&self.store.metrics().reads, 1);
        Ok(self.current(key).await?.map(|b| b.to_vec()))
    }

    /// Writes `value` under `key` in this attempt's overlay: visible to the
    /// attempt at once, committed with the event.
    pub fn set<K: Key>(&mut self, key: K, value: Vec<u8>) -> Result<(), StateError> {
        let limits = self.store.limits();
        check_key(key.as_ref(), limits)?;
        if value.len() > limits.max_value_bytes {
            return Err(StateError::ValueTooLarge { key: key.into(), len: value.len(), max: limits.max_value_bytes });
        }
        self.write(key, Some(Bytes::from(value)))
    }

    /// Deletes `key` in this attempt's overlay, committed with the event.
    pub fn delete<K: Key>(&mut self, key: K) -> Result<(), StateError> {
        check_key(key.as_ref(), self.store.limits())?;
        self.write(key, None)
    }

    /// Adds `delta` to a counter and returns the new value. Counters are
    /// ASCII decimal text (readable by operators and by every guest language
    /// without a codec); a missing key counts as 0.
    pub async fn increment(&mut self, key: &str, delta: i64) -> Result<i64, StateError> {
        check_key(key, self.store.limits())?;
        StateMetrics::add(&self.store.metrics().reads, 1);
        let current = match self.current(key).await? {
            None => 0,
            Some(bytes) => parse_counter(&bytes).ok_or_else(|| StateError::NotACounter { key: key.to_owned() })?,
        };
        let next = current.checked_add(delta).ok_or_else(|| StateError::Overflow { key: key.to_owned() })?;
        let mut text = itoa::Buffer::new();
        self.write(key, Some(Bytes::copy_from_slice(text.format(next).as_bytes())))?;
        Ok(next)
    }

    /// A page of entries under `prefix` after `after`, at most `limit` (which
    /// is clamped to 1..=`max_scan`), merged from this attempt's writes, the
    /// pending writes and the backend: deleted keys are hidden and the newest
    /// value wins.
    pub async fn scan(&mut self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ScanPage, StateError> {
        let limits = self.store.limits();
        check_key(prefix, limits)?;
        if let Some(after) = after {
            check_key(after, limits)?;
        }
        let limit = limit.clamp(1, limits.max_scan);
        if self.reads.len() + self.scans.len() >= self.max_reads() {
            let max = limits.max_reads_per_event;
            return Err(self.over_limit(StateError::TooManyReads { max }));
        }
        StateMetrics::add(&self.store.metrics().reads, 1);

        let mut page = Vec::new();
        let mut cursor = after.map(str::to_owned);
        let mut read_at = None;
        let mut next = None;
        for _ in 0..MAX_SCAN_ROUNDS {
            // Pending before backend: an entry committed (and dropped from
            // pending) in between is then found in the backend.
            let (clock, pending) = self.store.pending_range(prefix, cursor.as_deref(), limit);
            read_at.get_or_insert(clock);
            let stored = self.store.backend().scan(prefix, cursor.as_deref(), limit).await?;
            let own: Vec<(String, Option<Bytes>)> =
                overlay_under(&self.overlay, prefix, cursor.as_deref()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();

            // Each source that filled its quota knows its entries only up to
            // its last key: merge no further than the smallest such key.
            let mut window: Option<String> = None;
            let mut narrow = |full: bool, last: Option<&String>| {
                if let (true, Some(last)) = (full, last) {
                    if window.as_ref().is_none_or(|w| last < w) {
                        window = Some(last.clone());
                    }
                }
            };
            narrow(stored.len() >= limit, stored.last().map(|(k, _)| k));
            narrow(pending.len() >= limit, pending.last().map(|(k, _)| k));
            narrow(own.len() >= limit, own.last().map(|(k, _)| k));
            let within = |k: &String| window.as_ref().is_none_or(|w| k <= w);

            let mut merged: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
            merged.extend(stored.into_iter().filter(|(k, _)| within(k)).map(|(k, v)| (k, Some(Bytes::from(v)))));
            merged.extend(pending.into_iter().filter(|(k, _)| within(k)));
            merged.extend(own.into_iter().filter(|(k, _)| within(k)));

            for (key, value) in merged {
                let Some(value) = value else { continue };
                page.push((key, value.to_vec()));
                if page.len() >= limit {
                    break;
                }
            }
            if page.len() >= limit {
                next = page.last().map(|(k, _)| k.clone());
                break;
            }
            match window {
                None => {
                    next = None;
                    break;
                }
                Some(end) => {
                    cursor = Some(end.clone());
                    next = Some(end);
                }
            }
        }
        self.scans.push(ScanRead {
            prefix: prefix.to_owned(),
            after: after.map(str::to_owned),
            through: next.clone(),
            read_at: read_at.unwrap_or_default(),
        });
        Ok((page, next))
    }

    /// The value as this attempt sees it, recording a read when it comes
    /// from outside the overlay.
    async fn current<K: Key>(&mut self, key: K) -> Result<Option<Bytes>, StateError> {
        if let Some(own) = self.overlay.get(key.as_ref()) {
            return Ok(own.clone());
        }
        let (clock, pending) = self.store.read_pending(key.as_ref());
        if !self.reads.contains_key(key.as_ref()) {
            if self.reads.len() + self.scans.len() >= self.max_reads() {
                let max = self.store.limits().max_reads_per_event;
                return Err(self.over_limit(StateError::TooManyReads { max }));
            }
            self.reads.insert(key.as_ref().to_owned(), clock);
        }
        match pending {
            Some(value) => Ok(value),
            None => Ok(self.store.backend().get(key.as_ref()).await?.map(Bytes::from)),
        }
    }

    fn write<K: Key>(&mut self, key: K, value: Option<Bytes>) -> Result<(), StateError> {
        let written = (key.as_ref().len() + value.as_ref().map_or(0, Bytes::len)) as u64;
        // A key written again is updated in place: no copy of the key.
        if let Some(slot) = self.overlay.get_mut(key.as_ref()) {
            *slot = value;
        } else {
            if self.overlay.len() >= self.max_writes() {
                let max = self.store.limits().max_writes_per_event;
                return Err(self.over_limit(StateError::TooManyWrites { max }));
            }
            self.overlay.insert(key.into(), value);
        }
        let metrics = self.store.metrics();
        StateMetrics::add(&metrics.writes, 1);
        StateMetrics::add(&metrics.bytes_written, written);
        Ok(())
    }
}

impl Drop for EventState {
    fn drop(&mut self) {
        if !self.ended {
            self.store.end_attempt(self.begin_clock);
        }
    }
}

/// A state key argument: `&str` (copied when it must be kept) or `String`
/// (kept as it is).
pub trait Key: AsRef<str> + Into<String> {}

impl<K: AsRef<str> + Into<String>> Key for K {}

/// Counters are ASCII decimal: an optional sign and digits, nothing else.
fn parse_counter(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn overlay_under<'a>(
    overlay: &'a BTreeMap<String, Option<Bytes>>,
    prefix: &'a str,
    after: Option<&str>,
) -> impl Iterator<Item = (&'a String, &'a Option<Bytes>)> + 'a {
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
        _ => Bound::Included(prefix.to_owned()),
    };
    overlay.range((start, Bound::Unbounded)).take_while(move |(k, _)| k.starts_with(prefix))
}
