//! The NestJS side of service calls: what a NestJS `ClientProxy` sends and
//! what its microservice answers (see [`crate::codec::nestjs`] for the
//! format, read from @nestjs/microservices).
//!
//! The plugin's payload is the `data`: JSON as it is, anything else as a
//! JSON string (NestJS data is any JSON value).

use serde_json::{json, Value};

use crate::runtime::bindings::current::client::ServiceError;

fn data(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// A `send`: `{"pattern", "data", "id"}`.
pub fn request_packet(pattern: &Value, payload: &[u8], id: &str) -> Vec<u8> {
    json!({ "pattern": pattern, "data": data(payload), "id": id }).to_string().into_bytes()
}

/// An `emit` (a NestJS event): `{"pattern", "data"}`.
pub fn event_packet(pattern: &Value, payload: &[u8]) -> Vec<u8> {
    json!({ "pattern": pattern, "data": data(payload) }).to_string().into_bytes()
}

/// A NATS-transport answer `{"id", "response", "err", "isDisposed"}`: the
/// `response` as JSON, or the `err` as a service error. A body that is not
/// such a packet is a service error too (the service broke the protocol).
pub fn decode_reply(body: &[u8]) -> Result<Vec<u8>, ServiceError> {
    let packet: Value = serde_json::from_slice(body).map_err(|e| ServiceError {
        code: None,
        message: format!("the answer is not a NestJS packet: not JSON: {e}"),
        payload: body.to_vec(),
    })?;
    match packet.get("err") {
        Some(err) if !err.is_null() => Err(service_error(err)),
        _ => Ok(packet.get("response").unwrap_or(&Value::Null).to_string().into_bytes()),
    }
}

/// A NestJS error value as a service error: the message is its `message`
/// (or the value itself when it is a string), the code its `code`, else
/// its `status` (`RpcException` sets `status: "error"`).
pub fn service_error(err: &Value) -> ServiceError {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let message = match err {
        Value::String(s) => s.clone(),
        other => other.get("message").map(text).unwrap_or_else(|| other.to_string()),
    };
    let code = err.get("code").or_else(|| err.get("status")).filter(|v| !v.is_null()).map(text);
    ServiceError { code, message, payload: err.to_string().into_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_pattern_data_and_id() {
        let packet: Value = serde_json::from_slice(&request_packet(&json!({"cmd": "reserve"}), br#"{"sku":"a"}"#, "7")).unwrap_or_default();
        assert_eq!(packet, json!({"pattern": {"cmd": "reserve"}, "data": {"sku": "a"}, "id": "7"}));
        let packet: Value = serde_json::from_slice(&event_packet(&json!("audit"), b"plain text")).unwrap_or_default();
        assert_eq!(packet, json!({"pattern": "audit", "data": "plain text"}));
    }

    #[test]
    fn an_answer_is_its_response_or_its_error() {
        assert_eq!(decode_reply(br#"{"id":"7","response":{"ok":true},"isDisposed":true}"#).ok(), Some(br#"{"ok":true}"#.to_vec()));
        let err = decode_reply(br#"{"id":"7","err":{"status":"error","message":"no stock"},"isDisposed":true}"#).err();
        assert_eq!(err.as_ref().map(|e| e.message.as_str()), Some("no stock"));
        assert_eq!(err.and_then(|e| e.code).as_deref(), Some("error"));
        assert!(decode_reply(b"not json").is_err());
    }
}
