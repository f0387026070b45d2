//! JetStream: a stream read through a durable pull consumer, at-least-once.
//!
//! How each settlement reaches the server:
//!
//! | settlement | JetStream |
//! |---|---|
//! | done (outputs durable) | `+ACK` |
//! | dead-lettered (record durable) | `+TERM`: never delivered again |
//! | redeliver after a delay (a retryable failure, `ordering = "none"`) | `-NAK` with the policy's delay |
//! | abandoned (shutdown, sink failure) | `-NAK` at once, so another host in the group can take it |
//!
//! Events still unsettled after a third of `ack_wait` get an in-progress
//! signal (`+WPI`) every third of `ack_wait`, so a slow handler, retries in
//! place or a stalled sink never make the server redeliver an event that is
//! still being worked on. Only a dead host lets `ack_wait` run out.
//!
//! The consumer is created with no delivery limit: the pipeline's
//! `max_attempts` decides when an event goes to the dead letter. A server-side
//! limit would silently drop an event whose last delivery was lost with a
//! crashed host; a bound consumer that has one anyway lowers `max_attempts`
//! to it (see [`Source::max_deliveries`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::{self, Stream as Messages};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, Subject};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::{Ack, Acknowledge, Delivery, Settlement, Source, SourceError};
use crate::config::DeliverFrom;
use crate::nats::message_event;

/// The JetStream part of a pipeline's source config.
pub struct JetStreamSettings {
    pub stream: String,
    pub subjects: Vec<String>,
    pub consumer: String,
    pub filter_subjects: Vec<String>,
    pub deliver: DeliverFrom,
    pub ack_wait: Duration,
    pub max_ack_pending: usize,
    /// Messages asked for per pull request.
    pub fetch_batch: usize,
    /// Where the consumer's pending count is reported (the pipeline's gauge).
    pub lag: Arc<std::sync::atomic::AtomicI64>,
}

pub struct JetStreamSource {
    messages: Messages,
    shared: Arc<Shared>,
    acker: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    lag: tokio::task::JoinHandle<()>,
    describe: String,
    max_deliver: Option<u32>,
    /// Transient pull errors in a row, to log the first and then quietly.
    errors_in_a_row: u32,
}

/// What the source and its acks share.
struct Shared {
    /// Unsettled deliveries by local id: their ack subject and when they were
    /// last known to be alive (delivered or signalled in progress).
    in_flight: Mutex<HashMap<u64, (Subject, Instant)>>,
    next_id: std::sync::atomic::AtomicU64,
    /// To the acker task. Unbounded, but never holds more than one message
    /// per unsettled delivery, which `max_ack_pending` bounds.
    to_acker: mpsc::UnboundedSender<AckMessage>,
}

enum AckMessage {
    Send(Subject, AckKind),
    /// Publish what is queued, flush the connection, then answer.
    Flush(oneshot::Sender<()>),
}

impl JetStreamSource {
    pub async fn open(client: Client, settings: &JetStreamSettings) -> Result<Self, SourceError> {
        let describe = format!("jetstream:{}/{}", settings.stream, settings.consumer);
        let failed = |message: String| SourceError::Broker { what: describe.clone(), message };
        let js = jetstream::new(client.clone());
        let stream = match js.get_stream(&settings.stream).await {
            Ok(stream) => stream,
            Err(err) if !settings.subjects.is_empty() && is_not_found(&err) => js
                .create_stream(jetstream::stream::Config {
                    name: settings.stream.clone(),
                    subjects: settings.subjects.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(format!("cannot create stream `{}`: {e}", settings.stream)))?,
            Err(err) if is_not_found(&err) => {
                return Err(failed(format!(
                    "stream `{}` does not exist; create it, or list its `subjects` in the source config so sluice creates it",
                    settings.stream
                )))
            }
            Err(err) => return Err(failed(format!("cannot look up stream `{}`: {err}", settings.stream))),
        };
        let (filter_subject, filter_subjects) = match settings.filter_subjects.as_slice() {
            [] => (String::new(), Vec::new()),
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let config = pull::Config {
            durable_name: Some(settings.consumer.clone()),
            filter_subject,
            filter_subjects,
            deliver_policy: match settings.deliver {
                DeliverFrom::All => DeliverPolicy::All,
                DeliverFrom::New => DeliverPolicy::New,
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: settings.ack_wait,
            max_deliver: -1,
            max_ack_pending: settings.max_ack_pending as i64,
            ..Default::default()
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer(&settings.consumer, config)
            .await
            .map_err(|e| failed(format!("cannot create or bind consumer `{}`: {e}", settings.consumer)))?;
        let bound = &consumer.cached_info().config;
        let max_deliver = u32::try_from(bound.max_deliver).ok().filter(|&n| n > 0);
        if let Some(n) = max_deliver {
            tracing::warn!(
                source = %describe,
                "consumer `{}` has max_deliver = {n}: the pipeline allows at most {n} attempts, and an event whose last delivery is lost with a crashed host is not delivered again (create the consumer without a limit to avoid this)",
                settings.consumer
            );
        }
        let ack_wait = bound.ack_wait;
        let messages = consumer
            .stream()
            .max_messages_per_batch(settings.fetch_batch.max(1))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| failed(format!("cannot start pulling from consumer `{}`: {e}", settings.consumer)))?;

        let (to_acker, from_sources) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { in_flight: Mutex::new(HashMap::new()), next_id: std::sync::atomic::AtomicU64::new(0), to_acker });
        let acker = tokio::spawn(run_acker(client, from_sources, describe.clone()));
        let heartbeat = tokio::spawn(run_heartbeat(Arc::downgrade(&shared), ack_wait));
        let lag = tokio::spawn(report_pending(consumer, settings.lag.clone()));
        Ok(Self { messages, shared, acker, heartbeat, lag, describe, max_deliver, errors_in_a_row: 0 })
    }

    fn delivery(&self, message: jetstream::Message) -> Result<Delivery, SourceError> {
        let info = message.info().map_err(|e| SourceError::Broker {
            what: self.describe.clone(),
            message: format!("a message without JetStream metadata: {e}"),
        })?;
        let id = format!("{}:{}", info.stream, info.stream_sequence);
        let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1);
        let timestamp_ms = (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        let jetstream::Message { message, .. } = message;
        let ack = match message.reply.clone() {
            Some(reply) => {
                let local = self.shared.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut in_flight) = self.shared.in_flight.lock() {
                    in_flight.insert(local, (reply.clone(), Instant::now()));
                }
                Ack::new(JetStreamAck { local, reply, shared: self.shared.clone() })
            }
            None => Ack::noop(),
        };
        // A stored message's reply subject is its ack subject, not a caller.
        let (partition, event) = message_event(&message, |_| id, timestamp_ms, attempt, None);
        Ok(Delivery { partition, event, defect: None, ack })
    }
}

fn is_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(e) if e.code() == 404)
}

#[async_trait::async_trait]
impl Source for JetStreamSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        loop {
            match self.messages.next().await {
                Some(Ok(message)) => {
                    if self.errors_in_a_row > 0 {
                        tracing::info!(source = %self.describe, "receiving messages again");
                        self.errors_in_a_row = 0;
                    }
                    return self.delivery(message).map(Some);
                }
                Some(Err(err)) => {
                    use pull::MessagesErrorKind as Kind;
                    match err.kind() {
                        // Transient: the server is restarting or unreachable;
                        // the stream re-issues its pull requests by itself.
                        Kind::MissingHeartbeat | Kind::Pull | Kind::NoResponders | Kind::Other => {
                            if self.errors_in_a_row == 0 {
                                tracing::warn!(source = %self.describe, "pulling messages failed, retrying: {err}");
                            }
                            self.errors_in_a_row += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        _ => {
                            return Err(SourceError::Broker {
                                what: self.describe.clone(),
                                message: format!("{err}; the consumer must be recreated (restart the pipeline)"),
                            })
                        }
                    }
                }
                None => {
                    return Err(SourceError::Broker { what: self.describe.clone(), message: "the consumer's message stream ended".into() })
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        self.heartbeat.abort();
        self.lag.abort();
        // Every ack is queued by now: push them to the server before leaving.
        let (done, flushed) = oneshot::channel();
        if self.shared.to_acker.send(AckMessage::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), flushed).await;
        }
        self.acker.abort();
        Ok(())
    }

    fn redelivers(&self) -> bool {
        true
    }

    fn max_deliveries(&self) -> Option<u32> {
        self.max_deliver
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

struct JetStreamAck {
    local: u64,
    reply: Subject,
    shared: Arc<Shared>,
}

impl Acknowledge for JetStreamAck {
    fn settle(self: Box<Self>, settlement: Settlement) {
        if let Ok(mut in_flight) = self.shared.in_flight.lock() {
            in_flight.remove(&self.local);
        }
        let kind = match settlement {
            Settlement::Done => AckKind::Ack,
            Settlement::DeadLettered => AckKind::Term,
            Settlement::Redeliver { delay } => AckKind::Nak(Some(delay)),
            Settlement::Abandon => AckKind::Nak(None),
        };
        // The acker is gone only once the source closed; the server then
        // redelivers after `ack_wait`, which at-least-once allows.
        let _ = self.shared.to_acker.send(AckMessage::Send(self.reply, kind));
    }
}

/// Publishes acks in the order they were settled.
async fn run_acker(client: Client, mut queue: mpsc::UnboundedReceiver<AckMessage>, describe: String) {
    let mut failures = 0u64;
    while let Some(message) = queue.recv().await {
        match message {
            AckMessage::Send(reply, kind) => {
                if let Err(err) = client.publish(reply, kind.into()).await {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(source = %describe, failures, "an acknowledgement could not be sent ({err}); the server will redeliver the event");
                    }
                }
            }
            AckMessage::Flush(done) => {
                let _ = client.flush().await;
                let _ = done.send(());
            }
        }
    }
}

/// Signals "still working" for events unsettled for a third of `ack_wait`.
async fn run_heartbeat(shared: std::sync::Weak<Shared>, ack_wait: Duration) {
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let now = Instant::now();
        let due: Vec<Subject> = match shared.in_flight.lock() {
            Ok(mut in_flight) => in_flight
                .values_mut()
                .filter(|(_, alive)| now.duration_since(*alive) >= period)
                .map(|(reply, alive)| {
                    *alive = now;
                    reply.clone()
                })
                .collect(),
            Err(_) => return,
        };
        for reply in due {
            let _ = shared.to_acker.send(AckMessage::Send(reply, AckKind::Progress));
        }
    }
}

/// Reports every 5 s the messages the consumer has not had acknowledged:
/// pending (not delivered yet) plus delivered and unacknowledged, like a
/// Kafka consumer lag counts from the committed offset.
async fn report_pending(consumer: PullConsumer, lag: Arc<std::sync::atomic::AtomicI64>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Ok(info) = consumer.get_info().await {
            let unacknowledged = info.num_pending.saturating_add(info.num_ack_pending as u64);
            lag.store(i64::try_from(unacknowledged).unwrap_or(i64::MAX), std::sync::atomic::Ordering::Relaxed);
        }
    }
}
