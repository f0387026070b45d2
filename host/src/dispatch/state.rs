//! The lanes' side of plugin state: an event's [`EventState`] is lent to
//! the plugin call (the `state` import reads and writes it), and concluded
//! with the event. Rules, in the lane:
//!
//! - a plugin whose only effect is state gets the lane's batch in one call,
//!   over one overlay ([`Store::begin_batch`]) its events share in order;
//!   which event made a write is unknown, so the batch is all or nothing:
//!   every event succeeded → [`Store::conclude_batch`], one ticket and one
//!   commit for all (writes and every event's applied marker); anything
//!   else → the overlay and outputs are dropped and the events run again
//!   one per call, where the rules below are each event's own;
//! - one event per call otherwise (outbound calls, a shadow candidate, a
//!   batch run again), so every write belongs to a known event;
//! - an attempt that fails drops its state: a retry starts from a fresh one;
//! - outputs accepted → [`Store::conclude`]: the writes become visible to
//!   later events and the event gets a ticket; a conflict (another event
//!   changed what this one read, `ordering = "none"`) re-runs it, without
//!   spending an attempt;
//! - the completer acks the event once its outputs are durable **and** its
//!   ticket is committed;
//! - before running an event, a redelivery of one already committed is
//!   acknowledged without running it again (its applied marker, looked up
//!   once per lane batch), and one whose commit is still pending is handed
//!   back for later;
//! - the completer readies a batch's tickets together
//!   ([`Store::ready_all`]): one group commit and one wake-up per batch.

use std::any::Any;
use std::sync::Arc;

use crate::runtime::bindings::current::state::{Page, StateError as WitError};
use crate::runtime::state::StateAccess;
use crate::source::Delivery;
use crate::state::{EventState, StateError, Store};

/// A delivery of an event the state already knows.
pub(super) enum Redelivery {
    /// Already committed (its outputs were durable before): acknowledge it,
    /// do not run it again.
    Applied,
    /// Concluded, its commit pending: hand it back for later.
    Pending,
}

/// Which events of a lane's batch are already committed (their applied
/// markers), asked of the backend once for the whole batch.
pub(super) fn applied<'a>(
    store: &'a Arc<Store>,
    batch: &[Delivery],
) -> impl std::future::Future<Output = Result<Vec<bool>, StateError>> + Send + 'a {
    // The ids are copied out first: a delivery's ack is not `Sync`, so the
    // future must not hold a borrow of the batch across its await.
    let ids: Vec<String> = match store.keeps_markers() {
        true => batch.iter().map(|d| d.event.id.clone()).collect(),
        false => Vec::new(),
    };
    async move {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        store.applied_among(&refs).await
    }
}

/// Whether `event_id` is a redelivery of an event the state knows;
/// `applied` is its answer from [`applied`]. Whether it waits for a commit
/// is asked now, not with the batch: an earlier copy in the same batch may
/// have concluded meanwhile.
pub(super) fn redelivery(store: &Arc<Store>, event_id: &str, applied: bool) -> Option<Redelivery> {
    if store.is_uncommitted(event_id) {
        return Some(Redelivery::Pending);
    }
    applied.then_some(Redelivery::Applied)
}

/// The state a call gave back, as the store's type.
pub(super) fn recover(access: Box<dyn StateAccess>) -> Option<EventState> {
    access.into_any().downcast::<EventState>().ok().map(|state| *state)
}

/// The guest's view of a state error.
fn to_wit(err: StateError) -> WitError {
    let limit = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match err {
        StateError::KeyTooLong { max, .. } => WitError::KeyTooLong(limit(max)),
        StateError::ValueTooLarge { max, .. } => WitError::ValueTooLarge(limit(max)),
        StateError::TooManyWrites { max } => WitError::TooManyWrites(limit(max)),
        StateError::TooManyReads { max } => WitError::TooManyReads(limit(max)),
        StateError::NotACounter { .. } => WitError::NotACounter,
        StateError::Overflow { .. } => WitError::Overflow,
        StateError::Unavailable(why) => WitError::Unavailable(why),
    }
}

#[async_trait::async_trait]
impl StateAccess for EventState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, WitError> {
        EventState::get(self, key).await.map_err(to_wit)
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), WitError> {
        EventState::set(self, key, value).map_err(to_wit)
    }
    fn delete(&mut self, key: String) -> Result<(), WitError> {
        EventState::delete(self, key).map_err(to_wit)
    }
    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, WitError> {
        EventState::increment(self, &key, delta).await.map_err(to_wit)
    }
    async fn scan(&mut self, prefix: String, after: Option<String>, limit: u32) -> Result<Page, WitError> {
        let (entries, next) = EventState::scan(self, &prefix, after.as_deref(), limit as usize).await.map_err(to_wit)?;
        Ok(Page { entries, next })
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}
