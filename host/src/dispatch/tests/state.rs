//! Plugin state in the lane: a stateful plugin without outbound calls gets
//! the lane's batch in one call over one overlay, kept only when every event
//! succeeds; otherwise the batch runs again one event per call, and each
//! event's failure, retry, dead letter and limit is its own.

use crate::runtime::EventScope;
use crate::state::memory::MemoryBackend;
use crate::state::{Backend, Limits, Store};

use super::*;

/// A handler like the `counter` plugin: for each event, increments
/// `count:<payload up to the first ':'>` in the state lent to the call and
/// outputs `<key>=<count>`. Payload suffixes fail the event after it
/// counted: `:retry-once` (retryable on attempt 1), `:reject`, `:trap` (the
/// whole call traps); `:wide` also writes three keys of its own
/// (`w:<event id>:<i>`). A state error rejects the event with its text.
struct Counting {
    /// The size of every call, in order.
    calls: Arc<Mutex<Vec<usize>>>,
    /// Whether it imports an outbound capability (HTTP, client).
    outbound: bool,
}

struct CountingHandler {
    calls: Arc<Mutex<Vec<usize>>>,
    scope: Option<EventScope>,
}

fn rejected(message: String) -> HandleResult {
    Err(HandlerError { disposition: Disposition::Reject, message })
}

#[async_trait::async_trait]
impl Handler for CountingHandler {
    async fn handle(&mut self, events: &[Event]) -> Result<Vec<HandleResult>, CallError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(events.len());
        }
        let state =
            self.scope.as_mut().and_then(|scope| scope.state.as_mut()).ok_or_else(|| CallError::Contract("no state lent".into()))?;
        let mut results = Vec::new();
        for e in events {
            let text = String::from_utf8_lossy(&e.payload).into_owned();
            let key = text.split(':').next().unwrap_or_default().to_owned();
            let count = match state.increment(format!("count:{key}"), 1).await {
                Ok(count) => count,
                Err(error) => {
                    results.push(rejected(format!("{error:?}")));
                    continue;
                }
            };
            if text.ends_with(":trap") {
                return Err(CallError::Trap("boom".into()));
            }
            if text.ends_with(":retry-once") && e.attempt == 1 {
                results.push(retryable("first attempt fails after counting"));
                continue;
            }
            if text.ends_with(":reject") {
                results.push(rejected("rejected after counting".into()));
                continue;
            }
            if text.ends_with(":wide") {
                let mut wrote = Ok(());
                for i in 0..3 {
                    wrote = wrote.and(state.set(format!("w:{}:{i}", e.id), b"x".to_vec()));
                }
                if let Err(error) = wrote {
                    results.push(rejected(format!("{error:?}")));
                    continue;
                }
            }
            let payload = format!("{key}={count}").into_bytes();
            results.push(Ok(vec![Output { destination: None, key: None, payload, headers: vec![], reply: false }]));
        }
        Ok(results)
    }
    fn attach(&mut self, scope: EventScope) {
        self.scope = Some(scope);
    }
    fn detach(&mut self) -> Option<EventScope> {
        self.scope.take()
    }
}

#[async_trait::async_trait]
impl HandlerFactory for Counting {
    async fn create(&self) -> Result<Box<dyn Handler>, crate::runtime::LoadError> {
        Ok(Box::new(CountingHandler { calls: self.calls.clone(), scope: None }))
    }
    fn name(&self) -> &str {
        "counting"
    }
    fn digest(&self) -> &str {
        "c0ffee"
    }
    fn per_event(&self) -> bool {
        self.outbound
    }
}

struct StateHarness {
    out: Arc<MemorySink>,
    dlq: Arc<MemorySink>,
    calls: Arc<Mutex<Vec<usize>>>,
    backend: Arc<MemoryBackend>,
    store: Arc<Store>,
    dispatcher: Dispatcher,
}

fn state_harness(outbound: bool, limits: Limits) -> StateHarness {
    let out = MemorySink::new(SinkMode::Ok);
    let dlq = MemorySink::new(SinkMode::Ok);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let plugin = Arc::new(super::PluginSlot::new(Arc::new(Counting { calls: calls.clone(), outbound })));
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(Arc::clone(&backend) as Arc<dyn Backend>, limits);
    let dispatcher = Dispatcher {
        clients: None,
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: BackoffConfig { initial: Duration::from_millis(100), max: Duration::from_secs(10), multiplier: 2.0, jitter: 0.0 },
        },
        batch_size: 16,
        batch_bytes: 1 << 20,
        state: Some(store.clone()),
        ..Dispatcher::new("p", plugin, Router::new(out.clone(), HashMap::new()), dlq.clone())
    };
    StateHarness { out, dlq, calls, backend, store, dispatcher }
}

impl StateHarness {
    async fn run(self, payloads: &[&str]) -> Result<Ran, DispatchError> {
        let ids: Vec<String> = (0..payloads.len()).map(|i| format!("e{i}")).collect();
        let events: Vec<(&str, &str)> = ids.iter().map(String::as_str).zip(payloads.iter().copied()).collect();
        self.run_events(&events).await
    }

    /// Runs `(id, payload)` events, ids as given (a redelivery repeats one).
    async fn run_events(self, events: &[(&str, &str)]) -> Result<Ran, DispatchError> {
        let log = Settlements::default();
        let events = events.iter().map(|(id, p)| (event(id, p), 0)).collect();
        self.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;
        let calls = self.calls.lock().map(|c| c.clone()).unwrap_or_default();
        let dead: Vec<(String, String)> = self
            .dlq
            .records
            .lock()
            .map(|records| {
                records
                    .iter()
                    .map(|r| {
                        (String::from_utf8_lossy(&r.payload).into_owned(), header(r, "sluice-dlq-message").unwrap_or_default().to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Ran { outputs: self.out.payloads(), dead, settled: settlements(&log), calls, backend: self.backend, store: self.store })
    }
}

struct Ran {
    outputs: Vec<String>,
    /// Dead letters: (payload, message).
    dead: Vec<(String, String)>,
    settled: Vec<(String, Settlement)>,
    calls: Vec<usize>,
    backend: Arc<MemoryBackend>,
    store: Arc<Store>,
}

impl Ran {
    /// A committed value, as text.
    async fn committed(&self, key: &str) -> Option<String> {
        self.backend.get(key).await.ok().flatten().map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    async fn applied(&self, ids: &[&str]) -> Vec<bool> {
        self.store.applied_among(ids).await.unwrap_or_default()
    }
}

fn done(ids: &[&str]) -> Vec<(String, Settlement)> {
    ids.iter().map(|id| (id.to_string(), Settlement::Done)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_stateful_plugin_without_outbound_calls_gets_the_whole_batch_and_each_event_reads_the_writes_before_it(
) -> Result<(), DispatchError> {
    let ran = state_harness(false, Limits::default()).run(&["a", "b", "a", "a", "b", "c"]).await?;
    assert_eq!(ran.calls, vec![6], "one call for the lane's batch");
    assert_eq!(ran.outputs, ["a=1", "b=1", "a=2", "a=3", "b=2", "c=1"], "each event saw the increments before it");
    assert_eq!(ran.committed("count:a").await.as_deref(), Some("3"));
    assert_eq!(ran.committed("count:b").await.as_deref(), Some("2"));
    assert_eq!(ran.committed("count:c").await.as_deref(), Some("1"));
    assert_eq!(ran.settled, done(&["e0", "e1", "e2", "e3", "e4", "e5"]));
    assert_eq!(ran.applied(&["e0", "e1", "e2", "e3", "e4", "e5"]).await, [true; 6], "every event has its applied marker");
    let metrics = ran.store.metrics_snapshot();
    assert_eq!(metrics.committed_events, 6);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_stateful_plugin_with_an_outbound_capability_is_still_called_per_event() -> Result<(), DispatchError> {
    let ran = state_harness(true, Limits::default()).run(&["a", "b", "a"]).await?;
    assert_eq!(ran.calls, vec![1, 1, 1]);
    assert_eq!(ran.outputs, ["a=1", "b=1", "a=2"]);
    assert_eq!(ran.committed("count:a").await.as_deref(), Some("2"));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_retryable_or_rejected_event_runs_the_batch_again_one_by_one_and_only_its_own_writes_are_lost() -> Result<(), DispatchError> {
    let ran = state_harness(false, Limits::default()).run(&["a", "b:retry-once", "a:reject", "c", "a"]).await?;
    // The batch, then each event alone (b twice: its retry).
    assert_eq!(ran.calls, vec![5, 1, 1, 1, 1, 1, 1]);
    assert_eq!(ran.outputs, ["a=1", "b=1", "c=1", "a=2"], "the rejected event's increment is not seen");
    assert_eq!(ran.dead, [("a:reject".to_string(), "rejected after counting".to_string())]);
    assert_eq!(ran.committed("count:a").await.as_deref(), Some("2"), "the batch's writes were dropped, each kept once");
    assert_eq!(ran.committed("count:b").await.as_deref(), Some("1"), "the failed attempt left no trace");
    assert_eq!(ran.committed("count:c").await.as_deref(), Some("1"));
    assert_eq!(
        ran.settled,
        [
            ("e0".to_string(), Settlement::Done),
            ("e1".to_string(), Settlement::Done),
            ("e2".to_string(), Settlement::DeadLettered),
            ("e3".to_string(), Settlement::Done),
            ("e4".to_string(), Settlement::Done),
        ]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_trap_in_a_stateful_batch_costs_only_the_culprit() -> Result<(), DispatchError> {
    let ran = state_harness(false, Limits::default()).run(&["a", "b:trap", "a"]).await?;
    // The batch traps; alone, `b:trap` traps on each of its three attempts.
    assert_eq!(ran.calls, vec![3, 1, 1, 1, 1, 1]);
    assert_eq!(ran.outputs, ["a=1", "a=2"]);
    assert_eq!(ran.dead, [("b:trap".to_string(), "plugin trapped: boom".to_string())]);
    assert_eq!(ran.committed("count:a").await.as_deref(), Some("2"));
    assert_eq!(ran.committed("count:b").await, None);
    assert_eq!(ran.applied(&["e0", "e2"]).await, [true, true]);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_batch_over_its_write_limit_runs_again_and_the_limit_names_each_event_at_fault() -> Result<(), DispatchError> {
    // Two writes per event; the batch of three may make six. Each `wide`
    // event makes four (its counter and three keys), so together they pass
    // the batch's limit, and each fails it alone.
    let limits = Limits { max_writes_per_event: 2, ..Limits::default() };
    let ran = state_harness(false, limits).run(&["x:wide", "y", "z:wide"]).await?;
    assert_eq!(ran.calls, vec![3, 1, 1, 1]);
    assert_eq!(ran.outputs, ["y=1"]);
    let dead: Vec<&str> = ran.dead.iter().map(|(payload, _)| payload.as_str()).collect();
    assert_eq!(dead, ["x:wide", "z:wide"]);
    assert!(ran.dead.iter().all(|(_, message)| message.contains("TooManyWrites(2)")), "{:?}", ran.dead);
    assert_eq!(ran.committed("count:y").await.as_deref(), Some("1"));
    assert_eq!(ran.committed("count:x").await, None);
    assert_eq!(ran.committed("w:e0:0").await, None);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_batch_within_its_limit_concludes_at_once() -> Result<(), DispatchError> {
    let limits = Limits { max_writes_per_event: 4, ..Limits::default() };
    let ran = state_harness(false, limits).run(&["x:wide", "y", "x"]).await?;
    assert_eq!(ran.calls, vec![3]);
    assert_eq!(ran.outputs, ["x=1", "y=1", "x=2"]);
    assert_eq!(ran.committed("w:e0:2").await.as_deref(), Some("x"));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn after_a_batch_that_was_not_kept_the_next_runs_go_one_event_per_call() -> Result<(), DispatchError> {
    let mut h = state_harness(false, Limits::default());
    h.dispatcher.batch_size = 2;
    let ran = h.run(&["a:reject", "b", "c", "d", "e", "f", "g", "h"]).await?;
    // The first batch fails and runs again alone; the next two runs go one
    // event per call; then batches again.
    assert_eq!(ran.calls, vec![2, 1, 1, 1, 1, 1, 1, 2]);
    assert_eq!(ran.outputs, ["b=1", "c=1", "d=1", "e=1", "f=1", "g=1", "h=1"]);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_second_copy_of_an_event_in_one_batch_is_not_applied_twice() -> Result<(), DispatchError> {
    // A redelivery that caught up with the first copy in the lane's queue.
    let ran = state_harness(false, Limits::default()).run_events(&[("e0", "a"), ("e1", "b"), ("e0", "a"), ("e2", "a")]).await?;
    assert_eq!(ran.committed("count:a").await.as_deref(), Some("2"), "e0 counted once, e2 once");
    assert_eq!(ran.committed("count:b").await.as_deref(), Some("1"));
    assert_eq!(ran.outputs, ["a=1", "b=1", "a=2"], "the copy produced nothing");
    let copies: Vec<Settlement> = ran.settled.iter().filter(|(id, _)| id == "e0").map(|(_, s)| *s).collect();
    assert_eq!(copies.len(), 2, "both copies settled: {:?}", ran.settled);
    assert_eq!(copies.iter().filter(|s| **s == Settlement::Done).count(), 1, "one copy done, the other handed back: {copies:?}");
    assert_eq!(ran.applied(&["e0", "e1", "e2"]).await, [true; 3]);
    Ok(())
}
