//! Per-pipeline counters, gauges and latency histograms. Relaxed atomics:
//! each is a tally, read for reports, the admin API and `/metrics`
//! (rendered by [`crate::metrics`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// A pipeline's counters, bumped by its lanes and read by
        /// `/metrics`, `/pipelines` and the end-of-run report.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Failed attempts by kind.
            pub errors: ErrorCounts,
            /// Levels that go up and down (in flight, lag).
            pub gauges: Gauges,
            /// Latency histograms.
            pub timings: Timings,
            /// Service calls (`sluice:plugin/client`) per destination.
            pub clients: Arc<crate::client::metrics::ClientMetrics>,
        }

        /// A point-in-time copy of [`Stats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot { $($(#[$doc])* pub $name: u64,)* }

        /// The end-of-run line: every counter that moved, in the order
        /// above ("6 received, 3 outputs, 2 filtered, 1 dead lettered, 6
        /// acked"); `received` always, so an idle run says "0 received".
        impl std::fmt::Display for StatsSnapshot {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} received", self.received)?;
                $(
                    if stringify!($name) != "received" && self.$name != 0 {
                        write!(f, ", {} {}", self.$name, stringify!($name).replace('_', " "))?;
                    }
                )*
                Ok(())
            }
        }

        impl Stats {
            /// The counters now (each read on its own: not one instant).
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

stats! {
    /// Deliveries taken from the source.
    received,
    /// Calls into the plugin (`received / calls` is the mean batch size).
    calls,
    /// Outputs sent to sinks (replies included).
    outputs,
    /// Events the plugin filtered out (zero outputs).
    filtered,
    /// Failed attempts: retryable errors, traps, timeouts, memory-cap hits.
    failures,
    /// Attempts made again after a failure, in place.
    retries,
    /// Failed events handed back to the broker to be delivered again after
    /// the backoff delay (JetStream, `ordering = "none"`).
    redelivered,
    /// Events sent to the dead letter.
    dead_lettered,
    /// Events settled as done (or dead-lettered) at the source.
    acked,
    /// Events handed back unfinished (shutdown, sink failure).
    abandoned,
    /// Replies dropped because the event had no reply-to.
    replies_dropped,
    /// Replies sent to partition 0 because the partition their request
    /// named could not be used (`kafka_replyPartition` unreadable, or
    /// beyond the reply topic's partitions).
    reply_partition_fallbacks,
    /// Records a sink failed to deliver (each stops the pipeline).
    sink_failures,
    /// Repeats of an event already handled within the idempotency window:
    /// acknowledged without calling the plugin, nothing sent.
    duplicates,
    /// Inputs dead-lettered for failing their schema (reason `invalid`).
    invalid_inputs,
    /// Outputs that failed their schema (each rejects its event).
    invalid_outputs,
    /// Inputs dead-lettered because the plugin does not accept their type
    /// or version (reason `unsupported`).
    unsupported,
}

/// What a failed attempt was, for `sluice_handler_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The handler returned a retryable error.
    Retryable,
    /// The handler rejected the event (or returned an output that cannot be
    /// sent, or too many or too large outputs).
    Rejected,
    Trap,
    Timeout,
    /// The instance hit its memory cap.
    Memory,
    /// The plugin broke the contract (e.g. a batch result of the wrong length).
    Contract,
    /// A new instance could not start (its `init` failed).
    Start,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [Self::Retryable, Self::Rejected, Self::Trap, Self::Timeout, Self::Memory, Self::Contract, Self::Start];

    pub fn label(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Rejected => "rejected",
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Contract => "contract",
            Self::Start => "start",
        }
    }
}

#[derive(Debug, Default)]
pub struct ErrorCounts([AtomicU64; 7]);

impl ErrorCounts {
    pub fn add(&self, kind: ErrorKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }
}

/// Levels rather than tallies.
#[derive(Debug)]
pub struct Gauges {
    /// Linear memory of the pipeline's live plugin instances, in bytes.
    pub memory_bytes: AtomicU64,
    /// The most `memory_bytes` has been.
    pub memory_peak_bytes: AtomicU64,
    /// Messages the source's broker holds that the pipeline has not
    /// finished (Kafka: high watermark minus committed offset; JetStream:
    /// pending plus unacknowledged); -1 when not known.
    /// Shared with the source, which reports into it.
    pub source_lag: Arc<AtomicI64>,
    /// The circuit breaker's state, shared with the breaker.
    pub breaker: Arc<super::breaker::BreakerGauges>,
    /// When the pipeline last took an event or finished one (Unix ms):
    /// with events in flight and this long ago, it is stuck (`/healthz`).
    pub last_progress_ms: AtomicU64,
}

impl Default for Gauges {
    fn default() -> Self {
        Self {
            memory_bytes: AtomicU64::new(0),
            memory_peak_bytes: AtomicU64::new(0),
            source_lag: Arc::new(AtomicI64::new(-1)),
            breaker: Arc::default(),
            last_progress_ms: AtomicU64::new(unix_ms()),
        }
    }
}

impl Gauges {
    /// Instance memory grew (or shrank, when an instance is dropped) by `delta`.
    pub fn memory_changed(&self, delta: i64) {
        let now = if delta >= 0 {
            self.memory_bytes.fetch_add(delta as u64, Ordering::Relaxed) + delta as u64
        } else {
            let down = delta.unsigned_abs();
            self.memory_bytes.fetch_sub(down, Ordering::Relaxed).saturating_sub(down)
        };
        self.memory_peak_bytes.fetch_max(now, Ordering::Relaxed);
    }
}

/// Latency histograms, in seconds.
#[derive(Debug)]
pub struct Timings {
    /// One plugin call (a batch of up to `policy.batch_size` events).
    pub call: Histogram,
    /// From sending an event's records to all of them being durable.
    pub publish: Histogram,
}

/// 50 µs to ~3.3 s, doubling: plugin calls and broker round trips both land
/// in the middle of it.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 17)
}

impl Default for Timings {
    fn default() -> Self {
        Self { call: Histogram::new(latency_buckets()), publish: Histogram::new(latency_buckets()) }
    }
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// An event was taken or finished: the pipeline is moving.
    pub fn progressed(&self) {
        self.gauges.last_progress_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// Events taken from the source and not yet settled there (acked,
    /// handed back or handed over for redelivery).
    pub fn in_flight(&self) -> u64 {
        let s = self.snapshot();
        s.received.saturating_sub(s.acked + s.abandoned + s.redelivered)
    }

    /// How long ago the pipeline last moved.
    pub fn since_progress(&self) -> std::time::Duration {
        let last = self.gauges.last_progress_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(unix_ms().saturating_sub(last))
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::StatsSnapshot;

    #[test]
    fn the_summary_names_the_counters_that_moved() {
        let stats = StatsSnapshot { received: 6, outputs: 3, filtered: 2, dead_lettered: 1, acked: 6, ..StatsSnapshot::default() };
        assert_eq!(stats.to_string(), "6 received, 3 outputs, 2 filtered, 1 dead lettered, 6 acked");
        assert_eq!(StatsSnapshot::default().to_string(), "0 received");
    }
}
