//! Dead-letter records: the original event, untouched, plus headers that say
//! why it failed. Keeping the event as it was (key, payload, headers) means a
//! record can be replayed to its source as is once the `sluice-dlq-*`
//! headers are stripped.
//!
//! | header | value |
//! |---|---|
//! | `sluice-dlq-reason` | `rejected`, `retries-exhausted`, `undecodable`, `invalid` or `unsupported` |
//! | `sluice-dlq-message` | the handler's message, the trap or the decode error |
//! | `sluice-dlq-attempts` | attempts made |
//! | `sluice-dlq-pipeline` | pipeline name |
//! | `sluice-dlq-plugin` | plugin name |
//! | `sluice-dlq-plugin-digest` | sha256 of the plugin version that failed it |
//! | `sluice-dlq-event-id` | the event's id (its source position) |
//! | `sluice-dlq-source` | topic, subject or file it came from |
//! | `sluice-dlq-first-failure`, `sluice-dlq-last-failure` | RFC 3339 UTC times |
//! | `sluice-dlq-timestamp` | the event's own timestamp, ms since the epoch |
//! | `sluice-dlq-reply-to` | the event's reply-to, when it had one |
//! | `sluice-dlq-calls` | the outbound calls its attempts made (HTTP, service requests), a JSON array, when it made any |

use std::time::SystemTime;

use crate::event::{text_header, Event};
use crate::runtime::CallRecord;
use crate::sink::Record;
use crate::time::rfc3339;

/// Why an event is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The handler said it can never succeed.
    Rejected,
    /// Retryable failures used up `max_attempts`.
    RetriesExhausted,
    /// Failures used up `max_attempts`, the last of them a timeout: the
    /// handler ran past `policy.timeout` (a loop, or a wait in a host call).
    Timeout,
    /// The source could not decode it into an event.
    Undecodable,
    /// It does not match its schema (or has no schema, or no type header,
    /// where the pipeline's `schemas` say to reject those).
    Invalid,
    /// The plugin does not accept its type or version (its `accepts` list).
    Unsupported,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::RetriesExhausted => "retries-exhausted",
            Reason::Timeout => "timeout",
            Reason::Undecodable => "undecodable",
            Reason::Invalid => "invalid",
            Reason::Unsupported => "unsupported",
        }
    }
}

/// An event's failure history.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    pub attempts: u32,
    pub first: SystemTime,
    pub last: SystemTime,
    /// The outbound calls its attempts made, in order.
    pub calls: Vec<CallRecord>,
}

/// Builds the dead-letter record for `event`, moving its key, payload and
/// headers into the record.
pub fn record(event: Event, failure: &Failure, pipeline: &str, plugin: &str, digest: &str) -> Record {
    let mut headers = event.headers;
    headers.extend([
        text_header("sluice-dlq-reason", failure.reason.as_str()),
        text_header("sluice-dlq-message", failure.message.clone()),
        text_header("sluice-dlq-attempts", failure.attempts.to_string()),
        text_header("sluice-dlq-pipeline", pipeline),
        text_header("sluice-dlq-plugin", plugin),
        text_header("sluice-dlq-plugin-digest", digest),
        text_header("sluice-dlq-event-id", event.id),
        text_header("sluice-dlq-source", event.source),
        text_header("sluice-dlq-first-failure", rfc3339(failure.first)),
        text_header("sluice-dlq-last-failure", rfc3339(failure.last)),
        text_header("sluice-dlq-timestamp", event.timestamp_ms.to_string()),
    ]);
    if let Some(reply_to) = event.reply_to {
        headers.push(text_header("sluice-dlq-reply-to", reply_to));
    }
    if !failure.calls.is_empty() {
        if let Ok(calls) = serde_json::to_string(&failure.calls) {
            headers.push(text_header("sluice-dlq-calls", calls));
        }
    }
    Record { destination: None, key: event.key, payload: event.payload, headers, id: None, partition: None, version: None }
}
