//! Sinks: where outputs and dead-letter records go.
//!
//! [`Sink::send`] queues a record (waiting while the sink's queue is full:
//! that is the backpressure that slows a pipeline down to what its sink can
//! take) and returns a [`Receipt`] that resolves once the record is durably
//! accepted: written and flushed for a file, acknowledged for a broker. A
//! source is acknowledged only after every receipt of its event resolves.
//!
//! Implementations: `lines` (stdout or a file), `nats` (core NATS
//! and JetStream) and `kafka`.

pub(crate) mod kafka;
pub(crate) mod lines;
pub(crate) mod nats;

pub use kafka::Producers;

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

use crate::nats::Connections;

use crate::event::{Header, Output};

/// What a sink's `build` takes from the process: the shared NATS
/// connections and Kafka producers.
pub struct SinkContext<'a> {
    /// The process's NATS connections, shared by sources and sinks.
    pub connections: &'a Connections,
    /// The process's Kafka producers, shared by sinks on one cluster.
    pub producers: &'a kafka::Producers,
}

impl SinkContext<'_> {
    /// The shared connection to a NATS sink's server.
    async fn nats(&self, server: &crate::config::NatsServer) -> Result<async_nats::Client, SinkError> {
        self.connections.get(server).await.map_err(|e| SinkError::Open { what: format!("sink {}", e.url), message: e.message })
    }
}

impl crate::config::SinkConfig {
    /// Opens the sink this config selects.
    pub async fn build(&self, cx: &SinkContext<'_>) -> Result<std::sync::Arc<dyn Sink>, SinkError> {
        use crate::config::SinkConfig;
        Ok(match self {
            SinkConfig::Stdout(stdout) => std::sync::Arc::new(stdout.build()),
            SinkConfig::File(file) => std::sync::Arc::new(file.build().await?),
            SinkConfig::Nats(nats) => std::sync::Arc::new(nats.build(cx).await?),
            SinkConfig::Jetstream(jetstream) => std::sync::Arc::new(jetstream.build(cx).await?),
            SinkConfig::Kafka(kafka) => std::sync::Arc::new(kafka.build(cx).await?),
        })
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic or subject on this sink; `None` means the sink's default.
    pub destination: Option<String>,
    /// The message key (Kafka's key; NATS's `Sluice-Key` header).
    pub key: Option<Vec<u8>>,
    /// The message body.
    pub payload: Vec<u8>,
    /// Message headers, in order.
    pub headers: Vec<Header>,
    /// A stable id: the input event's id and this output's index (`<id>:<n>`,
    /// `<id>:dlq` for a dead-letter record). The same input handled twice
    /// gives the same ids, so sinks that deduplicate (JetStream's
    /// `Nats-Msg-Id`) store its outputs once.
    pub id: Option<String>,
    /// The partition to write to, where the sink has partitions (Kafka):
    /// a NestJS Kafka reply goes to the partition its caller listens on.
    /// `None`: the sink's partitioner decides.
    pub partition: Option<i32>,
    /// The digest of the plugin version that made the record, sent as the
    /// last header, `sluice-plugin-digest` (see [`Record::all_headers`]). Kept
    /// apart from `headers` so that every output of a version shares one
    /// value instead of allocating a header of its own.
    pub version: Option<std::sync::Arc<str>>,
}

/// The header that names the plugin version that made an output (a
/// dead-letter record names it in `sluice-dlq-plugin-digest` instead).
pub const VERSION_HEADER: &str = "sluice-plugin-digest";

impl Record {
    /// Every header the record is sent with, in order: `headers`, then the
    /// version header when the record has a version. Sinks send these, not
    /// `headers` alone.
    pub fn all_headers(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        let version = self.version.as_deref().map(|v| (VERSION_HEADER, v.as_bytes()));
        self.headers.iter().map(|h| (h.key.as_str(), h.value.as_slice())).chain(version)
    }

    /// How many headers [`Record::all_headers`] yields.
    pub fn header_count(&self) -> usize {
        self.headers.len() + usize::from(self.version.is_some())
    }
}

/// A sink failure. The pipeline stops without acknowledging the affected
/// events, so they are delivered again after a restart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The sink could not be opened (a folder, a connection, a stream).
    #[error("cannot open {what}: {message}")]
    Open {
        /// The sink, as its config names it.
        what: String,
        /// Why.
        message: String,
    },
    /// A write, or the broker's confirmation of it, failed.
    #[error("cannot write to {what}: {message}")]
    Write {
        /// The sink, as its config names it.
        what: String,
        /// Why.
        message: String,
    },
    /// A Kafka exactly-once producer was fenced: another producer took
    /// over its transactional id (the message says what to do).
    #[error("cannot write to {what}: {message}")]
    Fenced {
        /// The sink, as its config names it.
        what: String,
        /// What happened and what to do.
        message: String,
    },
    /// The sink was already closed, or its writer stopped, when the record
    /// came.
    #[error("{what} is closed")]
    Closed {
        /// The sink, as its config names it.
        what: String,
    },
}

/// Resolves when a record is durably accepted.
#[must_use = "a record is only durable once its receipt resolves"]
pub struct Receipt(ReceiptKind);

enum ReceiptKind {
    /// Ordered sinks publish a watermark: record `seq` is durable once the
    /// watermark reaches it. No allocation per record.
    Watermark {
        seq: u64,
        durable: watch::Receiver<Durable>,
    },
    Ready(Result<(), SinkError>),
    /// Resolves with the broker's acknowledgement (JetStream publish).
    Pending(Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>),
}

/// The durable watermark of an ordered sink, or the error that stopped it.
#[derive(Debug, Clone)]
pub enum Durable {
    /// Every record up to this sequence number (inclusive) is durable.
    UpTo(u64),
    /// The sink failed: no later record will become durable.
    Failed(SinkError),
}

impl Receipt {
    /// The receipt of record `seq` of an ordered sink, which publishes its
    /// durable watermark on `durable`.
    pub fn watermark(seq: u64, durable: watch::Receiver<Durable>) -> Self {
        Self(ReceiptKind::Watermark { seq, durable })
    }

    /// A receipt already resolved: the record was written synchronously
    /// (stdout, a file), or failed.
    pub fn ready(result: Result<(), SinkError>) -> Self {
        Self(ReceiptKind::Ready(result))
    }

    /// A receipt that resolves with `confirmation` (a broker's
    /// acknowledgement of this one record).
    pub fn pending(confirmation: Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>) -> Self {
        Self(ReceiptKind::Pending(confirmation))
    }

    /// Waits until the record is durable, or its sink failed.
    pub async fn wait(self) -> Result<(), SinkError> {
        match self.0 {
            ReceiptKind::Ready(result) => result,
            ReceiptKind::Pending(confirmation) => confirmation.await,
            ReceiptKind::Watermark { seq, mut durable } => {
                let reached = durable
                    .wait_for(|d| match d {
                        Durable::UpTo(n) => *n >= seq,
                        Durable::Failed(_) => true,
                    })
                    .await;
                match reached.as_deref() {
                    Ok(Durable::UpTo(_)) => Ok(()),
                    Ok(Durable::Failed(err)) => Err(err.clone()),
                    Err(_) => Err(SinkError::Closed { what: "sink".into() }),
                }
            }
        }
    }
}

/// Where records go.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Queues a record, waiting for room; the receipt says when it is
    /// durable. Records sent by one task are published in the order sent.
    async fn send(&self, record: Record) -> Result<Receipt, SinkError>;

    /// Whether `output` can be sent to `destination` (`None`: the sink's
    /// default) at all: a subject that is not valid, a header the broker
    /// cannot carry, a payload over its limit. The lane asks before
    /// concluding an event, so such an output fails its event (which is
    /// dead-lettered with this message) instead of stopping the pipeline.
    fn check(&self, destination: Option<&str>, output: &Output) -> Result<(), String> {
        let _ = (destination, output);
        Ok(())
    }

    /// Whether `destination` (`None`: the sink's default) has `partition`,
    /// for sinks with partitions (Kafka); `Err` says why not. Asked before
    /// a reply goes to the partition its request named, so a caller's bad
    /// header does not fail the write (which would stop the pipeline).
    /// Sinks without partitions, and a sink that cannot tell just now, say
    /// yes.
    async fn has_partition(&self, destination: Option<&str>, partition: i32) -> Result<(), String> {
        let _ = (destination, partition);
        Ok(())
    }

    /// Whether records sent here use [`Record::id`] (deduplicating brokers);
    /// other sinks are spared making one per record.
    fn wants_ids(&self) -> bool {
        false
    }

    /// Flushes what is queued and stops. Later sends fail.
    async fn close(&self) -> Result<(), SinkError>;

    /// Whether the sink can deliver nothing any more (its writer failed):
    /// a restarted pipeline opens a new one instead of reusing it.
    fn failed(&self) -> bool {
        false
    }

    /// A short description for logs, e.g. `file:out.jsonl`.
    fn describe(&self) -> String;
}
