use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::state::memory::MemoryBackend;

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn store() -> (Arc<MemoryBackend>, Arc<Store>) {
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(Arc::clone(&backend) as Arc<dyn Backend>, Limits::default());
    (backend, store)
}

/// Commits one event that sets the given entries, through the whole path.
async fn commit(store: &Arc<Store>, id: &str, entries: &[(&str, Option<&str>)]) -> Result {
    let mut state = store.begin(id.into());
    for (key, value) in entries {
        match value {
            Some(v) => state.set(*key, v.as_bytes().to_vec())?,
            None => state.delete(*key)?,
        }
    }
    let ticket = store.conclude(state)?;
    store.ready(ticket).await?;
    Ok(())
}

fn text(value: Option<Vec<u8>>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[tokio::test]
async fn an_event_reads_its_own_writes_and_others_see_them_only_after_conclude() -> Result {
    let (backend, store) = store();
    let mut a = store.begin("a".into());
    a.set("k", b"1".to_vec())?;
    assert_eq!(text(a.get("k").await?).as_deref(), Some("1"));
    a.delete("k")?;
    assert_eq!(a.get("k").await?, None);
    a.set("k", b"2".to_vec())?;
    assert_eq!(a.writes(), 1, "a key written three times counts once");

    let mut b = store.begin("b".into());
    assert_eq!(b.get("k").await?, None, "not concluded yet");
    let ticket = store.conclude(a)?;
    let mut c = store.begin("c".into());
    assert_eq!(text(c.get("k").await?).as_deref(), Some("2"), "concluded: visible to later events");
    assert_eq!(backend.get("k").await?, None, "but not durable before ready");
    assert_eq!(store.get("k").await?, None, "operators see committed values only");
    store.ready(ticket).await?;
    assert_eq!(text(backend.get("k").await?).as_deref(), Some("2"));
    assert!(store.was_applied("a").await?);
    drop((b, c));
    Ok(())
}

#[tokio::test]
async fn a_dropped_attempt_leaves_no_trace() -> Result {
    let (backend, store) = store();
    let mut a = store.begin("a".into());
    a.set("k", b"1".to_vec())?;
    a.increment("n", 5).await?;
    drop(a);
    let mut b = store.begin("a".into());
    assert_eq!(b.get("k").await?, None);
    assert_eq!(b.increment("n", 1).await?, 1);
    store.ready(store.conclude(b)?).await?;
    assert_eq!(text(backend.get("n").await?).as_deref(), Some("1"));
    assert_eq!(backend.get("k").await?, None);
    Ok(())
}

#[tokio::test]
async fn concurrent_increments_conflict_and_the_rerun_counts_once() -> Result {
    let (backend, store) = store();
    let mut first = store.begin("e1".into());
    let mut second = store.begin("e2".into());
    assert_eq!(first.increment("n", 1).await?, 1);
    assert_eq!(second.increment("n", 1).await?, 1);
    let t1 = store.conclude(first)?;
    let Err(conflict) = store.conclude(second) else {
        return Err("the second increment read a stale value and must conflict".into());
    };
    assert_eq!(conflict, Conflict::Key { event_id: "e2".into(), key: "n".into() });
    // The dispatcher re-runs e2.
    let mut rerun = store.begin("e2".into());
    assert_eq!(rerun.increment("n", 1).await?, 2);
    let t2 = store.conclude(rerun)?;
    let (r1, r2) = tokio::join!(store.ready(t1), store.ready(t2));
    r1?;
    r2?;
    assert_eq!(text(backend.get("n").await?).as_deref(), Some("2"));
    assert_eq!(store.metrics().snapshot().conflicts, 1);
    Ok(())
}

#[tokio::test]
async fn a_read_after_the_other_event_concluded_does_not_conflict() -> Result {
    let (_, store) = store();
    let mut writer = store.begin("w".into());
    writer.set("k", b"1".to_vec())?;
    let mut reader = store.begin("r".into());
    let t = store.conclude(writer)?;
    assert_eq!(text(reader.get("k").await?).as_deref(), Some("1"));
    let t2 = store.conclude(reader)?;
    store.ready(t).await?;
    store.ready(t2).await?;
    Ok(())
}

#[tokio::test]
async fn blind_writes_never_conflict() -> Result {
    let (backend, store) = store();
    let mut a = store.begin("a".into());
    let mut b = store.begin("b".into());
    a.set("k", b"a".to_vec())?;
    b.set("k", b"b".to_vec())?;
    let ta = store.conclude(a)?;
    let tb = store.conclude(b)?;
    let (ra, rb) = tokio::join!(store.ready(ta), store.ready(tb));
    ra?;
    rb?;
    assert_eq!(text(backend.get("k").await?).as_deref(), Some("b"), "the later event wins");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn tickets_readied_out_of_order_commit_in_conclude_order() -> Result {
    let (backend, store) = store();
    let mut early = store.begin("early".into());
    early.set("k", b"early".to_vec())?;
    let t_early = store.conclude(early)?;
    let mut late = store.begin("late".into());
    late.set("k", b"late".to_vec())?;
    let t_late = store.conclude(late)?;

    let waiting = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.ready(t_late).await }
    });
    // The late ticket is ready but must wait for the early one.
    // Paused clock: the sleep ends once every task is idle, `waiting` too.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished());
    assert!(!backend.was_applied("late").await?);
    assert!(store.is_uncommitted("late") && store.is_uncommitted("early"));
    assert_eq!(backend.get("k").await?, None);

    store.ready(t_early).await?;
    waiting.await??;
    assert_eq!(text(backend.get("k").await?).as_deref(), Some("late"));
    assert!(backend.was_applied("early").await? && backend.was_applied("late").await?);
    assert!(!store.is_uncommitted("late") && !store.is_uncommitted("early"));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_event_without_writes_keeps_its_place_and_its_position() -> Result {
    let (backend, store) = store();
    let mut a = store.begin("a".into());
    a.set("k", b"1".to_vec())?;
    let t_a = store.conclude(a)?;
    let mut t_dead = store.conclude_without_writes("dead".into());
    t_dead.set_position("file", 2);
    let waiting = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.ready(t_dead).await }
    });
    // Paused clock: the sleep ends once every task is idle, `waiting` too.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished(), "the dead-lettered event waits for the earlier event's commit");
    store.ready(t_a).await?;
    waiting.await??;
    assert!(backend.was_applied("dead").await?);
    assert_eq!(backend.position("file").await?, Some(2));
    Ok(())
}

#[tokio::test]
async fn many_ready_tickets_go_in_few_commits() -> Result {
    let (backend, store) = store();
    let mut tickets = Vec::new();
    for i in 0..100 {
        let mut state = store.begin(format!("e{i}"));
        state.increment("n", 1).await?;
        tickets.push(store.conclude(state)?);
    }
    // Ready the last first: nothing can commit until the first is ready,
    // then one commit takes the whole prefix.
    let mut waits = Vec::new();
    for ticket in tickets.into_iter().rev() {
        let store = Arc::clone(&store);
        waits.push(tokio::spawn(async move { store.ready(ticket).await }));
    }
    for wait in waits {
        wait.await??;
    }
    assert_eq!(text(backend.get("n").await?).as_deref(), Some("100"));
    let metrics = store.metrics().snapshot();
    assert_eq!(metrics.committed_events, 100);
    assert!(metrics.commits < 100, "group commit: {} commits", metrics.commits);
    Ok(())
}

#[tokio::test]
async fn a_batch_readied_at_once_is_one_commit_and_resolves_when_all_are_durable() -> Result {
    let (backend, store) = store();
    let mut tickets = Vec::new();
    for i in 0..10 {
        let mut state = store.begin(format!("e{i}"));
        state.increment(&format!("k{}", i % 3), 1).await?;
        tickets.push(store.conclude(state)?);
    }
    tickets.push(store.conclude_without_writes("quiet".into()));
    store.ready_all(tickets).await?;
    assert_eq!(text(backend.get("k0").await?).as_deref(), Some("4"));
    assert_eq!(text(backend.get("k2").await?).as_deref(), Some("3"));
    assert!(store.applied_among(&["e0", "e9", "quiet", "other"]).await? == [true, true, true, false]);
    assert!(!store.is_uncommitted("e9"));
    let metrics = store.metrics().snapshot();
    assert_eq!((metrics.commits, metrics.committed_events), (1, 11));
    store.ready_all(Vec::new()).await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_batch_behind_an_unready_ticket_waits_for_it() -> Result {
    let (backend, store) = store();
    let mut first = store.begin("first".into());
    first.set("a", b"1".to_vec())?;
    let t_first = store.conclude(first)?;
    let mut batch = Vec::new();
    for id in ["b1", "b2"] {
        let mut state = store.begin(id.into());
        state.set(id, b"x".to_vec())?;
        batch.push(store.conclude(state)?);
    }
    let waiting = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.ready_all(batch).await }
    });
    // Paused clock: the sleep ends once every task is idle, `waiting` too.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished(), "committed in conclude order: the batch waits for `first`");
    assert!(store.is_uncommitted("b2") && !backend.was_applied("b1").await?);
    store.ready(t_first).await?;
    waiting.await??;
    assert!(backend.was_applied("b2").await? && backend.was_applied("first").await?);
    Ok(())
}

#[tokio::test]
async fn abort_discards_pending_writes_and_fails_waiting_tickets() -> Result {
    let (backend, store) = store();
    commit(&store, "c", &[("k", Some("durable"))]).await?;
    let mut a = store.begin("a".into());
    a.set("k", b"pending".to_vec())?;
    let t_a = store.conclude(a)?;
    let stale = store.begin("stale".into());
    store.abort().await;
    assert!(!store.is_uncommitted("a"));
    assert!(store.ready(t_a).await.is_err());
    assert!(matches!(store.conclude(stale), Err(Conflict::Reset { .. })));
    let mut fresh = store.begin("fresh".into());
    assert_eq!(text(fresh.get("k").await?).as_deref(), Some("durable"));
    fresh.set("k", b"after".to_vec())?;
    store.ready(store.conclude(fresh)?).await?;
    assert_eq!(text(backend.get("k").await?).as_deref(), Some("after"));
    Ok(())
}

#[tokio::test]
async fn a_dropped_ticket_fails_the_store_until_abort() -> Result {
    let (_, store) = store();
    let mut a = store.begin("a".into());
    a.set("k", b"1".to_vec())?;
    let t_b = store.conclude_without_writes("b".into());
    drop(store.conclude(a)?);
    let Err(error) = store.ready(t_b).await else {
        return Err("a ticket queued behind a dropped one cannot commit".into());
    };
    assert!(error.to_string().contains("event a concluded but its ticket was dropped"), "{error}");
    store.abort().await;
    commit(&store, "c", &[("k", Some("2"))]).await?;
    Ok(())
}

/// A backend whose commits fail while `fail` is set.
struct Flaky {
    inner: MemoryBackend,
    fail: AtomicBool,
}

#[async_trait]
impl Backend for Flaky {
    async fn get(&self, key: &str) -> std::result::Result<Option<Vec<u8>>, StateError> {
        self.inner.get(key).await
    }
    async fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> std::result::Result<Vec<(String, Vec<u8>)>, StateError> {
        self.inner.scan(prefix, after, limit).await
    }
    async fn commit(&self, batch: CommitBatch) -> std::result::Result<(), StateError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StateError::Unavailable("disk full".into()));
        }
        self.inner.commit(batch).await
    }
    async fn was_applied(&self, event_id: &str) -> std::result::Result<bool, StateError> {
        self.inner.was_applied(event_id).await
    }
    async fn position(&self, source: &str) -> std::result::Result<Option<u64>, StateError> {
        self.inner.position(source).await
    }
}

#[tokio::test]
async fn a_failed_commit_fails_every_waiting_ticket_and_discards_pending() -> Result {
    let backend = Arc::new(Flaky { inner: MemoryBackend::new(), fail: AtomicBool::new(true) });
    let store = Store::new(Arc::clone(&backend) as Arc<dyn Backend>, Limits::default());
    let mut a = store.begin("a".into());
    a.set("k", b"1".to_vec())?;
    let t_a = store.conclude(a)?;
    let t_b = store.conclude_without_writes("b".into());
    let (ra, rb) = tokio::join!(store.ready(t_a), store.ready(t_b));
    assert_eq!(ra, Err(StateError::Unavailable("disk full".into())));
    assert!(rb.is_err());
    let t_c = store.conclude_without_writes("c".into());
    assert!(store.ready(t_c).await.is_err(), "a failed store takes no more commits");
    backend.fail.store(false, Ordering::SeqCst);
    store.abort().await;
    let mut after = store.begin("d".into());
    assert_eq!(after.get("k").await?, None, "the failed event's write is gone");
    store.ready(store.conclude(after)?).await?;
    Ok(())
}

#[tokio::test]
async fn each_limit_has_its_error() -> Result {
    let backend = Arc::new(MemoryBackend::new());
    let limits = Limits { max_key_bytes: 4, max_value_bytes: 3, max_writes_per_event: 2, max_reads_per_event: 2, max_scan: 2 };
    let store = Store::new(backend, limits);
    let mut s = store.begin("e".into());
    assert_eq!(s.set("12345", vec![]), Err(StateError::KeyTooLong { len: 5, max: 4 }));
    assert_eq!(s.get("12345").await, Err(StateError::KeyTooLong { len: 5, max: 4 }));
    assert_eq!(s.set("k", vec![0; 4]), Err(StateError::ValueTooLarge { key: "k".into(), len: 4, max: 3 }));
    s.set("a", vec![])?;
    s.delete("b")?;
    s.set("a", vec![1])?;
    assert_eq!(s.delete("c"), Err(StateError::TooManyWrites { max: 2 }));
    s.get("x").await?;
    s.get("x").await?;
    s.get("y").await?;
    assert_eq!(s.get("z").await, Err(StateError::TooManyReads { max: 2 }));
    assert_eq!(s.get("a").await?, Some(vec![1]), "reads of its own writes are not counted");
    Ok(())
}

#[tokio::test]
async fn increment_wants_a_decimal_counter_and_refuses_overflow() -> Result {
    let (_, store) = store();
    commit(&store, "seed", &[("text", Some("abc")), ("big", Some("9223372036854775806")), ("neg", Some("-4"))]).await?;
    let mut s = store.begin("e".into());
    assert_eq!(s.increment("text", 1).await, Err(StateError::NotACounter { key: "text".into() }));
    assert_eq!(s.increment("big", 1).await?, i64::MAX);
    assert_eq!(s.increment("big", 1).await, Err(StateError::Overflow { key: "big".into() }));
    assert_eq!(s.increment("neg", -1).await?, -5);
    assert_eq!(s.increment("new", 0).await?, 0);
    assert_eq!(s.get("neg").await?, Some(b"-5".to_vec()));
    Ok(())
}

/// Reads every page of a scan.
async fn scan_all(state: &mut EventState, prefix: &str, limit: usize) -> std::result::Result<Vec<(String, String)>, StateError> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let (page, next) = state.scan(prefix, after.as_deref(), limit).await?;
        assert!(page.len() <= limit);
        all.extend(page.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())));
        match next {
            None => return Ok(all),
            Some(next) => after = Some(next),
        }
    }
    Err(StateError::Unavailable("scan did not end".into()))
}

#[tokio::test]
async fn scan_merges_overlay_pending_and_backend_with_deletes() -> Result {
    let (_, store) = store();
    let durable: Vec<(String, Option<&str>)> = (0..10).map(|i| (format!("a{i}"), Some("backend"))).collect();
    let entries: Vec<(&str, Option<&str>)> = durable.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    commit(&store, "seed", &entries).await?;
    commit(&store, "other", &[("b0", Some("other prefix")), ("a", Some("the prefix itself"))]).await?;
    // Pending: concluded, not committed.
    let mut p = store.begin("p".into());
    p.delete("a3")?;
    p.set("a35", b"pending".to_vec())?;
    p.set("a5", b"pending".to_vec())?;
    p.delete("a8")?;
    p.delete("a9")?;
    let _held = store.conclude(p)?;
    let mut s = store.begin("s".into());
    s.delete("a7")?;
    s.set("a75", b"overlay".to_vec())?;
    s.set("a5", b"overlay".to_vec())?;
    s.set("a35", b"overlay".to_vec())?;
    let expected: Vec<(String, String)> = [
        ("a", "the prefix itself"),
        ("a0", "backend"),
        ("a1", "backend"),
        ("a2", "backend"),
        ("a35", "overlay"),
        ("a4", "backend"),
        ("a5", "overlay"),
        ("a6", "backend"),
        ("a75", "overlay"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for limit in [1, 2, 3, 4, 1000] {
        assert_eq!(scan_all(&mut s, "a", limit).await?, expected, "limit {limit}");
    }
    let (page, next) = s.scan("a", Some("a4"), 2).await?;
    assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a5", "a6"]);
    assert_eq!(next.as_deref(), Some("a6"));
    let (page, _) = s.scan("a", None, 5000).await?;
    assert_eq!(page.len(), 9, "limit is clamped to max_scan (1000 by default)");
    store.abort().await;
    Ok(())
}

#[tokio::test]
async fn a_write_into_a_scanned_range_conflicts() -> Result {
    let (_, store) = store();
    commit(&store, "seed", &[("a1", Some("1")), ("b1", Some("1"))]).await?;
    let mut scanner = store.begin("scanner".into());
    scanner.scan("a", None, 10).await?;
    scanner.set("total", b"1".to_vec())?;
    let mut outside = store.begin("outside".into());
    outside.set("b2", b"1".to_vec())?;
    let mut inside = store.begin("inside".into());
    inside.set("a2", b"1".to_vec())?;
    let t1 = store.conclude(outside)?;
    let t2 = store.conclude(inside)?;
    assert_eq!(store.conclude(scanner).err(), Some(Conflict::Scan { event_id: "scanner".into(), prefix: "a".into() }));
    store.ready(t1).await?;
    store.ready(t2).await?;
    Ok(())
}

#[tokio::test]
async fn committed_entries_leave_the_pending_map_once_no_attempt_needs_them() -> Result {
    let (_, store) = store();
    let old = store.begin("old".into());
    commit(&store, "a", &[("k", Some("1"))]).await?;
    assert_eq!(store.inner().pending.len(), 1, "an attempt older than the write is alive");
    drop(old);
    assert!(store.inner().pending.is_empty());
    let mut reader = store.begin("r".into());
    reader.get("k").await?;
    commit(&store, "b", &[("k", Some("2"))]).await?;
    assert!(matches!(store.conclude(reader), Err(Conflict::Key { .. })), "the write after the read is still known");
    assert!(store.inner().pending.is_empty());
    Ok(())
}

#[tokio::test]
async fn operators_delete_through_the_commit_order() -> Result {
    let (backend, store) = store();
    commit(&store, "a", &[("k", Some("1"))]).await?;
    assert_eq!(store.scan("", None, 10).await?, (vec![("k".to_string(), b"1".to_vec())], None));
    store.delete("k").await?;
    assert_eq!(backend.get("k").await?, None);
    Ok(())
}

/// The host imports await these inside wasmtime's async calls and the
/// dispatcher spawns them: they must be `Send`.
#[test]
fn every_future_is_send() {
    fn send<T: Send>(_: T) {}
    let (_, store) = store();
    let mut s = store.begin("e".into());
    send(s.get("k"));
    send(s.increment("k", 1));
    send(s.scan("k", None, 1));
    let ticket = store.conclude_without_writes("t".into());
    send(store.ready(ticket));
    send(store.abort());
    send(store.delete("k"));
    send(store.scan("", None, 1));
    send(s);
}

mod interleavings {
    use proptest::prelude::*;

    use super::*;

    /// One lane's attempt at one event.
    enum Lane {
        Idle,
        Running(EventState),
        Concluded(Ticket),
    }

    fn run(steps: Vec<(usize, u8)>) -> std::result::Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let (backend, store) = store();
            let mut lanes: Vec<Lane> = (0..4).map(|_| Lane::Idle).collect();
            let mut next_id = 0;
            let mut seen = Vec::new();
            let mut readies = Vec::new();
            let mut pending_values = [None; 4];
            for (lane, action) in steps {
                let current = std::mem::replace(&mut lanes[lane], Lane::Idle);
                lanes[lane] = match (current, action % 4) {
                    (Lane::Idle, _) => {
                        next_id += 1;
                        let mut state = store.begin(format!("e{next_id}"));
                        let value = state.increment("n", 1).await.map_err(|e| e.to_string())?;
                        pending_values[lane] = Some(value);
                        Lane::Running(state)
                    }
                    // A failed attempt: dropped.
                    (Lane::Running(_), 0) => Lane::Idle,
                    (Lane::Running(state), _) => match store.conclude(state) {
                        Ok(ticket) => {
                            seen.extend(pending_values[lane].take());
                            Lane::Concluded(ticket)
                        }
                        Err(_) => Lane::Idle,
                    },
                    (Lane::Concluded(ticket), _) => {
                        let store = Arc::clone(&store);
                        readies.push(tokio::spawn(async move { store.ready(ticket).await }));
                        tokio::task::yield_now().await;
                        Lane::Idle
                    }
                };
            }
            for lane in lanes {
                if let Lane::Concluded(ticket) = lane {
                    readies.push(tokio::spawn({
                        let store = Arc::clone(&store);
                        async move { store.ready(ticket).await }
                    }));
                }
            }
            for ready in readies {
                ready.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            }
            let expected = seen.len() as i64;
            let stored = backend.get("n").await.map_err(|e| e.to_string())?;
            let stored: i64 = stored.map_or(Ok(0), |v| String::from_utf8_lossy(&v).parse()).map_err(|e| format!("{e}"))?;
            if stored != expected {
                return Err(format!("counter {stored}, concluded increments {expected}"));
            }
            // No lost update and no double count: the concluded increments
            // returned exactly 1..=n.
            seen.sort_unstable();
            if seen != (1..=expected).collect::<Vec<_>>() {
                return Err(format!("concluded increments saw {seen:?}"));
            }
            if !store.inner().pending.is_empty() {
                return Err("pending entries left after every attempt ended".into());
            }
            Ok(())
        })
    }

    proptest! {
        #[test]
        fn four_lanes_incrementing_one_counter_never_lose_or_double_an_update(
            steps in proptest::collection::vec((0usize..4, any::<u8>()), 0..200)
        ) {
            prop_assert_eq!(run(steps), Ok(()));
        }
    }
}

#[tokio::test]
async fn a_tracked_position_is_committed_with_the_state_as_read_when_the_commit_is_assembled() -> Result {
    let (backend, store) = store();
    let settled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let probe = Arc::clone(&settled);
    store.track_position("in", Arc::new(move || probe.load(Ordering::SeqCst)));
    commit(&store, "in:1", &[("k", Some("1"))]).await?;
    assert_eq!(backend.position("in").await?, Some(0), "line 1 settles only after its own commit");
    settled.store(1, Ordering::SeqCst);
    commit(&store, "in:2", &[("k", Some("2"))]).await?;
    assert_eq!(backend.position("in").await?, Some(1), "the next commit carries it");
    assert_eq!(text(backend.get("k").await?).as_deref(), Some("2"));
    store.flush().await?;
    Ok(())
}

/// A backend that keeps a copy of every commit it is given.
#[derive(Default)]
struct Recording {
    inner: MemoryBackend,
    commits: std::sync::Mutex<Vec<CommitBatch>>,
}

#[async_trait]
impl Backend for Recording {
    async fn get(&self, key: &str) -> std::result::Result<Option<Vec<u8>>, StateError> {
        self.inner.get(key).await
    }
    async fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> std::result::Result<Vec<(String, Vec<u8>)>, StateError> {
        self.inner.scan(prefix, after, limit).await
    }
    async fn commit(&self, batch: CommitBatch) -> std::result::Result<(), StateError> {
        if let Ok(mut commits) = self.commits.lock() {
            commits.push(batch.clone());
        }
        self.inner.commit(batch).await
    }
    async fn was_applied(&self, event_id: &str) -> std::result::Result<bool, StateError> {
        self.inner.was_applied(event_id).await
    }
    async fn position(&self, source: &str) -> std::result::Result<Option<u64>, StateError> {
        self.inner.position(source).await
    }
}

#[tokio::test]
async fn a_batch_overlay_commits_its_writes_with_every_events_marker_in_one_transaction() -> Result {
    let backend = Arc::new(Recording::default());
    let store = Store::new(Arc::clone(&backend) as Arc<dyn Backend>, Limits::default());
    let mut batch = store.begin_batch("b1".into(), 3);
    // Three events in turn: each sees the one before.
    assert_eq!(batch.increment("n", 1).await?, 1);
    assert_eq!(batch.increment("n", 1).await?, 2);
    batch.set("m", b"x".to_vec())?;
    assert_eq!(batch.increment("n", 1).await?, 3);
    let ticket = store.conclude_batch(batch, vec!["b1".into(), "b2".into(), "b3".into()])?;
    assert!(["b1", "b2", "b3"].iter().all(|id| store.is_uncommitted(id)), "every event of the batch waits for the commit");
    store.ready(ticket).await?;
    assert!(!store.is_uncommitted("b2"));
    let commits = backend.commits.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].applied, ["b1", "b2", "b3"]);
    assert_eq!(commits[0].writes.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["m", "n"]);
    assert_eq!(commits[0].writers, ["b3", "b3"], "a batch's writes are its last event's");
    assert_eq!(store.applied_among(&["b1", "b2", "b3"]).await?, [true, true, true]);
    assert_eq!(text(backend.get("n").await?).as_deref(), Some("3"));
    Ok(())
}

#[tokio::test]
async fn a_batch_conflicts_as_a_whole_and_its_rerun_counts_once() -> Result {
    let (backend, store) = store();
    // Two lanes (`ordering = "none"`) each read `n` in a batch.
    let mut first = store.begin_batch("a1".into(), 2);
    let mut second = store.begin_batch("b1".into(), 2);
    first.increment("n", 1).await?;
    first.increment("n", 1).await?;
    second.increment("n", 1).await?;
    second.increment("other", 1).await?;
    let t1 = store.conclude_batch(first, vec!["a1".into(), "a2".into()])?;
    let Err(conflict) = store.conclude_batch(second, vec!["b1".into(), "b2".into()]) else {
        return Err("the second batch read a stale `n` and must conflict".into());
    };
    assert_eq!(conflict, Conflict::Key { event_id: "b1".into(), key: "n".into() });
    assert!(!store.is_uncommitted("b2"), "nothing of a conflicting batch is concluded");
    // The lane runs those events again (one by one).
    let mut rerun = store.begin("b1".into());
    assert_eq!(rerun.increment("n", 1).await?, 3);
    let t2 = store.conclude(rerun)?;
    let (r1, r2) = tokio::join!(store.ready(t1), store.ready(t2));
    r1?;
    r2?;
    assert_eq!(text(backend.get("n").await?).as_deref(), Some("3"), "no lost update");
    assert_eq!(backend.get("other").await?, None);
    Ok(())
}

#[tokio::test]
async fn a_batch_overlay_scales_the_write_limit_and_says_when_it_refused() -> Result {
    let limits = Limits { max_writes_per_event: 2, ..Limits::default() };
    let store = Store::new(Arc::new(MemoryBackend::new()) as Arc<dyn Backend>, limits);
    let mut batch = store.begin_batch("b1".into(), 2);
    for key in ["a", "b", "c", "d"] {
        batch.set(key, b"1".to_vec())?;
    }
    assert!(!batch.limited());
    assert!(matches!(batch.set("e", b"1".to_vec()), Err(StateError::TooManyWrites { max: 2 })), "the per-event limit is named");
    assert!(batch.limited(), "the lane must run the batch one event per call");
    let mut one = store.begin("e1".into());
    one.set("a", b"1".to_vec())?;
    one.set("b", b"1".to_vec())?;
    assert!(one.set("c", b"1".to_vec()).is_err());
    assert!(!one.limited(), "one event's limit is its own");
    Ok(())
}
