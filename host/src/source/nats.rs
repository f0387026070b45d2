//! Core NATS: a subscription, optionally in a queue group.
//!
//! At-most-once by nature: the server does not keep messages, so there is
//! nothing to acknowledge and nothing to redeliver. A message with a reply
//! subject is a request; its replies go back through [`Source::reply_sink`]
//! on the same connection.

use std::sync::Arc;

use async_nats::{Client, Subscriber};
use futures::StreamExt;

use super::{Ack, Delivery, Source, SourceError};
use crate::event::{now_ms, Header};
use crate::nats::message_event;
use crate::sink::nats::NatsSink;
use crate::sink::Sink;

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
