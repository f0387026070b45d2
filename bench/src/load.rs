//! The load generator and the receiver: what goes into `bench.in`/`BIN`, and
//! what is seen coming out of `bench.out`. The receiver is always a core
//! subscription on `bench.out` (JetStream publishes reach it too), so both
//! modes time outputs the same way.
//!
//! Every payload is exactly [`PAYLOAD_LEN`] bytes; the first 8 are its send
//! time (nanoseconds since [`now_ns`]'s epoch, little endian), which the
//! latency receiver subtracts from its receive time. Both ends are in this
//! process, so one monotonic clock serves both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::Notify;

use crate::{IN, OUT};

pub const PAYLOAD_LEN: usize = 100;

/// Core NATS: events published but not yet seen on `bench.out`, at most.
/// Far below a subscription's buffer (65,536 messages in async-nats), so a
/// processor keeping up is never dropped as a slow consumer.
const WINDOW: u64 = 8192;

/// How long without a new output before the receiver gives up on the rest
/// and counts them as lost.
const STALL: Duration = Duration::from_secs(5);

/// JetStream: publishes awaiting their ack, at most, while pre-filling. The
/// context holds a permit per unacknowledged publish and stalls at 5,000.
const PREFILL_WINDOW: usize = 1000;

/// Nanoseconds since the first call: the clock both ends of a latency
/// measurement read.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn payload(stamp_ns: u64) -> Bytes {
    let mut payload = vec![b'x'; PAYLOAD_LEN];
    payload[..8].copy_from_slice(&stamp_ns.to_le_bytes());
    payload.into()
}

fn stamp(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// What a throughput run found.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub events_per_sec: f64,
    pub lost: u64,
}

/// Outputs seen so far, shared with a producer that paces itself on them.
#[derive(Default)]
struct Progress {
    received: AtomicU64,
    /// Signalled every [`NOTIFY_EVERY`] outputs (and at the last).
    notify: Notify,
}

const NOTIFY_EVERY: u64 = 512;

/// What the receiver saw: how many outputs, the first and the last at.
struct Seen {
    count: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Counts outputs on `bench.out` until `n` came or none came for `stall`
/// (`first_wait` for the first one).
async fn count_outputs(mut outputs: async_nats::Subscriber, n: u64, first_wait: Duration, progress: Arc<Progress>) -> Seen {
    let mut seen = Seen { count: 0, first: None, last: None };
    while seen.count < n {
        let wait = if seen.first.is_some() { STALL } else { first_wait };
        let Ok(Some(_)) = tokio::time::timeout(wait, outputs.next()).await else {
            break;
        };
        let now = Instant::now();
        seen.first.get_or_insert(now);
        seen.last = Some(now);
        seen.count += 1;
        progress.received.store(seen.count, Ordering::Release);
        if seen.count.is_multiple_of(NOTIFY_EVERY) || seen.count == n {
            progress.notify.notify_one();
        }
    }
    seen
}

/// A core subscription on `bench.out`, registered with the server before
/// this returns, so no output published afterwards is missed.
async fn subscribe_outputs(client: &async_nats::Client) -> Result<async_nats::Subscriber> {
    let outputs = client.subscribe(OUT).await?;
    client.flush().await?;
    Ok(outputs)
}

/// Core NATS: publishes `n` events to `bench.in` with at most [`WINDOW`]
/// outstanding; throughput = outputs / (last output − first publish).
pub async fn core_throughput(producer: &async_nats::Client, receiver: &async_nats::Client, n: u64) -> Result<Throughput> {
    let progress = Arc::new(Progress::default());
    let outputs = subscribe_outputs(receiver).await?;
    let counter = tokio::spawn(count_outputs(outputs, n, STALL, progress.clone()));
    let event = payload(0);
    let start = Instant::now();
    'publish: for sent in 0..n {
        while sent - progress.received.load(Ordering::Acquire) >= WINDOW {
            if tokio::time::timeout(STALL, progress.notify.notified()).await.is_err() {
                break 'publish; // outputs stopped coming: the rest is lost
            }
        }
        producer.publish(IN, event.clone()).await?;
    }
    producer.flush().await?;
    let seen = counter.await?;
    let elapsed = seen.last.map(|last| last - start).unwrap_or_default();
    Ok(Throughput { events_per_sec: rate(seen.count, elapsed), lost: n - seen.count })
}

/// JetStream: stores `n` events in the input stream before a processor
/// starts, so the run measures draining a backlog.
pub async fn prefill(client: &async_nats::Client, n: u64) -> Result<()> {
    let js = jetstream::new(client.clone());
    let event = payload(0);
    let mut window = Vec::with_capacity(PREFILL_WINDOW);
    for _ in 0..n {
        window.push(js.publish(IN, event.clone()).await?);
        if window.len() == PREFILL_WINDOW {
            for ack in window.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in window {
        ack.await?;
    }
    Ok(())
}

/// JetStream: a receiver for a backlog of `n`, to start before the
/// processor; `finish` gives throughput = outputs / (last − first output),
/// which leaves the processor's start-up out.
pub struct BacklogTimer {
    counter: tokio::task::JoinHandle<Seen>,
}

impl BacklogTimer {
    pub async fn start(receiver: &async_nats::Client, n: u64) -> Result<Self> {
        let outputs = subscribe_outputs(receiver).await?;
        // Generous for the first output: sluice loads its plugin first.
        let counter = tokio::spawn(count_outputs(outputs, n, Duration::from_secs(60), Arc::default()));
        Ok(Self { counter })
    }

    /// Waits for the outputs; `lost` is left to the caller (the output
    /// stream's length is the truth there).
    pub async fn finish(self) -> Result<f64> {
        let seen = self.counter.await?;
        let elapsed = match (seen.first, seen.last) {
            (Some(first), Some(last)) => last - first,
            _ => return Err(anyhow!("no output came")),
        };
        Ok(rate(seen.count, elapsed))
    }
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

/// What a latency run found, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub lost: u64,
}

/// How a latency run publishes its inputs.
#[derive(Debug, Clone, Copy)]
pub enum Publish {
    /// Core publish to `bench.in`.
    Core,
    /// JetStream publish to `bench.in` (stream `BIN`); acks are awaited on
    /// the side so they do not pace the sender.
    Jetstream,
}

/// Publishes at `rate` events/s for `warmup + duration` and records each
/// output's end-to-end latency; outputs sent during the warm-up are not
/// recorded (first connections, first plugin calls).
///
/// Tokio's timer ticks in milliseconds, so the sender publishes what is due
/// every millisecond: at 5,000/s, bursts of about 5.
pub async fn latency(
    producer: &async_nats::Client,
    receiver: &async_nats::Client,
    publish: Publish,
    rate: u64,
    warmup: Duration,
    duration: Duration,
) -> Result<Latency> {
    let total = (rate as f64 * (warmup + duration).as_secs_f64()) as u64;
    let mut outputs = subscribe_outputs(receiver).await?;
    let record_from = now_ns() + warmup.as_nanos() as u64;
    let recorder = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut count = 0;
        while count < total {
            let Ok(Some(output)) = tokio::time::timeout(STALL, outputs.next()).await else {
                break;
            };
            let received = now_ns();
            count += 1;
            let sent = stamp(&output.payload).context("an output shorter than 8 bytes")?;
            if sent >= record_from {
                histogram.saturating_record(received.saturating_sub(sent) / 1000);
            }
        }
        anyhow::Ok((count, histogram))
    });

    let js = jetstream::new(producer.clone());
    let (acks, mut pending_acks) = tokio::sync::mpsc::unbounded_channel::<jetstream::context::PublishAckFuture>();
    let ack_waiter = tokio::spawn(async move {
        while let Some(ack) = pending_acks.recv().await {
            ack.await?;
        }
        anyhow::Ok(())
    });
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let event = payload(now_ns());
            match publish {
                Publish::Core => producer.publish(IN, event).await?,
                Publish::Jetstream => acks.send(js.publish(IN, event).await?)?,
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(acks);
    producer.flush().await?;
    ack_waiter.await??;

    let (count, histogram) = recorder.await??;
    Ok(Latency { p50_us: histogram.value_at_quantile(0.50), p99_us: histogram.value_at_quantile(0.99), lost: total - count })
}
