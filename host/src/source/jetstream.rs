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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::{self, Stream as Messages};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, Subject};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::{Ack, Acknowledge, Delivery, Settlement, Source, SourceContext, SourceError};
use crate::config::{nats_server_of, NatsServer, Secret};
use crate::nats::message_event;

/// A JetStream stream, read through a durable pull consumer. At-least-once:
/// a message is acknowledged only after its outputs (or dead-letter record)
/// are durably accepted; otherwise the server delivers it again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSourceConfig {
    /// Server URL(s), comma-separated. Default `nats://127.0.0.1:4222`.
    #[serde(default = "crate::nats::default_url")]
    pub url: String,
    /// Authentication token; keep it in the environment: `token = "${NATS_TOKEN}"`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A `.creds` file (JWT and NKey seed), for decentralised auth.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// User name for user/password authentication (with `password`).
    #[serde(default)]
    pub user: Option<Secret>,
    /// Password for `user`; keep it in the environment: `password = "${NATS_PASSWORD}"`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// An NKey user seed (`SU…`) to sign the server's challenge with;
    /// keep it in the environment: `nkey = "${NATS_NKEY_SEED}"`.
    #[serde(default)]
    pub nkey: Option<Secret>,
    /// PEM file of the certificate authority the server's certificate
    /// must chain to (instead of the system's roots). Implies TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (mTLS),
    /// with `tls_key`. Implies TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The stream to read.
    pub stream: String,
    /// Subjects of the stream, used only to create it when it does not
    /// exist. Empty (default): the stream must exist.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Durable consumer name. Created if missing (with the settings
    /// below); bound as it is if it exists. Hosts sharing a consumer share
    /// the messages.
    pub consumer: String,
    /// Only messages on these subjects (of the stream). Empty: all.
    #[serde(default)]
    pub filter_subjects: Vec<String>,
    /// Where a new consumer starts: `all` (default) or `new`.
    #[serde(default)]
    pub deliver: DeliverFrom,
    /// How long the server waits for an acknowledgement before delivering
    /// a message again. Sluice sends in-progress signals for events that
    /// take longer (a slow handler, retries in place, a slow sink), so
    /// this only matters when the host dies. Default 30s.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Messages delivered but not yet acknowledged, at most: the bound on
    /// work in flight for this consumer. Default 2048.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: usize,
}

/// Where a new JetStream consumer starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliverFrom {
    /// From the first message the stream holds.
    #[default]
    All,
    /// Only messages published after the consumer is created.
    New,
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ack_pending() -> usize {
    2048
}

impl JetStreamSourceConfig {
    /// Binds (or creates) the durable consumer on the server's shared
    /// connection, pulling `cx.fetch_batch` messages at a time.
    pub async fn build(&self, cx: SourceContext<'_>) -> Result<JetStreamSource, SourceError> {
        JetStreamSource::open(cx.nats(&self.server()).await?, self, cx.fetch_batch, cx.lag).await
    }

    /// The server and how to log in to it.
    pub fn server(&self) -> NatsServer {
        nats_server_of!(self)
    }
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
    async fn open(
        client: Client,
        settings: &JetStreamSourceConfig,
        fetch_batch: usize,
        lag: Arc<std::sync::atomic::AtomicI64>,
    ) -> Result<Self, SourceError> {
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
            .max_messages_per_batch(fetch_batch.max(1))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| failed(format!("cannot start pulling from consumer `{}`: {e}", settings.consumer)))?;

        let (to_acker, from_sources) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { in_flight: Mutex::new(HashMap::new()), next_id: std::sync::atomic::AtomicU64::new(0), to_acker });
        let acker = tokio::spawn(run_acker(client, from_sources, describe.clone()));
        let heartbeat = tokio::spawn(run_heartbeat(Arc::downgrade(&shared), ack_wait));
        let lag = tokio::spawn(report_pending(consumer, lag));
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
