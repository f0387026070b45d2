//! Sources: where events come from.
//!
//! A [`Source`] yields [`Delivery`]s. Each carries an [`Ack`] that the
//! dispatcher settles exactly once, and only after every output of the event
//! (or its dead-letter record) has been durably accepted by its sink. That is
//! the whole at-least-once contract: a source commits a position only when
//! its ack says [`Settlement::Done`]; anything else comes back.
//!
//! Implementations: `lines` (a file or stdin), `nats` (core NATS,
//! at-most-once), `jetstream` (a durable pull consumer) and `kafka` (a
//! consumer group; at-least-once or exactly-once).

pub(crate) mod jetstream;
pub(crate) mod kafka;
pub(crate) mod lines;
pub(crate) mod nats;
pub(crate) mod progress;

pub use kafka::PartitionState;
pub use lines::LineSource;

use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;
use crate::kafka::transaction::Transaction;
use crate::nats::Connections;
use crate::sink::Sink;

/// What a source's `build` takes from the pipeline around it (each
/// source's config type, beside the source, knows which parts it needs).
pub struct SourceContext<'a> {
    /// The process's NATS connections, shared by sources and sinks.
    pub connections: &'a Connections,
    /// The exactly-once transaction of a Kafka pipeline.
    pub transaction: Option<Arc<Transaction>>,
    /// Where the source reports its backlog (the pipeline's lag gauge).
    pub lag: Arc<std::sync::atomic::AtomicI64>,
    /// The pipeline's embedded state store: a file source then keeps its
    /// position there instead of in a checkpoint file.
    pub state: Option<&'a Arc<crate::state::Store>>,
    /// Told of every Kafka assignment and revoke (the Kafka changelog state).
    pub partition_state: Option<Arc<dyn kafka::PartitionState>>,
    /// Events the pipeline hands its plugin per call: what a pulling
    /// source asks for at once.
    pub fetch_batch: usize,
    /// The pipeline's wire format for payloads: the source is wrapped to
    /// decode it ([`crate::codec::decoding`]).
    pub codec: crate::config::Codec,
}

impl SourceContext<'_> {
    /// The shared connection to a NATS source's server.
    async fn nats(&self, server: &crate::config::NatsServer) -> Result<async_nats::Client, SourceError> {
        self.connections.get(server).await.map_err(|e| SourceError::Broker { what: format!("source {}", e.url), message: e.message })
    }
}

impl crate::config::SourceConfig {
    /// Opens the source this config selects, decoding the pipeline's
    /// `codec`.
    pub async fn build(&self, cx: SourceContext<'_>) -> Result<Box<dyn Source>, SourceError> {
        use crate::config::SourceConfig;
        let codec = cx.codec;
        let source: Box<dyn Source> = match self {
            SourceConfig::File(file) => Box::new(file.build(cx).await?),
            SourceConfig::Stdin(stdin) => Box::new(stdin.build()),
            SourceConfig::Nats(nats) => Box::new(nats.build(cx).await?),
            SourceConfig::Jetstream(jetstream) => Box::new(jetstream.build(cx).await?),
            SourceConfig::Kafka(kafka) => Box::new(kafka.build(cx).await?),
        };
        Ok(crate::codec::decode::decoding(source, codec, matches!(self, SourceConfig::Kafka(_))))
    }
}

/// One event taken from a source, with what is needed to settle it.
pub struct Delivery {
    /// The event the plugin is given.
    pub event: Event,
    /// The source's unit of ordering (a Kafka partition; files and stdin are
    /// one partition). Events of one partition stay in order under the
    /// default `ordering = "partition"`.
    pub partition: u32,
    /// Set when the source could not decode the message into an event (bad
    /// JSON, say). The event then carries the raw bytes as its payload and
    /// goes straight to the dead letter with this reason: nothing is dropped,
    /// and the plugin never sees it.
    pub defect: Option<String>,
    /// Settled once the event is done (outputs or dead-letter record
    /// durable), or abandoned.
    pub ack: Ack,
}

/// How an event ended, as far as its source is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Outputs durably accepted: commit the position.
    Done,
    /// The dead-letter record is durably accepted: commit the position and
    /// never deliver it again (JetStream `+TERM`; elsewhere the same as
    /// [`Settlement::Done`]).
    DeadLettered,
    /// Ask the broker to deliver it again after `delay` (JetStream nak with
    /// delay). Sources that cannot redeliver treat it as [`Settlement::Abandon`].
    Redeliver {
        /// How long the broker waits before delivering it again.
        delay: Duration,
    },
    /// Not done and not committed (shutdown, sink failure): the event must be
    /// delivered again after a restart.
    Abandon,
}

/// The source-specific half of an acknowledgement.
pub trait Acknowledge: Send + 'static {
    /// Tells the source how the event ended: commit its position, ask for
    /// it again, or leave it for redelivery. Called at most once.
    fn settle(self: Box<Self>, settlement: Settlement);
}

/// An acknowledgement handle. Settle it once; dropping it unsettled counts as
/// [`Settlement::Abandon`], so a task that dies cannot commit by accident.
pub struct Ack(Option<Box<dyn Acknowledge>>);

impl Ack {
    /// An ack that settles through the source's `inner` handle.
    pub fn new(inner: impl Acknowledge) -> Self {
        Self(Some(Box::new(inner)))
    }

    /// An ack that does nothing, for sources with no position (and tests).
    pub fn noop() -> Self {
        Self(None)
    }

    /// Settles the event; consuming the handle makes a second settlement
    /// impossible.
    pub fn settle(mut self, settlement: Settlement) {
        if let Some(inner) = self.0.take() {
            inner.settle(settlement);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            inner.settle(Settlement::Abandon);
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Ack(pending)" } else { "Ack(settled)" })
    }
}

/// A source failure. The pipeline stops; events not yet acknowledged are
/// redelivered after a restart.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file (or stdin) could not be opened.
    #[error("cannot open {what}: {source}")]
    Open {
        /// The source, as its config names it.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading a file (or stdin) failed.
    #[error("cannot read {what}: {source}")]
    Read {
        /// The source, as its config names it.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file source's checkpoint (its committed position) could not be
    /// written.
    #[error("cannot write checkpoint {}: {source}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The broker (NATS, JetStream, Kafka) refused or failed.
    #[error("{what}: {message}")]
    Broker {
        /// The source, as its config names it.
        what: String,
        /// The broker's or client's reason.
        message: String,
    },
    /// The Kafka exactly-once transaction's producer was fenced: another
    /// took over its transactional id (the message says what to do).
    #[error("{what}: {message}")]
    Fenced {
        /// The source, as its config names it.
        what: String,
        /// What happened and what to do.
        message: String,
    },
}

/// Where events come from.
#[async_trait::async_trait]
pub trait Source: Send + 'static {
    /// The next delivery; `None` when the source has ended (end of a file
    /// not followed). Must be cancel-safe: the dispatcher drops a pending
    /// call to stop intake at shutdown.
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError>;

    /// Unwraps the wire format of an event this source delivered (the
    /// pipeline's `codec`, see [`crate::codec::decoding`]), so the plugin
    /// sees the payload inside. Intake calls it after its own checks on
    /// the event as received (the tap, the header caps: a message over
    /// them is refused before any parsing). `Err`: the event cannot be
    /// decoded, and is dead-lettered with that reason in its turn.
    fn decode(&self, _event: &mut Event) -> Result<(), String> {
        Ok(())
    }

    /// Called once at the end, after every delivery was settled (or dropped
    /// at a shutdown deadline): commit what is done, release connections.
    async fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// Where replies to this source's requests go, when the source has its
    /// own way back (core NATS: the request's connection). `None`: replies
    /// go to the pipeline's default sink with the reply-to as destination.
    fn reply_sink(&self) -> Option<Arc<dyn Sink>> {
        None
    }

    /// Whether [`Settlement::Redeliver`] makes the broker deliver the event
    /// again after the delay. Then, with `ordering = "none"`, a retryable
    /// failure is handed back to the broker instead of retried in place.
    fn redelivers(&self) -> bool {
        false
    }

    /// A limit on deliveries the broker enforces itself, lower than the
    /// pipeline's `max_attempts` would be: the pipeline stops retrying there,
    /// so the last failure is dead-lettered rather than dropped by the broker.
    fn max_deliveries(&self) -> Option<u32> {
        None
    }

    /// A short description for logs, e.g. `file:events.jsonl`.
    fn describe(&self) -> String;
}
