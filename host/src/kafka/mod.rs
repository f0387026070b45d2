//! What Kafka sources and sinks share: client settings, the mapping between
//! Kafka messages and events, and the conventions for request/reply.
//!
//! librdkafka reconnects by itself: a restarted broker costs a pause, not a
//! pipeline. Only opening is bounded (a metadata round trip), so a wrong
//! address fails the pipeline at start with a clear error.

pub(crate) mod instance;
pub(crate) mod offsets;
pub(crate) mod transaction;

pub use transaction::Transaction;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

use crate::config::{KafkaSasl, KafkaTls, Secret};
use crate::event::{Event, Header};

/// The `brokers` of a Kafka source or sink left unset: a broker on this
/// machine at Kafka's default port.
pub(crate) fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}

/// How long opening a source or sink waits for the cluster to answer.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Request headers of the NestJS Kafka transport: a request names the topic
/// (and partition) its reply goes to and a correlation id the reply carries
/// back. Sluice reads the reply topic from them, so a NestJS `ClientKafka`
/// (or anything speaking the same convention) can call a pipeline.
pub(crate) const REPLY_TOPIC_HEADER: &str = "kafka_replyTopic";
pub(crate) const REPLY_PARTITION_HEADER: &str = "kafka_replyPartition";
pub(crate) const CORRELATION_HEADER: &str = "kafka_correlationId";

/// The base client settings for `brokers`, with the user's extra
/// librdkafka `options` applied last.
pub fn client_config(brokers: &str, options: &BTreeMap<String, Secret>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", concat!("sluice/", env!("CARGO_PKG_VERSION")))
        // librdkafka logs through the `log` facade otherwise unseen; errors
        // and warnings reach tracing through [`Context`].
        .set_log_level(RDKafkaLogLevel::Warning);
    for (key, value) in options {
        config.set(key, &value.0);
    }
    config
}

/// The librdkafka properties of a source's or sink's `tls` and `sasl`,
/// then its `options` (validation refuses options that set the same).
pub(crate) fn connection_options(
    tls: Option<&KafkaTls>,
    sasl: Option<&KafkaSasl>,
    options: &BTreeMap<String, Secret>,
) -> BTreeMap<String, Secret> {
    let mut all = BTreeMap::new();
    let protocol = match (tls.is_some(), sasl.is_some()) {
        (false, false) => None,
        (true, false) => Some("ssl"),
        (false, true) => Some("sasl_plaintext"),
        (true, true) => Some("sasl_ssl"),
    };
    let mut set = |key: &str, value: String| {
        all.insert(key.to_owned(), Secret(value));
    };
    if let Some(protocol) = protocol {
        set("security.protocol", protocol.to_owned());
    }
    if let Some(tls) = tls {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        if let Some(ca) = &tls.ca_file {
            set("ssl.ca.location", path(ca));
        }
        if let Some(cert) = &tls.cert_file {
            set("ssl.certificate.location", path(cert));
        }
        if let Some(key) = &tls.key_file {
            set("ssl.key.location", path(key));
        }
        if let Some(password) = &tls.key_password {
            set("ssl.key.password", password.0.clone());
        }
    }
    if let Some(sasl) = sasl {
        set("sasl.mechanism", sasl.mechanism.librdkafka_name().to_owned());
        set("sasl.username", sasl.username.clone());
        set("sasl.password", sasl.password.0.clone());
    }
    all.extend(options.iter().map(|(k, v)| (k.clone(), v.clone())));
    all
}

/// The librdkafka properties `tls` and `sasl` set: `options` may not set
/// them too when those tables are given.
pub(crate) const SECURITY_PROPERTIES: [&str; 9] = [
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

/// librdkafka properties only a consumer reads (`C` in librdkafka's
/// CONFIGURATION.md). The exactly-once producer is built from the source's
/// `options` and leaves these out: given them, librdkafka warned at every
/// start that consumer properties are ignored.
const CONSUMER_ONLY: [&str; 24] = [
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "auto.commit.interval.ms",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "enable.partition.eof",
    "check.crcs",
    "client.rack",
    "consume.callback.max.messages",
];

/// [`client_config`] for the producer of an exactly-once source: the
/// source's `options` without the consumer-only ones (security, SASL and
/// other shared settings apply to both clients).
pub(crate) fn producer_config(brokers: &str, options: &BTreeMap<String, Secret>) -> ClientConfig {
    let shared: BTreeMap<String, Secret> =
        options.iter().filter(|(key, _)| !CONSUMER_ONLY.contains(&key.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    client_config(brokers, &shared)
}

/// While a broker is down, its connection errors are logged at most this
/// often per client; the next line says how many were not.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Client callbacks: librdkafka's errors and logs go to tracing, tagged with
/// what the client is for. A connection failure comes both as a `FAIL` log
/// line and as an error; only the error is logged (it names the broker),
/// and while a broker stays down at most once every 10 s.
pub struct Context {
    /// What the client is for (`sink orders`, `source payments`), in its
    /// log lines.
    pub(crate) describe: String,
    /// When an error was last logged, and how many were not logged since.
    last_error: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
    last_reason: LastError,
}

impl Context {
    pub(crate) fn new(describe: String) -> Self {
        Self { describe, last_error: std::sync::Mutex::new((None, 0)), last_reason: LastError::default() }
    }

    /// The last error this client reports, readable after the context was
    /// moved into the client (a `FutureProducer` does not give it back).
    pub(crate) fn last_error(&self) -> LastError {
        self.last_reason.clone()
    }
}

/// The last error librdkafka reported for a client (logged or not): an open
/// that times out says why (a refused password, an unknown CA). It names the
/// broker; librdkafka never puts passwords in its errors.
#[derive(Clone, Default)]
pub(crate) struct LastError(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl LastError {
    pub fn get(&self) -> Option<String> {
        match self.0.lock() {
            Ok(last) => last.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, reason: String) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(reason);
        }
    }

    /// Why opening a client on `brokers` failed: the last error librdkafka
    /// reported (authentication, TLS) if there is one, else that no broker
    /// answered.
    pub fn unreachable(&self, brokers: &str, error: impl std::fmt::Display) -> String {
        let secured = |last: &str| ["SASL", "SSL", "Authentication", "certificate"].iter().any(|word| last.contains(word));
        match self.get() {
            Some(last) if secured(&last) => format!("cannot connect to {brokers} ({error}): {last}; check the `tls` and `sasl` settings"),
            Some(last) => {
                format!("no broker of {brokers} answered within {}s ({error}): {last}; is Kafka running there?", OPEN_TIMEOUT.as_secs())
            }
            None => format!("no broker of {brokers} answered within {}s ({error}); is Kafka running there?", OPEN_TIMEOUT.as_secs()),
        }
    }
}

impl rdkafka::ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            // The same failure reaches `error` below, which rate-limits it;
            // a consumer's errors reach its queue instead, read only once
            // it is polled: remember this one, for an open that fails.
            _ if fac == "FAIL" => self.last_reason.set(log_message.to_owned()),
            L::Emerg | L::Alert | L::Critical | L::Error => tracing::error!(client = %self.describe, facility = fac, "{log_message}"),
            L::Warning => tracing::warn!(client = %self.describe, facility = fac, "{log_message}"),
            L::Notice | L::Info => tracing::info!(client = %self.describe, facility = fac, "{log_message}"),
            L::Debug => tracing::debug!(client = %self.describe, facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // "All brokers are down" sums up the errors before it: keep the
        // one that says why (a refused password, a certificate).
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.last_reason.set(format!("{error}: {reason}"));
        }
        let mut last = match self.last_error.lock() {
            Ok(last) => last,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = std::time::Instant::now();
        if last.0.is_some_and(|at| now.duration_since(at) < ERROR_LOG_EVERY) {
            last.1 += 1;
            return;
        }
        let skipped = std::mem::take(&mut last.1);
        last.0 = Some(now);
        drop(last);
        // `reason` names the broker (`host:port/id: Connect to … failed`).
        if skipped > 0 {
            tracing::warn!(client = %self.describe, "kafka: {error}: {reason} (librdkafka retries by itself; {skipped} more errors since the last line)");
        } else {
            tracing::warn!(client = %self.describe, "kafka: {error}: {reason} (librdkafka retries by itself)");
        }
    }
}

/// Consumers that only read (the plugin store's) need no rebalance hooks.
impl rdkafka::consumer::ConsumerContext for Context {}

/// The event a Kafka message carries. Its id is `<topic>/<partition>/<offset>`,
/// the same on every redelivery. A message with a `kafka_replyTopic` header
/// is a request.
pub fn message_event<M: Message>(message: &M) -> Event {
    let mut headers = Vec::new();
    let mut reply_to = None;
    if let Some(kafka_headers) = message.headers() {
        headers.reserve(kafka_headers.count());
        for header in kafka_headers.iter() {
            let value = header.value.unwrap_or_default().to_vec();
            if header.key == REPLY_TOPIC_HEADER {
                reply_to = String::from_utf8(value.clone()).ok().filter(|t| !t.is_empty());
            }
            headers.push(Header { key: header.key.to_owned(), value });
        }
    }
    let timestamp_ms = message.timestamp().to_millis().and_then(|ms| u64::try_from(ms).ok()).unwrap_or_else(crate::event::now_ms);
    let mut id = String::with_capacity(message.topic().len() + 24);
    id.push_str(message.topic());
    id.push('/');
    id.push_str(itoa::Buffer::new().format(message.partition()));
    id.push('/');
    id.push_str(itoa::Buffer::new().format(message.offset()));
    Event {
        id,
        source: message.topic().to_owned(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers,
        timestamp_ms,
        attempt: 1,
        reply_to,
    }
}

/// This machine's name, for default transactional ids.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::ClientContext as _;

    use super::*;

    #[test]
    fn the_exactly_once_producer_gets_no_consumer_properties() {
        let options: BTreeMap<String, Secret> =
            [("session.timeout.ms", "6000"), ("security.protocol", "plaintext"), ("fetch.max.bytes", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Secret(v.to_owned())))
                .collect();
        let config = producer_config("b:9092", &options);
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
        assert_eq!((config.get("session.timeout.ms"), config.get("fetch.max.bytes")), (None, None));
        assert_eq!(client_config("b:9092", &options).get("session.timeout.ms"), Some("6000"));
    }

    /// `tls` and `sasl` choose the security protocol and fill in the
    /// librdkafka properties; `options` come on top.
    #[test]
    fn tls_and_sasl_tables_become_librdkafka_properties() {
        let tls = KafkaTls {
            ca_file: Some("/etc/ca.pem".into()),
            cert_file: Some("c.pem".into()),
            key_file: Some("c.key".into()),
            key_password: None,
        };
        let sasl = KafkaSasl { mechanism: crate::config::SaslMechanism::ScramSha512, username: "u".into(), password: Secret("p".into()) };
        let options = BTreeMap::from([("linger.ms".to_owned(), Secret("20".into()))]);
        let get = |all: &BTreeMap<String, Secret>, key: &str| all.get(key).map(|v| v.0.clone());
        let both = connection_options(Some(&tls), Some(&sasl), &options);
        assert_eq!(get(&both, "security.protocol").as_deref(), Some("sasl_ssl"));
        assert_eq!(get(&both, "ssl.ca.location").as_deref(), Some("/etc/ca.pem"));
        assert_eq!(get(&both, "ssl.certificate.location").as_deref(), Some("c.pem"));
        assert_eq!(get(&both, "ssl.key.location").as_deref(), Some("c.key"));
        assert_eq!(get(&both, "sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!((get(&both, "sasl.username").as_deref(), get(&both, "sasl.password").as_deref()), (Some("u"), Some("p")));
        assert_eq!(get(&both, "linger.ms").as_deref(), Some("20"));
        assert_eq!(get(&connection_options(Some(&tls), None, &options), "security.protocol").as_deref(), Some("ssl"));
        assert_eq!(get(&connection_options(None, Some(&sasl), &options), "security.protocol").as_deref(), Some("sasl_plaintext"));
        assert_eq!(connection_options(None, None, &options), options, "plaintext: only the options");
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A broker down: librdkafka reports each failed connect as a FAIL log
    /// line and as an error. One line for the first, naming the broker;
    /// none for the repeats within the interval.
    #[test]
    fn an_outage_is_logged_once_per_interval_with_the_broker() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || sink.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            let context = Context::new("source kafka:g/t".into());
            for attempt in 0..10 {
                let reason = format!("127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after {attempt}ms in state CONNECT)");
                context.log(RDKafkaLogLevel::Error, "FAIL", &reason);
                context.error(KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure), &reason);
            }
        });
        let text = String::from_utf8(captured.0.lock().map(|b| b.clone()).unwrap_or_default()).unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("WARN") && text.contains("127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed"), "{text}");
    }
}
