//! What Kafka sources and sinks share: client settings, the mapping between
//! Kafka messages and events, and the conventions for request/reply.
//!
//! librdkafka reconnects by itself: a restarted broker costs a pause, not a
//! pipeline. Only opening is bounded (a metadata round trip), so a wrong
//! address fails the pipeline at start with a clear error.

pub mod offsets;
pub mod transaction;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

use crate::config::Secret;
use crate::event::{Event, Header};

/// How long opening a source or sink waits for the cluster to answer.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Request headers of the NestJS Kafka transport: a request names the topic
/// (and partition) its reply goes to and a correlation id the reply carries
/// back. Sluice reads the reply topic from them, so a NestJS `ClientKafka`
/// (or anything speaking the same convention) can call a pipeline.
pub const REPLY_TOPIC_HEADER: &str = "kafka_replyTopic";
pub const REPLY_PARTITION_HEADER: &str = "kafka_replyPartition";
pub const CORRELATION_HEADER: &str = "kafka_correlationId";

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

/// Client callbacks: librdkafka's errors and logs go to tracing, tagged with
/// what the client is for. Connection errors repeat while a broker is down,
/// so they are logged at `warn` once per change, not per retry.
pub struct Context {
    pub describe: String,
    last_error: std::sync::Mutex<Option<String>>,
}

impl Context {
    pub fn new(describe: String) -> Self {
        Self { describe, last_error: std::sync::Mutex::new(None) }
    }
}

impl rdkafka::ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => tracing::error!(client = %self.describe, facility = fac, "{log_message}"),
            L::Warning => tracing::warn!(client = %self.describe, facility = fac, "{log_message}"),
            L::Notice | L::Info => tracing::info!(client = %self.describe, facility = fac, "{log_message}"),
            L::Debug => tracing::debug!(client = %self.describe, facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let text = format!("{error}: {reason}");
        let mut last = match self.last_error.lock() {
            Ok(last) => last,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.as_deref() != Some(&text) {
            tracing::warn!(client = %self.describe, "kafka: {text} (librdkafka retries by itself)");
            *last = Some(text);
        }
    }
}

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
    let timestamp_ms = message
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or_else(crate::event::now_ms);
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
pub fn hostname() -> String {
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
