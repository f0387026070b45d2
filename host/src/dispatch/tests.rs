//! Dispatcher tests with scripted handlers, in-memory sources and sinks, and
//! paused time: retries, backoff timing, dead letters, ordering, the
//! ack-after-durable rule, sink failures and shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::BackoffConfig;
use crate::event::{Disposition, Event, HandlerError, Output};
use crate::runtime::instance::HandleResult;
use crate::runtime::CallError;
use crate::sink::{Receipt, Record};
use crate::source::{Ack, Acknowledge, Delivery, Settlement};

type Settlements = Arc<Mutex<Vec<(String, Settlement)>>>;

/// Every handler call: (event id, attempt, events in the call, time).
type Calls = Arc<Mutex<Vec<(String, u32, usize, Instant)>>>;

struct RecordingAck {
    id: String,
    log: Settlements,
}

impl Acknowledge for RecordingAck {
    fn settle(self: Box<Self>, settlement: Settlement) {
        if let Ok(mut log) = self.log.lock() {
            log.push((self.id, settlement));
        }
    }
}

/// A source that yields prepared deliveries, then either ends or (if
/// `hold_open`) waits forever, as a broker would.
struct VecSource {
    items: VecDeque<Delivery>,
    hold_open: bool,
}

#[async_trait::async_trait]
impl Source for VecSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        match self.items.pop_front() {
            Some(d) => Ok(Some(d)),
            None if self.hold_open => std::future::pending().await,
            None => Ok(None),
        }
    }
    fn describe(&self) -> String {
        "vec".into()
    }
}

fn event(id: &str, payload: &str) -> Event {
    Event {
        id: id.into(),
        source: "test".into(),
        key: None,
        payload: payload.as_bytes().to_vec(),
        headers: Vec::new(),
        timestamp_ms: 0,
        attempt: 1,
        reply_to: None,
    }
}

fn source(events: Vec<(Event, u32)>, log: &Settlements, hold_open: bool) -> Box<dyn Source> {
    let items = events
        .into_iter()
        .map(|(event, partition)| Delivery {
            ack: Ack::new(RecordingAck { id: event.id.clone(), log: log.clone() }),
            event,
            partition,
            defect: None,
        })
        .collect();
    Box::new(VecSource { items, hold_open })
}

/// How a [`MemorySink`] answers.
#[derive(Clone, Copy, PartialEq)]
enum SinkMode {
    Ok,
    /// Every send's receipt fails.
    Fail,
    /// Receipts resolve only when `release` is fired.
    Held,
    /// Every send panics (a bug in a sink).
    Panic,
}

struct MemorySink {
    records: Mutex<Vec<Record>>,
    mode: SinkMode,
    held: Mutex<Vec<oneshot::Sender<()>>>,
    /// Payloads this sink refuses in `check`.
    refuse: Option<&'static str>,
}

impl MemorySink {
    fn new(mode: SinkMode) -> Arc<Self> {
        Arc::new(Self { records: Mutex::new(Vec::new()), mode, held: Mutex::new(Vec::new()), refuse: None })
    }
    fn payloads(&self) -> Vec<String> {
        self.records.lock().map(|r| r.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect()).unwrap_or_default()
    }
    fn release(&self) {
        if let Ok(mut held) = self.held.lock() {
            for tx in held.drain(..) {
                let _ = tx.send(());
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    #[allow(clippy::panic)]
    async fn send(&self, record: Record) -> Result<Receipt, SinkError> {
        if let SinkMode::Panic = self.mode {
            panic!("scripted sink panic");
        }
        if let Ok(mut records) = self.records.lock() {
            records.push(record);
        }
        Ok(match self.mode {
            SinkMode::Ok | SinkMode::Panic => Receipt::ready(Ok(())),
            SinkMode::Fail => Receipt::ready(Err(SinkError::Write { what: "memory".into(), message: "disk on fire".into() })),
            SinkMode::Held => {
                let (tx, rx) = oneshot::channel();
                if let Ok(mut held) = self.held.lock() {
                    held.push(tx);
                }
                let (durable_tx, durable) = tokio::sync::watch::channel(crate::sink::Durable::UpTo(0));
                tokio::spawn(async move {
                    let _ = rx.await;
                    let _ = durable_tx.send(crate::sink::Durable::UpTo(1));
                    durable_tx.closed().await;
                });
                Receipt::watermark(1, durable)
            }
        })
    }
    fn wants_ids(&self) -> bool {
        true
    }
    fn check(&self, _destination: Option<&str>, output: &Output) -> Result<(), String> {
        match self.refuse {
            Some(bad) if output.payload == bad.as_bytes() => Err(format!("{bad:?} is not allowed here")),
            _ => Ok(()),
        }
    }
    async fn close(&self) -> Result<(), SinkError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

type Script = dyn Fn(&Event, usize) -> Result<HandleResult, CallError> + Send + Sync;

/// A handler factory driven by a closure of (event, events in this call).
/// Records every call as (event id, attempt, batch size, time).
struct Scripted {
    script: Arc<Script>,
    calls: Calls,
}

struct ScriptedHandler {
    script: Arc<Script>,
    calls: Calls,
}

#[async_trait::async_trait]
impl Handler for ScriptedHandler {
    async fn handle(&mut self, events: &[Event]) -> Result<Vec<HandleResult>, CallError> {
        let now = Instant::now();
        let mut results = Vec::new();
        for e in events {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push((e.id.clone(), e.attempt, events.len(), now));
            }
            results.push((self.script)(e, events.len())?);
        }
        Ok(results)
    }
}

#[async_trait::async_trait]
impl HandlerFactory for Scripted {
    async fn create(&self) -> Result<Box<dyn Handler>, crate::runtime::LoadError> {
        Ok(Box::new(ScriptedHandler { script: self.script.clone(), calls: self.calls.clone() }))
    }
    fn name(&self) -> &str {
        "scripted"
    }
    fn digest(&self) -> &str {
        "feedface"
    }
}

fn echo(e: &Event) -> HandleResult {
    Ok(vec![Output { destination: None, key: e.key.clone(), payload: e.payload.clone(), headers: vec![], reply: false }])
}

fn retryable(msg: &str) -> HandleResult {
    Err(HandlerError { disposition: Disposition::Retryable, message: msg.into() })
}

struct Harness {
    out: Arc<MemorySink>,
    dlq: Arc<MemorySink>,
    calls: Calls,
    dispatcher: Dispatcher,
}

fn harness(script: impl Fn(&Event, usize) -> Result<HandleResult, CallError> + Send + Sync + 'static, mode: SinkMode) -> Harness {
    let out = MemorySink::new(mode);
    let dlq = MemorySink::new(SinkMode::Ok);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let plugin = Arc::new(super::PluginSlot::new(Arc::new(Scripted { script: Arc::new(script), calls: calls.clone() })));
    let dispatcher = Dispatcher {
        clients: None,
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: BackoffConfig { initial: Duration::from_millis(100), max: Duration::from_secs(10), multiplier: 2.0, jitter: 0.0 },
        },
        batch_size: 16,
        batch_bytes: 1 << 20,
        ..Dispatcher::new("p", plugin, Router::new(out.clone(), HashMap::new()), dlq.clone())
    };
    Harness { out, dlq, calls, dispatcher }
}

/// A header as the record is sent (its version included).
fn header<'a>(r: &'a Record, key: &str) -> Option<&'a str> {
    r.all_headers().find(|(name, _)| *name == key).and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn settlements(log: &Settlements) -> Vec<(String, Settlement)> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn retries_with_backoff_then_succeeds() -> Result<(), DispatchError> {
    let h = harness(|e, _| Ok(if e.attempt < 3 { retryable("busy") } else { echo(e) }), SinkMode::Ok);
    let log = Settlements::default();
    let stats = h.dispatcher.stats.clone();
    h.dispatcher.run(source(vec![(event("a", "x"), 0)], &log, false), CancellationToken::new()).await?;

    assert_eq!(h.out.payloads(), vec!["x"]);
    assert!(h.dlq.payloads().is_empty());
    assert_eq!(settlements(&log), vec![("a".into(), Settlement::Done)]);
    let calls = h.calls.lock().map(|c| c.clone()).unwrap_or_default();
    let attempts: Vec<u32> = calls.iter().map(|c| c.1).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    // Backoff: 100 ms after attempt 1, 200 ms after attempt 2 (no jitter).
    assert_eq!(calls[1].3 - calls[0].3, Duration::from_millis(100));
    assert_eq!(calls[2].3 - calls[1].3, Duration::from_millis(200));
    let s = stats.snapshot();
    assert_eq!((s.failures, s.retries, s.acked, s.dead_lettered), (2, 2, 1, 0));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_dead_letter_the_original_event() -> Result<(), DispatchError> {
    let h = harness(|_, _| Ok(retryable("still down")), SinkMode::Ok);
    let log = Settlements::default();
    let mut e = event("a", "payload");
    e.headers.push(crate::event::text_header("trace", "t1"));
    h.dispatcher.run(source(vec![(e, 0)], &log, false), CancellationToken::new()).await?;

    assert!(h.out.payloads().is_empty());
    let dlq = h.dlq.records.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(dlq.len(), 1);
    let r = &dlq[0];
    assert_eq!(r.payload, b"payload");
    assert_eq!(header(r, "trace"), Some("t1"), "original headers kept");
    assert_eq!(header(r, "sluice-dlq-reason"), Some("retries-exhausted"));
    assert_eq!(header(r, "sluice-dlq-attempts"), Some("3"));
    assert_eq!(header(r, "sluice-dlq-message"), Some("still down"));
    assert_eq!(header(r, "sluice-dlq-plugin-digest"), Some("feedface"));
    assert_eq!(header(r, "sluice-dlq-event-id"), Some("a"));
    assert_eq!(settlements(&log), vec![("a".into(), Settlement::DeadLettered)], "dead-lettered events are settled as such");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn reject_dead_letters_at_once() -> Result<(), DispatchError> {
    let h = harness(
        |e, _| {
            Ok(if e.payload == b"bad" {
                Err(HandlerError { disposition: Disposition::Reject, message: "malformed".into() })
            } else {
                echo(e)
            })
        },
        SinkMode::Ok,
    );
    let log = Settlements::default();
    let start = Instant::now();
    h.dispatcher.run(source(vec![(event("a", "bad"), 0), (event("b", "good"), 0)], &log, false), CancellationToken::new()).await?;
    assert_eq!(Instant::now(), start, "no backoff for a reject");
    assert_eq!(h.out.payloads(), vec!["good"]);
    let dlq = h.dlq.records.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(&dlq[0], "sluice-dlq-reason"), Some("rejected"));
    assert_eq!(header(&dlq[0], "sluice-dlq-attempts"), Some("1"));
    assert_eq!(h.calls.lock().map(|c| c.len()).unwrap_or(0), 2, "called once per event");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_trapping_batch_is_rerun_one_by_one() -> Result<(), DispatchError> {
    // A batch containing "trap" fails as a whole; alone, only "trap" fails.
    let h = harness(|e, _| if e.payload == b"trap" { Err(CallError::Trap("boom".into())) } else { Ok(echo(e)) }, SinkMode::Ok);
    let log = Settlements::default();
    let events = ["1", "2", "trap", "3"].iter().enumerate().map(|(i, p)| (event(&format!("e{i}"), p), 0)).collect();
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;
    assert_eq!(h.out.payloads(), vec!["1", "2", "3"], "order kept around the culprit");
    let dlq = h.dlq.records.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(&dlq[0], "sluice-dlq-message"), Some("plugin trapped: boom"));
    assert_eq!(header(&dlq[0], "sluice-dlq-attempts"), Some("3"));
    assert_eq!(settlements(&log).len(), 4);
    Ok(())
}

#[tokio::test]
async fn per_partition_order_holds_across_lanes() -> Result<(), DispatchError> {
    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    h.dispatcher.concurrency = 4;
    h.dispatcher.batch_size = 3;
    let log = Settlements::default();
    let events = (0..400).map(|i| (event(&format!("{i}"), &format!("{}:{i}", i % 5)), i % 5)).collect();
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;
    let out = h.out.payloads();
    assert_eq!(out.len(), 400);
    for partition in 0..5 {
        let seq: Vec<u32> = out
            .iter()
            .filter_map(|p| p.split_once(':'))
            .filter(|(part, _)| *part == partition.to_string())
            .filter_map(|(_, i)| i.parse().ok())
            .collect();
        let mut sorted = seq.clone();
        sorted.sort_unstable();
        assert_eq!(seq, sorted, "partition {partition} out of order");
        assert_eq!(seq.len(), 80);
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn acks_wait_for_durable_receipts() -> Result<(), DispatchError> {
    let h = harness(|e, _| Ok(echo(e)), SinkMode::Held);
    let log = Settlements::default();
    let out = h.out.clone();
    let run = tokio::spawn(h.dispatcher.run(source(vec![(event("a", "x"), 0)], &log, false), CancellationToken::new()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.payloads().is_empty() {
        assert!(Instant::now() < deadline, "output never sent");
        tokio::task::yield_now().await;
    }
    // The clock is paused: the sleep ends only once every task is idle,
    // the completer included, waiting for the held receipt.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(settlements(&log).is_empty(), "acked before the sink said durable");
    out.release();
    run.await.map_err(LaneError::joined("the run"))??;
    assert_eq!(settlements(&log), vec![("a".into(), Settlement::Done)]);
    Ok(())
}

#[tokio::test]
async fn a_failing_sink_stops_the_pipeline_without_acking() {
    let h = harness(|e, _| Ok(echo(e)), SinkMode::Fail);
    let log = Settlements::default();
    let result = h.dispatcher.run(source(vec![(event("a", "x"), 0), (event("b", "y"), 0)], &log, false), CancellationToken::new()).await;
    assert!(matches!(result, Err(DispatchError::Sink(_))), "{result:?}");
    assert!(
        settlements(&log).iter().all(|(_, s)| *s == Settlement::Abandon),
        "nothing may be acked when its output was not written: {:?}",
        settlements(&log)
    );
}

/// A panic behind a lane (here: in its sink's publisher) is a host bug:
/// the pipeline stops with a lane error naming the task that panicked (not
/// the lane's closed queue that follows), and nothing is acked.
#[tokio::test]
async fn a_panicking_publisher_stops_the_pipeline_with_a_lane_error() {
    let h = harness(|e, _| Ok(echo(e)), SinkMode::Panic);
    let log = Settlements::default();
    let result = h.dispatcher.run(source(vec![(event("a", "x"), 0)], &log, false), CancellationToken::new()).await;
    assert!(matches!(&result, Err(DispatchError::Lane(LaneError::Task { task, .. })) if task == "lane 0 publisher"), "{result:?}");
    assert!(settlements(&log).iter().all(|(_, s)| *s != Settlement::Done), "{:?}", settlements(&log));
}

#[tokio::test(start_paused = true)]
async fn shutdown_hands_back_an_event_waiting_to_retry_and_those_behind_it() -> Result<(), DispatchError> {
    let h = harness(|e, _| Ok(if e.payload == b"flaky" { retryable("busy") } else { echo(e) }), SinkMode::Ok);
    let log = Settlements::default();
    let shutdown = CancellationToken::new();
    let calls = h.calls.clone();
    let events = vec![(event("a", "ok"), 0), (event("b", "flaky"), 0), (event("c", "ok"), 0)];
    let run = tokio::spawn(h.dispatcher.run(source(events, &log, true), shutdown.clone()));
    // Wait until "b" failed once and is waiting for its backoff.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !calls.lock().map(|c| c.iter().any(|c| c.0 == "b")).unwrap_or(false) {
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    shutdown.cancel();
    run.await.map_err(LaneError::joined("the run"))??;
    let s = settlements(&log);
    assert!(s.contains(&("a".into(), Settlement::Done)), "{s:?}");
    assert!(s.contains(&("b".into(), Settlement::Abandon)), "{s:?}");
    assert!(s.contains(&("c".into(), Settlement::Abandon)), "c must not overtake b: {s:?}");
    assert_eq!(h.out.payloads(), vec!["ok"]);
    Ok(())
}

#[tokio::test]
async fn undecodable_deliveries_skip_the_plugin() -> Result<(), DispatchError> {
    let h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    let log = Settlements::default();
    let source = Box::new(VecSource {
        items: VecDeque::from(vec![Delivery {
            event: event("x", "{not json"),
            partition: 0,
            defect: Some("line 1: not a valid event".into()),
            ack: Ack::new(RecordingAck { id: "x".into(), log: log.clone() }),
        }]),
        hold_open: false,
    });
    h.dispatcher.run(source, CancellationToken::new()).await?;
    assert_eq!(h.calls.lock().map(|c| c.len()).unwrap_or(1), 0);
    let dlq = h.dlq.records.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload, b"{not json");
    assert_eq!(header(&dlq[0], "sluice-dlq-reason"), Some("undecodable"));
    assert_eq!(settlements(&log), vec![("x".into(), Settlement::DeadLettered)]);
    Ok(())
}

#[tokio::test]
async fn batches_are_split_to_stay_within_the_byte_budget() -> Result<(), DispatchError> {
    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    h.dispatcher.batch_bytes = 10;
    let log = Settlements::default();
    // 4+4 fit in 10 bytes; the third 4 starts a new call; 20 goes alone.
    let payloads = ["aaaa", "bbbb", "cccc", "dddddddddddddddddddd", "e"];
    let events = payloads.iter().enumerate().map(|(i, p)| (event(&i.to_string(), p), 0)).collect();
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;
    assert_eq!(h.out.payloads(), payloads);
    let sizes: Vec<usize> = h.calls.lock().map(|c| c.iter().map(|c| c.2).collect()).unwrap_or_default();
    // Each event records the size of the call it was in.
    assert!(sizes.iter().all(|&n| n <= 2), "{sizes:?}");
    assert_eq!(sizes[3], 1, "an event over the budget goes alone");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn with_broker_redelivery_a_failure_is_handed_back_with_the_backoff_delay() -> Result<(), DispatchError> {
    let mut h = harness(|e, _| Ok(if e.payload == b"flaky" { retryable("busy") } else { echo(e) }), SinkMode::Ok);
    h.dispatcher.redeliver = true;
    h.dispatcher.ordering = Ordering::None;
    let log = Settlements::default();
    let stats = h.dispatcher.stats.clone();
    let mut last = event("c", "flaky");
    last.attempt = 3; // the broker's delivery count: the last allowed attempt
    let events = vec![(event("a", "flaky"), 0), (event("b", "ok"), 0), (last, 0)];
    let start = Instant::now();
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    assert_eq!(Instant::now(), start, "no waiting in the lane: the broker waits");
    let s = settlements(&log);
    assert!(s.contains(&("a".into(), Settlement::Redeliver { delay: Duration::from_millis(100) })), "{s:?}");
    assert!(s.contains(&("b".into(), Settlement::Done)), "{s:?}");
    assert!(s.contains(&("c".into(), Settlement::DeadLettered)), "the last attempt dead-letters: {s:?}");
    assert_eq!(h.out.payloads(), vec!["ok"]);
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.redelivered, snapshot.retries, snapshot.dead_lettered), (1, 0, 1));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_output_its_sink_cannot_take_rejects_the_event_instead_of_stopping_the_pipeline() -> Result<(), DispatchError> {
    let out =
        Arc::new(MemorySink { records: Mutex::new(Vec::new()), mode: SinkMode::Ok, held: Mutex::new(Vec::new()), refuse: Some("poison") });
    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    h.dispatcher.router = Router::new(out.clone(), HashMap::new());
    let log = Settlements::default();
    h.dispatcher.run(source(vec![(event("a", "poison"), 0), (event("b", "fine"), 0)], &log, false), CancellationToken::new()).await?;
    assert_eq!(out.payloads(), vec!["fine"]);
    let dlq = h.dlq.records.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(&dlq[0], "sluice-dlq-reason"), Some("rejected"));
    assert_eq!(header(&dlq[0], "sluice-dlq-message"), Some("output 0 cannot go to memory: \"poison\" is not allowed here"));
    assert_eq!(dlq[0].id.as_deref(), Some("a:dlq"));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_output_naming_an_emit_route_is_rejected() -> Result<(), DispatchError> {
    // Emit routes carry `client.emit`s past the destination's `allow` and
    // limits; a plugin must not reach them with a returned output.
    let h = harness(
        |e, _| {
            Ok(Ok(vec![Output {
                destination: Some("sluice-client-emit:audit".into()),
                key: None,
                payload: e.payload.clone(),
                headers: vec![],
                reply: false,
            }]))
        },
        SinkMode::Ok,
    );
    let log = Settlements::default();
    h.dispatcher.run(source(vec![(event("a", "x"), 0)], &log, false), CancellationToken::new()).await?;
    assert!(h.out.payloads().is_empty());
    let dlq = h.dlq.records.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(&dlq[0], "sluice-dlq-reason"), Some("rejected"));
    assert_eq!(
        header(&dlq[0], "sluice-dlq-message"),
        Some("output destination `sluice-client-emit:audit` is reserved for client emits: use `client.emit`")
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn requests_get_their_reply_or_an_error_reply_with_correlation_headers() -> anyhow::Result<()> {
    let replies = MemorySink::new(SinkMode::Ok);
    let mut h = harness(
        |e, _| {
            Ok(match e.payload.as_slice() {
                b"bad" => Err(HandlerError { disposition: Disposition::Reject, message: "no such user".into() }),
                b"silent" => Ok(vec![]),
                _ => Ok(vec![Output { destination: None, key: None, payload: b"answer".to_vec(), headers: vec![], reply: true }]),
            })
        },
        SinkMode::Ok,
    );
    h.dispatcher.router = Router::new(h.out.clone(), HashMap::new()).with_replies(Some(replies.clone()));
    let request = |id: &str, payload: &str| {
        let mut e = event(id, payload);
        e.reply_to = Some(format!("_INBOX.{id}"));
        e.headers.push(crate::event::text_header("X-Correlation-Id", format!("corr-{id}")));
        e.headers.push(crate::event::text_header("unrelated", "x"));
        (e, 0)
    };
    let log = Settlements::default();
    let events = vec![request("a", "hi"), request("b", "bad"), request("c", "silent")];
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    let sent = replies.records.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(sent.len(), 3, "{sent:?}");
    let to = |inbox: &str| sent.iter().find(|r| r.destination.as_deref() == Some(inbox)).cloned();
    let ok = to("_INBOX.a").context("no reply to a")?;
    assert_eq!(ok.payload, b"answer");
    assert_eq!(header(&ok, "X-Correlation-Id"), Some("corr-a"));
    assert_eq!(header(&ok, "unrelated"), None, "only correlation headers are copied");
    assert_eq!(ok.id.as_deref(), Some("a:0"));

    let rejected = to("_INBOX.b").context("no reply to b")?;
    assert_eq!(header(&rejected, "Nats-Service-Error-Code"), Some("400"));
    assert_eq!(header(&rejected, "Nats-Service-Error"), Some("no such user"));
    assert_eq!(header(&rejected, "X-Correlation-Id"), Some("corr-b"));
    let body: serde_json::Value = serde_json::from_slice(&rejected.payload)?;
    assert_eq!(body["error"]["reason"], "rejected");
    assert_eq!(body["error"]["event_id"], "b");

    let silent = to("_INBOX.c").context("no reply to c")?;
    assert_eq!(header(&silent, "Nats-Service-Error-Code"), Some("500"));
    let body: serde_json::Value = serde_json::from_slice(&silent.payload)?;
    assert_eq!(body["error"]["reason"], "no-reply");

    assert!(h.out.payloads().is_empty(), "replies do not go to the default sink");
    assert_eq!(h.dlq.payloads(), vec!["bad"]);
    Ok(())
}

/// A reply promises the caller that the event's other outputs (an emit)
/// happened: it leaves only once they are durable, so a crash before then
/// costs the caller a retry, never an acknowledged emit.
#[tokio::test(start_paused = true)]
async fn a_reply_waits_until_the_events_other_outputs_are_durable() -> Result<(), DispatchError> {
    let replies = MemorySink::new(SinkMode::Ok);
    let mut h = harness(
        |_, _| {
            Ok(Ok(vec![
                Output { destination: None, key: None, payload: b"emitted".to_vec(), headers: vec![], reply: false },
                Output { destination: None, key: None, payload: b"answer".to_vec(), headers: vec![], reply: true },
            ]))
        },
        SinkMode::Held,
    );
    h.dispatcher.router = Router::new(h.out.clone(), HashMap::new()).with_replies(Some(replies.clone()));
    let mut e = event("a", "order");
    e.reply_to = Some("_INBOX.a".into());
    let log = Settlements::default();
    let out = h.out.clone();
    let run = tokio::spawn(h.dispatcher.run(source(vec![(e, 0)], &log, false), CancellationToken::new()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.payloads().is_empty() {
        assert!(Instant::now() < deadline, "the other output was never sent");
        tokio::task::yield_now().await;
    }
    // The clock is paused: the sleep ends only once every task is idle,
    // the reply waiting for the held receipt.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(replies.payloads().is_empty(), "replied before the other output was durable");
    out.release();
    run.await.map_err(LaneError::joined("the run"))??;
    assert_eq!(replies.payloads(), vec!["answer"]);
    assert_eq!(settlements(&log), vec![("a".into(), Settlement::Done)]);
    Ok(())
}

/// A source that counts what it hands out, to see whether intake stopped.
struct CountingSource {
    inner: Box<dyn Source>,
    taken: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl Source for CountingSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        let next = self.inner.next().await?;
        if next.is_some() {
            self.taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(next)
    }
    fn describe(&self) -> String {
        "counting".into()
    }
}

fn breaker_harness(down: Arc<std::sync::atomic::AtomicBool>) -> Harness {
    let mut h = harness(
        move |e, _| Ok(if down.load(std::sync::atomic::Ordering::SeqCst) { retryable("downstream is down") } else { echo(e) }),
        SinkMode::Ok,
    );
    h.dispatcher.retry.max_attempts = 10;
    h.dispatcher.batch_size = 2;
    let config = crate::config::BreakerConfig { failures: 3, window: Duration::from_secs(60), reset: Duration::from_secs(30) };
    h.dispatcher.breaker = Some(breaker::Breaker::new("p", &config, h.dispatcher.stats.gauges.breaker.clone()));
    h
}

fn call_times(calls: &Calls) -> Vec<Duration> {
    let calls = calls.lock().map(|c| c.clone()).unwrap_or_default();
    let Some(first) = calls.first().map(|c| c.3) else { return Vec::new() };
    calls.iter().map(|c| c.3 - first).collect()
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stops_intake_and_calls_until_a_probe_succeeds() -> Result<(), DispatchError> {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = breaker_harness(down.clone());
    let gauges = h.dispatcher.stats.gauges.breaker.clone();
    let log = Settlements::default();
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let events = (0..100).map(|i| (event(&format!("e{i}"), &i.to_string()), 0)).collect();
    let source = Box::new(CountingSource { inner: source(events, &log, false), taken: taken.clone() });
    let run = tokio::spawn(h.dispatcher.run(source, CancellationToken::new()));

    // The first batch (e0, e1) fails at 0, e0's retry at 0.1 s: three
    // failures, open until 30.1 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gauges.view().map(|v| v.state), Some("open"));
    let taken_at_open = taken.load(std::sync::atomic::Ordering::SeqCst);
    assert!(taken_at_open < 10, "intake stopped with the lane's queue full: {taken_at_open} taken");
    tokio::time::sleep(Duration::from_secs(28)).await;
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), taken_at_open, "nothing taken while open");
    assert_eq!(call_times(&h.calls).len(), 3, "no calls while open");
    assert!(h.dlq.payloads().is_empty() && h.out.payloads().is_empty());
    assert!(settlements(&log).is_empty(), "held events are not settled");

    // 30.1 s: the probe (e0, attempt 3) fails: open again until 60.1 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(gauges.view().map(|v| (v.state, v.opened)), Some(("open", 2)));
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    run.await.map_err(LaneError::joined("the run"))??;

    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(h.out.payloads(), expected, "every event delivered, in order, after the breaker closed");
    assert!(h.dlq.payloads().is_empty(), "nothing dead-lettered because the breaker was open");
    let times = call_times(&h.calls);
    let ms = |d: &Duration| d.as_millis();
    assert_eq!(
        times[..5].iter().map(ms).collect::<Vec<_>>(),
        vec![0, 0, 100, 30_100, 60_100],
        "calls: 3 failures, a failed probe, a good probe"
    );
    let attempts: Vec<(String, u32)> = h.calls.lock().map(|c| c.iter().take(5).map(|c| (c.0.clone(), c.1)).collect()).unwrap_or_default();
    let expected: Vec<(String, u32)> =
        [("e0", 1), ("e1", 1), ("e0", 2), ("e0", 3), ("e0", 4)].iter().map(|(e, a)| (e.to_string(), *a)).collect();
    assert_eq!(attempts, expected, "probes are real attempts of the held event");
    assert_eq!(gauges.view().map(|v| (v.state, v.opened)), Some(("closed", 2)));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn rejections_do_not_open_the_breaker() -> Result<(), DispatchError> {
    let mut h = harness(|_, _| Ok(Err(HandlerError { disposition: Disposition::Reject, message: "malformed".into() })), SinkMode::Ok);
    let config = crate::config::BreakerConfig { failures: 2, window: Duration::from_secs(60), reset: Duration::from_secs(30) };
    h.dispatcher.breaker = Some(breaker::Breaker::new("p", &config, h.dispatcher.stats.gauges.breaker.clone()));
    let gauges = h.dispatcher.stats.gauges.breaker.clone();
    let log = Settlements::default();
    let events = (0..20).map(|i| (event(&format!("e{i}"), "x"), 0)).collect();
    let start = Instant::now();
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;
    assert_eq!(Instant::now(), start, "never held");
    assert_eq!(h.dlq.payloads().len(), 20);
    assert_eq!(gauges.view().map(|v| (v.state, v.opened)), Some(("closed", 0)));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_open_hands_held_events_back() -> Result<(), DispatchError> {
    let h = breaker_harness(Arc::new(std::sync::atomic::AtomicBool::new(true)));
    let log = Settlements::default();
    let events = (0..10).map(|i| (event(&format!("e{i}"), "x"), 0)).collect();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(h.dispatcher.run(source(events, &log, true), shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    shutdown.cancel();
    run.await.map_err(LaneError::joined("the run"))??;
    let settled = settlements(&log);
    assert!(!settled.is_empty());
    assert!(settled.iter().all(|(_, s)| *s == Settlement::Abandon), "held events go back to the broker: {settled:?}");
    assert!(h.dlq.payloads().is_empty());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn correlation_ids_reach_the_plugin_every_output_and_the_dead_letter() -> Result<(), DispatchError> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_plugin = seen.clone();
    let mut h = harness(
        move |e, _| {
            let id = crate::event::header(&e.headers, "x-correlation-id").map(|v| String::from_utf8_lossy(v).into_owned());
            if let Ok(mut seen) = seen_by_plugin.lock() {
                seen.push(id);
            }
            Ok(if e.payload == b"bad" {
                Err(HandlerError { disposition: Disposition::Reject, message: "malformed".into() })
            } else {
                echo(e)
            })
        },
        SinkMode::Ok,
    );
    h.dispatcher.tracing.correlation = Some(crate::config::CorrelationConfig::default());
    let log = Settlements::default();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut given = event("a", "one");
    given.headers.push(crate::event::text_header("X-Correlation-Id", "c-1"));
    given.headers.push(crate::event::text_header("traceparent", parent));
    let events = vec![(given, 0), (event("b", "two"), 0), (event("c", "bad"), 0)];
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    let seen: Vec<Option<String>> = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].as_deref(), None, "the plugin sees the header as it came (named X-Correlation-Id)");
    let made = seen[1].clone().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "one is made for an event without: {made:?}");
    let out = h.out.records.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(out.len(), 2);
    assert_eq!(header(&out[0], "x-correlation-id"), Some("c-1"));
    assert_eq!(header(&out[0], "traceparent"), Some(parent), "no exporter: the trace context passes through");
    assert_eq!(header(&out[1], "x-correlation-id"), Some(made.as_str()));
    assert_eq!(header(&out[1], "traceparent"), None);
    let dlq = h.dlq.records.lock().map(|r| r.clone()).unwrap_or_default();
    let dead = seen[2].clone().unwrap_or_default();
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(&dlq[0], "x-correlation-id"), Some(dead.as_str()), "the dead letter keeps the id the plugin saw");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_undecodable_event_is_settled_in_its_turn() -> Result<(), DispatchError> {
    let h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    let log = Settlements::default();
    let items = [("a", None), ("b", Some("not JSON")), ("c", None)]
        .into_iter()
        .map(|(id, defect): (&str, Option<&str>)| Delivery {
            ack: Ack::new(RecordingAck { id: id.into(), log: log.clone() }),
            event: event(id, id),
            partition: 0,
            defect: defect.map(str::to_owned),
        })
        .collect();
    h.dispatcher.run(Box::new(VecSource { items, hold_open: false }), CancellationToken::new()).await?;
    let order: Vec<String> = settlements(&log).into_iter().map(|(id, _)| id).collect();
    assert_eq!(order, ["a", "b", "c"], "the dead letter does not overtake the event before it");
    assert_eq!(h.out.payloads(), ["a", "c"]);
    assert_eq!(h.dlq.payloads(), ["b"]);
    Ok(())
}
/// Event schemas and accepted versions.
mod rollout;
mod schema;
mod state;

#[tokio::test(start_paused = true)]
async fn inputs_over_the_header_caps_are_dead_lettered_without_a_call() -> Result<(), DispatchError> {
    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    h.dispatcher.header_limits = limits::HeaderLimits { max_headers: 10, max_header_bytes: 1024 };
    let log = Settlements::default();
    let with_headers = |id: &str, count: usize, value: usize| {
        let mut e = event(id, id);
        e.headers = (0..count).map(|i| crate::event::text_header(&format!("h{i}"), "v".repeat(value))).collect();
        e
    };
    let events = vec![(with_headers("many", 11, 1), 0), (with_headers("big", 2, 600), 0), (with_headers("ok", 10, 10), 0)];
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    assert_eq!(h.out.payloads(), vec!["ok"]);
    let called: Vec<String> = h.calls.lock().map(|c| c.iter().map(|c| c.0.clone()).collect()).unwrap_or_default();
    assert_eq!(called, vec!["ok"], "the plugin never sees an input over the caps");
    let dlq = h.dlq.records.lock().map(|r| r.clone()).unwrap_or_default();
    let messages: Vec<&str> = dlq.iter().filter_map(|r| header(r, "sluice-dlq-message")).collect();
    assert_eq!(messages.len(), 2);
    assert!(messages[0].contains("11 headers, over policy.max_headers (10)"), "{}", messages[0]);
    assert!(messages[1].contains("over policy.max_header_bytes (1024)"), "{}", messages[1]);
    assert!(messages[0].ends_with("its headers are left out of this dead-letter record"), "{}", messages[0]);
    assert!(dlq.iter().all(|r| header(r, "h0").is_none()), "the offending headers are not in the dead-letter records");
    assert_eq!(
        settlements(&log),
        vec![("many".into(), Settlement::DeadLettered), ("big".into(), Settlement::DeadLettered), ("ok".into(), Settlement::Done)]
    );
    Ok(())
}

/// A pipeline with `codec = "nestjs"` over NATS: the source decodes
/// (after the header caps, on the event as received), the router encodes
/// replies; the dispatcher in between sees plain events and outputs.
#[tokio::test(start_paused = true)]
async fn a_nestjs_source_decodes_after_the_header_caps_and_replies_are_packets() -> Result<(), DispatchError> {
    use crate::config::Codec;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let saw = seen.clone();
    let mut h = harness(
        move |e, _| {
            if let Ok(mut seen) = saw.lock() {
                seen.push(String::from_utf8_lossy(&e.payload).into_owned());
            }
            Ok(Ok(vec![Output { destination: None, key: None, payload: e.payload.clone(), headers: vec![], reply: true }]))
        },
        SinkMode::Ok,
    );
    let replies = MemorySink::new(SinkMode::Ok);
    h.dispatcher.router = Router::new(h.out.clone(), HashMap::new())
        .with_replies(Some(replies.clone()))
        .with_codec(crate::codec::reply::for_pipeline(Codec::Nestjs, false));
    h.dispatcher.header_limits = limits::HeaderLimits { max_headers: 3, max_header_bytes: 1024 };
    let request = |id: &str, payload: &str, headers: usize| {
        let mut e = event(id, payload);
        e.reply_to = Some(format!("_INBOX.{id}"));
        e.headers = (0..headers).map(|i| crate::event::text_header(&format!("h{i}"), "v")).collect();
        (e, 0)
    };
    let events = vec![
        // Three headers as received (at the cap); five once decoded.
        request("a", r#"{"pattern":"get","data":{"n":1},"id":"p-1"}"#, 3),
        request("b", "not json", 0),
        // Over the cap as received: refused before any parsing.
        request("c", r#"{"pattern":"get","data":2,"id":"p-3"}"#, 4),
    ];
    let log = Settlements::default();
    let source = crate::codec::decode::decoding(source(events, &log, false), Codec::Nestjs, false);
    h.dispatcher.run(source, CancellationToken::new()).await?;

    assert_eq!(seen.lock().map(|s| s.clone()).unwrap_or_default(), vec![r#"{"n":1}"#.to_owned()], "the plugin sees the packet's data");
    let sent = replies.records.lock().map(|r| r.clone()).unwrap_or_default();
    let to = |inbox: &str| {
        sent.iter().find(|r| r.destination.as_deref() == Some(inbox)).map(|r| String::from_utf8_lossy(&r.payload).into_owned())
    };
    assert_eq!(to("_INBOX.a").as_deref(), Some(r#"{"response":{"n":1},"isDisposed":true,"id":"p-1"}"#));
    let undecodable = to("_INBOX.b").unwrap_or_default();
    assert!(undecodable.starts_with(r#"{"err":{"status":"error","message":"the payload is not a NestJS packet"#), "{undecodable}");
    assert!(undecodable.contains(r#""reason":"undecodable""#), "{undecodable}");
    let over = to("_INBOX.c").unwrap_or_default();
    assert!(over.contains("over policy.max_headers (3)") && !over.contains(r#""id":"p-3""#), "refused as received, not decoded: {over}");
    assert_eq!(
        settlements(&log),
        vec![("a".into(), Settlement::Done), ("b".into(), Settlement::DeadLettered), ("c".into(), Settlement::DeadLettered)],
        "undecodable events are settled in their turn"
    );
    Ok(())
}

/// With plugin threads, each lane runs on one, and so does every task its
/// plugin calls spawn (as wasmtime's `wasi:http` spawns a request task and
/// a connection driver): a call's tasks never hop to another thread.
/// Outputs and acks are what they are without plugin threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_and_the_tasks_their_calls_spawn_run_on_plugin_threads() -> anyhow::Result<()> {
    type Seen = Arc<Mutex<Vec<(String, &'static str, String)>>>;
    let seen: Seen = Arc::default();
    let recording = seen.clone();
    let mut h = harness(
        move |e, _| {
            let thread = || std::thread::current().name().unwrap_or_default().to_owned();
            if let Ok(mut seen) = recording.lock() {
                seen.push((e.id.clone(), "call", thread()));
            }
            let (spawned, id) = (recording.clone(), e.id.clone());
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                if let Ok(mut seen) = spawned.lock() {
                    seen.push((id, "spawned", thread()));
                }
            });
            Ok(echo(e))
        },
        SinkMode::Ok,
    );
    // Kept here too: the threads stop with the last clone, and the tasks
    // the calls spawned may still be queued when the dispatcher returns.
    let executor = crate::runtime::executor::Executor::start(2)?;
    h.dispatcher.executor = Some(executor.clone());
    h.dispatcher.concurrency = 4;
    h.dispatcher.ordering = Ordering::Key;
    let events = (0..64)
        .map(|i| {
            let mut e = event(&format!("e{i}"), &i.to_string());
            e.key = Some(format!("k{i}").into_bytes());
            (e, 0)
        })
        .collect();
    let log = Settlements::default();
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    assert_eq!(h.out.payloads().len(), 64);
    let settled = settlements(&log);
    assert_eq!(settled.len(), 64);
    assert!(settled.iter().all(|(_, s)| *s == Settlement::Done), "{settled:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().map(|s| s.len()).unwrap_or(0) < 128 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(seen.len(), 128, "every call and every spawned task reported: {seen:?}");
    let mut threads = std::collections::BTreeSet::new();
    for (id, kind, thread) in &seen {
        assert!(thread.starts_with("sluice-plugin-"), "{kind} of {id} ran on {thread:?}");
        let call = seen.iter().find(|(i, k, _)| i == id && *k == "call").map(|(_, _, t)| t);
        assert_eq!(call, Some(thread), "{kind} of {id} ran on {thread}, its call on {call:?}");
        threads.insert(thread.clone());
    }
    assert_eq!(threads.len(), 2, "four lanes spread over both plugin threads: {threads:?}");
    drop(executor);
    Ok(())
}
