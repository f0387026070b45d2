//! Requests over core NATS: one request per call on the shared connection
//! (async-nats answers it through the connection's inbox subscription).
//!
//! An answer carrying `Nats-Service-Error` (the NATS services convention,
//! ADR-32, which Sluice's own error replies follow) is the service's error,
//! not a reply; NATS's "no responders" status arrives at once and says
//! nobody listens.

use async_nats::RequestErrorKind;

use super::{codec, Destination, Outgoing};
use crate::config::Codec;
use crate::runtime::bindings::current::client::{CallError, Reply, ServiceError};

pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

pub async fn request(client: &async_nats::Client, destination: &Destination, outgoing: Outgoing) -> Result<Reply, CallError> {
    let headers = crate::nats::nats_headers(&outgoing.headers, None).map_err(|e| CallError::NotAllowed(e.to_string()))?;
    let payload = match destination.config.codec {
        Codec::None => outgoing.payload,
        Codec::Nestjs => codec::request_packet(
            &destination.config.pattern_json().unwrap_or_default(),
            &outgoing.payload,
            &uuid::Uuid::new_v4().to_string(),
        ),
    };
    let request = async_nats::Request::new().payload(payload.into()).headers(headers).timeout(Some(outgoing.timeout));
    let message = client.send_request(destination.address.clone(), request).await.map_err(|e| match e.kind() {
        RequestErrorKind::TimedOut => CallError::Timeout(millis(outgoing.timeout)),
        RequestErrorKind::NoResponders => CallError::NoResponders,
        RequestErrorKind::MaxPayloadExceeded => CallError::TooLarge(u32::try_from(client.server_info().max_payload).unwrap_or(u32::MAX)),
        _ => CallError::Unavailable(e.to_string()),
    })?;
    let (headers, _) = crate::nats::event_headers(message.headers.as_ref());
    if let Some(error) = crate::event::header(&headers, SERVICE_ERROR_HEADER) {
        let code = crate::event::header(&headers, SERVICE_ERROR_CODE_HEADER).map(|c| String::from_utf8_lossy(c).into_owned());
        return Err(CallError::Service(ServiceError {
            code,
            message: String::from_utf8_lossy(error).into_owned(),
            payload: message.payload.to_vec(),
        }));
    }
    let payload = match destination.config.codec {
        Codec::None => message.payload.to_vec(),
        Codec::Nestjs => codec::decode_reply(&message.payload).map_err(CallError::Service)?,
    };
    Ok(Reply { payload, headers })
}

pub fn millis(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}
