//! The pipeline driver: source → lanes → plugin → sinks → acknowledgement.
//!
//! Intake reads deliveries and hands each to a lane: by partition (default),
//! by key, or to whichever lane is free (`ordering = "none"`). A lane owns one
//! plugin instance and handles its queue in order, a batch per call. Each
//! event ends in exactly one of three ways: its outputs are sent, it is
//! dead-lettered, or (at shutdown or on a sink failure) it is abandoned for
//! redelivery. Behind each lane, `publish` sends what the lane decided
//! (outputs or dead-letter records) and its completer waits for the sink
//! receipts, in order, and only then settles the source ack: at-least-once,
//! never "acked but not written".
//!
//! Retries happen inside the lane, after the policy's backoff, so later
//! events of the same lane wait: order is kept even through failures. When
//! order does not matter (`ordering = "none"`) and the broker can redeliver
//! (JetStream), a failed event is handed back with the backoff delay
//! instead, and the lane moves on.

pub(crate) mod breaker;
mod candidate;
pub(crate) mod dead_letter;
pub(crate) mod handler;
pub(crate) mod idempotency;
pub(crate) mod lane;
pub(crate) mod limits;
pub(crate) mod policy;
mod publish;
pub(crate) mod route;
pub(crate) mod slot;
pub(crate) mod state;
pub(crate) mod stats;
pub(crate) mod trace;
pub(crate) mod validate;
pub(crate) mod verdict;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;

pub use handler::{Handler, HandlerFactory};
pub use limits::check_outputs;
pub use policy::RetryPolicy;
pub use publish::VERSION_HEADER;
pub use route::Router;
pub use slot::{PluginSlot, Version};
pub use stats::{Stats, StatsSnapshot};
pub use trace::Tracing;

use crate::config::Ordering;
use crate::sink::{Sink, SinkError};
use crate::source::{Delivery, Source, SourceError};

/// Why a pipeline stopped before its source ended.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The source failed; unacknowledged events come again after a restart.
    #[error("source failed: {0}")]
    Source(#[from] SourceError),
    /// A sink (an output's or the dead letter's) failed.
    #[error("sink failed: {0}")]
    Sink(#[from] SinkError),
    /// A bug in the host (see [`LaneError`]).
    #[error("a lane stopped unexpectedly: {0}")]
    Lane(#[from] LaneError),
    /// The pipeline's state store failed to commit or read.
    #[error("plugin state failed: {0}")]
    State(#[from] crate::state::StateError),
}

/// Why a lane, or a task behind it, stopped where no source, sink, plugin
/// or state store explains it: a panic in the host or a broken invariant.
/// A bug to report, never a condition to retry; the variants say which
/// seam broke so its log line points at the code to read.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// A task (a lane, its publisher, the completer) panicked or was
    /// cancelled before it returned.
    #[error("{task}: {source}")]
    Task {
        /// The task, named for the log.
        task: String,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The lane's publisher is gone while the lane still hands it events
    /// (it stops only after the lane, or on a sink failure, which the
    /// publisher reports itself).
    #[error("lane {lane}: its publisher stopped")]
    PublisherGone {
        /// The lane's index.
        lane: usize,
    },
    /// The verdict for an attempt is one its outcome rules out.
    #[error("lane {lane}: verdict {verdict} on an attempt that does not allow it")]
    Verdict {
        /// The lane's index.
        lane: usize,
        /// The verdict, as its `Debug` writes it.
        verdict: String,
    },
    /// A call for one event handed back no event.
    #[error("lane {lane}: event lost in a plugin call")]
    EventLost {
        /// The lane's index.
        lane: usize,
    },
}

impl LaneError {
    /// Maps the [`tokio::task::JoinError`] of `task` (named for the log).
    pub fn joined(task: impl Into<String>) -> impl FnOnce(tokio::task::JoinError) -> Self {
        let task = task.into();
        move |source| LaneError::Task { task, source }
    }
}

impl DispatchError {
    /// Whether a Kafka exactly-once producer of the pipeline was fenced,
    /// and the error already says so (and what to do).
    pub fn is_fenced(&self) -> bool {
        matches!(self, DispatchError::Source(SourceError::Fenced { .. }) | DispatchError::Sink(SinkError::Fenced { .. }))
    }
}

/// Everything a pipeline's lanes share.
pub struct Dispatcher {
    /// The pipeline's name, for logs, metrics and dead-letter records.
    pub pipeline: String,
    /// The plugin version lanes use; hot reload swaps it between batches.
    pub plugin: Arc<PluginSlot>,
    /// While true, intake stops taking events from the source (they stay
    /// in the broker); in-flight events finish.
    pub paused: watch::Receiver<bool>,
    /// Which sink each output goes to.
    pub router: Router,
    /// Where events that fail for good go, as dead-letter records.
    pub dead_letter: Arc<dyn Sink>,
    /// Attempts and backoff for retryable failures (`policy.max_attempts`,
    /// `policy.backoff`).
    pub retry: RetryPolicy,
    /// Lanes, each with its own plugin instance (`policy.concurrency`).
    pub concurrency: usize,
    /// How deliveries are spread over lanes (`policy.ordering`).
    pub ordering: Ordering,
    /// Events handed to the plugin per call, at most (`policy.batch_size`).
    pub batch_size: usize,
    /// Payload bytes handed to the plugin per call, at most (a single larger
    /// event still goes alone). Keeps a batch of big events from exhausting
    /// the instance's memory cap: `pipeline.rs` sets it to an eighth of it.
    pub batch_bytes: usize,
    /// Per-event handler timeout (`policy.timeout`). The runtime enforces it
    /// with epochs; the lane also stops waiting for a call that overruns it
    /// by `lane::WATCHDOG_GRACE` (a guest blocked inside a host call, such
    /// as a long sleep, cannot be interrupted by an epoch).
    pub timeout: std::time::Duration,
    /// Retryable failures go back to the broker for redelivery after the
    /// backoff delay (JetStream with `ordering = "none"`) instead of being
    /// retried in place, which holds up the lane to keep order.
    pub redeliver: bool,
    /// Add `sluice-plugin-digest` (the version that made it) to every output.
    pub version_header: bool,
    /// Caps on one event's outputs (`policy.max_outputs`,
    /// `policy.max_output_bytes`); over them, the event is rejected.
    pub max_outputs: usize,
    /// See `max_outputs`: the bytes of one event's outputs (payloads, keys
    /// and headers), summed.
    pub max_output_bytes: u64,
    /// The pipeline's counters, read by `/metrics` and the final report.
    pub stats: Arc<Stats>,
    /// Skips repeats of events already handled (`idempotency`); `None`:
    /// every delivery is handled.
    pub idempotency: Option<Arc<idempotency::Guard>>,
    /// Stops calls and intake while the plugin keeps failing
    /// (`breaker`); `None`: no breaker.
    pub breaker: Option<Arc<breaker::Breaker>>,
    /// Correlation ids and trace context (`correlation`, `[tracing]`).
    pub tracing: trace::Tracing,
    /// The services the plugin may call (`[pipelines.<name>.clients.*]`);
    /// `None` without any.
    pub clients: Option<Arc<crate::client::Clients>>,
    /// Event schemas and header names (`schemas`); checked by `validate`.
    pub schemas: Arc<crate::schema::Gate>,
    /// The pipeline's plugin state (`state`); `None`: the plugin has none.
    /// With it, each plugin call handles one event (its writes must be
    /// known to be its own) and each ack waits for the event's state
    /// commit (see `state`).
    pub state: Option<Arc<crate::state::Store>>,
    /// Caps on an input's headers (`policy.max_headers`,
    /// `policy.max_header_bytes`), checked at intake by `limits`: an
    /// input over them is dead-lettered before any work on it.
    pub header_limits: limits::HeaderLimits,
    /// The live view `sluice tap` watches: a relaxed load per event while
    /// nobody does.
    pub tap: Arc<crate::tap::Tap>,
    /// A candidate version tried beside the current one, when there is
    /// one (see `rollout` and `candidate`).
    pub rollout: Arc<crate::rollout::Rollout>,
    /// The plugin threads the lanes run on (with their publishers and
    /// completers, and whatever their plugin calls spawn); `None`: on the
    /// runtime that runs the dispatcher (`[runtime] plugin_threads = 0`,
    /// and tests that do not ask for them).
    pub executor: Option<crate::runtime::executor::Executor>,
}

/// A lane's inbox: its own queue, or the queue all lanes share.
enum Inbox {
    Own(mpsc::Receiver<Delivery>),
    Shared(Arc<Mutex<mpsc::Receiver<Delivery>>>),
}

impl Inbox {
    async fn recv_many(&mut self, buf: &mut Vec<Delivery>, limit: usize) -> usize {
        match self {
            Inbox::Own(rx) => rx.recv_many(buf, limit).await,
            Inbox::Shared(rx) => rx.lock().await.recv_many(buf, limit).await,
        }
    }
}

impl Dispatcher {
    /// A dispatcher with the default policy (`[pipelines.*.policy]` left
    /// out), no pause switch, breaker or idempotency: for tests and benches,
    /// which change what they measure with `..Dispatcher::new(..)`.
    pub fn new(pipeline: &str, plugin: Arc<PluginSlot>, router: Router, dead_letter: Arc<dyn Sink>) -> Self {
        let policy = crate::config::PolicyConfig::default();
        Self {
            pipeline: pipeline.to_owned(),
            plugin,
            // The sender is dropped at once: nobody can pause it.
            paused: watch::channel(false).1,
            router,
            dead_letter,
            retry: RetryPolicy { max_attempts: policy.max_attempts, backoff: policy.backoff },
            concurrency: policy.concurrency,
            ordering: policy.ordering,
            batch_size: policy.batch_size,
            batch_bytes: (policy.memory.as_u64() / 8) as usize,
            timeout: policy.timeout,
            redeliver: false,
            version_header: policy.version_header,
            max_outputs: policy.max_outputs,
            max_output_bytes: policy.max_output_bytes.as_u64(),
            stats: Arc::new(Stats::default()),
            idempotency: None,
            breaker: None,
            tracing: trace::Tracing::default(),
            schemas: Arc::default(),
            state: None,
            header_limits: limits::HeaderLimits::default(),
            clients: None,
            tap: Arc::default(),
            rollout: Arc::new(crate::rollout::Rollout::new(pipeline, None, policy.timeout)),
            executor: None,
        }
    }

    /// Runs until the source ends (then drains), `shutdown` fires (then
    /// drains without retrying), or a source or sink fails.
    pub async fn run(self, mut source: Box<dyn Source>, shutdown: CancellationToken) -> Result<(), DispatchError> {
        let lanes = self.concurrency.max(1);
        let queue = self.batch_size * 2;
        let failed = CancellationToken::new();
        let ordering = self.ordering;
        let shared = Arc::new(self);

        let (senders, mut tasks) = spawn_lanes(&shared, lanes, queue, &shutdown, &failed);

        let mut outcome = Ok(());
        let mut paused = shared.paused.clone();
        loop {
            if *paused.borrow() {
                tracing::info!(pipeline = %shared.pipeline, "paused: no events are taken from the source");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = failed.cancelled() => break,
                    _ = paused.wait_for(|p| !p) => {}
                }
                tracing::info!(pipeline = %shared.pipeline, "resumed");
            }
            if let Some(breaker) = shared.breaker.as_ref().filter(|b| b.is_open()) {
                // Events stay in the broker until the breaker half-opens.
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = failed.cancelled() => break,
                    _ = breaker.admitting() => {}
                }
            }
            if shutdown.is_cancelled() || failed.is_cancelled() {
                break;
            }
            // A delivery the source has at hand is taken without waiting:
            // the select below (a waiter on each token, the pause switch
            // and the breaker) is for when the source has to wait, and
            // costs more than the rest of intake when paid per event.
            let next = {
                let mut pending = source.next();
                match (&mut pending).now_or_never() {
                    Some(next) => next,
                    None => tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        _ = failed.cancelled() => break,
                        _ = pause_requested(&mut paused) => continue,
                        _ = breaker_opened(shared.breaker.as_deref()) => continue,
                        next = pending => next,
                    },
                }
            };
            let mut delivery = match next {
                Ok(Some(delivery)) => delivery,
                Ok(None) => break,
                Err(err) => {
                    outcome = Err(DispatchError::Source(err));
                    break;
                }
            };
            shared.admit(&mut delivery, source.as_ref());
            let lane = match ordering {
                _ if senders.len() == 1 => 0,
                Ordering::None => 0,
                Ordering::Partition => delivery.partition as usize % senders.len(),
                Ordering::Key => key_lane(&delivery, senders.len()),
            };
            // Room in the lane's queue: no waiting, so nothing to select.
            let delivery = match senders[lane].try_send(delivery) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Closed(_)) => break,
                Err(mpsc::error::TrySendError::Full(delivery)) => delivery,
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = failed.cancelled() => break,
                sent = senders[lane].send(delivery) => if sent.is_err() { break },
            }
        }
        drop(senders);

        while let Some(joined) = tasks.join_next().await {
            let result = joined.unwrap_or_else(|e| Err(LaneError::joined("lane task")(e).into()));
            if let (Err(err), Ok(())) = (result, &outcome) {
                outcome = Err(err);
            }
        }
        if let (Err(_), Some(store)) = (&outcome, &shared.state) {
            // Concluded writes that will not be committed must not be read
            // by a restart (a commit in flight finishes first).
            store.abort().await;
        }
        if let Some(store) = &shared.state {
            // Deferred fsyncs (the embedded backend's `sync_interval`) are
            // done before the pipeline reports that it stopped.
            if let (Err(err), Ok(())) = (store.flush().await, &outcome) {
                outcome = Err(DispatchError::State(err));
            }
        }
        let closed = source.close().await;
        outcome?;
        closed?;
        Ok(())
    }
}

impl Dispatcher {
    /// Intake's part of an event, before a lane takes it: counted, tapped
    /// raw, and marked as a defect (dead-lettered in its turn, no lane
    /// work on it) when its headers are over the caps or it is not in the
    /// source's wire format; otherwise decoded.
    fn admit(&self, delivery: &mut Delivery, source: &dyn Source) {
        Stats::add(&self.stats.received, 1);
        self.stats.progressed();
        self.tap.input(&delivery.event);
        // Its headers are left out of the dead-letter record: that many
        // would make the record too large for a broker's dead letter (a
        // failed dead letter stops the pipeline).
        if delivery.defect.is_none() {
            if let Err(why) = limits::check_headers(&delivery.event, &self.header_limits) {
                delivery.event.headers = Vec::new();
                delivery.defect = Some(format!("{why}; its headers are left out of this dead-letter record"));
            }
        }
        if delivery.defect.is_none() {
            delivery.defect = source.decode(&mut delivery.event).err();
        }
    }
}

/// Starts the pipeline's lanes: with `ordering = "none"` they share one
/// queue (any free lane takes the next event), otherwise each has its own
/// (intake picks the lane by key or partition). Queues are bounded: a
/// full one makes intake wait, which is the backpressure on the source.
/// With an executor, each lane runs on a plugin thread (see
/// [`crate::runtime::executor`]); intake stays on the caller's runtime.
fn spawn_lanes(
    shared: &Arc<Dispatcher>,
    lanes: usize,
    queue: usize,
    shutdown: &CancellationToken,
    failed: &CancellationToken,
) -> (Vec<mpsc::Sender<Delivery>>, tokio::task::JoinSet<Result<(), DispatchError>>) {
    let (senders, inboxes): (Vec<_>, Vec<_>) = if shared.ordering == Ordering::None {
        let (tx, rx) = mpsc::channel(queue * lanes);
        let rx = Arc::new(Mutex::new(rx));
        (vec![tx], (0..lanes).map(|_| Inbox::Shared(rx.clone())).collect())
    } else {
        (0..lanes)
            .map(|_| {
                let (tx, rx) = mpsc::channel(queue);
                (tx, Inbox::Own(rx))
            })
            .unzip()
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (id, inbox) in inboxes.into_iter().enumerate() {
        let lane = lane::Lane::new(id, shared.clone(), shutdown.clone(), failed.clone());
        match &shared.executor {
            Some(executor) => executor.spawn_lane(&mut tasks, lane.run(inbox)),
            None => {
                tasks.spawn(lane.run(inbox));
            }
        }
    }
    (senders, tasks)
}

/// Resolves when intake should pause; never, once nobody can pause it.
async fn pause_requested(paused: &mut watch::Receiver<bool>) {
    if paused.wait_for(|p| *p).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when the breaker opens; never, without a breaker.
async fn breaker_opened(breaker: Option<&breaker::Breaker>) {
    match breaker {
        Some(breaker) => breaker.opened().await,
        None => std::future::pending().await,
    }
}

/// Same partition and key → same lane; keyless events follow the partition.
fn key_lane(delivery: &Delivery, lanes: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    delivery.partition.hash(&mut hasher);
    delivery.event.key.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

#[cfg(test)]
mod tests;
