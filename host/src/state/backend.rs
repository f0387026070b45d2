//! The durable side of state: one trait, implemented by [`super::memory`],
//! [`super::embedded`], [`super::jetstream_kv`] and
//! [`super::kafka_changelog`].

use async_trait::async_trait;
use bytes::Bytes;

use super::StateError;

/// A source's resume point stored with a commit, e.g. a file source's line
/// count. Committed in the same transaction as the state it covers, so a
/// crash leaves state and position consistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The source's name, the key under which the position is kept.
    pub source: String,
    /// Where the source resumes (a line count, a sequence).
    pub offset: u64,
}

/// Everything one backend transaction writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitBatch {
    /// Key → new value (`None` deletes), each key once, sorted by key; when
    /// several events of the batch wrote a key, the last one in conclude
    /// order wins (the store has already folded them).
    pub writes: Vec<(String, Option<Bytes>)>,
    /// The id of the event whose value of `writes[i]` is committed (the
    /// last writer), same length as `writes`. The Kafka changelog places a
    /// write in the changelog partition of that event's input partition;
    /// other backends ignore it.
    pub writers: Vec<String>,
    /// Ids of the events this commit makes durable.
    ///
    /// Why the markers exist: a crash after the state commit but before the
    /// source's ack redelivers the event; the dispatcher asks
    /// [`Backend::was_applied`] and acknowledges it without running it again,
    /// so an increment is never applied twice. They are pruned after a
    /// retention that must exceed the longest redelivery delay.
    pub applied: Vec<String>,
    /// The source's resume point, when the caller gave one.
    pub position: Option<Position>,
}

/// Durable storage for one pipeline's state. All methods are async so that a
/// networked backend fits; blocking backends move their work off the
/// runtime's threads.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The committed value of a key.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// Up to `limit` committed entries whose keys start with `prefix` and are
    /// greater than `after` (when given), sorted by key.
    async fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StateError>;

    /// One atomic transaction: apply every write, record every event id in
    /// `applied`, and store `position` when given. Either all of it is
    /// durable when this returns `Ok`, or none of it is.
    async fn commit(&self, batch: CommitBatch) -> Result<(), StateError>;

    /// Makes every commit so far durable, for a backend that defers it
    /// (the embedded one with a `sync_interval`); called when a pipeline
    /// stops.
    async fn flush(&self) -> Result<(), StateError> {
        Ok(())
    }

    /// Whether a commit recorded this event id (and its marker has not been
    /// pruned yet).
    async fn was_applied(&self, event_id: &str) -> Result<bool, StateError>;

    /// Whether this backend keeps applied markers at all. One that does not
    /// (the Kafka changelog: nothing committed is ever redelivered) answers
    /// `false` to every `was_applied`, and callers skip the lookup.
    fn keeps_markers(&self) -> bool {
        true
    }

    /// Whether a commit places each write by the input partition of its
    /// writer ([`CommitBatch::writers`]), as the Kafka changelog does.
    /// Writes made in one call for several events (a lane batch) are
    /// attributed to the batch's last event, so such a batch must not mix
    /// partitions.
    fn places_by_writer(&self) -> bool {
        false
    }

    /// [`Backend::was_applied`] for each of a batch of ids (a lane's batch):
    /// one round trip for all where the backend can, instead of one each.
    async fn applied_among(&self, event_ids: &[&str]) -> Result<Vec<bool>, StateError> {
        let mut applied = Vec::with_capacity(event_ids.len());
        for id in event_ids {
            applied.push(self.was_applied(id).await?);
        }
        Ok(applied)
    }

    /// The last position committed for a source.
    async fn position(&self, source: &str) -> Result<Option<u64>, StateError>;

    /// Restores made so far and the time they took, in nanoseconds, for a
    /// backend that restores state into a cache (the Kafka changelog, on
    /// partition assignment).
    fn restored(&self) -> (u64, u64) {
        (0, 0)
    }
}
