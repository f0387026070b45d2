//! Idempotency: a pipeline remembers the keys of the events it handled, for
//! a window, and a repeat is acknowledged without calling the plugin.
//!
//! A key is *claimed* when its event reaches the lane, so a repeat queued
//! right behind it (the same batch, or the next) is caught too. The claim is
//! confirmed when the event is settled done (its outputs are durable; it
//! then counts for `window` from that moment) and dropped when it is handed
//! back, sent back for redelivery or dead-lettered: then the next copy is
//! handled, so nothing is lost to the memory of an event that did not
//! finish, and a dead-letter replay after a fix is not mistaken for a repeat.
//!
//! Memory is bounded: at most `capacity` keys, the least recently used
//! forgotten first, each stored as a 128-bit digest (a SHA-256 prefix: keys
//! come from the events, so they must not be able to collide on purpose).
//! The memory is the process's: it does not survive a restart, and hosts
//! sharing a queue group or consumer do not share it.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use sha2::{Digest, Sha256};

use crate::config::{IdempotencyConfig, IdempotencyKey};
use crate::event::Event;
use crate::source::{Ack, Acknowledge, Settlement};

type Key = [u8; 16];

/// A remembered key: which claim holds it, and until when it counts once
/// handled (`None`: still being worked on).
#[derive(Clone, Copy)]
struct State {
    claim: u64,
    until: Option<Instant>,
}

/// What the guard makes of an event.
pub enum Claim {
    /// The first copy: handle it, and settle it through the returned ack.
    New(Ack),
    /// A repeat of an event handled (or being handled) within the window.
    Repeat(Ack),
    /// The event has no key (a missing header, a payload without the
    /// field): it is handled like any other.
    NoKey(Ack),
}

/// One pipeline's memory of handled keys.
pub struct Guard {
    key: IdempotencyKey,
    window: Duration,
    seen: Mutex<LruCache<Key, State>>,
    /// Numbers claims, so a late settlement of an old claim cannot touch a
    /// newer claim of the same key.
    claims: std::sync::atomic::AtomicU64,
}

impl Guard {
    pub fn new(config: &IdempotencyConfig) -> Arc<Self> {
        let capacity = NonZeroUsize::new(config.capacity).unwrap_or(NonZeroUsize::MIN);
        Arc::new(Self {
            key: config.key.clone(),
            window: config.window,
            seen: Mutex::new(LruCache::new(capacity)),
            claims: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn seen(&self) -> MutexGuard<'_, LruCache<Key, State>> {
        // A panic while holding the lock cannot leave the map half-changed
        // (each operation is one call): keep using it.
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims `event`'s key; `ack` comes back wrapped so that settling it
    /// confirms or releases the claim.
    pub fn claim(self: &Arc<Self>, event: &Event, ack: Ack) -> Claim {
        let Some(key) = self.key_of(event) else { return Claim::NoKey(ack) };
        let now = Instant::now();
        let mut seen = self.seen();
        let repeat = match seen.get(&key) {
            Some(State { until: None, .. }) => true,
            Some(State { until: Some(until), .. }) => *until > now,
            None => false,
        };
        if repeat {
            return Claim::Repeat(ack);
        }
        let claim = self.claims.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        seen.put(key, State { claim, until: None });
        drop(seen);
        Claim::New(Ack::new(Claimed { inner: ack, key, claim, guard: self.clone() }))
    }

    /// Lets go of `event`'s key at once: the lane calls it when it decides
    /// to dead-letter the event, before the record is written, so the next
    /// copy the lane takes is handled.
    pub fn forget(&self, event: &Event) {
        if let Some(key) = self.key_of(event) {
            self.seen().pop(&key);
        }
    }

    /// The digest of `event`'s key, if it has one.
    fn key_of(&self, event: &Event) -> Option<Key> {
        let mut hasher = Sha256::new();
        match &self.key {
            IdempotencyKey::EventId => hasher.update(event.id.as_bytes()),
            IdempotencyKey::Header(name) => {
                let header = event.headers.iter().find(|h| h.key.eq_ignore_ascii_case(name))?;
                hasher.update(&header.value);
            }
            IdempotencyKey::Json(pointer) => {
                let payload: serde_json::Value = serde_json::from_slice(&event.payload).ok()?;
                match payload.pointer(pointer)? {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(s) => hasher.update(s.as_bytes()),
                    other => hasher.update(other.to_string().as_bytes()),
                }
            }
        }
        let digest = hasher.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        Some(key)
    }

    fn settled(&self, key: Key, claim: u64, settlement: Settlement) {
        let mut seen = self.seen();
        // The key was forgotten (evicted, dead-lettered) and maybe claimed
        // again since: that newer claim is not this settlement's business.
        if seen.peek(&key).is_none_or(|state| state.claim != claim) {
            return;
        }
        match settlement {
            Settlement::Done => {
                seen.put(key, State { claim, until: Some(Instant::now() + self.window) });
            }
            Settlement::DeadLettered | Settlement::Redeliver { .. } | Settlement::Abandon => {
                seen.pop(&key);
            }
        }
    }

    /// Keys remembered (in flight or handled, expired ones included until
    /// they are pushed out).
    pub fn len(&self) -> usize {
        self.seen().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An ack whose settlement confirms or releases its event's claim.
struct Claimed {
    inner: Ack,
    key: Key,
    claim: u64,
    guard: Arc<Guard>,
}

impl Acknowledge for Claimed {
    fn settle(self: Box<Self>, settlement: Settlement) {
        let Claimed { inner, key, claim, guard } = *self;
        guard.settled(key, claim, settlement);
        inner.settle(settlement);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::text_header;

    fn guard(key: IdempotencyKey, capacity: usize) -> Arc<Guard> {
        Guard::new(&IdempotencyConfig { key, window: Duration::from_secs(60), capacity })
    }

    fn event(id: &str, payload: &str) -> Event {
        Event {
            id: id.into(),
            source: "s".into(),
            key: None,
            payload: payload.as_bytes().to_vec(),
            headers: vec![text_header("Idempotency-Key", payload)],
            timestamp_ms: 0,
            attempt: 1,
            reply_to: None,
        }
    }

    fn settle(claim: Claim, settlement: Settlement) -> &'static str {
        match claim {
            Claim::New(ack) => {
                ack.settle(settlement);
                "new"
            }
            Claim::Repeat(ack) => {
                ack.settle(settlement);
                "repeat"
            }
            Claim::NoKey(ack) => {
                ack.settle(settlement);
                "no key"
            }
        }
    }

    #[test]
    fn a_repeat_is_caught_in_flight_and_after_it_is_done() {
        let g = guard(IdempotencyKey::Header("idempotency-key".into()), 10);
        let first = g.claim(&event("1", "a"), Ack::noop());
        assert_eq!(settle(g.claim(&event("2", "a"), Ack::noop()), Settlement::Done), "repeat", "in flight");
        assert_eq!(settle(first, Settlement::Done), "new");
        assert_eq!(settle(g.claim(&event("3", "a"), Ack::noop()), Settlement::Done), "repeat", "done");
        assert_eq!(settle(g.claim(&event("4", "b"), Ack::noop()), Settlement::Done), "new");
    }

    #[test]
    fn an_event_that_did_not_finish_releases_its_key() {
        let g = guard(IdempotencyKey::EventId, 10);
        for settlement in [Settlement::Abandon, Settlement::DeadLettered, Settlement::Redeliver { delay: Duration::ZERO }] {
            assert_eq!(settle(g.claim(&event("1", "a"), Ack::noop()), settlement), "new");
            assert!(g.is_empty(), "{settlement:?}");
        }
        // Dropping an unsettled ack hands the event back: released too.
        drop(g.claim(&event("1", "a"), Ack::noop()));
        assert!(g.is_empty());
    }

    #[test]
    fn a_late_settlement_leaves_a_newer_claim_alone() {
        let g = guard(IdempotencyKey::EventId, 10);
        let old = g.claim(&event("1", ""), Ack::noop());
        g.forget(&event("1", ""));
        let newer = g.claim(&event("1", ""), Ack::noop());
        assert_eq!(settle(old, Settlement::DeadLettered), "new");
        assert_eq!(settle(g.claim(&event("1", ""), Ack::noop()), Settlement::Done), "repeat", "the newer claim still holds");
        assert_eq!(settle(newer, Settlement::Done), "new");
    }

    #[test]
    fn json_keys_and_missing_keys() {
        let g = guard(IdempotencyKey::Json("/order/id".into()), 10);
        let e = |p: &str| event("x", p);
        assert_eq!(settle(g.claim(&e(r#"{"order":{"id":7}}"#), Ack::noop()), Settlement::Done), "new");
        assert_eq!(settle(g.claim(&e(r#"{"order":{"id":7},"n":2}"#), Ack::noop()), Settlement::Done), "repeat");
        assert_eq!(settle(g.claim(&e(r#"{"order":{"id":"7"}}"#), Ack::noop()), Settlement::Done), "repeat", "7 and \"7\" are one key");
        assert_eq!(settle(g.claim(&e(r#"{"order":{}}"#), Ack::noop()), Settlement::Done), "no key");
        assert_eq!(settle(g.claim(&e("not json"), Ack::noop()), Settlement::Done), "no key");
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_key_goes_first() {
        let g = guard(IdempotencyKey::EventId, 2);
        for id in ["1", "2", "3"] {
            assert_eq!(settle(g.claim(&event(id, ""), Ack::noop()), Settlement::Done), "new");
        }
        assert_eq!(g.len(), 2);
        assert_eq!(settle(g.claim(&event("1", ""), Ack::noop()), Settlement::Done), "new", "forgotten");
        assert_eq!(settle(g.claim(&event("3", ""), Ack::noop()), Settlement::Done), "repeat");
    }

    #[test]
    fn a_key_is_forgotten_after_the_window() {
        let g = Guard::new(&IdempotencyConfig { key: IdempotencyKey::EventId, window: Duration::from_millis(30), capacity: 10 });
        assert_eq!(settle(g.claim(&event("1", ""), Ack::noop()), Settlement::Done), "new");
        assert_eq!(settle(g.claim(&event("1", ""), Ack::noop()), Settlement::Done), "repeat");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(settle(g.claim(&event("1", ""), Ack::noop()), Settlement::Done), "new");
    }
}
