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
pub const CORRELATION_HEADERS: [&str; 6] = [
    "correlation-id",
    "x-correlation-id",
    "x-request-id",
    "traceparent",
    "tracestate",
    crate::kafka::CORRELATION_HEADER,
];

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
    pub reply_partition: Option<i32>,
}

impl Request {
    /// The request an event is, if it expects a reply.
    pub fn of(reply_to: Option<String>, headers: &[Header]) -> Option<Self> {
        let reply_to = reply_to?;
        let correlation = headers
            .iter()
            .filter(|h| CORRELATION_HEADERS.iter().any(|c| h.key.eq_ignore_ascii_case(c)))
            .cloned()
            .collect();
        let packet_id = crate::event::header(headers, nestjs::ID_HEADER)
            .map(|id| String::from_utf8_lossy(id).into_owned());
        let reply_partition = headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(crate::kafka::REPLY_PARTITION_HEADER))
            .and_then(|h| std::str::from_utf8(&h.value).ok()?.trim().parse().ok());
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
                sink.check(destination, output)
                    .map_err(|why| format!("output {index} cannot go to {}: {why}", sink.describe()))?;
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
        let partition = if reply { request.and_then(|r| r.reply_partition) } else { None };
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
            Codec::Nestjs => {
                nestjs::error_reply(code, error.reason, error.message, error.event_id, request.packet_id.as_deref())
            }
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
            partition: request.reply_partition,
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
