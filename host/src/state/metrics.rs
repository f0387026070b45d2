//! Counters for one store, plain atomics so the hot path pays one relaxed
//! add; the metrics module reads them into Prometheus families.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Totals since the store was created. Suggested metric names (an interface
/// once exported): `sluice_state_reads_total`, `sluice_state_writes_total`,
/// `sluice_state_written_bytes_total`, `sluice_state_commits_total`,
/// `sluice_state_committed_events_total`, `sluice_state_commit_seconds_total`,
/// `sluice_state_conflicts_total`, all labelled by pipeline.
#[derive(Debug, Default)]
pub struct StateMetrics {
    /// `get` and `scan` calls by plugins (overlay hits included).
    pub reads: AtomicU64,
    /// `set`, `delete` and `increment` calls by plugins.
    pub writes: AtomicU64,
    /// Key plus value bytes of those writes.
    pub bytes_written: AtomicU64,
    /// Backend transactions that succeeded (each may hold many events).
    pub commits: AtomicU64,
    /// Events made durable by those transactions.
    pub committed_events: AtomicU64,
    /// Time spent in backend commits, in nanoseconds.
    pub commit_nanos: AtomicU64,
    /// Attempts refused by `conclude` because a key they read had changed.
    pub conflicts: AtomicU64,
}

impl StateMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_commit(&self, events: usize, took: Duration) {
        Self::add(&self.commits, 1);
        Self::add(&self.committed_events, events as u64);
        Self::add(&self.commit_nanos, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// A snapshot for export and tests: (reads, writes, bytes written,
    /// commits, committed events, commit time, conflicts).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            reads: get(&self.reads),
            writes: get(&self.writes),
            bytes_written: get(&self.bytes_written),
            commits: get(&self.commits),
            committed_events: get(&self.committed_events),
            commit_time: Duration::from_nanos(get(&self.commit_nanos)),
            conflicts: get(&self.conflicts),
            restores: 0,
            restore_time: Duration::ZERO,
        }
    }
}

/// The counters of [`StateMetrics`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// See [`StateMetrics::reads`].
    pub reads: u64,
    /// See [`StateMetrics::writes`].
    pub writes: u64,
    /// See [`StateMetrics::bytes_written`].
    pub bytes_written: u64,
    /// See [`StateMetrics::commits`].
    pub commits: u64,
    /// See [`StateMetrics::committed_events`].
    pub committed_events: u64,
    /// Time spent in backend commits.
    pub commit_time: Duration,
    /// See [`StateMetrics::conflicts`].
    pub conflicts: u64,
    /// Restores of state from the backend (Kafka changelog: one per
    /// partition assignment) and their time; 0 for other backends.
    pub restores: u64,
    /// Time spent in those restores.
    pub restore_time: Duration,
}
