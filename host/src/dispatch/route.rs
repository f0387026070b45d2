//! Where each output goes: a reply to the request it answers, a named route,
//! or the default sink (with the destination as its topic/subject); and the
//! error reply a request gets when its handler fails or does not answer.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use crate::codec::nestjs;
use crate::config::Codec;
use crate::event::{text_header, Header, Output};
use crate::sink::{Record, Sink};

/// Request headers copied to every reply (and error reply), compared without
/// regard to case, so a caller can match the answer to its call.
/// `kafka_correlationId` is the NestJS Kafka transport's.
pub const CORRELATION_HEADERS: [&str; 6] =
    ["correlation-id", "x-correlation-id", "x-request-id", "traceparent", "tracestate", crate::kafka::CORRELATION_HEADER];

/// What a reply needs to know about the request it answers.
#[derive(Debug, Clone)]
pub struct Request {
    pub reply_to: String,
    /// The request's correlation headers ([`CORRELATION_HEADERS`]).
    pub correlation: Vec<Header>,
    /// The NestJS packet id (the `nestjs-id` header the `nestjs` codec
    /// sets), which a NestJS reply carries back.
    pub packet_id: Option<String>,
    /// The partition the caller reads replies from (NestJS's Kafka
    /// transport: `kafka_replyPartition`).
    pub reply_partition: ReplyPartition,
}

/// The `kafka_replyPartition` header of a request, as read.
///
/// A reply goes to the partition its caller named: NestJS's `ClientKafka`
/// reads only the reply partitions its consumer group gave it (several
/// client instances share a reply topic that way), so an answer on another
/// partition is never seen. A request that names none, or one that cannot
/// be used, is answered on partition 0 rather than dead-lettered: by the
/// time the reply is sent the handler has done its work and its other
/// outputs are published, and a dead letter would reach the caller no
/// better. Partition 0 is deterministic, and where a caller that names no
/// partition (Spring's `ReplyingKafkaTemplate` without one, kcat, a
/// consumer of the whole topic) finds it. An unusable header is a caller's
/// bug: it is logged and counted (`sluice_reply_partition_fallbacks_total`)
/// so an operator sees it; a missing one is not (not every request/reply
/// client names a partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyPartition {
    /// No header: partition 0.
    Unnamed,
    /// The partition named; if the reply topic has no such partition, the
    /// reply goes to partition 0 (see [`crate::dispatch::publish`]).
    Named(i32),
    /// A header that is not a partition number (the value as text).
    Unreadable(String),
}

impl ReplyPartition {
    /// The header's value: decimal text (NestJS), or a 4-byte big-endian
    /// integer (Spring Kafka's `KafkaHeaders.REPLY_PARTITION`). Four ASCII
    /// digits read as text: as an integer they would be over 800 million,
    /// which no topic has.
    fn of(value: Option<&[u8]>) -> Self {
        let Some(value) = value else { return Self::Unnamed };
        let text = std::str::from_utf8(value).ok().map(str::trim);
        let number = match text.map(str::parse::<i32>) {
            Some(Ok(n)) => Some(n),
            _ => <[u8; 4]>::try_from(value).ok().map(i32::from_be_bytes),
        };
        match number {
            Some(n) if n >= 0 => Self::Named(n),
            _ => Self::Unreadable(String::from_utf8_lossy(value).into_owned()),
        }
    }

    /// The partition a reply is first sent to.
    pub fn partition(&self) -> i32 {
        match self {
            Self::Named(n) => *n,
            Self::Unnamed | Self::Unreadable(_) => 0,
        }
    }
}

impl Request {
    /// The request an event is, if it expects a reply.
    pub fn of(reply_to: Option<String>, headers: &[Header]) -> Option<Self> {
        let reply_to = reply_to?;
        let correlation = headers.iter().filter(|h| CORRELATION_HEADERS.iter().any(|c| h.key.eq_ignore_ascii_case(c))).cloned().collect();
        let packet_id = crate::event::header(headers, nestjs::ID_HEADER).map(|id| String::from_utf8_lossy(id).into_owned());
        let reply_partition = ReplyPartition::of(
            headers.iter().find(|h| h.key.eq_ignore_ascii_case(crate::kafka::REPLY_PARTITION_HEADER)).map(|h| h.value.as_slice()),
        );
        Some(Self { reply_to, correlation, packet_id, reply_partition })
    }
}

pub struct Router {
    default: Arc<dyn Sink>,
    routes: HashMap<String, Arc<dyn Sink>>,
    /// The source's own way back for replies (core NATS); otherwise replies
    /// go to the default sink.
    replies: Option<Arc<dyn Sink>>,
    /// How replies and error replies are encoded.
    codec: Codec,
    /// The source is Kafka: with `codec = "nestjs"`, NestJS's Kafka
    /// transport (no envelope; replies marked by headers).
    kafka: bool,
}

impl Router {
    pub fn new(default: Arc<dyn Sink>, routes: HashMap<String, Arc<dyn Sink>>) -> Self {
        Self { default, routes, replies: None, codec: Codec::None, kafka: false }
    }

    /// Encodes replies and error replies in `codec`'s format; `kafka`: the
    /// source is Kafka (NestJS's Kafka transport rather than its NATS one).
    pub fn with_codec(mut self, codec: Codec, kafka: bool) -> Self {
        self.codec = codec;
        self.kafka = kafka;
        self
    }

    /// The pipeline's wire codec (the lane decodes inputs with it).
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Whether the codec speaks NestJS's Kafka transport.
    pub fn kafka_transport(&self) -> bool {
        self.kafka
    }

    /// Sends replies through `sink` instead of the default sink.
    pub fn with_replies(mut self, sink: Option<Arc<dyn Sink>>) -> Self {
        self.replies = sink;
        self
    }

    fn reply_sink(&self) -> &Arc<dyn Sink> {
        self.replies.as_ref().unwrap_or(&self.default)
    }

    /// The sink and destination of `output`; `None` for a reply nobody waits
    /// for (the event was not a request).
    fn target<'s, 'o>(&'s self, output: &'o Output, request: Option<&'o Request>) -> Option<(&'s Arc<dyn Sink>, Option<&'o str>)> {
        if output.reply {
            return request.map(|r| (self.reply_sink(), Some(r.reply_to.as_str())));
        }
        Some(match output.destination.as_deref() {
            Some(name) => match self.routes.get(name) {
                Some(route) => (route, None),
                None => (&self.default, Some(name)),
            },
            None => (&self.default, None),
        })
    }

    /// Whether every output can be sent where it is going; the first that
    /// cannot, with why.
    pub fn check(&self, outputs: &[Output], request: Option<&Request>) -> Result<(), String> {
        for (index, output) in outputs.iter().enumerate() {
            if let Some((sink, destination)) = self.target(output, request) {
                sink.check(destination, output).map_err(|why| format!("output {index} cannot go to {}: {why}", sink.describe()))?;
            }
        }
        Ok(())
    }

    /// The sink and record for `output`, or `None` for a reply nobody waits
    /// for. `id` makes the record's id (see [`Record::id`]) if its sink
    /// wants one.
    pub fn route(&self, output: Output, request: Option<&Request>, id: impl FnOnce() -> String) -> Option<(&Arc<dyn Sink>, Record)> {
        let (sink, destination) = self.target(&output, request)?;
        let destination = destination.map(str::to_owned);
        let Output { key, mut payload, mut headers, reply, .. } = output;
        if let (true, Some(request)) = (reply, request) {
            match (self.codec, self.kafka) {
                (Codec::None, _) => {}
                (Codec::Nestjs, false) => payload = nestjs::reply(&payload, request.packet_id.as_deref()),
                (Codec::Nestjs, true) => headers.push(Header { key: nestjs::KAFKA_DISPOSED_HEADER.into(), value: vec![0] }),
            }
            for header in &request.correlation {
                if !headers.iter().any(|h| h.key.eq_ignore_ascii_case(&header.key)) {
                    headers.push(header.clone());
                }
            }
        }
        let id = sink.wants_ids().then(id);
        let partition = if reply { request.map(|r| r.reply_partition.partition()) } else { None };
        Some((sink, Record { destination, key, payload, headers, id, partition }))
    }

    /// The error reply to `request`, and where it goes.
    pub fn error_reply(&self, request: &Request, error: &ErrorReply<'_>) -> (&Arc<dyn Sink>, Record) {
        let code = error.code();
        let payload = match self.codec {
            Codec::None => json!({
                "error": {
                    "code": code,
                    "reason": error.reason,
                    "message": error.message,
                    "event_id": error.event_id,
                }
            })
            .to_string()
            .into_bytes(),
            Codec::Nestjs if self.kafka => nestjs::kafka_error(code, error.reason, error.message, error.event_id),
            Codec::Nestjs => nestjs::error_reply(code, error.reason, error.message, error.event_id, request.packet_id.as_deref()),
        };
        let mut headers = request.correlation.clone();
        // The NATS services convention (ADR-32): clients that know it see an
        // error without parsing the body.
        headers.push(text_header("Nats-Service-Error", one_line(error.message)));
        headers.push(text_header("Nats-Service-Error-Code", code.to_string()));
        if self.codec == Codec::Nestjs && self.kafka {
            headers.push(Header { key: nestjs::KAFKA_ERR_HEADER.into(), value: payload.clone() });
            headers.push(Header { key: nestjs::KAFKA_DISPOSED_HEADER.into(), value: vec![0] });
        }
        let record = Record {
            destination: Some(request.reply_to.clone()),
            key: None,
            payload,
            headers,
            id: None,
            partition: Some(request.reply_partition.partition()),
        };
        (self.reply_sink(), record)
    }
}

/// Why a request gets an error instead of an answer.
pub struct ErrorReply<'a> {
    /// `rejected`, `retries-exhausted`, `undecodable`, `no-reply` or
    /// `duplicate`.
    pub reason: &'a str,
    pub message: &'a str,
    pub event_id: &'a str,
}

impl ErrorReply<'_> {
    /// 400 when the request itself is at fault (rejected, undecodable), 409
    /// for a repeat of a request already handled (idempotency), 500 when the
    /// handler failed or gave no answer.
    fn code(&self) -> u16 {
        match self.reason {
            "rejected" | "undecodable" | "invalid" | "unsupported" => 400,
            "duplicate" => 409,
            _ => 500,
        }
    }
}

/// `message` on one line and at most 1 KiB, as a header value must be.
fn one_line(message: &str) -> String {
    let mut line: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if line.len() > 1024 {
        let mut end = 1024;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::ReplyPartition;

    #[test]
    fn a_reply_partition_reads_as_nestjs_and_spring_write_it() {
        assert_eq!(ReplyPartition::of(None), ReplyPartition::Unnamed);
        assert_eq!(ReplyPartition::of(Some(b"2")), ReplyPartition::Named(2));
        assert_eq!(ReplyPartition::of(Some(b" 0 ")), ReplyPartition::Named(0));
        // Spring Kafka: a 4-byte big-endian integer.
        assert_eq!(ReplyPartition::of(Some(&1i32.to_be_bytes())), ReplyPartition::Named(1));
        // Four ASCII digits are text, not an integer of 800 million.
        assert_eq!(ReplyPartition::of(Some(b"1234")), ReplyPartition::Named(1234));
        assert_eq!(ReplyPartition::of(Some(b"two")), ReplyPartition::Unreadable("two".into()));
        assert_eq!(ReplyPartition::of(Some(b"-1")), ReplyPartition::Unreadable("-1".into()));
        assert_eq!(ReplyPartition::of(Some(b"")), ReplyPartition::Unreadable(String::new()));
        assert_eq!(ReplyPartition::of(Some(b"two")).partition(), 0);
        assert_eq!(ReplyPartition::of(None).partition(), 0);
    }
}
