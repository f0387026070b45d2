//! NATS sinks: core publish and JetStream publish.
//!
//! A core NATS record is accepted once the server has it: a flusher task
//! follows each group of publishes with one PING/PONG round trip and then
//! advances the durable watermark. A JetStream record is accepted once the
//! stream acknowledges it; the record's id goes out as `Nats-Msg-Id`, so a
//! publish retried after a broker fault (or an output produced again from a
//! redelivered input) is stored once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, context::Context};
use async_nats::{Client, HeaderMap, Subject};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{watch, Notify};

use super::{Durable, Receipt, Record, Sink, SinkContext, SinkError};
use crate::config::{nats_server_of, NatsServer, Secret};
use crate::event::Output;
use crate::nats::{check_headers, into_nats_headers, publishable_subject, Unpublishable, VersionHeader};

/// How long a JetStream publish waits for its acknowledgement before it is
/// sent again (with the same `Nats-Msg-Id`, so never stored twice).
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a publish keeps being retried while no stream answers for its
/// subject (a restarting server) before the pipeline stops with an error.
const NO_STREAM_PATIENCE: Duration = Duration::from_secs(30);

/// Core NATS publish. A record is accepted once the server has it (a
/// flush round trip covers each group of records); whether anyone was
/// subscribed is not known, as always with core NATS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
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
    /// Subject for outputs without a destination; an output's destination
    /// (that names no route) is its subject. Unset: every output needs one.
    #[serde(default)]
    pub subject: Option<String>,
}

impl NatsSinkConfig {
    /// A publisher on the server's shared connection.
    pub async fn build(&self, cx: &SinkContext<'_>) -> Result<NatsSink, SinkError> {
        Ok(NatsSink::core(cx.nats(&self.server()).await?, self.subject.clone()))
    }

    /// The server and how to log in to it.
    pub fn server(&self) -> NatsServer {
        nats_server_of!(self)
    }
}

/// JetStream publish: a record is accepted once the stream acknowledges
/// it. Each record carries a `Nats-Msg-Id` made of the input event's id
/// and the output's index, so the stream drops the copies a redelivered
/// input would otherwise produce (within its duplicate window).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSinkConfig {
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
    /// Subject for outputs without a destination, as for `nats`.
    #[serde(default)]
    pub subject: Option<String>,
    /// A stream to create, capturing `subject`, if no stream does yet.
    /// Unset: a stream must already capture `subject`.
    #[serde(default)]
    pub stream: Option<String>,
}

impl JetStreamSinkConfig {
    /// A publisher on the server's shared connection; creates `stream`
    /// when it is named and missing.
    pub async fn build(&self, cx: &SinkContext<'_>) -> Result<JetStreamSink, SinkError> {
        JetStreamSink::open(cx.nats(&self.server()).await?, self.subject.clone(), self.stream.clone()).await
    }

    /// The server and how to log in to it.
    pub fn server(&self) -> NatsServer {
        nats_server_of!(self)
    }
}

/// Core NATS publish.
pub struct NatsSink {
    client: Client,
    /// `subject` as the client's type, made and checked once: publishing to
    /// it clones a reference instead of copying the name twice per message.
    default: Option<Result<Subject, Unpublishable>>,
    /// The version header, made once per plugin version.
    version: VersionHeader,
    max_payload: usize,
    describe: String,
    sent: Arc<AtomicU64>,
    kick: Arc<Notify>,
    durable: watch::Receiver<Durable>,
    flusher: tokio::task::JoinHandle<()>,
}

impl NatsSink {
    pub fn core(client: Client, subject: Option<String>) -> Self {
        let describe = format!("nats:{}", subject.as_deref().unwrap_or("<per output>"));
        let sent = Arc::new(AtomicU64::new(0));
        let kick = Arc::new(Notify::new());
        let (tx, durable) = watch::channel(Durable::UpTo(0));
        let flusher = tokio::spawn(run_flusher(client.clone(), sent.clone(), kick.clone(), tx));
        let max_payload = client.server_info().max_payload;
        let default = default_subject(subject.as_deref());
        Self { client, default, version: VersionHeader::default(), max_payload, describe, sent, kick, durable, flusher }
    }
}

/// A sink dropped without `close` (a restarted pipeline's old one) stops
/// its flusher too.
impl Drop for NatsSink {
    fn drop(&mut self) {
        self.flusher.abort();
    }
}

/// Advances the watermark after each flush round trip: everything published
/// before the flush began is then on the server.
async fn run_flusher(client: Client, sent: Arc<AtomicU64>, kick: Arc<Notify>, durable: watch::Sender<Durable>) {
    let mut flushed = 0;
    loop {
        kick.notified().await;
        let upto = sent.load(Ordering::Acquire);
        if upto == flushed {
            continue;
        }
        loop {
            match client.flush().await {
                Ok(()) => break,
                Err(err) => {
                    tracing::debug!("NATS flush failed ({err}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        flushed = upto;
        durable.send_replace(Durable::UpTo(upto));
    }
}

#[async_trait::async_trait]
impl Sink for NatsSink {
    async fn send(&self, record: Record) -> Result<Receipt, SinkError> {
        let failed = |message: String| SinkError::Write { what: self.describe.clone(), message };
        let (subject, headers, payload) = prepare(record, self.default.as_ref(), &self.version).map_err(|e| failed(e.to_string()))?;
        let published = if headers.is_empty() {
            self.client.publish(subject, payload).await
        } else {
            self.client.publish_with_headers(subject, headers, payload).await
        };
        published.map_err(|e| failed(e.to_string()))?;
        let seq = self.sent.fetch_add(1, Ordering::AcqRel) + 1;
        self.kick.notify_one();
        Ok(Receipt::watermark(seq, self.durable.clone()))
    }

    fn check(&self, destination: Option<&str>, output: &Output) -> Result<(), String> {
        check(self.max_payload, destination, self.default.as_ref(), output)
    }

    async fn close(&self) -> Result<(), SinkError> {
        let what = self.describe.clone();
        let result = self.client.flush().await.map_err(|e| SinkError::Write { what, message: e.to_string() });
        self.flusher.abort();
        result
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// JetStream publish, awaiting the stream's acknowledgement.
pub struct JetStreamSink {
    client: Client,
    js: Context,
    /// `subject` as the client's type (see [`NatsSink`]).
    default: Option<Result<Subject, Unpublishable>>,
    /// The version header, made once per plugin version.
    version: VersionHeader,
    max_payload: usize,
    describe: String,
}

impl JetStreamSink {
    /// Opens the sink, checking that a stream captures its default subject
    /// (or creating `stream` to capture it).
    pub async fn open(client: Client, subject: Option<String>, stream: Option<String>) -> Result<Self, SinkError> {
        let describe = format!("jetstream:{}", subject.as_deref().unwrap_or("<per output>"));
        let js = jetstream::ContextBuilder::new().ack_timeout(PUBLISH_ACK_TIMEOUT).build(client.clone());
        let failed = |message: String| SinkError::Open { what: describe.clone(), message };
        if let Some(subject) = &subject {
            match (&stream, js.stream_by_subject(subject.clone()).await) {
                (_, Ok(_)) => {}
                (Some(name), Err(_)) => {
                    js.get_or_create_stream(jetstream::stream::Config {
                        name: name.clone(),
                        subjects: vec![subject.clone()],
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| failed(format!("cannot create stream `{name}` for subject `{subject}`: {e}")))?;
                }
                (None, Err(e)) => {
                    return Err(failed(format!(
                        "no stream captures subject `{subject}` ({e}); create one, or set `stream` in the sink config so sluice creates it"
                    )))
                }
            }
        }
        let max_payload = client.server_info().max_payload;
        let default = default_subject(subject.as_deref());
        Ok(Self { client, js, default, version: VersionHeader::default(), max_payload, describe })
    }
}

#[async_trait::async_trait]
impl Sink for JetStreamSink {
    async fn send(&self, mut record: Record) -> Result<Receipt, SinkError> {
        let failed = |message: String| SinkError::Write { what: self.describe.clone(), message };
        let id = record.id.take();
        let (subject, mut headers, payload) = prepare(record, self.default.as_ref(), &self.version).map_err(|e| failed(e.to_string()))?;
        if let Some(id) = &id {
            let id = id.parse::<async_nats::HeaderValue>().map_err(|_| failed(format!("event id {id:?} cannot be a Nats-Msg-Id")))?;
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        }
        let publish = Publish { js: self.js.clone(), subject, headers, payload, describe: self.describe.clone() };
        let first = publish.send().await?;
        Ok(Receipt::pending(Box::pin(publish.confirm(first))))
    }

    fn check(&self, destination: Option<&str>, output: &Output) -> Result<(), String> {
        check(self.max_payload, destination, self.default.as_ref(), output)
    }

    fn wants_ids(&self) -> bool {
        true
    }

    async fn close(&self) -> Result<(), SinkError> {
        let what = self.describe.clone();
        self.client.flush().await.map_err(|e| SinkError::Write { what, message: e.to_string() })
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// One JetStream publish, kept so it can be sent again.
struct Publish {
    js: Context,
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
    describe: String,
}

impl Publish {
    async fn send(&self) -> Result<jetstream::context::PublishAckFuture, SinkError> {
        self.js
            .publish_with_headers(self.subject.clone(), self.headers.clone(), self.payload.clone())
            .await
            .map_err(|e| SinkError::Write { what: self.describe.clone(), message: e.to_string() })
    }

    /// Waits for the stream's acknowledgement, publishing again while the
    /// server is unreachable or restarting.
    async fn confirm(self, mut pending: jetstream::context::PublishAckFuture) -> Result<(), SinkError> {
        let mut no_stream_since: Option<Instant> = None;
        let mut delay = Duration::from_millis(50);
        loop {
            let err = match pending.await {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            let retry = match err.kind() {
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => true,
                PublishErrorKind::StreamNotFound => no_stream_since.get_or_insert_with(Instant::now).elapsed() < NO_STREAM_PATIENCE,
                _ => false,
            };
            if !retry {
                let hint = if err.kind() == PublishErrorKind::StreamNotFound {
                    format!(" (no stream captures subject `{}`)", self.subject)
                } else {
                    String::new()
                };
                return Err(SinkError::Write { what: self.describe.clone(), message: format!("{err}{hint}") });
            }
            tracing::debug!(sink = %self.describe, subject = %self.subject, "publish not acknowledged ({err}); sending again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            pending = self.send().await?;
        }
    }
}

/// A sink's default subject as the client's type, or why no message can
/// be published to it.
fn default_subject(subject: Option<&str>) -> Option<Result<Subject, Unpublishable>> {
    subject.map(|s| publishable_subject(s).map(|()| Subject::from(s.to_owned())))
}

/// The subject, headers and payload of `record`, or why it cannot be
/// published. The record's bytes move into the message: nothing is copied
/// on the way (the client's `String` subjects would be copied twice).
fn prepare(
    record: Record,
    default: Option<&Result<Subject, Unpublishable>>,
    version_header: &VersionHeader,
) -> Result<(Subject, HeaderMap, Bytes), Unpublishable> {
    let Record { destination, key, payload, headers, version, .. } = record;
    let subject = match destination {
        Some(subject) => {
            publishable_subject(&subject)?;
            Subject::from(subject)
        }
        None => default.ok_or(Unpublishable::NoSubject)?.clone()?,
    };
    let headers = into_nats_headers(headers, key, version_header.map(version.as_ref())?)?;
    Ok((subject, headers, Bytes::from(payload)))
}

/// Whether `output` can be published to `destination` (or the sink's
/// `default` subject, checked once when the sink was made) on a server
/// taking messages of up to `max` bytes.
fn check(max: usize, destination: Option<&str>, default: Option<&Result<Subject, Unpublishable>>, output: &Output) -> Result<(), String> {
    match destination {
        Some(subject) => publishable_subject(subject),
        None => default.ok_or(Unpublishable::NoSubject).and_then(|subject| subject.as_ref().map(|_| ()).map_err(Clone::clone)),
    }
    .map_err(|e| e.to_string())?;
    check_headers(&output.headers, output.key.as_deref()).map_err(|e| e.to_string())?;
    // The limit covers the header block too: `NATS/1.0\r\n`, a line per
    // header, a blank line, and room for the `Nats-Msg-Id` a JetStream sink adds.
    let headers: usize = output.headers.iter().map(|h| h.key.len() + h.value.len() + 4).sum::<usize>()
        + output.key.as_ref().map_or(0, |k| k.len() + 14)
        + 12
        + 128;
    let size = output.payload.len() + headers;
    if max > 0 && size > max {
        return Err(Unpublishable::TooLarge { size, max }.to_string());
    }
    Ok(())
}
