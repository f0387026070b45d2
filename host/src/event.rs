//! The event and output types, shared by every stage.
//!
//! They are the WIT records themselves (generated once in
//! `runtime::bindings`), so handing a batch to a plugin copies the
//! bytes into guest memory once and nothing is converted on the way.

pub use crate::runtime::bindings::current::types::{Disposition, Event, HandlerError, Header, Output};

/// Looks up the first header named `key` (header names compare
/// case-sensitively, as Kafka and NATS do).
pub fn header<'a>(headers: &'a [Header], key: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.key == key).map(|h| h.value.as_slice())
}

/// Builds a header from a name and a text value.
pub fn text_header(key: &str, value: impl Into<String>) -> Header {
    Header { key: key.to_owned(), value: value.into().into_bytes() }
}

/// Milliseconds since the Unix epoch, for events whose source has no clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
