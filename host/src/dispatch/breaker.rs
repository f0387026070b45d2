//! The circuit breaker: stops calling a plugin that keeps failing.
//!
//! Closed, it counts failed attempts (retryable errors, traps, timeouts,
//! memory-cap hits, instances that fail to start; not rejections, which
//! are the event's fault, not the plugin's). `failures` of them within
//! `window` open it: intake stops taking events from the source (they stay
//! in the broker), and lanes hold the events they already have without
//! calling the plugin, so nothing is retried to exhaustion, or
//! dead-lettered, because the breaker is open. After `reset` it is
//! half-open: intake takes events again and exactly one call goes through
//! as a probe. Its success closes the breaker; its failure opens it for
//! another `reset`.
//!
//! A probe is a real attempt of a real event: it counts toward that
//! event's `max_attempts`, so an event that fails every probe still ends
//! in the dead letter, one probe at a time, as its retry policy says.
//!
//! Time is tokio's, so tests drive it with paused time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::BreakerConfig;

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    /// No calls, no intake, until `until`.
    Open {
        until: Instant,
    },
    /// One probe call at a time; intake runs.
    HalfOpen,
}

impl State {
    /// The value of the `sluice_breaker_state` gauge.
    pub fn level(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen => 2,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half-open",
        }
    }
}

/// What the breaker shows the admin API, `/metrics` and `sluice status`:
/// atomics, so readers never take the breaker's lock.
#[derive(Debug)]
pub struct BreakerGauges {
    /// [`State::level`], or -1 for a pipeline without a breaker.
    pub state: AtomicI64,
    /// Times it opened (from closed or from a failed probe).
    pub opened: AtomicI64,
    /// Failures in the current window while closed.
    pub failures: AtomicI64,
}

impl Default for BreakerGauges {
    fn default() -> Self {
        Self { state: AtomicI64::new(-1), opened: AtomicI64::new(0), failures: AtomicI64::new(0) }
    }
}

/// The breaker as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BreakerView {
    /// `closed`, `open` or `half-open`.
    pub state: &'static str,
    /// Failures counted in the current window (closed).
    pub failures: i64,
    /// Times it opened since the pipeline started.
    pub opened: i64,
}

impl BreakerGauges {
    /// `None` for a pipeline without a breaker.
    pub fn view(&self) -> Option<BreakerView> {
        let state = match self.state.load(Ordering::Relaxed) {
            0 => "closed",
            1 => "open",
            2 => "half-open",
            _ => return None,
        };
        Some(BreakerView { state, failures: self.failures.load(Ordering::Relaxed), opened: self.opened.load(Ordering::Relaxed) })
    }
}

/// How a call went, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin answered (outputs, or a rejection: the event's fault).
    Healthy,
    /// A failed attempt that says something about the plugin.
    Failed,
}

struct Inner {
    /// Times of the failures in the current window (at most `failures`).
    recent: VecDeque<Instant>,
    /// A probe call is under way (half-open).
    probing: bool,
}

pub struct Breaker {
    pipeline: String,
    threshold: usize,
    window: Duration,
    reset: Duration,
    inner: Mutex<Inner>,
    state: watch::Sender<State>,
    gauges: Arc<BreakerGauges>,
}

/// Leave to make one call. A probe's permit, dropped without an outcome
/// (the call did not happen, or its result was not the plugin's doing),
/// lets the next call probe instead.
pub struct Permit {
    breaker: Option<Arc<Breaker>>,
    probe: bool,
}

impl Permit {
    /// A permit for a pipeline without a breaker.
    pub fn unguarded() -> Self {
        Self { breaker: None, probe: false }
    }

    /// Reports how the call went, in the order of its events.
    pub fn record(&self, outcome: Outcome) {
        if let Some(breaker) = &self.breaker {
            breaker.record(outcome, self.probe);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let (Some(breaker), true) = (&self.breaker, self.probe) {
            breaker.lock().probing = false;
            // Whoever waits for the probe slot may take it now.
            breaker.state.send_modify(|_| {});
        }
    }
}

impl Breaker {
    pub fn new(pipeline: &str, config: &BreakerConfig, gauges: Arc<BreakerGauges>) -> Arc<Self> {
        gauges.state.store(State::Closed.level(), Ordering::Relaxed);
        Arc::new(Self {
            pipeline: pipeline.to_owned(),
            threshold: config.failures.max(1) as usize,
            window: config.window,
            reset: config.reset,
            inner: Mutex::new(Inner { recent: VecDeque::new(), probing: false }),
            state: watch::Sender::new(State::Closed),
            gauges,
        })
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state(), State::Open { .. })
    }

    /// Waits until a call may be made, and returns the leave to make it.
    /// Cancel-safe: dropping the future gives up its turn.
    pub async fn permit(self: &Arc<Self>) -> Permit {
        let mut states = self.state.subscribe();
        loop {
            self.half_open_if_due();
            match *states.borrow_and_update() {
                State::Closed => return Permit { breaker: Some(self.clone()), probe: false },
                State::HalfOpen => {
                    let mut inner = self.lock();
                    if !inner.probing {
                        inner.probing = true;
                        return Permit { breaker: Some(self.clone()), probe: true };
                    }
                }
                State::Open { .. } => {}
            }
            self.changed_or_due(&mut states).await;
        }
    }

    /// Resolves when intake may take events (the breaker is not open).
    pub async fn admitting(&self) {
        let mut states = self.state.subscribe();
        loop {
            self.half_open_if_due();
            if !matches!(*states.borrow_and_update(), State::Open { .. }) {
                return;
            }
            self.changed_or_due(&mut states).await;
        }
    }

    /// Resolves when the breaker opens (intake must stop).
    pub async fn opened(&self) {
        let mut states = self.state.subscribe();
        if states.wait_for(|s| matches!(s, State::Open { .. })).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    async fn changed_or_due(&self, states: &mut watch::Receiver<State>) {
        let until = match *states.borrow() {
            State::Open { until } => Some(until),
            _ => None,
        };
        match until {
            Some(until) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = states.changed() => {}
                }
            }
            None => {
                let _ = states.changed().await;
            }
        }
    }

    /// Open past its reset time: half-open.
    fn half_open_if_due(&self) {
        let _inner = self.lock();
        if let State::Open { until } = *self.state.borrow() {
            if Instant::now() < until {
                return;
            }
        } else {
            return;
        }
        tracing::info!(pipeline = %self.pipeline, "circuit breaker half-open: taking events again, the next call is a probe");
        self.set(State::HalfOpen);
    }

    fn record(&self, outcome: Outcome, probe: bool) {
        let mut inner = self.lock();
        let now = Instant::now();
        match (self.state(), outcome) {
            (State::Closed, Outcome::Failed) => {
                inner.recent.push_back(now);
                while inner.recent.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
                    inner.recent.pop_front();
                }
                while inner.recent.len() > self.threshold {
                    inner.recent.pop_front();
                }
                if inner.recent.len() >= self.threshold {
                    tracing::warn!(
                        pipeline = %self.pipeline,
                        failures = self.threshold,
                        window = ?self.window,
                        reset = ?self.reset,
                        "circuit breaker open: the plugin failed {} times within {:?}; no events are taken from the source for {:?}",
                        self.threshold, self.window, self.reset
                    );
                    inner.recent.clear();
                    self.open(now);
                }
                self.gauges.failures.store(inner.recent.len() as i64, Ordering::Relaxed);
            }
            (State::HalfOpen, Outcome::Failed) if probe => {
                tracing::warn!(pipeline = %self.pipeline, reset = ?self.reset, "circuit breaker open again: the probe failed");
                inner.probing = false;
                self.open(now);
            }
            (State::HalfOpen, Outcome::Healthy) if probe => {
                tracing::info!(pipeline = %self.pipeline, "circuit breaker closed: the probe succeeded");
                inner.probing = false;
                inner.recent.clear();
                self.gauges.failures.store(0, Ordering::Relaxed);
                self.set(State::Closed);
            }
            // Calls let through before it opened, and a probe's later
            // events once it has decided, say nothing new.
            _ => {}
        }
    }

    fn open(&self, now: Instant) {
        self.gauges.opened.fetch_add(1, Ordering::Relaxed);
        self.set(State::Open { until: now + self.reset });
    }

    fn set(&self, state: State) {
        self.gauges.state.store(state.level(), Ordering::Relaxed);
        self.state.send_replace(state);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, window: u64, reset: u64) -> Arc<Breaker> {
        let config = BreakerConfig { failures, window: Duration::from_secs(window), reset: Duration::from_secs(reset) };
        Breaker::new("p", &config, Arc::default())
    }

    async fn fail(b: &Arc<Breaker>, n: usize) {
        for _ in 0..n {
            b.permit().await.record(Outcome::Failed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_within_the_window() {
        let b = breaker(3, 10, 30);
        fail(&b, 2).await;
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.gauges.failures.load(Ordering::Relaxed), 2);
        fail(&b, 1).await;
        assert!(matches!(b.state(), State::Open { .. }));
        assert_eq!(b.gauges.state.load(Ordering::Relaxed), 1);
        assert_eq!(b.gauges.opened.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_wider_than_the_window_do_not_open_it() {
        let b = breaker(3, 10, 30);
        for _ in 0..10 {
            fail(&b, 1).await;
            tokio::time::advance(Duration::from_secs(6)).await;
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.gauges.opened.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rejections_and_successes_do_not_count() {
        let b = breaker(2, 10, 30);
        for _ in 0..50 {
            b.permit().await.record(Outcome::Healthy);
        }
        fail(&b, 1).await;
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn open_holds_calls_and_intake_until_the_reset_then_probes_once() {
        let b = breaker(1, 10, 30);
        fail(&b, 1).await;
        let opened_at = Instant::now();
        // Both wait out the reset.
        b.admitting().await;
        assert_eq!(opened_at.elapsed(), Duration::from_secs(30));
        assert_eq!(b.state(), State::HalfOpen);
        let probe = b.permit().await;
        // A second caller waits while the probe is under way.
        let second = tokio::time::timeout(Duration::from_secs(3600), b.permit()).await;
        assert!(second.is_err(), "only one probe at a time");
        probe.record(Outcome::Healthy);
        drop(probe);
        assert_eq!(b.state(), State::Closed);
        let third = tokio::time::timeout(Duration::from_millis(1), b.permit()).await;
        assert!(third.is_ok(), "closed: calls go through");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_for_another_reset() {
        let b = breaker(1, 10, 30);
        fail(&b, 1).await;
        let probe = b.permit().await;
        let probed_at = Instant::now();
        probe.record(Outcome::Failed);
        drop(probe);
        assert!(matches!(b.state(), State::Open { .. }));
        assert_eq!(b.gauges.opened.load(Ordering::Relaxed), 2);
        let _next = b.permit().await;
        assert_eq!(probed_at.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_without_an_outcome_hands_the_probe_on() {
        let b = breaker(1, 10, 30);
        fail(&b, 1).await;
        let probe = b.permit().await;
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.permit().await.probe }
        });
        tokio::task::yield_now().await;
        drop(probe);
        let handed_on = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert!(matches!(handed_on, Ok(Ok(true))), "the waiter becomes the probe");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_started_before_it_opened_do_not_move_it() {
        let b = breaker(2, 10, 30);
        let early = b.permit().await;
        fail(&b, 2).await;
        let opened = b.state();
        assert!(matches!(opened, State::Open { .. }));
        early.record(Outcome::Healthy);
        early.record(Outcome::Failed);
        assert_eq!(b.state(), opened);
        assert_eq!(b.gauges.opened.load(Ordering::Relaxed), 1);
    }
}
