//! What goes into the input topic and what is seen coming out of the output
//! topic.
//!
//! Every payload is exactly [`PAYLOAD_LEN`] bytes: its send time (8 bytes,
//! nanoseconds of [`now_ns`], little endian), then its sequence number (8
//! bytes), then filler. The receiver knows which sequence numbers to expect,
//! so it tells lost events from duplicates.
//!
//! The receiver is a plain consumer (no group, partitions assigned) on its
//! own thread, polling; outputs are timed when the poll returns them.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::broker::PARTITIONS;
use crate::load::{now_ns, PAYLOAD_LEN};

/// How long without a new output before a receiver gives up on the rest and
/// counts them as lost.
const STALL: Duration = Duration::from_secs(10);

/// Generous for the first output: sluice starts, loads its plugin and joins
/// the group first.
const FIRST_WAIT: Duration = Duration::from_secs(60);

/// Produces awaiting their delivery report, at most, while pre-filling.
const PREFILL_WINDOW: usize = 20_000;

fn payload(stamp_ns: u64, seq: u64) -> Vec<u8> {
    let mut payload = vec![b'x'; PAYLOAD_LEN];
    payload[..8].copy_from_slice(&stamp_ns.to_le_bytes());
    payload[8..16].copy_from_slice(&seq.to_le_bytes());
    payload
}

fn stamp_and_seq(payload: &[u8]) -> Option<(u64, u64)> {
    let stamp = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((stamp, seq))
}

/// The load generator's producer: idempotent, `acks=all`, like the
/// processors', with `linger_ms` of its own.
fn producer(brokers: &str, linger_ms: u32) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .create()
        .context("creating the load producer")
}

/// Produces events `seqs` (no key, so spread over the partitions) to
/// `topic`, each stamped by `stamp`, awaiting every delivery report.
async fn produce_all(producer: &FutureProducer, topic: &str, seqs: Range<u64>, mut before_each: impl AsyncFnMut(u64)) -> Result<()> {
    let mut pending = FuturesUnordered::new();
    for seq in seqs {
        before_each(seq).await;
        let event = payload(now_ns(), seq);
        loop {
            match producer.send_result(FutureRecord::<(), [u8]>::to(topic).payload(&event)) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // librdkafka's queue is full: wait for a delivery.
                    match pending.next().await {
                        Some(report) => check(report)?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => return Err(anyhow!(e).context(format!("producing to {topic}"))),
            }
        }
        while pending.len() >= PREFILL_WINDOW {
            if let Some(report) = pending.next().await {
                check(report)?;
            }
        }
    }
    while let Some(report) = pending.next().await {
        check(report)?;
    }
    Ok(())
}

fn check(report: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>) -> Result<()> {
    match report {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(anyhow!(e).context("a produce failed")),
        Err(_) => bail!("a produce was cancelled"),
    }
}

/// Stores events `0..n` in `topic` before a processor starts, so the
/// throughput run measures draining a backlog.
pub async fn prefill(brokers: &str, topic: &str, n: u64) -> Result<()> {
    let producer = producer(brokers, 5)?;
    produce_all(&producer, topic, 0..n, async |_| {}).await
}

/// Produces events `seqs` to `topic` at `rate` events/s, each stamped with
/// its send time. Tokio's timer ticks in milliseconds, so what is due is
/// sent every millisecond: at 5,000/s, bursts of about 5.
pub async fn produce_at_rate(brokers: &str, topic: &str, seqs: Range<u64>, rate: u64) -> Result<()> {
    let producer = producer(brokers, 0)?;
    let first = seqs.start;
    let start = Instant::now();
    produce_all(&producer, topic, seqs, async |seq| loop {
        let due = first + (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if seq < due {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    })
    .await
}

/// Where a receiver starts reading.
pub enum StartAt {
    /// Every partition's first offset.
    Beginning,
    /// Every partition's current end (outputs produced from now on).
    End,
}

/// What a receiver is to read and record.
pub struct Watch {
    pub topic: String,
    pub from: StartAt,
    /// `read_committed`: exactly-once outputs count only once committed.
    pub committed: bool,
    /// The sequence numbers it waits for.
    pub seqs: Range<u64>,
    /// Stop at the first output (for the time of the first output).
    pub first_only: bool,
    /// Record latencies of outputs sent at or after this [`now_ns`].
    pub record_from: Option<u64>,
}

/// What a receiver saw.
pub struct Seen {
    /// Outputs of the expected sequence numbers, each counted once.
    pub distinct: u64,
    /// Outputs seen again, and outputs of unexpected sequence numbers.
    pub duplicates: u64,
    pub first: Option<Instant>,
    /// When the last distinct output came.
    pub last: Option<Instant>,
    pub latency: Histogram<u64>,
}

/// A receiver running on its own thread.
pub struct Receiver {
    thread: std::thread::JoinHandle<Result<Seen>>,
    cancel: Arc<AtomicBool>,
}

impl Receiver {
    /// Assigns the partitions (positions resolved) before it returns, so no
    /// output produced afterwards is missed.
    pub fn start(brokers: &str, watch: Watch) -> Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "sluice-bench-receiver") // required; never joined nor committed
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", if watch.committed { "read_committed" } else { "read_uncommitted" })
            .create()
            .context("creating the receiver")?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            let offset = match watch.from {
                StartAt::Beginning => Offset::Beginning,
                StartAt::End => {
                    let (_, high) = consumer.fetch_watermarks(&watch.topic, partition, Duration::from_secs(10))?;
                    Offset::Offset(high)
                }
            };
            assignment.add_partition_offset(&watch.topic, partition, offset)?;
        }
        consumer.assign(&assignment)?;
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let thread = std::thread::Builder::new().name("kafka-receiver".into()).spawn(move || receive(consumer, watch, &stop))?;
        Ok(Self { thread, cancel })
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for it to finish on its own (all seen, or stalled).
    pub async fn finish(self) -> Result<Seen> {
        tokio::task::spawn_blocking(move || self.thread.join().map_err(|_| anyhow!("the receiver panicked"))?).await?
    }

    /// Stops it now, with what it saw so far.
    pub async fn cancel(self) -> Result<Seen> {
        self.cancel.store(true, Ordering::Release);
        self.finish().await
    }
}

fn receive(consumer: BaseConsumer, watch: Watch, cancel: &AtomicBool) -> Result<Seen> {
    let expected = watch.seqs.end - watch.seqs.start;
    let mut seen_seq = vec![false; expected as usize];
    let mut seen =
        Seen { distinct: 0, duplicates: 0, first: None, last: None, latency: Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)? };
    let mut last_any = Instant::now();
    while seen.distinct < expected && !cancel.load(Ordering::Acquire) {
        let wait = if seen.first.is_some() { STALL } else { FIRST_WAIT };
        if last_any.elapsed() > wait {
            break;
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let received = now_ns();
        let now = Instant::now();
        let message = message.with_context(|| format!("reading {}", watch.topic))?;
        last_any = now;
        seen.first.get_or_insert(now);
        if watch.first_only {
            break;
        }
        let (stamp, seq) = message.payload().and_then(stamp_and_seq).context("an output shorter than 16 bytes")?;
        let fresh = watch.seqs.contains(&seq) && !std::mem::replace(&mut seen_seq[(seq - watch.seqs.start) as usize], true);
        if !fresh {
            seen.duplicates += 1;
            continue;
        }
        seen.distinct += 1;
        seen.last = Some(now);
        if watch.record_from.is_some_and(|from| stamp >= from) {
            seen.latency.saturating_record(received.saturating_sub(stamp) / 1000);
        }
    }
    Ok(seen)
}
