//! What `/readyz` answers from: each pipeline's state as the supervisor
//! last set it, and each running pipeline's connection probes.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// Where a pipeline is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "kebab-case")]
pub enum PipelineState {
    /// Loading its plugin, connecting its source and sinks.
    Starting,
    Running,
    /// Ran to its end (a file source without `follow`).
    Finished,
    /// Stopped on an error and waits to start again
    /// (`[pipelines.<name>.restart]`).
    Restarting(Restarting),
    /// Did not start, or stopped on an error (and is not restarted, or
    /// reached its restart limit): the reason.
    Failed(String),
}

/// A pipeline waiting to start again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restarting {
    /// Failures in a row, this one included.
    pub attempt: u32,
    /// When it starts again, RFC 3339 (UTC).
    pub next_try: String,
    /// Why the last run stopped.
    pub last_error: String,
}

impl PipelineState {
    /// The state's name: `starting`, `running`, `finished`, `restarting`,
    /// `failed` (the `state` label of `sluice_pipeline_state`).
    pub fn label(&self) -> &'static str {
        match self {
            PipelineState::Starting => "starting",
            PipelineState::Running => "running",
            PipelineState::Finished => "finished",
            PipelineState::Restarting(_) => "restarting",
            PipelineState::Failed(_) => "failed",
        }
    }

    pub const LABELS: [&'static str; 5] = ["starting", "running", "finished", "restarting", "failed"];

    /// Why it is not ready, for `/readyz` (`None` for running and finished).
    pub fn problem(&self) -> Option<String> {
        match self {
            PipelineState::Running | PipelineState::Finished => None,
            PipelineState::Starting => Some("starting".into()),
            PipelineState::Restarting(r) => {
                Some(format!("restarting (attempt {}, next try at {}) after: {}", r.attempt, r.next_try, r.last_error))
            }
            PipelineState::Failed(reason) => Some(reason.clone()),
        }
    }
}

/// A check of something a running pipeline depends on (a broker
/// connection): `Err` says what is wrong.
pub type Probe = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Why a running pipeline counts as stuck, if it does: events in flight
/// and none taken or finished for its `stuck_after`. An open circuit
/// breaker holds events on purpose, and is not a hang.
pub fn stuck(handle: &super::PipelineHandle) -> Option<String> {
    let stats = &handle.stats;
    let breaker_open = stats.gauges.breaker.view().is_some_and(|b| b.state != "closed");
    verdict(stats.in_flight(), stats.since_progress(), handle.stuck_after, breaker_open)
}

/// The rule of [`stuck`], on plain values.
fn verdict(in_flight: u64, idle: std::time::Duration, threshold: std::time::Duration, breaker_open: bool) -> Option<String> {
    (in_flight > 0 && idle >= threshold && !breaker_open)
        .then(|| format!("stuck: {in_flight} event(s) in flight and no progress for {}s", idle.as_secs()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::verdict;
    use crate::dispatch::Stats;

    #[test]
    fn stuck_needs_work_in_flight_and_no_progress_past_the_threshold() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            verdict(3, Duration::from_secs(61), minute, false).as_deref(),
            Some("stuck: 3 event(s) in flight and no progress for 61s")
        );
        assert_eq!(verdict(0, Duration::from_secs(600), minute, false), None, "idle with nothing to do is fine");
        assert_eq!(verdict(3, Duration::from_secs(59), minute, false), None, "within the threshold");
        assert_eq!(verdict(3, Duration::from_secs(600), minute, true), None, "an open breaker holds events on purpose");
    }

    #[test]
    fn in_flight_is_what_was_taken_and_not_yet_settled() {
        let stats = Stats::default();
        Stats::add(&stats.received, 10);
        Stats::add(&stats.acked, 6);
        Stats::add(&stats.abandoned, 1);
        Stats::add(&stats.redelivered, 1);
        assert_eq!(stats.in_flight(), 2);
        stats.progressed();
        assert!(stats.since_progress() < Duration::from_secs(5));
    }
}

/// Pipeline states by name, with the run that set each, so an old run of a
/// restarted pipeline cannot overwrite the new run's state; and the restarts
/// of each name so far.
#[derive(Default, Clone)]
pub struct Health(Arc<RwLock<BTreeMap<String, Entry>>>);

struct Entry {
    run: u64,
    state: PipelineState,
    /// Restarts by the restart policy (not by config reloads) so far.
    restarts: u64,
}

/// A pipeline as `/pipelines` and `/metrics` see it, running or not.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub state: PipelineState,
    pub restarts: u64,
}

impl Health {
    pub fn set(&self, name: &str, run: u64, state: PipelineState) {
        if let Ok(mut states) = self.0.write() {
            match states.get_mut(name) {
                Some(entry) if entry.run > run => {}
                Some(entry) => {
                    entry.run = run;
                    entry.state = state;
                }
                None => {
                    states.insert(name.to_owned(), Entry { run, state, restarts: 0 });
                }
            }
        }
    }

    /// Counts a restart of `name` by its restart policy.
    pub fn restarted(&self, name: &str) {
        if let Ok(mut states) = self.0.write() {
            if let Some(entry) = states.get_mut(name) {
                entry.restarts += 1;
            }
        }
    }

    /// Forgets a pipeline removed from the config (if `run` is its last).
    pub fn remove(&self, name: &str, run: u64) {
        if let Ok(mut states) = self.0.write() {
            if states.get(name).is_some_and(|entry| entry.run == run) {
                states.remove(name);
            }
        }
    }

    pub fn states(&self) -> BTreeMap<String, PipelineState> {
        self.lifecycles().into_iter().map(|(name, l)| (name, l.state)).collect()
    }

    pub fn lifecycles(&self) -> BTreeMap<String, Lifecycle> {
        match self.0.read() {
            Ok(states) => states
                .iter()
                .map(|(name, entry)| (name.clone(), Lifecycle { state: entry.state.clone(), restarts: entry.restarts }))
                .collect(),
            Err(_) => BTreeMap::new(),
        }
    }

    pub fn lifecycle(&self, name: &str) -> Option<Lifecycle> {
        self.lifecycles().remove(name)
    }
}
