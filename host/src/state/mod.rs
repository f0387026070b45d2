//! Plugin state: string keys to byte values, owned by a pipeline, whose
//! changes belong to the event that made them.
//!
//! The flow of one event's state:
//!
//! 1. [`Store::begin`] gives the attempt an [`EventState`]: an overlay that
//!    holds its writes. Reads go overlay → pending (concluded, not yet
//!    durable) → [`Backend`]; the overlay makes an event read its own writes.
//! 2. [`Store::conclude`] when the attempt's outputs are accepted: its reads
//!    are validated (optimistic concurrency, explained in `store.rs`) and its
//!    writes join the pending map, visible to later events. It returns a
//!    [`Ticket`] that holds the event's place in the commit order. A failed,
//!    retried or dead-lettered attempt is simply dropped: no trace.
//! 3. [`Store::ready`] when the event's outputs are durable. A committer task
//!    commits the longest ready prefix of tickets, in conclude order, as one
//!    backend transaction that also records the events as applied and the
//!    source's position; then the waiting `ready` calls resolve and the
//!    caller acknowledges exactly those events at the source.
//!
//! Backends: [`memory`] (tests, `plugin test`, seedable from a JSON file) and
//! [`embedded`] (redb, one file per host, a table namespace per pipeline)
//! and [`jetstream_kv`] (a NATS KV bucket per pipeline, commits made atomic
//! by a redo record) and [`kafka_changelog`] (a compacted topic written in
//! the exactly-once Kafka transaction, restored on partition assignment).
//! `metrics` counts reads, writes and commits for Prometheus.
//!
//! This module knows nothing of wasmtime, sources or the dispatcher: the
//! host imports and the dispatcher call it.

pub(crate) mod backend;
pub mod embedded;
mod event;
pub mod jetstream_kv;
pub mod kafka_changelog;
pub mod memory;
pub(crate) mod metrics;
mod open;
mod store;

pub use backend::{Backend, CommitBatch, Position};
pub use event::{EventState, Key};
pub use metrics::StateMetrics;
pub use open::{open, open_for_pipeline, Opened};
pub(crate) use store::IdHasher;
pub use store::{Conflict, PositionProbe, Store, Ticket};

/// Limits on what one event may do with state. Each one bounds memory or the
/// size of a commit, and each has its own error so a plugin author sees which
/// one was hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest key in bytes. 1 KiB: keys are names (a SKU, an account), and
    /// every pending write and every read record holds a copy.
    pub max_key_bytes: usize,
    /// Largest value in bytes. 1 MiB: a value is held in the overlay, in the
    /// pending map and in the commit batch, so it is bounded like an event.
    pub max_value_bytes: usize,
    /// Distinct keys one event may write (set, delete or increment; writing a
    /// key again counts once). 1000: bounds the overlay and one event's share
    /// of a commit transaction.
    pub max_writes_per_event: usize,
    /// Distinct keys plus scans one event may read. 10,000: each read is
    /// remembered until the event concludes, for conflict detection.
    pub max_reads_per_event: usize,
    /// Most entries in one page of `scan`. 1000: a page is copied into the
    /// guest's memory at once.
    pub max_scan: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_key_bytes: 1024, max_value_bytes: 1024 * 1024, max_writes_per_event: 1000, max_reads_per_event: 10_000, max_scan: 1000 }
    }
}

/// What a state operation can fail with. Messages name the key and the limit
/// because they reach plugin authors and operators as they are.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// A key over `max_key_bytes`.
    #[error("state key of {len} bytes is longer than the limit of {max} bytes")]
    KeyTooLong {
        /// Its length, bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value over `max_value_bytes`.
    #[error("state value for key {key:?} is {len} bytes, more than the limit of {max} bytes")]
    ValueTooLarge {
        /// The key at fault.
        key: String,
        /// Its length, bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An event wrote more keys than `max_writes_per_event`.
    #[error("an event may write at most {max} state keys")]
    TooManyWrites {
        /// The limit.
        max: usize,
    },
    /// An event read more keys and scans than `max_reads_per_event`.
    #[error("an event may read at most {max} state keys and scans")]
    TooManyReads {
        /// The limit.
        max: usize,
    },
    /// `increment` on a key holding something else than a counter.
    #[error("state key {key:?} does not hold a counter (ASCII decimal text)")]
    NotACounter {
        /// The key at fault.
        key: String,
    },
    /// `increment` past the range of an `i64`.
    #[error("incrementing state key {key:?} overflows a signed 64-bit counter")]
    Overflow {
        /// The key at fault.
        key: String,
    },
    /// The backend failed, or the store stopped (a failed commit, `abort`).
    #[error("state unavailable: {0}")]
    Unavailable(String),
}

/// Checks a key against the limits; shared by every operation that takes one.
pub(crate) fn check_key(key: &str, limits: &Limits) -> Result<(), StateError> {
    if key.len() > limits.max_key_bytes {
        return Err(StateError::KeyTooLong { len: key.len(), max: limits.max_key_bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_the_limit() {
        let e = StateError::ValueTooLarge { key: "sku-1".into(), len: 10, max: 5 };
        assert_eq!(e.to_string(), "state value for key \"sku-1\" is 10 bytes, more than the limit of 5 bytes");
        let e = StateError::KeyTooLong { len: 2000, max: 1024 };
        assert!(e.to_string().contains("1024"));
    }
}
