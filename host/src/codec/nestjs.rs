//! The NestJS microservices packet format (NATS transport), the optional
//! per-pipeline codec `codec = "nestjs"`.
//!
//! A NestJS `ClientProxy` publishes to the subject named by the pattern (a
//! string pattern as it is; an object pattern as JSON with its keys sorted):
//!
//! | call | payload | reply subject |
//! |---|---|---|
//! | `send(pattern, data)` | `{"pattern": …, "data": …, "id": "<uuid>"}` | an inbox |
//! | `emit(pattern, data)` | `{"pattern": …, "data": …}` | none |
//!
//! A NestJS microservice answers a `send` with one message on the reply
//! subject: `{"response": <value>, "isDisposed": true, "id": "<id>"}`, or
//! `{"err": <error>, "isDisposed": true, "id": "<id>"}`; `throw new
//! RpcException("no user")` gives `err = {"status": "error", "message": "no
//! user"}`, and the client's `firstValueFrom(client.send(…))` rejects with
//! that object. (From @nestjs/microservices 12.1: `serializers/
//! nats-record.serializer.js`, `server/server.js` (`send`),
//! `server/server-nats.js` and `client/client-nats.js`.)
//!
//! Decoding hands the plugin `data` as the payload (its JSON text) and puts
//! the pattern and the id in headers ([`PATTERN_HEADER`], [`ID_HEADER`]).
//!
//! NestJS's Kafka transport has no envelope: a message's value is the data,
//! its topic the pattern; a request carries `kafka_correlationId`,
//! `kafka_replyTopic` and `kafka_replyPartition` headers (which the host
//! already honours), and a reply is the value plus a
//! `kafka_nest-is-disposed` header (without it `lastValueFrom` never
//! completes), an error reply a `kafka_nest-err` header holding the error as
//! JSON. With a Kafka source, the codec does that ([`decode_kafka`]).
//! A payload that is JSON but not a packet (no `pattern` and no `data`) is
//! what a NestJS server calls an external message: the whole payload is the
//! data and the subject the pattern, as NestJS does.

use serde_json::{json, Map, Value};

use crate::event::{text_header, Event};

/// The header that carries the packet's pattern, as a route (the subject a
/// NestJS client publishes to).
pub const PATTERN_HEADER: &str = "nestjs-pattern";
/// The header that carries the packet's id (requests only): the reply
/// carries it back so the client can match it to its call.
pub const ID_HEADER: &str = "nestjs-id";

/// NestJS's Kafka transport marks the last reply to a request with this
/// header (any value), and an error reply with [`KAFKA_ERR_HEADER`] (the
/// error as JSON); its Kafka messages have no envelope.
pub const KAFKA_DISPOSED_HEADER: &str = "kafka_nest-is-disposed";
pub const KAFKA_ERR_HEADER: &str = "kafka_nest-err";

/// A message of NestJS's Kafka transport: the value is the data as it is
/// (no envelope), the topic is the pattern and the `kafka_correlationId`
/// header the call's id. Only the `nestjs-*` headers are set.
pub fn decode_kafka(event: &mut Event) {
    let id = crate::event::header(&event.headers, crate::kafka::CORRELATION_HEADER).map(|id| String::from_utf8_lossy(id).into_owned());
    event.headers.retain(|h| !h.key.eq_ignore_ascii_case(PATTERN_HEADER) && !h.key.eq_ignore_ascii_case(ID_HEADER));
    event.headers.push(text_header(PATTERN_HEADER, event.source.clone()));
    if let Some(id) = id {
        event.headers.push(text_header(ID_HEADER, id));
    }
}

/// The error of an error reply, as NestJS's `RpcException` shapes it, plus
/// sluice's `code`, `reason` and `event_id`.
fn error_value(code: u16, reason: &str, message: &str, event_id: &str) -> Value {
    json!({ "status": "error", "message": message, "code": code, "reason": reason, "event_id": event_id })
}

/// An error reply of NestJS's Kafka transport: the error as JSON, both as
/// the value and in the [`KAFKA_ERR_HEADER`] header.
pub fn kafka_error(code: u16, reason: &str, message: &str, event_id: &str) -> Vec<u8> {
    error_value(code, reason, message, event_id).to_string().into_bytes()
}

/// Replaces a NestJS packet payload by its `data`, and records its pattern
/// and id as headers (any such headers the event already had are dropped,
/// so a publisher cannot set them apart from the packet). Fails when the
/// payload is not JSON.
pub fn decode(event: &mut Event) -> Result<(), String> {
    let value: Value = serde_json::from_slice(&event.payload)
        .map_err(|e| format!("the payload is not a NestJS packet (codec = \"nestjs\"): not JSON: {e}"))?;
    let (pattern, data, id) = match value {
        Value::Object(mut packet) if packet.contains_key("pattern") || packet.contains_key("data") => {
            let pattern = packet.remove("pattern").unwrap_or(Value::Null);
            let data = packet.remove("data").unwrap_or(Value::Null);
            let id = match packet.remove("id") {
                Some(Value::String(id)) => Some(id),
                Some(Value::Number(id)) => Some(id.to_string()),
                _ => None,
            };
            (route(&pattern), data, id)
        }
        external => (event.source.clone(), external, None),
    };
    event.payload = serde_json::to_vec(&data).map_err(|e| format!("re-encoding the packet's data: {e}"))?;
    event.headers.retain(|h| !h.key.eq_ignore_ascii_case(PATTERN_HEADER) && !h.key.eq_ignore_ascii_case(ID_HEADER));
    event.headers.push(text_header(PATTERN_HEADER, pattern));
    if let Some(id) = id {
        event.headers.push(text_header(ID_HEADER, id));
    }
    Ok(())
}

/// A pattern as the route NestJS derives from it (`transformPatternToRoute`):
/// a string or number as text; an object as `{"key":value,…}` with its keys
/// sorted, string values quoted, others written the same way recursively.
pub fn route(pattern: &Value) -> String {
    match pattern {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|key| {
                    let value = match &object[key] {
                        Value::String(s) => format!("\"{}\"", escape(s)),
                        other => route(other),
                    };
                    format!("\"{}\":{value}", escape(key))
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        other => other.to_string(),
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A plugin's reply payload as a NestJS response packet. A JSON payload is
/// the response value; anything else is sent as a JSON string (lossy UTF-8);
/// an empty payload is `null`.
pub fn reply(payload: &[u8], id: Option<&str>) -> Vec<u8> {
    let response = if payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
    };
    let mut packet = Map::new();
    packet.insert("response".into(), response);
    packet.insert("isDisposed".into(), Value::Bool(true));
    if let Some(id) = id {
        packet.insert("id".into(), Value::String(id.to_owned()));
    }
    Value::Object(packet).to_string().into_bytes()
}

/// An error reply as a NestJS error packet: `err` has the shape an
/// `RpcException(message)` gives (`status`, `message`), plus sluice's
/// `code`, `reason` and `event_id`.
pub fn error_reply(code: u16, reason: &str, message: &str, event_id: &str, id: Option<&str>) -> Vec<u8> {
    let mut packet = Map::new();
    packet.insert("err".into(), error_value(code, reason, message, event_id));
    packet.insert("isDisposed".into(), Value::Bool(true));
    if let Some(id) = id {
        packet.insert("id".into(), Value::String(id.to_owned()));
    }
    Value::Object(packet).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::header;

    fn event(payload: &str) -> Event {
        Event {
            id: "e-1".into(),
            source: "get-user".into(),
            key: None,
            payload: payload.as_bytes().to_vec(),
            headers: vec![text_header(ID_HEADER, "spoofed")],
            timestamp_ms: 0,
            attempt: 1,
            reply_to: Some("_INBOX.1".into()),
        }
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap_or("<binary>")
    }

    #[test]
    fn a_send_packet_becomes_its_data_with_pattern_and_id_headers() {
        let mut e = event(r#"{"pattern":"get-user","data":{"id":42},"id":"3f1c"}"#);
        assert_eq!(decode(&mut e), Ok(()));
        assert_eq!(text(&e.payload), r#"{"id":42}"#);
        assert_eq!(header(&e.headers, PATTERN_HEADER), Some(&b"get-user"[..]));
        assert_eq!(header(&e.headers, ID_HEADER), Some(&b"3f1c"[..]), "the packet's id, not the header sent along");
        assert_eq!(e.headers.len(), 2);
    }

    #[test]
    fn an_emit_packet_has_no_id_and_an_object_pattern_is_routed_like_nestjs() {
        let mut e = event(r#"{"pattern":{"role":"user","cmd":"create"},"data":"x"}"#);
        assert_eq!(decode(&mut e), Ok(()));
        assert_eq!(text(&e.payload), r#""x""#);
        assert_eq!(header(&e.headers, PATTERN_HEADER), Some(&br#"{"cmd":"create","role":"user"}"#[..]));
        assert_eq!(header(&e.headers, ID_HEADER), None);
    }

    #[test]
    fn an_external_message_is_all_data_on_the_subject_pattern() {
        let mut e = event(r#"{"id":7}"#);
        assert_eq!(decode(&mut e), Ok(()));
        assert_eq!(text(&e.payload), r#"{"id":7}"#);
        assert_eq!(header(&e.headers, PATTERN_HEADER), Some(&b"get-user"[..]));
        let mut bad = event("not json");
        assert!(decode(&mut bad).is_err_and(|m| m.contains("not JSON")));
    }

    #[test]
    fn a_kafka_message_keeps_its_value_and_gets_the_topic_as_pattern() {
        let mut e = event("plain text, not JSON");
        e.headers.push(text_header(crate::kafka::CORRELATION_HEADER, "c-7"));
        decode_kafka(&mut e);
        assert_eq!(text(&e.payload), "plain text, not JSON");
        assert_eq!(header(&e.headers, PATTERN_HEADER), Some(&b"get-user"[..]));
        assert_eq!(header(&e.headers, ID_HEADER), Some(&b"c-7"[..]), "the correlation id, not the spoofed header");
        assert_eq!(
            text(&kafka_error(400, "rejected", "no", "e-1")),
            r#"{"status":"error","message":"no","code":400,"reason":"rejected","event_id":"e-1"}"#
        );
    }

    #[test]
    fn replies_have_the_shape_of_a_nestjs_server() {
        assert_eq!(text(&reply(br#"{"name":"Ada"}"#, Some("3f1c"))), r#"{"response":{"name":"Ada"},"isDisposed":true,"id":"3f1c"}"#);
        assert_eq!(text(&reply(b"plain", None)), r#"{"response":"plain","isDisposed":true}"#);
        assert_eq!(text(&reply(b"", Some("a"))), r#"{"response":null,"isDisposed":true,"id":"a"}"#);
        assert_eq!(
            text(&error_reply(400, "rejected", "no user 7", "e-1", Some("3f1c"))),
            r#"{"err":{"status":"error","message":"no user 7","code":400,"reason":"rejected","event_id":"e-1"},"isDisposed":true,"id":"3f1c"}"#
        );
    }
}
