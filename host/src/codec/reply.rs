//! How a reply goes back on the wire: what a request carries that its reply
//! must echo (correlation headers, the NestJS packet id, the partition the
//! caller reads), and how a reply and an error reply are encoded for the
//! pipeline's `codec` and transport. The router holds a [`ReplyCodec`] and
//! asks it; `dispatch/` itself knows no wire format.

use std::sync::Arc;

use serde_json::json;

use super::nestjs;
use crate::config::Codec;
use crate::event::{text_header, Header};

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
    /// reply goes to partition 0 (see `dispatch::publish`).
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

    /// Why a reply falls back to partition 0, for the log: the header's
    /// `value` is not a partition number.
    pub fn unreadable(value: &str) -> String {
        format!("{} {value:?} is not a partition number", crate::kafka::REPLY_PARTITION_HEADER)
    }

    /// Why a reply falls back to partition 0 when the reply topic lacks the
    /// partition named (`why`, as the sink says it).
    pub fn missing(why: &str) -> String {
        format!("{} names a partition the reply topic does not have: {why}", crate::kafka::REPLY_PARTITION_HEADER)
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
    pub fn code(&self) -> u16 {
        match self.reason {
            "rejected" | "undecodable" | "invalid" | "unsupported" => 400,
            "duplicate" => 409,
            _ => 500,
        }
    }
}

/// A pipeline's reply format: `codec` (none or NestJS) on its transport
/// (NestJS's NATS transport wraps replies in packets; its Kafka transport
/// marks them with headers). Chosen once, by [`for_pipeline`].
pub trait ReplyCodec: Send + Sync + 'static {
    /// The request an event is, if it expects a reply (`reply_to`).
    fn request(&self, reply_to: Option<String>, headers: &[Header]) -> Option<Request> {
        Request::of(reply_to, headers)
    }

    /// A plugin's reply payload as sent; `headers` (the output's) may gain
    /// the format's markers.
    fn reply(&self, request: &Request, payload: Vec<u8>, headers: &mut Vec<Header>) -> Vec<u8>;

    /// The error reply's payload and headers: the request's correlation
    /// headers, the NATS service-error pair, and the format's own.
    fn error_reply(&self, request: &Request, error: &ErrorReply<'_>) -> (Vec<u8>, Vec<Header>);
}

/// The reply codec of a pipeline with `codec`; `kafka`: its source is
/// Kafka (NestJS's Kafka transport rather than its NATS one).
pub fn for_pipeline(codec: Codec, kafka: bool) -> Arc<dyn ReplyCodec> {
    match (codec, kafka) {
        (Codec::None, _) => Arc::new(Plain),
        (Codec::Nestjs, false) => Arc::new(NestjsNats),
        (Codec::Nestjs, true) => Arc::new(NestjsKafka),
    }
}

/// No codec: a reply is the plugin's payload; an error reply is
/// `{"error": {code, reason, message, event_id}}`.
pub struct Plain;

impl ReplyCodec for Plain {
    fn reply(&self, _: &Request, payload: Vec<u8>, _: &mut Vec<Header>) -> Vec<u8> {
        payload
    }

    fn error_reply(&self, request: &Request, error: &ErrorReply<'_>) -> (Vec<u8>, Vec<Header>) {
        let payload = json!({
            "error": {
                "code": error.code(),
                "reason": error.reason,
                "message": error.message,
                "event_id": error.event_id,
            }
        })
        .to_string()
        .into_bytes();
        (payload, error_headers(request, error))
    }
}

/// NestJS's NATS transport: replies and error replies are packets carrying
/// the request's packet id.
pub struct NestjsNats;

impl ReplyCodec for NestjsNats {
    fn reply(&self, request: &Request, payload: Vec<u8>, _: &mut Vec<Header>) -> Vec<u8> {
        nestjs::reply(&payload, request.packet_id.as_deref())
    }

    fn error_reply(&self, request: &Request, error: &ErrorReply<'_>) -> (Vec<u8>, Vec<Header>) {
        let payload = nestjs::error_reply(error.code(), error.reason, error.message, error.event_id, request.packet_id.as_deref());
        (payload, error_headers(request, error))
    }
}

/// NestJS's Kafka transport: no envelope; a reply is marked disposed, an
/// error reply also carries the error in a header.
pub struct NestjsKafka;

impl ReplyCodec for NestjsKafka {
    fn reply(&self, _: &Request, payload: Vec<u8>, headers: &mut Vec<Header>) -> Vec<u8> {
        headers.push(Header { key: nestjs::KAFKA_DISPOSED_HEADER.into(), value: vec![0] });
        payload
    }

    fn error_reply(&self, request: &Request, error: &ErrorReply<'_>) -> (Vec<u8>, Vec<Header>) {
        let payload = nestjs::kafka_error(error.code(), error.reason, error.message, error.event_id);
        let mut headers = error_headers(request, error);
        headers.push(Header { key: nestjs::KAFKA_ERR_HEADER.into(), value: payload.clone() });
        headers.push(Header { key: nestjs::KAFKA_DISPOSED_HEADER.into(), value: vec![0] });
        (payload, headers)
    }
}

/// The headers of every error reply: the request's correlation headers and
/// the NATS services convention (ADR-32), so clients that know it see an
/// error without parsing the body.
fn error_headers(request: &Request, error: &ErrorReply<'_>) -> Vec<Header> {
    let mut headers = request.correlation.clone();
    headers.push(text_header("Nats-Service-Error", one_line(error.message)));
    headers.push(text_header("Nats-Service-Error-Code", error.code().to_string()));
    headers
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

#[cfg(test)]
mod codecs {
    use super::*;
    use crate::event::header;

    fn request() -> Request {
        let headers = [text_header("X-Request-Id", "r-1"), text_header(nestjs::ID_HEADER, "p-1"), text_header("kafka_replyPartition", "2")];
        Request::of(Some("replies".into()), &headers).unwrap_or_else(|| Request {
            reply_to: String::new(),
            correlation: Vec::new(),
            packet_id: None,
            reply_partition: ReplyPartition::Unnamed,
        })
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap_or("<binary>")
    }

    #[test]
    fn a_request_carries_its_correlation_packet_id_and_partition() {
        let request = request();
        assert_eq!(request.reply_to, "replies");
        assert_eq!(request.correlation.len(), 1);
        assert_eq!(request.packet_id.as_deref(), Some("p-1"));
        assert_eq!(request.reply_partition, ReplyPartition::Named(2));
        assert!(Request::of(None, &[]).is_none(), "no reply-to, no request");
    }

    #[test]
    fn each_codec_encodes_replies_as_its_callers_expect() {
        let request = request();
        let error = ErrorReply { reason: "rejected", message: "no\nuser", event_id: "e-1" };
        for (name, codec, kafka) in [("plain", Codec::None, false), ("nestjs", Codec::Nestjs, false), ("nestjs-kafka", Codec::Nestjs, true)]
        {
            let codec = for_pipeline(codec, kafka);
            let mut headers = Vec::new();
            let reply = codec.reply(&request, b"{\"a\":1}".to_vec(), &mut headers);
            let (error_payload, error_headers) = codec.error_reply(&request, &error);
            assert_eq!(header(&error_headers, "X-Request-Id"), Some(&b"r-1"[..]), "{name}: correlation headers come back");
            assert_eq!(header(&error_headers, "Nats-Service-Error"), Some(&b"no user"[..]), "{name}: on one line");
            assert_eq!(header(&error_headers, "Nats-Service-Error-Code"), Some(&b"400"[..]), "{name}");
            let error_payload_text = text(&error_payload);
            match name {
                "plain" => {
                    assert_eq!(text(&reply), "{\"a\":1}");
                    assert!(headers.is_empty());
                    assert_eq!(error_payload_text, r#"{"error":{"code":400,"reason":"rejected","message":"no\nuser","event_id":"e-1"}}"#);
                }
                "nestjs" => {
                    assert_eq!(text(&reply), r#"{"response":{"a":1},"isDisposed":true,"id":"p-1"}"#);
                    assert!(headers.is_empty());
                    assert!(error_payload_text.starts_with(r#"{"err":{"status":"error","message":"no\nuser""#), "{error_payload_text}");
                    assert!(error_payload_text.ends_with(r#""isDisposed":true,"id":"p-1"}"#), "{error_payload_text}");
                }
                _ => {
                    assert_eq!(text(&reply), "{\"a\":1}", "no envelope");
                    assert_eq!(header(&headers, nestjs::KAFKA_DISPOSED_HEADER), Some(&[0u8][..]));
                    assert_eq!(header(&error_headers, nestjs::KAFKA_ERR_HEADER), Some(error_payload.as_slice()));
                    assert_eq!(header(&error_headers, nestjs::KAFKA_DISPOSED_HEADER), Some(&[0u8][..]));
                }
            }
        }
    }
}
