//! Safe rollouts on one pipeline: a candidate version tried beside the
//! current one before it takes over.
//!
//! - **Shadow**: the lanes run the candidate on (a sample of) the events
//!   the current version handles, after the current version's call and
//!   with its own deadline; its outputs are compared ([`compare`]) and
//!   dropped, its state writes discarded, its HTTP and service calls
//!   refused with an error it sees.
//! - **Canary**: the events of a fraction of keys (by hash, so a key stays
//!   on one version) are handled by the candidate for real; an event it
//!   fails is handled by the current version instead, never dead-lettered
//!   because of it.
//!
//! Each result is counted here; [`rules`] decides when the candidate is
//! promoted or rolled back, and the pipeline's [`crate::reload`] side acts
//! on it (the lanes only record). The admin API and `sluice status` show
//! the counts and the first differing events side by side.

pub mod compare;
pub mod rules;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use compare::{FailureKind, Observed, ObservedView};
use rules::Judgement;

use crate::config::{RolloutConfig, RolloutMode};
use crate::dispatch::HandlerFactory;
use crate::event::Event;
use crate::runtime::LoadedPlugin;

/// One pipeline's rollout: its candidate, if any, and how the last ended.
pub struct Rollout {
    pipeline: String,
    config: RolloutConfig,
    /// A shadow call's deadline when `rollout.timeout` is unset.
    default_timeout: Duration,
    candidate: ArcSwapOption<Candidate>,
    /// Woken when a candidate's counts decide its fate.
    decided: Arc<tokio::sync::Notify>,
    last: Mutex<Option<Ended>>,
    next_id: AtomicU64,
    pub totals: Totals,
}

/// Counters over every candidate of the pipeline (the metrics).
#[derive(Debug, Default)]
pub struct Totals {
    pub promotions: AtomicU64,
    pub rollbacks: AtomicU64,
    pub aborts: AtomicU64,
    pub shadowed: AtomicU64,
    pub differences: AtomicU64,
    pub canary_events: AtomicU64,
    pub fallbacks: AtomicU64,
}

impl Totals {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a candidate is tried, as uploaded (the config's, or overridden).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Trial {
    pub mode: RolloutMode,
    pub sample: f64,
    pub canary: f64,
}

/// A candidate version being tried.
pub struct Candidate {
    pub id: u64,
    /// What a promotion makes current (`None` only for the dispatcher's
    /// scripted test candidates, which cannot be promoted).
    pub plugin: Option<LoadedPlugin>,
    /// What the lanes call.
    pub factory: Arc<dyn HandlerFactory>,
    pub trial: Trial,
    pub timeout: Duration,
    config: RolloutConfig,
    started_at: String,
    tally: Mutex<Tally>,
    verdict: OnceLock<Judgement>,
    decided: Arc<tokio::sync::Notify>,
}

/// What a candidate did so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Events the candidate handled: compared (shadow) or served (canary).
    pub handled: u64,
    /// Of those, the ones it failed (any failure, rejections included).
    pub candidate_failures: u64,
    /// Of those, the ones it rejected: what it would have dead-lettered.
    pub candidate_rejections: u64,
    /// Events the current version handled meanwhile: the same events
    /// (shadow) or the other keys' (canary), first attempts.
    pub current_events: u64,
    pub current_failures: u64,
    pub current_rejections: u64,
    /// Shadow: compared events with the same result, and with another.
    pub same: u64,
    pub different: u64,
    /// Shadow: HTTP and service calls the candidate made and was refused.
    pub effects_refused: u64,
    /// Shadow: candidate outputs that failed their schema.
    pub invalid_outputs: u64,
    /// Canary: events the candidate failed, handled by the current version.
    pub fallbacks: u64,
    /// Mean call time per event, in milliseconds.
    pub candidate_ms: f64,
    pub current_ms: f64,
    #[serde(skip)]
    candidate_ms_total: f64,
    #[serde(skip)]
    current_ms_total: f64,
    #[serde(skip)]
    current_timed: u64,
}

#[derive(Default)]
struct Tally {
    counts: Counts,
    examples: Vec<Example>,
}

/// A differing event, side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub event_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub difference: String,
    pub current: ObservedView,
    pub candidate: ObservedView,
}

/// What the candidate did with a shadowed event.
pub struct Shadowed {
    pub result: Observed,
    /// Its call's time.
    pub took: Duration,
    /// The current version's call time for the event (a batch's divided
    /// by its events).
    pub current_took: Duration,
    /// Its HTTP and service requests, refused.
    pub refused: u64,
    /// Why its outputs fail their schemas, if they do.
    pub invalid: Option<String>,
}

/// How a candidate left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Promoted,
    RolledBack,
    Aborted,
}

/// The last candidate, once it left: its report as it was then.
#[derive(Debug, Clone, Serialize)]
pub struct Ended {
    pub digest: String,
    pub outcome: Outcome,
    pub reason: String,
    pub at: String,
    pub report: CandidateStatus,
}

/// A candidate as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateStatus {
    pub digest: String,
    #[serde(flatten)]
    pub trial: Trial,
    pub started_at: String,
    pub counts: Counts,
    /// The first differing events (up to `rollout.examples`).
    pub examples: Vec<Example>,
    /// What the rules decided and not yet acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

/// The rollout as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Ended>,
    pub promote_after: Option<u64>,
}

impl Rollout {
    pub fn new(pipeline: &str, config: Option<&RolloutConfig>, default_timeout: Duration) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            config: config.cloned().unwrap_or_default(),
            default_timeout,
            candidate: ArcSwapOption::empty(),
            decided: Arc::new(tokio::sync::Notify::new()),
            last: Mutex::new(None),
            next_id: AtomicU64::new(1),
            totals: Totals::default(),
        }
    }

    /// How candidates are tried unless an upload says otherwise.
    pub fn trial(&self) -> Trial {
        Trial { mode: self.config.mode, sample: self.config.sample, canary: self.config.canary }
    }

    /// The candidate being tried, for the lanes (one load per batch).
    pub fn candidate(&self) -> Option<Arc<Candidate>> {
        self.candidate.load_full()
    }

    /// Starts trying `plugin`; a candidate already tried is replaced
    /// (its report kept as the last, aborted).
    pub fn begin(&self, plugin: LoadedPlugin, trial: Trial) -> CandidateStatus {
        self.begin_with(Arc::new(plugin.clone()), Some(plugin), trial)
    }

    /// [`Rollout::begin`] with the handlers of `factory`.
    pub(crate) fn begin_with(&self, factory: Arc<dyn HandlerFactory>, plugin: Option<LoadedPlugin>, trial: Trial) -> CandidateStatus {
        let candidate = Arc::new(Candidate {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            factory,
            plugin,
            trial,
            timeout: self.config.timeout.unwrap_or(self.default_timeout),
            config: self.config.clone(),
            started_at: now(),
            tally: Mutex::new(Tally::default()),
            verdict: OnceLock::new(),
            decided: self.decided.clone(),
        });
        let status = candidate.status();
        tracing::info!(
            pipeline = %self.pipeline,
            digest = short(&status.digest),
            mode = ?trial.mode,
            sample = trial.sample,
            canary = trial.canary,
            "candidate plugin version loaded, trying it beside the current one"
        );
        if let Some(replaced) = self.candidate.swap(Some(candidate)) {
            self.record_end(&replaced, Outcome::Aborted, "replaced by a new candidate");
        }
        status
    }

    /// Ends the candidate `id` (or whichever there is, with `None`) and
    /// returns it; `None` if there is none (or another took its place).
    pub fn end(&self, id: Option<u64>, outcome: Outcome, reason: &str) -> Option<Arc<Candidate>> {
        let current = self.candidate.load_full()?;
        if id.is_some_and(|id| id != current.id) {
            return None;
        }
        let previous = self.candidate.compare_and_swap(&Some(current.clone()), None);
        if !previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, &current)) {
            return None;
        }
        self.record_end(&current, outcome, reason);
        Some(current)
    }

    fn record_end(&self, candidate: &Candidate, outcome: Outcome, reason: &str) {
        let counter = match outcome {
            Outcome::Promoted => &self.totals.promotions,
            Outcome::RolledBack => &self.totals.rollbacks,
            Outcome::Aborted => &self.totals.aborts,
        };
        Totals::add(counter);
        let report = candidate.status();
        match outcome {
            Outcome::RolledBack => {
                tracing::warn!(pipeline = %self.pipeline, digest = short(&report.digest), "candidate rolled back: {reason}")
            }
            _ => tracing::info!(pipeline = %self.pipeline, digest = short(&report.digest), ?outcome, "candidate ended: {reason}"),
        }
        let ended = Ended { digest: report.digest.clone(), outcome, reason: reason.to_owned(), at: now(), report };
        if let Ok(mut last) = self.last.lock() {
            *last = Some(ended);
        }
    }

    /// Waits until a candidate's counts decide; returns it with the verdict.
    pub async fn decided(&self) -> (Arc<Candidate>, Judgement) {
        loop {
            if let Some(candidate) = self.candidate.load_full() {
                if let Some(verdict) = candidate.verdict.get() {
                    return (candidate.clone(), verdict.clone());
                }
            }
            self.decided.notified().await;
        }
    }

    /// Whether `candidate` is still the one on trial (not ended, promoted
    /// or replaced since its verdict).
    pub fn is_trying(&self, candidate: &Arc<Candidate>) -> bool {
        self.candidate.load().as_ref().is_some_and(|trying| Arc::ptr_eq(trying, candidate))
    }

    pub fn status(&self) -> RolloutStatus {
        RolloutStatus {
            candidate: self.candidate.load_full().map(|c| c.status()),
            last: self.last.lock().ok().and_then(|last| last.clone()),
            promote_after: self.config.promote_after,
        }
    }

    /// A shadow result counted into the totals (the metrics).
    fn count_shadow(&self, different: bool) {
        Totals::add(&self.totals.shadowed);
        if different {
            Totals::add(&self.totals.differences);
        }
    }
}

impl Candidate {
    pub fn digest(&self) -> &str {
        self.factory.digest()
    }

    /// Shadow: whether the candidate also handles this event (a sample).
    /// Once its fate is decided, no more events are given to it.
    pub fn shadows(&self) -> bool {
        self.verdict.get().is_none()
            && self.trial.mode == RolloutMode::Shadow
            && (self.trial.sample >= 1.0 || rand::random::<f64>() < self.trial.sample)
    }

    /// Canary: whether the candidate handles this event for real (its key
    /// falls in the canary fraction; keyless events never do).
    pub fn takes(&self, event: &Event) -> bool {
        if self.trial.mode != RolloutMode::Canary || self.verdict.get().is_some() {
            return false;
        }
        let Some(key) = &event.key else { return false };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() as f64 / u64::MAX as f64) < self.trial.canary
    }

    pub fn is_canary(&self) -> bool {
        self.trial.mode == RolloutMode::Canary
    }

    /// Shadow: one event both versions handled.
    pub fn record_shadow(&self, rollout: &Rollout, event: &Event, current: &Observed, shadowed: Shadowed) {
        let Shadowed { result: candidate, took, current_took, refused, invalid } = shadowed;
        let candidate = &candidate;
        let schema = invalid.as_ref().map(|why| format!("the candidate's outputs fail their schema: {why}"));
        let difference = match (compare::compare(current, candidate), schema) {
            (Some(difference), Some(schema)) => Some(format!("{difference}; {schema}")),
            (difference, schema) => difference.or(schema),
        };
        rollout.count_shadow(difference.is_some());
        self.tally(|tally| {
            let counts = &mut tally.counts;
            counts.handled += 1;
            counts.current_events += 1;
            count_failure(candidate, &mut counts.candidate_failures, &mut counts.candidate_rejections);
            count_failure(current, &mut counts.current_failures, &mut counts.current_rejections);
            counts.effects_refused += refused;
            counts.invalid_outputs += u64::from(invalid.is_some());
            counts.candidate_ms_total += took.as_secs_f64() * 1000.0;
            counts.candidate_ms = counts.candidate_ms_total / counts.handled as f64;
            counts.current_ms_total += current_took.as_secs_f64() * 1000.0;
            counts.current_ms = counts.current_ms_total / counts.handled as f64;
            match difference {
                None => counts.same += 1,
                Some(difference) => {
                    counts.different += 1;
                    if tally.examples.len() < self.config.examples {
                        tally.examples.push(Example {
                            event_id: event.id.clone(),
                            key: event.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
                            difference,
                            current: current.view(),
                            candidate: candidate.view(),
                        });
                    }
                }
            }
        });
    }

    /// Canary: an event the candidate handled for real; `failed` how it
    /// failed (then the current version handles it).
    pub fn record_canary(&self, rollout: &Rollout, failed: Option<FailureKind>, took: Duration) {
        Totals::add(&rollout.totals.canary_events);
        if failed.is_some() {
            Totals::add(&rollout.totals.fallbacks);
        }
        self.tally(|tally| {
            let counts = &mut tally.counts;
            counts.handled += 1;
            if let Some(kind) = failed {
                counts.candidate_failures += 1;
                counts.fallbacks += 1;
                counts.candidate_rejections += u64::from(kind == FailureKind::Rejected);
            }
            counts.candidate_ms_total += took.as_secs_f64() * 1000.0;
            counts.candidate_ms = counts.candidate_ms_total / counts.handled as f64;
        });
    }

    /// Canary: an event of the other keys the current version handled (its
    /// first attempt), the baseline the candidate is held to. (Shadow
    /// counts the current version with each comparison.)
    pub fn record_current(&self, failed: Option<FailureKind>, took: Option<Duration>) {
        self.tally(|tally| {
            let counts = &mut tally.counts;
            counts.current_events += 1;
            if let Some(kind) = failed {
                counts.current_failures += 1;
                counts.current_rejections += u64::from(kind == FailureKind::Rejected);
            }
            if let Some(took) = took {
                counts.current_ms_total += took.as_secs_f64() * 1000.0;
                counts.current_timed += 1;
                counts.current_ms = counts.current_ms_total / counts.current_timed as f64;
            }
        });
    }

    /// Applies `update`, then the rules: a verdict, once reached, is kept
    /// and the pipeline's rollout driver woken to act on it.
    fn tally(&self, update: impl FnOnce(&mut Tally)) {
        let judgement = {
            let Ok(mut tally) = self.tally.lock() else { return };
            update(&mut tally);
            if self.verdict.get().is_some() {
                return;
            }
            rules::judge(&self.config, &tally.counts)
        };
        if judgement != Judgement::Wait && self.verdict.set(judgement).is_ok() {
            self.decided.notify_one();
        }
    }

    pub fn status(&self) -> CandidateStatus {
        let (counts, examples) = match self.tally.lock() {
            Ok(tally) => (tally.counts.clone(), tally.examples.clone()),
            Err(_) => (Counts::default(), Vec::new()),
        };
        let pending = self.verdict.get().map(|v| match v {
            Judgement::Promote(why) => format!("promote: {why}"),
            Judgement::RollBack(why) => format!("roll back: {why}"),
            Judgement::Wait => String::new(),
        });
        CandidateStatus {
            digest: self.digest().to_owned(),
            trial: self.trial,
            started_at: self.started_at.clone(),
            counts,
            examples,
            pending,
        }
    }
}

fn count_failure(observed: &Observed, failures: &mut u64, rejections: &mut u64) {
    if let Observed::Failed { kind, .. } = observed {
        *failures += 1;
        *rejections += u64::from(*kind == FailureKind::Rejected);
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn now() -> String {
    crate::time::rfc3339(SystemTime::now())
}
