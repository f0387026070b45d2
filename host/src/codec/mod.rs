//! The JSON-lines encoding of events and records, used by the file and stdio
//! sources and sinks. One encoding both ways, so a sink's file can be a
//! source's file (and dead-letter files can be replayed as input).
//!
//! ```json
//! {"id":"o-1","key":"user-7","payload":"{\"a\":1}","headers":{"content-type":"application/json"},"timestamp":1700000000000,"reply_to":"inbox.1"}
//! ```
//! - `payload`: a string is its UTF-8 bytes; any other JSON value is its
//!   compact serialization (`"payload": {"a": 1}` → `{"a":1}`);
//!   `payload_base64` carries binary. Writers emit a string when the bytes are
//!   UTF-8, `payload_base64` otherwise, so bytes survive a round trip exactly.
//! - `key` / `key_base64`: the same, for the key.
//! - `headers`: an object (`{"k": "v"}`) or, to repeat a name, an array of
//!   pairs (`[["k","v"],["k","w"]]`); a value is a string or `{"base64": …}`.
//! - `id`, `timestamp` (ms), `reply_to`: optional on input; the id defaults
//!   to `<source>:<line>`.
//! - `destination`: written by sinks (where the output was headed); ignored
//!   on input.
//!
//! `nestjs` is the other codec: the NestJS microservices packet format, a
//! pipeline's optional wire format for payloads (`codec = "nestjs"`). It is
//! applied at the pipeline's edges, so the dispatcher between them sees
//! events and outputs only: `decode` ([`decoding`]) wraps the source (inputs are
//! unwrapped there), `reply` is what the router encodes replies and error
//! replies with.

pub(crate) mod decode;
mod json;
pub(crate) mod nestjs;
pub(crate) mod reply;

pub use decode::decoding;
pub use json::{decode_event, encode_record, DecodeError};
pub(crate) use reply::{ErrorReply, Plain, ReplyCodec, ReplyPartition, Request};
