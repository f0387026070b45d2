//! Per-pipeline counters. Relaxed atomics: each is a tally, read for reports.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// A point-in-time copy of [`Stats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl Stats {
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
    /// Repeats of an event already handled within the idempotency window:
    /// acknowledged without calling the plugin, nothing sent.
    duplicates,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
