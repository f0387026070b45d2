//! Core NATS: a subscription, optionally in a queue group.
//!
//! At-most-once by nature: the server does not keep messages, so there is
//! nothing to acknowledge and nothing to redeliver. A message with a reply
//! subject is a request; its replies go back through [`Source::reply_sink`]
//! on the same connection.

use std::path::PathBuf;
use std::sync::Arc;

use async_nats::{Client, Subscriber};
use futures::StreamExt;
use serde::Deserialize;

use super::{Ack, Delivery, Source, SourceContext, SourceError};
use crate::config::{nats_server_of, NatsServer, Secret};
use crate::event::{now_ms, Header};
use crate::nats::message_event;
use crate::sink::nats::NatsSink;
use crate::sink::Sink;

/// Core NATS: a subscription. At-most-once: a message that arrives while
/// sluice is down, or is in flight when it stops, is gone (use `jetstream`
/// when that matters). A message with a reply subject is a request: the
/// plugin's reply output (or an error envelope) is published to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
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
    /// Subject to subscribe to; wildcards (`orders.*`, `orders.>`) allowed.
    pub subject: String,
    /// Queue group: the hosts subscribed with the same group share the
    /// messages (each goes to one of them). Unset: every host gets all.
    #[serde(default)]
    pub queue_group: Option<String>,
}

impl NatsSourceConfig {
    /// Subscribes on the server's shared connection.
    pub async fn build(&self, cx: SourceContext<'_>) -> Result<NatsSource, SourceError> {
        NatsSource::subscribe(cx.nats(&self.server()).await?, &self.subject, self.queue_group.as_deref()).await
    }

    /// The server and how to log in to it.
    pub fn server(&self) -> NatsServer {
        nats_server_of!(self)
    }
}

pub struct NatsSource {
    subscriber: Subscriber,
    replies: Arc<NatsSink>,
    describe: String,
    /// Makes event ids unique across hosts and restarts (core NATS messages
    /// have no id of their own unless the publisher set `Nats-Msg-Id`).
    id_prefix: String,
    received: u64,
}

impl NatsSource {
    pub async fn subscribe(client: Client, subject: &str, queue_group: Option<&str>) -> Result<Self, SourceError> {
        let what = || match queue_group {
            Some(group) => format!("nats:{subject} (queue group {group})"),
            None => format!("nats:{subject}"),
        };
        let subscribed = match queue_group {
            Some(group) => client.queue_subscribe(subject.to_owned(), group.to_owned()).await,
            None => client.subscribe(subject.to_owned()).await,
        };
        let subscriber = subscribed.map_err(|e| SourceError::Broker { what: what(), message: e.to_string() })?;
        // A subscription is live once the server has processed it: without
        // this round trip, messages published right after start could miss it.
        client.flush().await.map_err(|e| SourceError::Broker { what: what(), message: e.to_string() })?;
        Ok(Self {
            subscriber,
            replies: Arc::new(NatsSink::core(client, None)),
            describe: what(),
            id_prefix: format!("nats:{:012x}:", rand::random::<u64>() & 0xffff_ffff_ffff),
            received: 0,
        })
    }
}

#[async_trait::async_trait]
impl Source for NatsSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        let Some(message) = self.subscriber.next().await else {
            return Err(SourceError::Broker { what: self.describe.clone(), message: "the subscription was closed by the client".into() });
        };
        self.received += 1;
        let received = self.received;
        let prefix = &self.id_prefix;
        // The publisher's `Nats-Msg-Id` if it set one, else ours.
        let id = |headers: &[Header]| {
            crate::event::header(headers, "Nats-Msg-Id").and_then(|id| std::str::from_utf8(id).ok()).map(str::to_owned).unwrap_or_else(
                || {
                    let mut id = String::with_capacity(prefix.len() + 20);
                    id.push_str(prefix);
                    id.push_str(itoa::Buffer::new().format(received));
                    id
                },
            )
        };
        let reply_to = message.reply.as_ref().map(|r| r.to_string());
        let (partition, event) = message_event(&message, id, now_ms(), 1, reply_to);
        Ok(Some(Delivery { partition, event, defect: None, ack: Ack::noop() }))
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        let _ = self.subscriber.unsubscribe().await;
        Ok(())
    }

    fn reply_sink(&self) -> Option<Arc<dyn Sink>> {
        Some(self.replies.clone())
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
