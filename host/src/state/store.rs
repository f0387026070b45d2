//! The pipeline-level view of state shared by all lanes: the pending map of
//! concluded-but-not-durable writes, optimistic concurrency, and the
//! committer that makes events durable in conclude order.
//!
//! # Versions and conflicts
//!
//! A logical clock counts concluded events that wrote something; each pending
//! entry carries the clock value of the event that wrote it (its version).
//! An [`EventState`] remembers, for every key it read from outside its own
//! overlay, the clock at the moment of the read (and the same for every
//! scanned range). `conclude` refuses the attempt when a pending entry in
//! anything it read has a newer version: another event concluded a write
//! there after the read, so the attempt computed from a stale value and must
//! run again.
//!
//! A pending entry is dropped only once it is committed **and** every live
//! `EventState` began at or after its version. So while an attempt is alive,
//! every write concluded after its start is still in the pending map, and
//! "absent from pending" at conclude time really means "not written since".
//! This is what makes dropping entries safe; it also means one long-lived
//! attempt keeps committed entries in memory until it ends (it is bounded by
//! the handler's deadline).
//!
//! # Commit order
//!
//! Tickets queue in conclude order. `ready` marks a ticket ready; one
//! committer task at a time takes the longest ready prefix (at most
//! [`MAX_BATCH_EVENTS`]) and commits it as one backend transaction, then
//! resolves those `ready` calls. A later ticket never commits before an
//! earlier one, so a late commit can never overwrite a newer value.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use super::backend::{Backend, CommitBatch, Position};
use super::event::{EventState, Reads, ScanRead};
use super::metrics::StateMetrics;
use super::{check_key, Limits, StateError};

/// Most events in one backend transaction: bounds a transaction's size and
/// the time the events at the end of a long ready prefix wait.
pub const MAX_BATCH_EVENTS: usize = 1024;

/// Why `conclude` refused an attempt. The dispatcher re-runs the event (with
/// a fresh [`EventState`]); it is not a failure of the event.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// A key the attempt read was written by an event committed since.
    #[error("event {event_id}: state key {key:?} was changed by another event after this attempt read it")]
    Key {
        /// The event whose attempt is refused.
        event_id: String,
        /// The key changed.
        key: String,
    },
    /// A key in a range the attempt scanned was written since.
    #[error("event {event_id}: a key under prefix {prefix:?} was changed by another event after this attempt scanned it")]
    Scan {
        /// The event whose attempt is refused.
        event_id: String,
        /// The scan's prefix.
        prefix: String,
    },
    /// The store was reset since the attempt began.
    #[error("event {event_id}: the state store was reset (abort or failed commit) after this attempt began")]
    Reset {
        /// The event whose attempt is refused.
        event_id: String,
    },
}

/// A concluded event's place in the commit order. Pass it to
/// [`Store::ready`] once the event's outputs are durable. Dropping a ticket
/// that was not readied fails the store (its writes are visible to other
/// events but could never become durable), so the pipeline stops instead of
/// every later event waiting forever.
#[derive(Debug)]
pub struct Ticket {
    store: Arc<Store>,
    seq: u64,
    epoch: u64,
    position: Option<Position>,
    armed: bool,
}

impl Ticket {
    /// The source's resume point to store with this event's commit. When a
    /// commit holds several tickets, the last one (in conclude order) with a
    /// position wins, so give each ticket a position that covers only events
    /// concluded at or before it. A lower position is always safe: replayed
    /// events are recognised by their applied markers.
    pub fn set_position(&mut self, source: impl Into<String>, offset: u64) {
        self.position = Some(Position { source: source.into(), offset });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.armed {
            self.store.ticket_dropped(self.seq, self.epoch);
        }
    }
}

/// One pipeline's state, shared by all its lanes.
pub struct Store {
    backend: Arc<dyn Backend>,
    limits: Limits,
    metrics: StateMetrics,
    inner: Mutex<Inner>,
    /// Signalled when a backend commit returns, for `abort`.
    commit_returned: Notify,
    /// The source whose position each commit records, and how to read it.
    position: std::sync::OnceLock<(String, PositionProbe)>,
    /// Keys the hashes of event ids in `Inner::uncommitted` (random per
    /// store, so ids chosen by a sender cannot be made to collide; foldhash,
    /// because SipHash showed in a stateful pipeline's profile).
    ids: foldhash::quality::RandomState,
}

/// Reads a source's resume point: everything before it is settled. Read
/// when a commit is assembled, so it covers only events whose own commits
/// returned earlier (a source settles an event after its commit).
pub type PositionProbe = Arc<dyn Fn() -> u64 + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("limits", &self.limits).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// The logical clock: versions of concluded writes.
    clock: u64,
    pending: BTreeMap<String, Pending>,
    /// Committed pending entries, (version, key) in version order, waiting
    /// until no live attempt began before them.
    committed: VecDeque<(u64, String)>,
    /// Begin clocks of live `EventState`s (a multiset).
    active: BTreeMap<u64, usize>,
    /// Concluded tickets not yet committed, in conclude order.
    queue: VecDeque<Slot>,
    next_seq: u64,
    /// Bumped by `abort` and by a failed commit: attempts and tickets of an
    /// older epoch are stale.
    epoch: u64,
    /// A committer task is running.
    committing: bool,
    /// A backend commit is in flight.
    in_flight: bool,
    /// Set by a failed commit or a dropped ticket; cleared by `abort`.
    failed: Option<StateError>,
    /// Concluded events not yet committed (queued or in flight), by the
    /// keyed hash of their id ([`Store::id_hash`]), with how many tickets
    /// each has. A hash rather than the id: no copy of the id per event, and
    /// a collision (odds ~n²/2⁶⁴ for n events in flight) only makes
    /// [`Store::is_uncommitted`] hand a redelivery back once more.
    uncommitted: HashMap<u64, usize, BuildHasherDefault<IdHasher>>,
}

struct Pending {
    value: Option<Bytes>,
    version: u64,
}

struct Slot {
    seq: u64,
    event_id: String,
    /// [`Store::id_hash`] of `event_id`.
    id_hash: u64,
    /// The other events of a batch slot ([`Store::conclude_batch`]), in
    /// order, with their id hashes; empty for one event.
    more: Vec<(String, u64)>,
    version: u64,
    writes: BTreeMap<String, Option<Bytes>>,
    position: Option<Position>,
    /// Resolved when this slot's commit returns. Only the last slot of a
    /// [`Store::ready_all`] batch has one: commits go in order, so when it
    /// is committed every earlier slot is too (a failure fails them all).
    waiter: Option<oneshot::Sender<Result<(), StateError>>>,
    ready: bool,
}

impl Store {
    /// A store writing through `backend`, its events held to `limits`.
    pub fn new(backend: Arc<dyn Backend>, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            backend,
            limits,
            metrics: StateMetrics::default(),
            inner: Mutex::new(Inner::default()),
            commit_returned: Notify::new(),
            position: std::sync::OnceLock::new(),
            ids: foldhash::quality::RandomState::default(),
        })
    }

    /// Records `source`'s position (read by `probe`) in every commit from
    /// now on, in the commit's transaction: state and position then never
    /// disagree, and a restart resumes from [`Store::position`]. Set once.
    pub fn track_position(&self, source: impl Into<String>, probe: PositionProbe) {
        let _ = self.position.set((source.into(), probe));
    }

    /// Makes every commit so far durable (see [`Backend::flush`]).
    pub async fn flush(&self) -> Result<(), StateError> {
        self.backend.flush().await
    }

    /// The caps on one event's state use.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Reads, writes and commits counted so far.
    pub fn metrics(&self) -> &StateMetrics {
        &self.metrics
    }

    /// The store's counters with the backend's restores.
    pub fn metrics_snapshot(&self) -> super::metrics::MetricsSnapshot {
        let (restores, nanos) = self.backend.restored();
        super::metrics::MetricsSnapshot { restores, restore_time: std::time::Duration::from_nanos(nanos), ..self.metrics.snapshot() }
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The lock is never held across an await; a panic while holding it
    /// cannot leave the maps half-updated in a way later code relies on, so
    /// a poisoned lock is used as is.
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh overlay for one attempt at an event.
    pub fn begin(self: &Arc<Self>, event_id: String) -> EventState {
        self.begin_batch(event_id, 1)
    }

    /// A fresh overlay shared by a lane batch of `events` events handled in
    /// one plugin call, in order (`handle-batch` behaves like `handle` on
    /// each in turn, so an event reads the writes of those before it, as it
    /// would after they concluded one by one). `first_id` is the first
    /// event's, for messages. The per-event write and read limits are
    /// multiplied by `events`; a refusal marks the overlay
    /// [`EventState::limited`], and the lane then runs the batch again one
    /// event per call, where the limit names the event at fault. Conclude
    /// it with [`Store::conclude_batch`], all or nothing.
    pub fn begin_batch(self: &Arc<Self>, first_id: String, events: usize) -> EventState {
        let (clock, epoch) = {
            let mut inner = self.inner();
            let clock = inner.clock;
            *inner.active.entry(clock).or_default() += 1;
            (clock, inner.epoch)
        };
        EventState::new(Arc::clone(self), first_id, clock, epoch, events)
    }

    /// Validates the attempt's reads and makes its writes visible to later
    /// events; returns its place in the commit order. `Conflict` when a key
    /// (or scanned range) it read was changed by an event that concluded
    /// after the read: the dispatcher re-runs the event.
    pub fn conclude(self: &Arc<Self>, state: EventState) -> Result<Ticket, Conflict> {
        self.conclude_as(state, Vec::new())
    }

    /// [`Store::conclude`] for an overlay from [`Store::begin_batch`]:
    /// `event_ids` are the batch's events, in order (the first is the one it
    /// began with). One ticket for all of them, one slot in the commit
    /// order: the batch's writes and every event's applied marker commit in
    /// one transaction, never a part of them (a crash between two parts
    /// would leave some events applied without their writes, or the
    /// writes without their markers, and their redeliveries would run
    /// again). On a conflict nothing is concluded.
    pub fn conclude_batch(self: &Arc<Self>, state: EventState, mut event_ids: Vec<String>) -> Result<Ticket, Conflict> {
        // The first id is already in the overlay.
        if !event_ids.is_empty() {
            event_ids.remove(0);
        }
        self.conclude_as(state, event_ids)
    }

    /// Concludes an overlay for its event and `more` events after it.
    fn conclude_as(self: &Arc<Self>, state: EventState, more: Vec<String>) -> Result<Ticket, Conflict> {
        let parts = state.into_parts();
        let result = {
            let mut inner = self.inner();
            let verdict = if parts.epoch != inner.epoch {
                Err(Conflict::Reset { event_id: parts.event_id.clone() })
            } else {
                validate(&inner.pending, &parts.event_id, &parts.reads, &parts.scans)
            };
            match verdict {
                Err(conflict) => Err(conflict),
                Ok(()) => {
                    let mut version = inner.clock;
                    if !parts.overlay.is_empty() {
                        inner.clock += 1;
                        version = inner.clock;
                        for (key, value) in &parts.overlay {
                            // A hot key is already pending: update it in place
                            // rather than copy the key again.
                            match inner.pending.get_mut(key.as_str()) {
                                Some(pending) => *pending = Pending { value: value.clone(), version },
                                None => drop(inner.pending.insert(key.clone(), Pending { value: value.clone(), version })),
                            }
                        }
                    }
                    Ok(self.enqueue(&mut inner, parts.event_id, more, version, parts.overlay))
                }
            }
        };
        // Unregister the attempt after the lock above is released.
        self.end_attempt(parts.begin_clock);
        if result.is_err() {
            StateMetrics::add(&self.metrics.conflicts, 1);
        }
        result
    }

    /// A ticket for an event that concluded without state changes to keep (a
    /// dead-lettered or filtered event, or one whose plugin never touched
    /// state): it still needs its place in the commit order, so that its ack
    /// is not settled before an earlier event's state is durable, and so that
    /// it is recorded as applied.
    pub fn conclude_without_writes(self: &Arc<Self>, event_id: String) -> Ticket {
        let mut inner = self.inner();
        let version = inner.clock;
        self.enqueue(&mut inner, event_id, Vec::new(), version, BTreeMap::new())
    }

    fn enqueue(
        self: &Arc<Self>,
        inner: &mut Inner,
        event_id: String,
        more: Vec<String>,
        version: u64,
        writes: BTreeMap<String, Option<Bytes>>,
    ) -> Ticket {
        let seq = inner.next_seq;
        inner.next_seq += 1;
        // A failed store takes no more work; the ticket's `ready` reports why.
        if inner.failed.is_none() {
            let id_hash = self.id_hash(&event_id);
            *inner.uncommitted.entry(id_hash).or_default() += 1;
            let more: Vec<(String, u64)> = more
                .into_iter()
                .map(|id| {
                    let id_hash = self.id_hash(&id);
                    (id, id_hash)
                })
                .collect();
            for (_, hash) in &more {
                *inner.uncommitted.entry(*hash).or_default() += 1;
            }
            inner.queue.push_back(Slot { seq, event_id, id_hash, more, version, writes, position: None, waiter: None, ready: false });
        }
        Ticket { store: Arc::clone(self), seq, epoch: inner.epoch, position: None, armed: true }
    }

    fn id_hash(&self, event_id: &str) -> u64 {
        self.ids.hash_one(event_id)
    }

    /// Called when the ticket's event has its outputs durable. Resolves once
    /// the event's state, its applied marker and the ticket's position are
    /// committed, which happens in conclude order (group commit: whichever
    /// prefix of tickets is ready goes in one transaction). Then, and only
    /// then, settle the event's source ack. An error means the commit failed
    /// (or the store was aborted): the pipeline stops and its events are
    /// redelivered.
    ///
    /// Cancelling the returned future does not cancel the commit.
    pub async fn ready(self: &Arc<Self>, ticket: Ticket) -> Result<(), StateError> {
        self.ready_all(vec![ticket]).await
    }

    /// [`Store::ready`] for a batch of tickets (a lane's batch, in conclude
    /// order) at the cost of one: one lock, one wake-up of the committer and
    /// one completion for all. Resolves once every one of them is committed;
    /// an error means at least one was not (the pipeline stops).
    pub async fn ready_all(self: &Arc<Self>, mut tickets: Vec<Ticket>) -> Result<(), StateError> {
        tickets.iter_mut().for_each(|ticket| ticket.armed = false);
        let receiver = {
            let mut inner = self.inner();
            if let Some(error) = &inner.failed {
                return Err(error.clone());
            }
            let mut refused = None;
            // The latest slot of the batch: its commit covers all the others.
            let mut last: Option<u64> = None;
            for ticket in &mut tickets {
                if ticket.epoch != inner.epoch {
                    refused = Some(StateError::Unavailable("the state store was reset before this event was committed".into()));
                    continue;
                }
                let Some(slot) = find_slot(&mut inner.queue, ticket.seq) else {
                    refused = Some(StateError::Unavailable(format!("ticket {} is not waiting for a commit", ticket.seq)));
                    continue;
                };
                slot.ready = true;
                slot.position = ticket.position.take();
                last = last.max(Some(ticket.seq));
            }
            let receiver = last.and_then(|seq| find_slot(&mut inner.queue, seq)).map(|slot| {
                let (sender, receiver) = oneshot::channel();
                slot.waiter = Some(sender);
                receiver
            });
            let front_ready = inner.queue.front().is_some_and(|s| s.ready);
            if front_ready && !inner.committing {
                inner.committing = true;
                tokio::spawn(commit_loop(Arc::clone(self)));
            }
            if let Some(error) = refused {
                return Err(error);
            }
            receiver
        };
        match receiver {
            None => Ok(()),
            Some(receiver) => receiver.await.unwrap_or_else(|_| Err(StateError::Unavailable("the state committer stopped".into()))),
        }
    }

    /// The pipeline failed: discard pending (concluded, not committed) writes
    /// so that a restart reads only durable state. Tickets waiting in `ready`
    /// fail; attempts begun before this conclude with [`Conflict::Reset`].
    /// Waits for a backend commit already in flight: its events may become
    /// durable, and a restarted pipeline must see their applied markers
    /// before it asks `was_applied` for their redeliveries.
    pub async fn abort(&self) {
        {
            let mut inner = self.inner();
            let reason = StateError::Unavailable("the pipeline stopped before this event was committed".into());
            reset(&mut inner, reason);
            inner.failed = None;
        }
        loop {
            // Created under the lock, so a commit returning right after the
            // check still wakes us.
            let returned = {
                let inner = self.inner();
                if !inner.in_flight {
                    return;
                }
                self.commit_returned.notified()
            };
            returned.await;
        }
    }

    /// A committed value, for operators (the admin API): pending writes are
    /// not shown.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        check_key(key, &self.limits)?;
        self.backend.get(key).await
    }

    /// A page of committed entries under `prefix` after `after`, for
    /// operators; `next` is the `after` of the following page, `None` at the
    /// end.
    pub async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, Vec<u8>)>, Option<String>), StateError> {
        check_key(prefix, &self.limits)?;
        let limit = limit.clamp(1, self.limits.max_scan);
        let page = self.backend.scan(prefix, after, limit).await?;
        let next = if page.len() >= limit { page.last().map(|(k, _)| k.clone()) } else { None };
        Ok((page, next))
    }

    /// Deletes a key for an operator. It goes through the commit order like
    /// an event (id `admin-delete:<uuid>`), so it neither overtakes nor is
    /// overwritten by an event concluded before it.
    pub async fn delete(self: &Arc<Self>, key: &str) -> Result<(), StateError> {
        let mut state = self.begin(format!("admin-delete:{}", uuid::Uuid::new_v4()));
        state.delete(key)?;
        let ticket = self.conclude(state).map_err(|c| StateError::Unavailable(c.to_string()))?;
        self.ready(ticket).await
    }

    /// Whether an event was committed (see [`CommitBatch::applied`]).
    pub async fn was_applied(&self, event_id: &str) -> Result<bool, StateError> {
        self.backend.was_applied(event_id).await
    }

    /// Whether the backend keeps applied markers (see
    /// [`Backend::keeps_markers`]): if not, no event is ever found applied.
    pub fn keeps_markers(&self) -> bool {
        self.backend.keeps_markers()
    }

    /// Whether the backend places each write by the input partition of the
    /// event that made it (see [`Backend::places_by_writer`]): then a lane
    /// batch called at once must hold events of one partition.
    pub fn places_by_writer(&self) -> bool {
        self.backend.places_by_writer()
    }

    /// [`Store::was_applied`] for a batch of ids, in one backend round trip
    /// where the backend can.
    pub async fn applied_among(&self, event_ids: &[&str]) -> Result<Vec<bool>, StateError> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.backend.applied_among(event_ids).await
    }

    /// Whether an event concluded and waits for its commit (queued or in
    /// flight). A redelivery of such an event (a broker's ack deadline
    /// passed while the commit queue was long) must not run again, nor be
    /// acknowledged before the original's `ready` resolves: neither
    /// [`Store::was_applied`] nor a re-run is safe for it yet.
    pub fn is_uncommitted(&self, event_id: &str) -> bool {
        let id_hash = self.id_hash(event_id);
        self.inner().uncommitted.contains_key(&id_hash)
    }

    /// A source's last committed position.
    pub async fn position(&self, source: &str) -> Result<Option<u64>, StateError> {
        self.backend.position(source).await
    }

    /// The pending value of a key, with the clock at the lookup. `Some(None)`
    /// is a pending delete; `None` means "ask the backend".
    pub(crate) fn read_pending(&self, key: &str) -> (u64, Option<Option<Bytes>>) {
        let inner = self.inner();
        (inner.clock, inner.pending.get(key).map(|p| p.value.clone()))
    }

    /// Up to `cap` pending entries under `prefix` after `after`, with the
    /// clock at the lookup.
    pub(crate) fn pending_range(&self, prefix: &str, after: Option<&str>, cap: usize) -> (u64, Vec<(String, Option<Bytes>)>) {
        let inner = self.inner();
        let entries = range_under(&inner.pending, prefix, after).take(cap).map(|(k, p)| (k.clone(), p.value.clone())).collect();
        (inner.clock, entries)
    }

    /// An attempt ended (concluded or dropped).
    pub(crate) fn end_attempt(&self, begin_clock: u64) {
        let mut inner = self.inner();
        if let Some(count) = inner.active.get_mut(&begin_clock) {
            *count -= 1;
            if *count == 0 {
                inner.active.remove(&begin_clock);
            }
        }
        collect_garbage(&mut inner);
    }

    fn ticket_dropped(&self, seq: u64, epoch: u64) {
        let mut inner = self.inner();
        if epoch != inner.epoch {
            return;
        }
        if let Some(slot) = find_slot(&mut inner.queue, seq) {
            let error = StateError::Unavailable(format!(
                "event {} concluded but its ticket was dropped before its outputs were durable",
                slot.event_id
            ));
            reset(&mut inner, error.clone());
            inner.failed = Some(error);
        }
    }
}

/// Commits ready prefixes until none is left. One runs at a time (guarded by
/// `Inner::committing`), as a task of its own so that a cancelled `ready`
/// cannot leave a commit half-done.
async fn commit_loop(store: Arc<Store>) {
    loop {
        let (batch, waiters, committed, hashes, epoch) = {
            let mut inner = store.inner();
            let front_ready = inner.queue.front().is_some_and(|s| s.ready);
            if inner.failed.is_some() || !front_ready {
                inner.committing = false;
                return;
            }
            let mut writes: BTreeMap<String, (Option<Bytes>, u64, usize)> = BTreeMap::new();
            // Sized for what the loop below takes (a lane batch's slot alone
            // holds 256 events; growing to that cost eight copies of each),
            // counted no further than it takes.
            let mut expected = 0;
            for slot in inner.queue.iter().take_while(|s| s.ready) {
                if expected >= MAX_BATCH_EVENTS {
                    break;
                }
                expected += 1 + slot.more.len();
            }
            let mut applied = Vec::with_capacity(expected);
            let mut hashes = Vec::with_capacity(expected);
            let mut position = None;
            let mut waiters = Vec::new();
            // Events of this batch stay "uncommitted" until the commit returns.
            while applied.len() < MAX_BATCH_EVENTS && inner.queue.front().is_some_and(|s| s.ready) {
                let Some(slot) = inner.queue.pop_front() else { break };
                applied.push(slot.event_id);
                hashes.push(slot.id_hash);
                for (event_id, id_hash) in slot.more {
                    applied.push(event_id);
                    hashes.push(id_hash);
                }
                // A batch slot's writes are its last event's: which event
                // of the batch made each one is not known (the Kafka
                // changelog needs only its partition, the same for the
                // whole batch: the lane batches one partition at a time).
                let writer = applied.len().saturating_sub(1);
                for (key, value) in slot.writes {
                    writes.insert(key, (value, slot.version, writer));
                }
                if slot.position.is_some() {
                    position = slot.position;
                }
                waiters.extend(slot.waiter);
            }
            if position.is_none() {
                if let Some((source, probe)) = store.position.get() {
                    position = Some(Position { source: source.clone(), offset: probe() });
                }
            }
            let mut committed: Vec<(u64, String)> = writes.iter().map(|(k, (_, v, _))| (*v, k.clone())).collect();
            committed.sort_unstable();
            let writers = writes.values().map(|(_, _, event)| applied.get(*event).cloned().unwrap_or_default()).collect();
            let writes = writes.into_iter().map(|(k, (value, _, _))| (k, value)).collect();
            inner.in_flight = true;
            (CommitBatch { writes, writers, applied, position }, waiters, committed, hashes, inner.epoch)
        };
        let events = batch.applied.len();
        let started = Instant::now();
        let result = store.backend.commit(batch).await;
        {
            let mut inner = store.inner();
            inner.in_flight = false;
            for id_hash in &hashes {
                forget_uncommitted(&mut inner.uncommitted, *id_hash);
            }
            match &result {
                Ok(()) => {
                    store.metrics.add_commit(events, started.elapsed());
                    // After an abort the pending map was cleared: nothing to mark.
                    if epoch == inner.epoch {
                        inner.committed.extend(committed);
                        collect_garbage(&mut inner);
                    }
                }
                Err(error) => {
                    if epoch == inner.epoch {
                        reset(&mut inner, error.clone());
                        inner.failed = Some(error.clone());
                    }
                }
            }
        }
        store.commit_returned.notify_waiters();
        for waiter in waiters {
            // A waiter whose `ready` was cancelled is gone; nothing to tell.
            let _ = waiter.send(result.clone());
        }
    }
}

/// Discards everything not durable and fails every queued ticket.
fn reset(inner: &mut Inner, error: StateError) {
    inner.pending.clear();
    inner.committed.clear();
    for slot in inner.queue.drain(..) {
        forget_uncommitted(&mut inner.uncommitted, slot.id_hash);
        for (_, id_hash) in &slot.more {
            forget_uncommitted(&mut inner.uncommitted, *id_hash);
        }
        if let Some(waiter) = slot.waiter {
            let _ = waiter.send(Err(error.clone()));
        }
    }
    inner.epoch += 1;
}

fn forget_uncommitted(uncommitted: &mut HashMap<u64, usize, BuildHasherDefault<IdHasher>>, id_hash: u64) {
    if let Some(count) = uncommitted.get_mut(&id_hash) {
        *count -= 1;
        if *count == 0 {
            uncommitted.remove(&id_hash);
        }
    }
}

/// Hashes the keys of `Inner::uncommitted` (and the lane's set of a batch's
/// ids), which are already keyed hashes: hashing them again would only cost
/// time.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Drops committed pending entries that no live attempt can still need (see
/// the module doc).
fn collect_garbage(inner: &mut Inner) {
    let oldest_begin = inner.active.keys().next().copied().unwrap_or(u64::MAX);
    while let Some((version, _)) = inner.committed.front() {
        if *version > oldest_begin {
            break;
        }
        let Some((version, key)) = inner.committed.pop_front() else { break };
        if inner.pending.get(&key).is_some_and(|p| p.version == version) {
            inner.pending.remove(&key);
        }
    }
}

fn find_slot(queue: &mut VecDeque<Slot>, seq: u64) -> Option<&mut Slot> {
    let first = queue.front()?.seq;
    let index = usize::try_from(seq.checked_sub(first)?).ok()?;
    queue.get_mut(index).filter(|s| s.seq == seq)
}

/// Pending entries whose keys start with `prefix` and are greater than
/// `after`, in key order.
fn range_under<'a>(
    pending: &'a BTreeMap<String, Pending>,
    prefix: &'a str,
    after: Option<&str>,
) -> impl Iterator<Item = (&'a String, &'a Pending)> + 'a {
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
        _ => Bound::Included(prefix.to_owned()),
    };
    pending.range((start, Bound::Unbounded)).take_while(move |(k, _)| k.starts_with(prefix))
}

/// The optimistic-concurrency check of `conclude`.
fn validate(pending: &BTreeMap<String, Pending>, event_id: &str, reads: &Reads, scans: &[ScanRead]) -> Result<(), Conflict> {
    for (key, read_at) in reads {
        if pending.get(key).is_some_and(|p| p.version > *read_at) {
            return Err(Conflict::Key { event_id: event_id.to_owned(), key: key.clone() });
        }
    }
    for scan in scans {
        let changed = range_under(pending, &scan.prefix, scan.after.as_deref())
            .take_while(|(k, _)| scan.through.as_ref().is_none_or(|t| *k <= t))
            .any(|(_, p)| p.version > scan.read_at);
        if changed {
            return Err(Conflict::Scan { event_id: event_id.to_owned(), prefix: scan.prefix.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
