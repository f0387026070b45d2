//! One lane: a plugin instance and its queue. The lane calls the plugin
//! and drives each event, in order, to the fate `verdict` decides for it
//! (waiting and calling again for a retry); `publish` sends what it
//! concluded and acknowledges the source.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::breaker::{Outcome, Permit};
use super::candidate::{Called, CandidateCalls};
use super::dead_letter::{self, Failure, Reason};
use super::idempotency::Claim;
use super::publish::{self, Conclusion, FailedRequest};
use super::state::Redelivery;
use super::stats::ErrorKind;
use super::trace::{EventTrace, Fate};
use super::verdict::{self, Attempted, Mode, Rules, Verdict};
use super::{DispatchError, Dispatcher, Handler, Inbox, LaneError, Stats, Version};
use crate::codec::Request;
use crate::event::{Disposition, Event, HandlerError, Output};
use crate::rollout::compare::{FailureKind, Observed};
use crate::rollout::{Candidate, Shadowed};
use crate::runtime::instance::HandleResult;
use crate::runtime::state::StateAccess;
use crate::runtime::{CallError, CallLog, EventScope};
use crate::source::{Ack, Delivery, Settlement};
use crate::state::{IdHasher, Ticket};

/// How long past its deadline a call may run before the lane drops it. The
/// wasm runtime drops its own calls at the deadline; this catches handlers
/// that keep no deadline of their own.
pub const WATCHDOG_GRACE: Duration = Duration::from_millis(500);

/// Why one attempt failed.
enum Failed {
    Handler(HandlerError),
    Call(CallError),
}

impl Failed {
    fn kind(&self) -> ErrorKind {
        match self {
            Failed::Handler(HandlerError { disposition: Disposition::Reject, .. }) => ErrorKind::Rejected,
            Failed::Handler(_) => ErrorKind::Retryable,
            Failed::Call(CallError::Timeout(_)) => ErrorKind::Timeout,
            Failed::Call(CallError::MemoryLimit { .. }) => ErrorKind::Memory,
            Failed::Call(CallError::Trap(_)) => ErrorKind::Trap,
            Failed::Call(CallError::Contract(_)) => ErrorKind::Contract,
            Failed::Call(CallError::Start(_)) => ErrorKind::Start,
        }
    }

    fn message(&self) -> String {
        match self {
            Failed::Handler(e) => e.message.clone(),
            Failed::Call(e) => e.to_string(),
        }
    }
}

pub(super) struct Lane {
    id: usize,
    d: Arc<Dispatcher>,
    handler: Option<Box<dyn Handler>>,
    /// The plugin version `handler` belongs to (and the lane's batches use).
    version: Arc<Version>,
    /// The instance of the version just replaced, freed on a blocking
    /// thread with the next call: freeing an instance can take a
    /// millisecond, which the async workers should not spend.
    retired: Option<Box<dyn Handler>>,
    shutdown: CancellationToken,
    failed: CancellationToken,
    /// Running, draining, or handing everything back (see [`Mode`]).
    mode: Mode,
    /// Concluded events of the current batch, handed to the publisher in one
    /// message per batch rather than one per event.
    concluded: Vec<Conclusion>,
    /// Linear memory of this lane's instance, as last counted in the gauge.
    memory: u64,
    /// This lane's instance of the candidate version, while one is tried.
    candidates: CandidateCalls,
    /// Stateful batch calls that were not kept, in a row (capped): after
    /// one, the lane calls the next `2^misses` runs one event per call
    /// before trying a batch again, so a plugin that fails often, or hot
    /// keys in conflict between lanes (`ordering = "none"`), do not pay
    /// every batch twice.
    state_batch_misses: u32,
    /// Runs left to call one event per call before the next batch try.
    state_batch_skips: u32,
    /// Hashes event ids to find a repeated id in a stateful run.
    ids: foldhash::quality::RandomState,
}

impl Lane {
    pub fn new(id: usize, d: Arc<Dispatcher>, shutdown: CancellationToken, failed: CancellationToken) -> Self {
        let version = d.plugin.current();
        let concluded = Vec::with_capacity(d.batch_size);
        Self {
            id,
            d,
            handler: None,
            version,
            retired: None,
            shutdown,
            failed,
            mode: Mode::Running,
            concluded,
            memory: 0,
            candidates: CandidateCalls::default(),
            state_batch_misses: 0,
            state_batch_skips: 0,
            ids: foldhash::quality::RandomState::default(),
        }
    }

    pub async fn run(mut self, mut inbox: Inbox) -> Result<(), DispatchError> {
        let (tx, publisher) = publish::start(self.d.clone(), self.failed.clone());
        let mut batch = Vec::with_capacity(self.d.batch_size);
        let mut outcome = Ok(());
        'lane: while inbox.recv_many(&mut batch, self.d.batch_size).await > 0 {
            // The next batch gets a buffer of full size: `recv_many` only
            // pushes, so an empty one would grow (and move every delivery)
            // eight times on the way to 256.
            let taken = std::mem::replace(&mut batch, Vec::with_capacity(self.d.batch_size));
            for call in split_by_bytes(taken, self.d.batch_bytes) {
                let processed = self.process(call, &tx).await;
                let flushed = self.flush(&tx).await;
                if let Err(err) = processed.and(flushed) {
                    self.failed.cancel();
                    outcome = Err(err);
                    break 'lane;
                }
            }
        }
        drop(tx);
        let published = publisher.await.unwrap_or_else(|e| Err(LaneError::joined(format!("lane {} publisher", self.id))(e).into()));
        // A sink failure stops the publisher first and the lane only sees a
        // closed queue: report the cause, not the symptom.
        published.and(outcome)
    }

    async fn process(&mut self, batch: Vec<Delivery>, done: &mpsc::Sender<Vec<Conclusion>>) -> Result<(), DispatchError> {
        if self.handing_back() || self.failed.is_cancelled() {
            Stats::add(&self.d.stats.abandoned, batch.len() as u64);
            self.d.stats.progressed();
            return Ok(()); // dropping the acks hands the events back
        }
        if self.d.plugin.generation() != self.version.generation {
            // A new version: this batch and everything after it use it.
            self.version = self.d.plugin.current();
            self.retired = self.handler.take();
        }
        // Events to call the plugin with; an event that skips the plugin
        // (undecodable, a repeat) is concluded after the ones before it,
        // so conclusions, and acks, keep the source's order.
        let mut run = Run::with_capacity(batch.len());
        // The ids of this batch so far (hashed), for stateful pipelines.
        let mut seen: HashSet<u64, BuildHasherDefault<IdHasher>> = HashSet::default();
        let applied = match &self.d.state {
            Some(store) => super::state::applied(store, &batch).await?,
            None => Vec::new(),
        };
        for (index, delivery) in batch.into_iter().enumerate() {
            let Delivery { mut event, defect, ack, partition } = delivery;
            let trace = self.begin(&mut event);
            // Refused before the plugin: undecodable, or failing its schema
            // or the plugin's accepted versions.
            let refused = match defect {
                Some(defect) => {
                    let now = SystemTime::now();
                    Some(Failure { reason: Reason::Undecodable, message: defect, attempts: 0, first: now, last: now, calls: Vec::new() })
                }
                None => super::validate::refuse_input(&self.d, &self.version, &event),
            };
            if let Some(failure) = refused {
                self.call_run(&mut run, done).await?;
                if self.handing_back() {
                    self.hand_back(ack);
                    continue;
                }
                self.dead_letter(event, &failure, ack, trace);
                continue;
            }
            let ack = match &self.d.idempotency {
                None => ack,
                Some(guard) => match guard.claim(&event, ack) {
                    Claim::New(ack) | Claim::NoKey(ack) => ack,
                    Claim::Repeat(ack) => {
                        self.call_run(&mut run, done).await?;
                        if self.handing_back() {
                            self.hand_back(ack);
                            continue;
                        }
                        self.repeat(event, ack, trace);
                        continue;
                    }
                },
            };
            let applied = applied.get(index).copied().unwrap_or(false);
            if let Some(known) = self.known_to_state(&event.id, applied, &mut seen, &mut run, done).await? {
                match known {
                    _ if self.handing_back() => self.hand_back(ack),
                    Redelivery::Pending => self.hand_back(ack),
                    Redelivery::Applied => {
                        tracing::debug!(pipeline = %self.d.pipeline, event = %event.id, "a redelivery of an event whose state is committed: acknowledged, not run again");
                        self.repeat(event, ack, trace);
                    }
                }
                continue;
            }
            run.events.push(event);
            run.acks.push(ack);
            run.traces.push(trace);
            run.partitions.push(partition);
        }
        self.call_run(&mut run, done).await
    }

    /// In a stateful pipeline, whether the store already knows event `id`
    /// (its commit pending, or done when `applied`, as the batch's marker
    /// lookup found): then the run before it has been called, and the event
    /// must not run. `seen` holds the batch's ids so far.
    async fn known_to_state(
        &mut self,
        id: &str,
        mut applied: bool,
        seen: &mut HashSet<u64, BuildHasherDefault<IdHasher>>,
        run: &mut Run,
        done: &mpsc::Sender<Vec<Conclusion>>,
    ) -> Result<Option<Redelivery>, DispatchError> {
        let Some(store) = self.d.state.clone() else { return Ok(None) };
        // A second copy of an event in one batch (a redelivery that caught
        // up with the first) would pass the check below while the first has
        // not concluded, and both would apply their writes; and the markers
        // were looked up before the first ran. So a repeated id ends the run
        // first, then asks again whether the first copy's commit is pending
        // or done.
        if !seen.insert(self.ids.hash_one(id)) {
            self.call_run(run, done).await?;
            applied = match store.keeps_markers() {
                true => store.applied_among(&[id]).await?.first().copied().unwrap_or(false),
                false => false,
            };
        }
        let known = super::state::redelivery(&store, id, applied);
        if known.is_some() {
            self.call_run(run, done).await?;
        }
        Ok(known)
    }

    /// Calls the plugin with the events of `run` (one call for all, unless
    /// it fails as a whole) and concludes each, in order.
    async fn call_run(&mut self, run: &mut Run, done: &mpsc::Sender<Vec<Conclusion>>) -> Result<(), DispatchError> {
        if run.events.is_empty() {
            return Ok(());
        }
        match self.d.rollout.candidate() {
            Some(candidate) if candidate.is_canary() => self.call_canary(std::mem::take(run), candidate, done).await,
            Some(candidate) => self.call_current(run, Some(&candidate), done).await,
            None => {
                // A candidate that ended (promoted, rolled back) leaves no
                // instance behind in the lane.
                self.candidates.release();
                self.call_current(run, None, done).await
            }
        }
    }

    /// [`Lane::call_run`] on the current version; `candidate`, when one is
    /// tried, sees each event's first result (and shadows it, in shadow
    /// mode) before the event is concluded.
    async fn call_current(
        &mut self,
        run: &mut Run,
        candidate: Option<&Arc<Candidate>>,
        done: &mpsc::Sender<Vec<Conclusion>>,
    ) -> Result<(), DispatchError> {
        let run = std::mem::take(run);
        if run.events.is_empty() {
            return Ok(());
        }
        if self.handing_back() {
            run.acks.into_iter().for_each(|ack| self.hand_back(ack));
            return Ok(());
        }
        if self.batches_state(candidate) {
            self.call_state_batches(run, candidate, done).await
        } else if self.per_event() {
            self.call_each(run, candidate, done).await
        } else {
            self.call_batch(run, candidate, done).await
        }
    }

    /// A stateful plugin's run, in batches sharing one overlay (see
    /// [`Lane::call_state_batch`]); a batch the store could not keep whole
    /// runs again one event per call.
    async fn call_state_batches(
        &mut self,
        run: Run,
        candidate: Option<&Arc<Candidate>>,
        done: &mpsc::Sender<Vec<Conclusion>>,
    ) -> Result<(), DispatchError> {
        // A backend that places writes by their event's partition gets
        // batches of one partition (see `Backend::places_by_writer`).
        let parts = match &self.d.state {
            Some(store) if store.places_by_writer() => run.by_partition(),
            _ => vec![run],
        };
        for part in parts {
            let back = if part.events.len() == 1 {
                Some(part)
            } else if self.state_batch_skips > 0 {
                self.state_batch_skips -= 1;
                Some(part)
            } else {
                let back = self.call_state_batch(part, candidate).await?;
                self.state_batch_kept(back.is_none());
                back
            };
            if let Some(back) = back {
                self.call_each(back, candidate, done).await?;
            }
        }
        Ok(())
    }

    /// A stateless run in one plugin call; if the call itself fails, each
    /// event runs again alone, so only the culprit pays an attempt.
    async fn call_batch(
        &mut self,
        run: Run,
        candidate: Option<&Arc<Candidate>>,
        done: &mpsc::Sender<Vec<Conclusion>>,
    ) -> Result<(), DispatchError> {
        let Run { events, acks, traces, .. } = run;
        let count = events.len();
        let Some(permit) = self.permit().await else {
            self.mode = Mode::HandingBack;
            acks.into_iter().for_each(|ack| self.hand_back(ack));
            return Ok(());
        };
        let started = std::time::Instant::now();
        let (events, result, _) = self.call(events, permit, None).await?;
        let took = started.elapsed() / count as u32;
        match result {
            Ok(results) => {
                if let Some(candidate) = candidate {
                    let current: Vec<Current<'_>> = results.iter().map(Current::Handled).collect();
                    self.try_candidate(candidate, &events, &current, took).await;
                }
                for (((event, ack), trace), result) in events.into_iter().zip(acks).zip(traces).zip(results) {
                    self.conclude(event, ack, trace, result.map_err(Failed::Handler), None, None, done).await?;
                }
            }
            Err(err) if count == 1 => {
                if let Some(candidate) = candidate {
                    self.try_candidate(candidate, &events, &[Current::Call(&err)], took).await;
                }
                for ((event, ack), trace) in events.into_iter().zip(acks).zip(traces) {
                    self.conclude(event, ack, trace, Err(Failed::Call(err.clone())), None, None, done).await?;
                }
            }
            Err(err) => {
                // Which event caused it is unknown: run each alone, on a
                // fresh instance, so only the culprit pays an attempt.
                tracing::warn!(pipeline = %self.d.pipeline, lane = self.id, "a batch of {count} failed ({err}); handling its events one by one");
                for ((event, ack), trace) in events.into_iter().zip(acks).zip(traces) {
                    let Some(permit) = self.permit().await else {
                        self.mode = Mode::HandingBack;
                        self.hand_back(ack);
                        continue;
                    };
                    let (mut alone, result, _) = self.call(vec![event], permit, None).await?;
                    let Some(event) = alone.pop() else { continue };
                    self.conclude(event, ack, trace, single(result), None, None, done).await?;
                }
            }
        }
        Ok(())
    }

    /// Calls the plugin with each event of `run` alone, lending each call
    /// the event's scope (its state, its identity for outbound calls), and
    /// concludes each in order.
    async fn call_each(
        &mut self,
        run: Run,
        candidate: Option<&Arc<Candidate>>,
        done: &mpsc::Sender<Vec<Conclusion>>,
    ) -> Result<(), DispatchError> {
        let Run { events, acks, traces, .. } = run;
        for ((event, ack), trace) in events.into_iter().zip(acks).zip(traces) {
            let Some(permit) = self.permit_unless_handing_back().await else {
                self.hand_back(ack);
                continue;
            };
            let calls = CallLog::default();
            let scope = self.begin_scope(&event, &calls, &trace);
            let started = std::time::Instant::now();
            let (mut alone, result, scope) = self.call(vec![event], permit, scope).await?;
            let Some(event) = alone.pop() else { continue };
            let current = match &result {
                Ok(results) => results.last().map(Current::Handled),
                Err(error) => Some(Current::Call(error)),
            };
            if let Some((candidate, current)) = candidate.zip(current) {
                self.try_candidate(candidate, std::slice::from_ref(&event), &[current], started.elapsed()).await;
            }
            self.conclude(event, ack, trace, single(result), scope, Some(calls), done).await?;
        }
        Ok(())
    }

    /// Whether runs go to the plugin in one call with one state overlay:
    /// the pipeline has state and the plugin makes no outbound calls
    /// (whose idempotency keys and call logs need each event's scope), and
    /// no shadow candidate compares each event's result with the state
    /// before that event (a canary only counts the current version's).
    fn batches_state(&self, candidate: Option<&Arc<Candidate>>) -> bool {
        self.d.state.is_some() && !self.version.factory.per_event() && candidate.is_none_or(|c| c.is_canary())
    }

    /// Counts a stateful batch call kept or not (see `state_batch_misses`).
    fn state_batch_kept(&mut self, kept: bool) {
        /// At most 64 runs one event per call between two batch tries.
        const MAX_MISSES: u32 = 6;
        if kept {
            self.state_batch_misses = 0;
        } else {
            self.state_batch_misses = (self.state_batch_misses + 1).min(MAX_MISSES);
            self.state_batch_skips = 1 << self.state_batch_misses;
        }
    }

    /// A stateful plugin without outbound calls: the whole run in one
    /// `handle-batch`, over one overlay its events share in order
    /// ([`crate::state::Store::begin_batch`]; `handle-batch` behaves like
    /// `handle` on each event in turn, so each reads the writes of those
    /// before it). The call is kept only if every event comes back with
    /// outputs that can all be sent, within the batch's state limits and
    /// without a conflict: then the batch's writes conclude with all its
    /// events, one ticket for all (on the last event), so they commit in one
    /// transaction with every event's applied marker and are acked after
    /// it, as if each had concluded alone. Otherwise nothing of the call is
    /// kept (its overlay and outputs are dropped) and the run comes back
    /// (`Some`) to be called one event per call, where failures, retries,
    /// dead letters, conflicts and limits are each event's own.
    async fn call_state_batch(&mut self, run: Run, candidate: Option<&Arc<Candidate>>) -> Result<Option<Run>, DispatchError> {
        let Some(store) = self.d.state.clone() else { return Ok(Some(run)) };
        let Run { events, acks, traces, partitions } = run;
        let Some(first) = events.first() else { return Ok(None) };
        let Some(permit) = self.permit_unless_handing_back().await else {
            acks.into_iter().for_each(|ack| self.hand_back(ack));
            return Ok(None);
        };
        let count = events.len();
        let mut scope = EventScope::new(first, CallLog::default());
        scope.state = Some(Box::new(store.begin_batch(first.id.clone(), count)));
        let started = std::time::Instant::now();
        let (mut events, result, scope) = self.call_as(events, permit, Some(scope), true).await?;
        let took = started.elapsed() / count as u32;
        let state = scope.and_then(|scope| scope.state).and_then(super::state::recover);
        let kept = match (result, state) {
            (Ok(results), Some(state)) if results.len() == count && !state.limited() => {
                self.keep_state_batch(&store, &mut events, results, state)
            }
            _ => None,
        };
        let Some((sendable, ticket)) = kept else {
            tracing::debug!(pipeline = %self.d.pipeline, lane = self.id, "a stateful batch of {count} did not succeed as a whole; handling its events one by one");
            return Ok(Some(Run { events, acks, traces, partitions }));
        };
        if let Some(candidate) = candidate {
            // A canary's baseline: the current version's results, all good.
            (0..count).for_each(|_| candidate.record_current(None, Some(took)));
        }
        let mut ticket = Some(ticket);
        let last = count - 1;
        let digest = Arc::clone(&self.version.digest);
        for (i, (((event, ack), trace), (outputs, request))) in events.into_iter().zip(acks).zip(traces).zip(sendable).enumerate() {
            // No await between these: the batch's conclusions reach the
            // publisher in one message, whose commit the last one's ticket is.
            let ticket = if i == last { ticket.take() } else { None };
            self.deliver_as(event, ack, trace, outputs, request, ticket, digest.clone(), i != last);
        }
        Ok(None)
    }

    /// Checks every result of a stateful batch call and concludes its
    /// overlay for all its events: the sendable outputs (with the request
    /// each may answer) and the batch's ticket, or `None` when an event
    /// failed, an output cannot be sent, or the state conflicts (each event
    /// taken by a check then gets its `reply_to` back, for the run one by
    /// one).
    fn keep_state_batch(
        &self,
        store: &Arc<crate::state::Store>,
        events: &mut [Event],
        results: Vec<HandleResult>,
        state: crate::state::EventState,
    ) -> Option<(Vec<Sendable>, Ticket)> {
        let mut sendable = Vec::with_capacity(events.len());
        for (event, result) in events.iter_mut().zip(results) {
            match result.map_err(Failed::Handler).and_then(|outputs| self.sendable(event, outputs, &mut None)) {
                Ok(checked) => sendable.push(checked),
                Err(_) => break,
            }
        }
        let ticket = match sendable.len() == events.len() {
            false => None,
            true => match store.conclude_batch(state, events.iter().map(|e| e.id.clone()).collect()) {
                Ok(ticket) => Some(ticket),
                Err(conflict) => {
                    tracing::debug!(pipeline = %self.d.pipeline, lane = self.id, "state conflict in a batch, running its events one by one: {conflict}");
                    None
                }
            },
        };
        match ticket {
            Some(ticket) => Some((sendable, ticket)),
            None => {
                for (event, (_, request)) in events.iter_mut().zip(sendable) {
                    event.reply_to = request.map(|r| r.reply_to);
                }
                None
            }
        }
    }

    /// A run while a canary is tried: the events of the canary's keys go to
    /// the candidate, one at a time, the others to the current version in
    /// runs, in the source's order. An event the candidate fails goes to
    /// the current version: nothing is dead-lettered because of a canary.
    async fn call_canary(
        &mut self,
        run: Run,
        candidate: Arc<Candidate>,
        done: &mpsc::Sender<Vec<Conclusion>>,
    ) -> Result<(), DispatchError> {
        let mut rest = Run::default();
        for (((event, ack), trace), partition) in run.events.into_iter().zip(run.acks).zip(run.traces).zip(run.partitions) {
            if !candidate.takes(&event) {
                rest.events.push(event);
                rest.acks.push(ack);
                rest.traces.push(trace);
                rest.partitions.push(partition);
                continue;
            }
            // Those before it first, to keep the order of conclusions.
            self.call_current(&mut rest, Some(&candidate), done).await?;
            if self.handing_back() {
                self.hand_back(ack);
                continue;
            }
            if let Some((event, ack, trace)) = self.canary(&candidate, event, ack, trace).await {
                let mut one = Run { events: vec![event], acks: vec![ack], traces: vec![trace], partitions: vec![partition] };
                self.call_current(&mut one, None, done).await?;
            }
        }
        self.call_current(&mut rest, Some(&candidate), done).await
    }

    /// The candidate handles `event` for real: its outputs are delivered
    /// (tagged with its digest), or, if it fails, the event is given back
    /// for the current version.
    async fn canary(&mut self, candidate: &Candidate, mut event: Event, ack: Ack, trace: EventTrace) -> Option<(Event, Ack, EventTrace)> {
        let per_event = self.d.state.is_some() || candidate.factory.per_event();
        let scope = per_event.then(|| self.make_scope(&event, &CallLog::default(), &trace));
        let called = self.candidates.call(candidate, &event, scope).await;
        let mut scope = called.scope;
        let failed = match called.result {
            Ok(outputs) => match self.examine(&mut event, Ok(outputs), &mut scope) {
                Examined::Sendable { outputs, request, ticket } => {
                    candidate.record_canary(&self.d.rollout, None, called.took);
                    self.deliver_as(event, ack, trace, outputs, request, ticket, candidate.factory.digest_arc(), false);
                    return None;
                }
                // Not the candidate's failure: the current version runs it.
                Examined::StateConflict => None,
                Examined::Failed(failed) => Some(match failed {
                    Failed::Handler(error) => FailureKind::of_handler(&error),
                    Failed::Call(error) => FailureKind::of_call(&error),
                }),
            },
            Err((kind, message)) => {
                tracing::debug!(pipeline = %self.d.pipeline, event = %event.id, "the canary failed ({kind:?}), the current version handles the event: {message}");
                Some(kind)
            }
        };
        if let Some(kind) = failed {
            candidate.record_canary(&self.d.rollout, Some(kind), called.took);
        }
        Some((event, ack, trace))
    }

    /// After the current version's first call on `events` (their results
    /// `current`, in `took` each): counted as the candidate's baseline
    /// (canary), or, in shadow mode, run on the candidate (a sample of
    /// them) and compared. Sampled events go in one call unless an event
    /// needs its own scope (state, outbound calls); a call that fails as a
    /// whole is made again one event at a time, to tell which failed.
    /// Each call has the candidate's deadline (`rollout.timeout`), the
    /// batch call too, and once one overruns it the rest of the run is
    /// not shadowed: a hanging candidate costs a lane at most two
    /// deadlines per run.
    async fn try_candidate(&mut self, candidate: &Arc<Candidate>, events: &[Event], current: &[Current<'_>], took: Duration) {
        if candidate.is_canary() {
            current.iter().for_each(|c| candidate.record_current(c.failed(), Some(took)));
            return;
        }
        // Nothing is copied or counted for an event the sample leaves out;
        // a pipeline that is stopping spends no time on shadows.
        if self.mode() != Mode::Running {
            return;
        }
        let picked: Vec<usize> = (0..events.len().min(current.len())).filter(|_| candidate.shadows()).collect();
        let alone = picked.len() == 1 || self.d.state.is_some() || candidate.factory.per_event();
        if !alone && !picked.is_empty() {
            let owned: Vec<Event>;
            let batch: &[Event] = if picked.len() == events.len() {
                events
            } else {
                owned = picked.iter().map(|&i| events[i].clone()).collect();
                &owned
            };
            let (result, spent, _) = self.candidates.call_many(candidate, batch, None, candidate.timeout).await;
            if let Ok(results) = result {
                let each = spent / batch.len() as u32;
                for (&i, result) in picked.iter().zip(results) {
                    let result = result.map_err(|error| (FailureKind::of_handler(&error), error.message));
                    self.record_shadow(candidate, &events[i], current[i], Called { result, took: each, scope: None }, took);
                }
                return;
            }
        }
        for i in picked {
            let mut scope = self.make_scope(&events[i], &CallLog::default(), &EventTrace::default());
            scope.shadow = true;
            let called = self.candidates.call(candidate, &events[i], Some(scope)).await;
            let overran = matches!(called.result, Err((FailureKind::Timeout, _)));
            self.record_shadow(candidate, &events[i], current[i], called, took);
            if overran {
                break;
            }
        }
    }

    /// Counts a shadowed event: the candidate's result beside the current's.
    /// Its scope (and the state attempt in it) is dropped unconcluded.
    fn record_shadow(&self, candidate: &Candidate, event: &Event, current: Current<'_>, called: Called, current_took: Duration) {
        let refused = called.scope.as_ref().map_or(0, |scope| scope.refused);
        let invalid = called.result.as_ref().ok().and_then(|outputs| self.schema_problem(event, outputs));
        let shadowed = Shadowed { result: called.observed(), took: called.took, current_took, refused, invalid };
        candidate.record_shadow(&self.d.rollout, event, &current.observed(), shadowed);
    }

    /// Why a candidate's outputs fail their schemas, if they do (not
    /// counted in the pipeline's stats: nothing is rejected).
    fn schema_problem(&self, event: &Event, outputs: &[Output]) -> Option<String> {
        let schemas = &self.d.schemas;
        if !schemas.checks_outputs() {
            return None;
        }
        let input = schemas.kind(&event.headers);
        outputs.iter().enumerate().find_map(|(i, output)| {
            schemas.check_output(input.as_ref(), &output.headers, &output.payload).err().map(|why| format!("output {}: {why}", i + 1))
        })
    }

    /// Drives `event` to its verdict (see [`verdict`]): sends its outputs
    /// or its dead-letter record, hands it back, or waits and calls again.
    /// `scope` is what the last call gave back (per-event calls only),
    /// `calls` the outbound calls of all its attempts.
    #[allow(clippy::too_many_arguments)]
    async fn conclude(
        &mut self,
        event: Event,
        ack: Ack,
        trace: EventTrace,
        mut result: Result<Vec<Output>, Failed>,
        mut scope: Option<EventScope>,
        calls: Option<CallLog>,
        done: &mpsc::Sender<Vec<Conclusion>>,
    ) -> Result<(), DispatchError> {
        let mut p = Pending { event, ack, trace, calls, first_failure: None };
        loop {
            let mode = self.mode();
            if mode == Mode::HandingBack {
                // Nothing of the attempt is looked at (its state concluded).
                self.hand_back(p.ack);
                return Ok(());
            }
            let examined = self.examine(&mut p.event, result, &mut scope);
            let rules = Rules { retry: &self.d.retry, redeliver: self.d.redeliver };
            let attempted = examined.attempted();
            // Only a failure's backoff uses the jitter: no random draw per
            // delivered event.
            let jitter = if matches!(attempted, Attempted::Failed { .. }) { rand::random_range(-1.0..=1.0) } else { 0.0 };
            let verdict = verdict::verdict(attempted, p.event.attempt, mode, rules, jitter);
            match (verdict, examined) {
                (Verdict::Deliver, Examined::Sendable { outputs, request, ticket }) => {
                    self.deliver(p.event, p.ack, p.trace, outputs, request, ticket);
                    return Ok(());
                }
                // Not a new attempt: nothing of this one is kept.
                (Verdict::RunAgain, Examined::StateConflict) => {}
                (
                    verdict @ (Verdict::DeadLetter(_) | Verdict::Redeliver { .. } | Verdict::Retry { .. } | Verdict::HandBack),
                    Examined::Failed(failed),
                ) => match self.after_failure(verdict, failed, p, done).await? {
                    Some(next) => p = next,
                    None => return Ok(()),
                },
                (verdict, _) => return Err(LaneError::Verdict { lane: self.id, verdict: format!("{verdict:?}") }.into()),
            }
            let Some(permit) = self.permit_unless_handing_back().await else {
                self.hand_back(p.ack);
                return Ok(());
            };
            let fresh = p.calls.as_ref().and_then(|calls| self.begin_scope(&p.event, calls, &p.trace));
            let (mut alone, next, attempt) = self.call(vec![p.event], permit, fresh).await?;
            p.event = alone.pop().ok_or(LaneError::EventLost { lane: self.id })?;
            result = single(next);
            scope = attempt;
        }
    }

    /// Acts on the verdict on a failed attempt: the event back, ready for
    /// its next attempt (after the backoff), or `None` once it is
    /// dead-lettered or handed back.
    async fn after_failure(
        &mut self,
        verdict: Verdict,
        failed: Failed,
        mut p: Pending,
        done: &mpsc::Sender<Vec<Conclusion>>,
    ) -> Result<Option<Pending>, DispatchError> {
        let now = SystemTime::now();
        let first = *p.first_failure.get_or_insert(now);
        let message = failed.message();
        self.d.stats.errors.add(failed.kind());
        if !matches!(verdict, Verdict::DeadLetter(Reason::Rejected)) {
            Stats::add(&self.d.stats.failures, 1);
        }
        let (event, attempt) = (&p.event.id, p.event.attempt);
        match verdict {
            Verdict::DeadLetter(reason) => {
                let calls = p.calls.map(|calls| calls.take()).unwrap_or_default();
                let failure = Failure { reason, message, attempts: attempt, first, last: now, calls };
                self.forget(&p.event);
                self.dead_letter(p.event, &failure, p.ack, p.trace);
                return Ok(None);
            }
            Verdict::Redeliver { after } => {
                // The broker redelivers it after the delay (JetStream nak),
                // and this lane moves on: no order to keep.
                tracing::debug!(pipeline = %self.d.pipeline, version = self.version_tag(), %event, attempt, delay = ?after, "attempt failed, handing back for redelivery: {message}");
                Stats::add(&self.d.stats.redelivered, 1);
                self.d.stats.progressed();
                self.end(&mut p.trace, Fate::Redelivered { message: &message }, attempt);
                p.ack.settle(Settlement::Redeliver { delay: after });
                return Ok(None);
            }
            Verdict::Retry { after } => {
                // What is already concluded should not wait for this retry.
                self.flush(done).await?;
                tracing::debug!(pipeline = %self.d.pipeline, version = self.version_tag(), %event, attempt, delay = ?after, "attempt failed, retrying: {message}");
                if !self.wait_to_retry(after).await {
                    self.hand_back(p.ack);
                    return Ok(None);
                }
            }
            // Draining: no retries. Hand it back, and everything after it
            // in this lane, to keep the order.
            Verdict::HandBack | Verdict::Deliver | Verdict::RunAgain => {
                self.flush(done).await?;
                self.mode = Mode::HandingBack;
                self.hand_back(p.ack);
                return Ok(None);
            }
        }
        p.event.attempt += 1;
        Stats::add(&self.d.stats.retries, 1);
        Ok(Some(p))
    }

    /// Waits `delay` before a retry; `false` if the pipeline starts to stop
    /// first: then no retries, and the lane hands back this event and
    /// everything after it, to keep the order.
    async fn wait_to_retry(&mut self, delay: Duration) -> bool {
        let interrupted = self.shutdown.is_cancelled()
            || tokio::select! {
                _ = tokio::time::sleep(delay) => false,
                _ = self.shutdown.cancelled() => true,
            };
        if interrupted {
            self.mode = Mode::HandingBack;
        }
        !interrupted
    }

    /// Checks an attempt's result: outputs that can all be sent (with the
    /// event's state concluded), or why not. A request's `reply_to` is
    /// taken into the [`Request`] it makes, and given back to the event if
    /// it runs again.
    fn examine(&self, event: &mut Event, result: Result<Vec<Output>, Failed>, scope: &mut Option<EventScope>) -> Examined {
        let (outputs, request) = match result.and_then(|outputs| self.sendable(event, outputs, scope)) {
            Ok(sendable) => sendable,
            Err(failed) => return Examined::Failed(failed),
        };
        let attempt_state = scope.take().and_then(|scope| scope.state).and_then(super::state::recover);
        let ticket = match (&self.d.state, attempt_state) {
            (Some(store), Some(attempt)) => match store.conclude(attempt) {
                Ok(ticket) => Some(ticket),
                Err(conflict) => {
                    // Computed from a value another event has since changed.
                    tracing::debug!(pipeline = %self.d.pipeline, event = %event.id, "state conflict, running the event again: {conflict}");
                    event.reply_to = request.map(|r| r.reply_to);
                    return Examined::StateConflict;
                }
            },
            _ => None,
        };
        Examined::Sendable { outputs, request, ticket }
    }

    /// Whether an attempt's outputs can all be sent (the emits of the call
    /// in `scope` put before them), with the request they may answer; a
    /// refusal rejects the event and gives it its `reply_to` back.
    fn sendable(
        &self,
        event: &mut Event,
        mut outputs: Vec<Output>,
        scope: &mut Option<EventScope>,
    ) -> Result<(Vec<Output>, Option<Request>), Failed> {
        // Emit routes are the host's: an output naming one would publish
        // past the destination's `allow` and limits.
        let forged = outputs.iter().find_map(|o| o.destination.as_deref().filter(|d| crate::client::emitted_to(d).is_some()));
        let forged = forged.map(|d| format!("output destination `{d}` is reserved for client emits: use `client.emit`"));
        if let Some(emitted) = scope.as_mut().map(|scope| std::mem::take(&mut scope.emits)).filter(|e| !e.is_empty()) {
            // Emitted during the call, so before what it returned.
            outputs.splice(0..0, emitted);
        }
        let request = self.d.router.request(event.reply_to.take(), &event.headers);
        let checked = forged
            .map_or(Ok(()), Err)
            .and_then(|()| self.within_caps(&outputs))
            .and_then(|()| self.d.router.check(&outputs, request.as_ref()))
            .and_then(|()| super::validate::check_outputs(&self.d, event, &outputs));
        if let Err(message) = checked {
            // An output that cannot be sent is a plugin bug, like an
            // invalid result: reject the event with why.
            event.reply_to = request.map(|r| r.reply_to);
            return Err(Failed::Handler(HandlerError { disposition: Disposition::Reject, message }));
        }
        Ok((outputs, request))
    }

    /// Concludes an event with its outputs, for the publisher to send.
    fn deliver(
        &mut self,
        event: Event,
        ack: Ack,
        trace: EventTrace,
        outputs: Vec<Output>,
        request: Option<Request>,
        ticket: Option<Ticket>,
    ) {
        let digest = Arc::clone(&self.version.digest);
        self.deliver_as(event, ack, trace, outputs, request, ticket, digest, false);
    }

    /// [`Lane::deliver`] of outputs made by the version `digest`;
    /// `in_state_batch` for an event of a state batch whose ticket rides on
    /// a later event (see [`Conclusion::Outputs`]).
    #[allow(clippy::too_many_arguments)]
    fn deliver_as(
        &mut self,
        event: Event,
        ack: Ack,
        mut trace: EventTrace,
        mut outputs: Vec<Output>,
        request: Option<Request>,
        ticket: Option<Ticket>,
        digest: Arc<str>,
        in_state_batch: bool,
    ) {
        outputs.iter_mut().for_each(|output| trace.stamp(output));
        self.end(&mut trace, Fate::Delivered { outputs: outputs.len() }, event.attempt);
        let propagate = std::mem::take(&mut trace.propagate);
        self.concluded.push(Conclusion::Outputs { outputs, event_id: event.id, request, digest, ack, propagate, ticket, in_state_batch });
    }

    /// The lane's mode, moved on to `Draining` once the pipeline starts to
    /// stop (the shutdown token is the signal; the lane notices it here).
    fn mode(&mut self) -> Mode {
        if self.mode == Mode::Running && self.shutdown.is_cancelled() {
            self.mode = Mode::Draining;
        }
        self.mode
    }

    /// Whether an event was handed back, so every later one is too.
    fn handing_back(&self) -> bool {
        self.mode == Mode::HandingBack
    }

    /// A repeat of an event already handled: acknowledged without calling
    /// the plugin (a repeated request gets an error reply).
    fn repeat(&mut self, event: Event, ack: Ack, mut trace: EventTrace) {
        tracing::debug!(pipeline = %self.d.pipeline, event = %event.id, "a repeat of an event already handled (idempotency): skipped");
        Stats::add(&self.d.stats.duplicates, 1);
        self.end(&mut trace, Fate::Duplicate, event.attempt);
        let request = self.d.router.request(event.reply_to, &event.headers);
        let propagate = std::mem::take(&mut trace.propagate);
        self.concluded.push(Conclusion::Repeat { ack, event_id: event.id, request, propagate });
    }

    /// Takes or makes the event's correlation id and starts its span.
    fn begin(&self, event: &mut Event) -> EventTrace {
        if self.d.tracing.is_off() {
            return EventTrace::default();
        }
        self.d.tracing.begin(event, &self.d.pipeline)
    }

    /// Ends the event's span (if it has one) with its fate.
    fn end(&self, trace: &mut EventTrace, fate: Fate<'_>, attempts: u32) {
        let plugin = &self.version.factory;
        trace.end(fate, plugin.name(), plugin.digest(), attempts);
    }

    /// Dead-lettered events are not remembered by idempotency: the next copy
    /// the lane takes is handled (its record is written later, in the
    /// publisher, but the decision is final now).
    fn forget(&self, event: &Event) {
        if let Some(guard) = &self.d.idempotency {
            guard.forget(event);
        }
    }

    /// Whether each call handles one event with its scope: the pipeline
    /// has state, or its plugin makes outbound calls.
    fn per_event(&self) -> bool {
        self.d.state.is_some() || self.version.factory.per_event()
    }

    /// A fresh scope for an attempt at `event` (with a fresh state when the
    /// pipeline has state), when calls are per event.
    fn begin_scope(&self, event: &Event, calls: &CallLog, trace: &EventTrace) -> Option<EventScope> {
        if !self.per_event() {
            return None;
        }
        Some(self.make_scope(event, calls, trace))
    }

    /// A fresh scope for a call on `event`: its state (when the pipeline
    /// has state), its services, its trace.
    fn make_scope(&self, event: &Event, calls: &CallLog, trace: &EventTrace) -> EventScope {
        let mut scope = EventScope::new(event, calls.clone());
        // With an exporter, each call gets a span under the event's, and
        // its callee that span as the parent (not the event's upstream).
        scope.trace = trace.calls();
        scope.state = self.d.state.as_ref().map(|store| Box::new(store.begin(event.id.clone())) as Box<dyn StateAccess>);
        scope.client = self.d.clients.as_ref().map(|clients| {
            let correlation = self
                .d
                .tracing
                .correlation
                .as_ref()
                .and_then(|config| event.headers.iter().find(|h| h.key.eq_ignore_ascii_case(&config.header)).cloned());
            crate::client::ClientScope::new(clients.clone(), correlation, tokio::time::Instant::now() + self.d.timeout)
        });
        scope
    }

    /// The breaker's leave for one more call, unless the lane is handing
    /// everything back (then, or if the pipeline stops first, `None`, and
    /// the lane hands back from now on).
    async fn permit_unless_handing_back(&mut self) -> Option<Permit> {
        if self.handing_back() {
            return None;
        }
        let permit = self.permit().await;
        if permit.is_none() {
            self.mode = Mode::HandingBack;
        }
        permit
    }

    /// Hands an unfinished event back to its source (redelivered later).
    fn hand_back(&self, ack: Ack) {
        Stats::add(&self.d.stats.abandoned, 1);
        self.d.stats.progressed();
        ack.settle(Settlement::Abandon);
    }

    fn dead_letter(&mut self, event: Event, failure: &Failure, ack: Ack, mut trace: EventTrace) {
        self.end(&mut trace, Fate::DeadLettered { reason: failure.reason.as_str(), message: &failure.message }, failure.attempts);
        let d = &self.d;
        tracing::warn!(
            pipeline = %d.pipeline,
            version = self.version_tag(),
            event = %event.id,
            correlation = trace.correlation.as_deref(),
            reason = failure.reason.as_str(),
            attempts = failure.attempts,
            "dead-lettering event: {}", failure.message
        );
        let failed_request = self.d.router.request(event.reply_to.clone(), &event.headers).map(|request| {
            Box::new(FailedRequest {
                request,
                reason: failure.reason,
                message: failure.message.clone(),
                event_id: event.id.clone(),
                propagate: std::mem::take(&mut trace.propagate),
            })
        });
        let id = d.dead_letter.wants_ids().then(|| format!("{}:dlq", event.id));
        let plugin = &self.version.factory;
        d.tap.dead_letter(&event, plugin.digest(), failure.reason.as_str(), &failure.message, failure.attempts);
        let mut record = dead_letter::record(event, failure, &d.pipeline, plugin.name(), plugin.digest());
        record.id = id;
        Stats::add(&d.stats.dead_lettered, 1);
        self.concluded.push(Conclusion::DeadLetter { record, ack, failed_request });
    }

    /// Hands the concluded events to the publisher.
    async fn flush(&mut self, done: &mpsc::Sender<Vec<Conclusion>>) -> Result<(), DispatchError> {
        if self.concluded.is_empty() {
            return Ok(());
        }
        // Replaced at full size, not emptied: the next batch's conclusions
        // would otherwise grow it (moving each) from nothing again.
        let concluded = std::mem::replace(&mut self.concluded, Vec::with_capacity(self.d.batch_size));
        Ok(done.send(concluded).await.map_err(|_| LaneError::PublisherGone { lane: self.id })?)
    }

    /// Whether an event's outputs stay within the policy's caps.
    fn within_caps(&self, outputs: &[Output]) -> Result<(), String> {
        super::limits::check_outputs(outputs, self.d.max_outputs, self.d.max_output_bytes)
    }

    /// The plugin version for log lines: the first 12 hex digits of its sha256.
    fn version_tag(&self) -> &str {
        let digest = self.version.factory.digest();
        digest.get(..12).unwrap_or(digest)
    }

    /// Moves the pipeline's memory gauge by this lane's instance's change.
    fn set_memory(&mut self, bytes: u64) {
        if bytes != self.memory {
            self.d.stats.gauges.memory_changed(bytes as i64 - self.memory as i64);
            self.memory = bytes;
        }
    }

    /// The circuit breaker's leave to call the plugin: waits while it is
    /// open (the lane holds its events, unsettled); `None` if the pipeline
    /// stops first.
    fn permit(&self) -> impl std::future::Future<Output = Option<Permit>> + Send + 'static {
        let (breaker, shutdown, failed) = (self.d.breaker.clone(), self.shutdown.clone(), self.failed.clone());
        async move {
            let Some(breaker) = breaker else { return Some(Permit::unguarded()) };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                _ = failed.cancelled() => None,
                permit = breaker.permit() => Some(permit),
            }
        }
    }

    /// Runs the plugin, creating an instance first if the last one failed,
    /// and tells the breaker how it went. The call is a future polled right
    /// here, on the lane's task: a guest waiting in a host call holds no
    /// thread, and a guest computing yields at every epoch tick. A pipeline
    /// that fails meanwhile drops the call (its events are handed back).
    async fn call(
        &mut self,
        events: Vec<Event>,
        permit: Permit,
        scope: Option<EventScope>,
    ) -> Result<(Vec<Event>, CallResult, Option<EventScope>), DispatchError> {
        self.call_as(events, permit, scope, false).await
    }

    /// [`Lane::call`]; a `provisional` call (a stateful batch, kept only if
    /// every event succeeds) tells the breaker only when every event
    /// succeeded: otherwise its events run again one by one, which tell it.
    async fn call_as(
        &mut self,
        events: Vec<Event>,
        permit: Permit,
        scope: Option<EventScope>,
        provisional: bool,
    ) -> Result<(Vec<Event>, CallResult, Option<EventScope>), DispatchError> {
        Stats::add(&self.d.stats.calls, 1);
        if let Some(retired) = self.retired.take() {
            // Freeing an instance can take a millisecond: not on a worker.
            tokio::task::spawn_blocking(move || drop(retired));
        }
        let budget = self.d.timeout.saturating_mul(events.len().max(1) as u32);
        let factory = self.version.factory.clone();
        let handler = self.handler.take();
        let failed = self.failed.clone();
        let attempt = async {
            let mut handler = match handler {
                Some(handler) => handler,
                None => factory.create().await.map_err(|e| CallError::Start(e.to_string()))?,
            };
            if let Some(scope) = scope {
                handler.attach(scope);
            }
            let started = std::time::Instant::now();
            let result = AssertUnwindSafe(handler.handle(&events))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(CallError::Trap("the host panicked while calling the plugin".into())));
            let scope = handler.detach();
            Ok::<_, CallError>((handler, result, started.elapsed(), scope))
        };
        // The wasm runtime keeps `budget` itself; the watchdog is for
        // handlers that don't (and costs one timer per call).
        let watched = tokio::time::timeout(budget + WATCHDOG_GRACE, attempt);
        let outcome = tokio::select! {
            biased;
            _ = failed.cancelled() => None,
            outcome = watched => Some(outcome),
        };
        let mut scope = None;
        let result = match outcome {
            None => {
                // Its events, and everything after them, are handed back.
                self.mode = Mode::HandingBack;
                self.set_memory(0);
                Err(CallError::Start("the pipeline stopped during the call".into()))
            }
            Some(Ok(Ok((handler, result, took, attempt)))) => {
                self.d.stats.timings.call.observe(took.as_secs_f64());
                scope = attempt;
                if result.is_ok() {
                    self.set_memory(handler.memory_bytes());
                    self.handler = Some(handler);
                } else {
                    self.set_memory(0);
                }
                result
            }
            Some(Ok(Err(start))) => {
                self.set_memory(0);
                Err(start)
            }
            Some(Err(_)) => {
                tracing::warn!(
                    pipeline = %self.d.pipeline,
                    lane = self.id,
                    "plugin call overran its deadline by {WATCHDOG_GRACE:?}; dropping it and its instance"
                );
                self.set_memory(0);
                Err(CallError::Timeout(budget))
            }
        };
        match &result {
            Ok(results) if provisional && results.iter().any(Result::is_err) => {}
            Ok(results) => {
                for result in results {
                    permit.record(match result {
                        Err(HandlerError { disposition: Disposition::Retryable, .. }) => Outcome::Failed,
                        Ok(_) | Err(HandlerError { disposition: Disposition::Reject, .. }) => Outcome::Healthy,
                    });
                }
            }
            Err(_) if events.len() == 1 => permit.record(Outcome::Failed),
            // Which event of the batch failed is unknown: the calls that
            // run them one by one tell.
            Err(_) => {}
        }
        drop(permit);
        Ok((events, result, scope))
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.set_memory(0);
    }
}

/// An event on its way to its verdict, with what its attempts left.
struct Pending {
    event: Event,
    ack: Ack,
    trace: EventTrace,
    /// The outbound calls of all its attempts (per-event calls only).
    calls: Option<CallLog>,
    /// When its first attempt failed.
    first_failure: Option<SystemTime>,
}

/// An attempt's result, checked (see [`Lane::examine`]).
enum Examined {
    /// Outputs that can all be sent, the request they may answer, and the
    /// event's place in the state's commit order.
    Sendable {
        outputs: Vec<Output>,
        request: Option<Request>,
        ticket: Option<Ticket>,
    },
    /// The event's state was computed from a value since changed.
    StateConflict,
    Failed(Failed),
}

impl Examined {
    /// What the verdict needs to know of it.
    fn attempted(&self) -> Attempted {
        match self {
            Examined::Sendable { .. } => Attempted::Sendable,
            Examined::StateConflict => Attempted::StateConflict,
            Examined::Failed(Failed::Handler(HandlerError { disposition: Disposition::Reject, .. })) => Attempted::Rejected,
            Examined::Failed(Failed::Call(CallError::Timeout(_))) => Attempted::Failed { timeout: true },
            Examined::Failed(_) => Attempted::Failed { timeout: false },
        }
    }
}

/// An event's outputs, checked and ready to send, with the request they may
/// answer.
type Sendable = (Vec<Output>, Option<Request>);

/// Events of a batch that go to the plugin together, with their acks and
/// traces (index for index).
#[derive(Default)]
struct Run {
    events: Vec<Event>,
    acks: Vec<Ack>,
    traces: Vec<EventTrace>,
    /// Each event's source partition (see [`Delivery::partition`]).
    partitions: Vec<u32>,
}

impl Run {
    /// An empty run with room for `n` events.
    fn with_capacity(n: usize) -> Self {
        Self {
            events: Vec::with_capacity(n),
            acks: Vec::with_capacity(n),
            traces: Vec::with_capacity(n),
            partitions: Vec::with_capacity(n),
        }
    }

    /// Splits the run where the source partition changes, in order.
    fn by_partition(self) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let Run { events, acks, traces, partitions } = self;
        for (((event, ack), trace), partition) in events.into_iter().zip(acks).zip(traces).zip(partitions) {
            let same = runs.last().and_then(|run| run.partitions.last()).is_some_and(|&last| last == partition);
            if !same {
                runs.push(Run::default());
            }
            if let Some(run) = runs.last_mut() {
                run.events.push(event);
                run.acks.push(ack);
                run.traces.push(trace);
                run.partitions.push(partition);
            }
        }
        runs
    }
}

/// Splits deliveries into runs of at most `budget` payload bytes, in order;
/// an event larger than the budget goes alone.
fn split_by_bytes(batch: Vec<Delivery>, budget: usize) -> Vec<Vec<Delivery>> {
    let total: usize = batch.iter().map(|d| d.event.payload.len()).sum();
    if total <= budget {
        return vec![batch];
    }
    let mut calls = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for delivery in batch {
        let size = delivery.event.payload.len();
        if !current.is_empty() && bytes + size > budget {
            calls.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(delivery);
    }
    if !current.is_empty() {
        calls.push(current);
    }
    calls
}

/// The current version's first result for an event, as the candidate's
/// baseline; copied ([`Current::observed`]) only for a shadowed event.
#[derive(Clone, Copy)]
enum Current<'a> {
    Handled(&'a HandleResult),
    Call(&'a CallError),
}

impl Current<'_> {
    fn failed(self) -> Option<FailureKind> {
        match self {
            Current::Handled(Ok(_)) => None,
            Current::Handled(Err(error)) => Some(FailureKind::of_handler(error)),
            Current::Call(error) => Some(FailureKind::of_call(error)),
        }
    }

    fn observed(self) -> Observed {
        match self {
            Current::Handled(result) => Observed::from_handler(result),
            Current::Call(error) => Observed::from_call(error),
        }
    }
}

/// What one plugin call returned.
type CallResult = Result<Vec<HandleResult>, CallError>;

/// The result of a one-event call as that event's result.
fn single(result: Result<Vec<HandleResult>, CallError>) -> Result<Vec<Output>, Failed> {
    match result {
        Ok(mut results) => match results.pop() {
            Some(r) => r.map_err(Failed::Handler),
            None => Err(Failed::Call(CallError::Contract("no result for the event".into()))),
        },
        Err(e) => Err(Failed::Call(e)),
    }
}
