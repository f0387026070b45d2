//! `[pipelines.<name>.clients.<destination>]`: the services a plugin may
//! call (`sluice:plugin/client`, the `client` capability), one table per
//! destination the plugin names.
//!
//! One flat table per destination: `transport` says which of the
//! connection keys apply (a NATS server's `url` and login keys, or Kafka
//! `brokers`, `tls`, `sasl` and `options`, the same keys and meaning as a
//! NATS or Kafka sink's), and [`ClientConfig::validate`] refuses keys of
//! the other transport by name (serde cannot combine `deny_unknown_fields`
//! with a flattened shared part, so the cross-field rules live here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{Codec, KafkaSasl, KafkaTls, NatsServer, Secret};

/// How a destination is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Core NATS request/reply (an inbox per request) and publish.
    Nats,
    /// Kafka: a request is a record carrying NestJS's reply headers
    /// (`kafka_correlationId`, `kafka_replyTopic`, `kafka_replyPartition`),
    /// its answer a record on `reply_topic` with the same correlation id.
    Kafka,
}

/// What a destination may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientUse {
    /// `client.request`: send and wait for the answer.
    Request,
    /// `client.emit`: publish with the event's outputs, no answer.
    Emit,
}

/// One `[pipelines.<name>.clients.<destination>]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `nats` or `kafka`.
    pub transport: Transport,
    /// NATS: server URL(s), comma-separated. Default `nats://127.0.0.1:4222`.
    #[serde(default)]
    pub url: Option<String>,
    /// NATS: as for a NATS sink (`token`, `credentials`, `user`,
    /// `password`, `nkey`, `tls_ca`, `tls_cert`, `tls_key`).
    #[serde(default)]
    pub token: Option<Secret>,
    /// NATS: a `.creds` file (JWT and seed).
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// NATS: user name, with `password`.
    #[serde(default)]
    pub user: Option<Secret>,
    /// NATS: password, with `user`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// NATS: an NKey seed to sign the server's challenge with.
    #[serde(default)]
    pub nkey: Option<Secret>,
    /// NATS: the CA that signed the server's certificate.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// NATS: client certificate for mutual TLS, with `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// NATS: the client certificate's private key.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// NATS: the subject requests and emits go to. Default, with
    /// `codec = "nestjs"`: the route NestJS derives from `pattern`.
    #[serde(default)]
    pub subject: Option<String>,
    /// Kafka: bootstrap servers. Default `127.0.0.1:9092`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// Kafka: as for a Kafka sink.
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    /// Kafka: SASL login, as for a Kafka sink.
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// Kafka: librdkafka properties passed through as they are.
    #[serde(default)]
    pub options: BTreeMap<String, Secret>,
    /// Kafka: the topic requests and emits go to. Default, with
    /// `codec = "nestjs"`: the pattern (NestJS's Kafka transport uses the
    /// pattern as the topic).
    #[serde(default)]
    pub topic: Option<String>,
    /// Kafka: the topic answers come back on (required for `request`).
    /// The host reads it from its end, without a consumer group.
    #[serde(default)]
    pub reply_topic: Option<String>,
    /// `none` (default: payloads go as they are) or `nestjs` (a request is
    /// a NestJS packet `{pattern, data, id}`, its answer's `response` is
    /// the reply, its `err` a service error; an emit is `{pattern, data}`).
    #[serde(default)]
    pub codec: Codec,
    /// The NestJS message pattern (`codec = "nestjs"`): a string, or an
    /// object such as `{ cmd = "reserve" }`.
    #[serde(default)]
    pub pattern: Option<toml::Value>,
    /// How long a request waits for its answer unless the plugin says
    /// otherwise. Always capped at what is left of the handler's deadline
    /// (`policy.timeout`). Default 5s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// What the plugin may do with the destination: `["request"]`
    /// (default), `["emit"]` or both.
    #[serde(default = "default_allow")]
    pub allow: Vec<ClientUse>,
    /// Calls (requests and emits) one event may make to this destination.
    /// Default 10.
    #[serde(default = "default_max_calls")]
    pub max_calls_per_event: u32,
    /// The largest payload the plugin may send (before the codec's
    /// envelope). Default 1 MiB.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: ByteSize,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_allow() -> Vec<ClientUse> {
    vec![ClientUse::Request]
}

fn default_max_calls() -> u32 {
    10
}

/// NATS's default `max_payload` (1 MiB): a larger request would be refused
/// by a server left at its default anyway.
fn default_max_payload() -> ByteSize {
    ByteSize::mib(1)
}

impl ClientConfig {
    /// Whether the table's `allow` lets the plugin use the destination
    /// this way (`request` or `emit`).
    pub fn allows(&self, what: ClientUse) -> bool {
        self.allow.contains(&what)
    }

    /// The NATS server, for a `nats` destination.
    pub fn nats_server(&self) -> NatsServer {
        NatsServer {
            url: self.url.clone().unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            token: self.token.clone(),
            credentials: self.credentials.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            nkey: self.nkey.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }

    /// Kafka bootstrap servers.
    pub fn brokers(&self) -> String {
        self.brokers.clone().unwrap_or_else(|| "127.0.0.1:9092".into())
    }

    /// The pattern as JSON (for the NestJS envelope).
    pub fn pattern_json(&self) -> Option<serde_json::Value> {
        self.pattern.as_ref().and_then(|p| serde_json::to_value(p).ok())
    }

    /// The subject or topic requests and emits go to.
    pub fn address(&self) -> Option<String> {
        let explicit = match self.transport {
            Transport::Nats => self.subject.clone(),
            Transport::Kafka => self.topic.clone(),
        };
        explicit.or_else(|| self.pattern_json().map(|p| crate::codec::nestjs::route(&p)))
    }

    /// The rules serde cannot check; `Err((key, message))`, the key
    /// relative to the table.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let (wrong, transport): (&[(&'static str, bool)], &str) = match self.transport {
            Transport::Nats => (
                &[
                    ("brokers", self.brokers.is_some()),
                    ("tls", self.tls.is_some()),
                    ("sasl", self.sasl.is_some()),
                    ("options", !self.options.is_empty()),
                    ("topic", self.topic.is_some()),
                    ("reply_topic", self.reply_topic.is_some()),
                ],
                "nats",
            ),
            Transport::Kafka => (
                &[
                    ("url", self.url.is_some()),
                    ("token", self.token.is_some()),
                    ("credentials", self.credentials.is_some()),
                    ("user", self.user.is_some()),
                    ("password", self.password.is_some()),
                    ("nkey", self.nkey.is_some()),
                    ("tls_ca", self.tls_ca.is_some()),
                    ("tls_cert", self.tls_cert.is_some()),
                    ("tls_key", self.tls_key.is_some()),
                    ("subject", self.subject.is_some()),
                ],
                "kafka",
            ),
        };
        if let Some((key, _)) = wrong.iter().find(|(_, set)| *set) {
            return Err((key, format!("not a key of a `transport = \"{transport}\"` client")));
        }
        match (&self.pattern, self.codec) {
            (Some(_), Codec::None) => return Err(("pattern", "only with `codec = \"nestjs\"`".into())),
            (None, Codec::Nestjs) => {
                return Err(("pattern", "missing: `codec = \"nestjs\"` needs the message pattern, e.g. `pattern = \"reserve\"` or `pattern = { cmd = \"reserve\" }`".into()))
            }
            (Some(pattern), Codec::Nestjs) if !(pattern.is_str() || pattern.is_table() || pattern.is_integer()) => {
                return Err(("pattern", "a string or a table, e.g. `pattern = { cmd = \"reserve\" }`".into()))
            }
            _ => {}
        }
        let Some(address) = self.address() else {
            let key = if self.transport == Transport::Nats { "subject" } else { "topic" };
            return Err((key, "missing: where requests go".into()));
        };
        match self.transport {
            Transport::Nats => {
                crate::nats::publishable_subject(&address).map_err(|e| ("subject", e.to_string()))?;
            }
            Transport::Kafka => {
                if !super::valid_topic(&address) {
                    return Err(("topic", format!("{address:?} is not a valid Kafka topic name")));
                }
                match &self.reply_topic {
                    Some(reply) if !super::valid_topic(reply) => {
                        return Err(("reply_topic", format!("{reply:?} is not a valid Kafka topic name")))
                    }
                    Some(reply) if *reply == address => return Err(("reply_topic", "must differ from the topic requests go to".into())),
                    None if self.allows(ClientUse::Request) => {
                        return Err(("reply_topic", "missing: a Kafka request needs the topic its answers come back on".into()))
                    }
                    _ => {}
                }
            }
        }
        if self.allow.is_empty() {
            return Err(("allow", "must allow `request`, `emit` or both".into()));
        }
        if self.max_calls_per_event == 0 {
            return Err(("max_calls_per_event", "must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be greater than zero, e.g. \"5s\"".into()));
        }
        if self.max_payload_bytes.as_u64() == 0 || self.max_payload_bytes.as_u64() > u64::from(u32::MAX) {
            return Err(("max_payload_bytes", "must be between 1 byte and 4 GiB".into()));
        }
        Ok(())
    }

    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.credentials, &mut self.tls_ca, &mut self.tls_cert, &mut self.tls_key].into_iter().flatten() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(tls) = self.tls.as_mut() {
            tls.resolve_paths(base);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientConfig, String> {
        toml::from_str::<ClientConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_nats_request_destination_with_defaults() -> Result<(), String> {
        let client = parse("transport = \"nats\"\nsubject = \"inventory.reserve\"")?;
        assert_eq!(client.validate(), Ok(()));
        assert_eq!(client.timeout, Duration::from_secs(5));
        assert!(client.allows(ClientUse::Request) && !client.allows(ClientUse::Emit));
        assert_eq!(client.address().as_deref(), Some("inventory.reserve"));
        Ok(())
    }

    #[test]
    fn a_nestjs_pattern_gives_the_subject() -> Result<(), String> {
        let client = parse("transport = \"nats\"\ncodec = \"nestjs\"\npattern = { cmd = \"reserve\" }")?;
        assert_eq!(client.validate(), Ok(()));
        assert_eq!(client.address().as_deref(), Some("{\"cmd\":\"reserve\"}"));
        Ok(())
    }

    #[test]
    fn keys_of_the_other_transport_are_named() -> Result<(), String> {
        let client = parse("transport = \"nats\"\nsubject = \"a\"\nreply_topic = \"r\"")?;
        assert_eq!(client.validate().map_err(|e| e.0), Err("reply_topic"));
        let client = parse("transport = \"kafka\"\ntopic = \"a\"")?;
        assert_eq!(client.validate().map_err(|e| e.0), Err("reply_topic"));
        let client = parse("transport = \"kafka\"\ntopic = \"a\"\nallow = [\"emit\"]")?;
        assert_eq!(client.validate(), Ok(()));
        Ok(())
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(parse("transport = \"nats\"\nsubject = \"a\"\nsubjet = \"b\"").is_err());
    }
}
