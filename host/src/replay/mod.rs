//! Dead-letter replay: turning a dead-letter record back into the event it
//! was, and the filters `sluice dlq replay` applies.
//!
//! Shared by `sluice dlq replay` and the admin API's dead-letters routes:
//! `read` reads records from a dead-letter destination (all of them in
//! order, the newest few, or a few by id), `send` sends the original
//! events back through the sinks a pipeline uses.
//!
//! A record (see `crate::dispatch::dead_letter`) is the original event's
//! key, payload and headers plus `sluice-dlq-*` headers. Replaying strips
//! those headers and sends the rest, unchanged, to the event's source
//! (`sluice-dlq-source`) or to another destination. The reply-to of a
//! request is not restored: its caller stopped waiting long ago.

use std::time::SystemTime;

use crate::event::Header;
use crate::sink::Record;

pub(crate) mod read;
pub(crate) mod send;

pub use read::{read_all, Connection, Origin, Positioned};
pub use send::{Kind, Sinks, To};

/// Why dead letters could not be read or replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The destination could not be opened or read.
    #[error("{0}")]
    Read(String),
    /// An id that cannot name a record of the destination.
    #[error("{0}")]
    Id(String),
    /// A record cannot be sent (no destination) or a sink refused it.
    #[error("{0}")]
    Send(String),
}

/// The prefix of the headers a dead-letter record adds.
pub const PREFIX: &str = "sluice-dlq-";

/// A record without `sluice-dlq-reason`: not written by a dead letter.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a dead-letter record (no `sluice-dlq-reason` header)")]
pub struct NotADeadLetter;

/// A dead-letter record, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// `rejected`, `retries-exhausted` or `undecodable`.
    pub reason: String,
    /// The failure's message (`sluice-dlq-message`): the plugin's error, or
    /// the host's.
    pub message: String,
    /// Attempts made (`sluice-dlq-attempts`), if readable.
    pub attempts: Option<u32>,
    /// The pipeline that dead-lettered it.
    pub pipeline: String,
    /// The plugin's name.
    pub plugin: String,
    /// The sha256 of the plugin version that failed it.
    pub plugin_digest: String,
    /// The original event's id.
    pub event_id: String,
    /// Where the event came from: a file path (as written in the config), a
    /// subject or a topic.
    pub source: String,
    /// When it was dead-lettered (`sluice-dlq-last-failure`), if readable.
    pub dead_lettered_at: Option<SystemTime>,
    /// The original event's key.
    pub key: Option<Vec<u8>>,
    /// The original event's payload.
    pub payload: Vec<u8>,
    /// The original event's headers, `sluice-dlq-*` removed.
    pub headers: Vec<Header>,
}

impl DeadLetter {
    /// Reads a record's parts; fails for a record that is not a dead letter.
    pub fn parse(key: Option<Vec<u8>>, payload: Vec<u8>, headers: Vec<Header>) -> Result<Self, NotADeadLetter> {
        let mut reason = None;
        let mut fields = std::collections::HashMap::new();
        let mut original = Vec::with_capacity(headers.len());
        for header in headers {
            match header.key.strip_prefix(PREFIX) {
                Some(name) => {
                    let value = String::from_utf8_lossy(&header.value).into_owned();
                    if name == "reason" {
                        reason = Some(value);
                    } else {
                        fields.insert(name.to_owned(), value);
                    }
                }
                None => original.push(header),
            }
        }
        let reason = reason.ok_or(NotADeadLetter)?;
        let mut take = |name: &str| fields.remove(name).unwrap_or_default();
        let dead_lettered_at = humantime::parse_rfc3339_weak(&take("last-failure")).ok();
        let attempts = take("attempts").parse().ok();
        Ok(Self {
            reason,
            message: take("message"),
            attempts,
            pipeline: take("pipeline"),
            plugin: take("plugin"),
            plugin_digest: take("plugin-digest"),
            event_id: take("event-id"),
            source: take("source"),
            dead_lettered_at,
            key,
            payload,
            headers: original,
        })
    }

    /// The original event as a record for `destination`. `id` (for sinks
    /// that deduplicate, JetStream's `Nats-Msg-Id`) is derived from the
    /// event's id and when it was dead-lettered, so replaying the same
    /// records twice stores them once, while an event dead-lettered again
    /// later is a new message. A `Nats-Msg-Id` the event carried is dropped:
    /// the stream would take the replay for the original and discard it.
    pub fn into_record(self, destination: Option<String>) -> Record {
        let at = self.dead_lettered_at.map(crate::time::rfc3339).unwrap_or_default();
        let headers = self.headers.into_iter().filter(|h| !h.key.eq_ignore_ascii_case("Nats-Msg-Id")).collect();
        Record {
            destination,
            key: self.key,
            payload: self.payload,
            headers,
            id: Some(format!("replay:{}:{at}", self.event_id)),
            partition: None,
            version: None,
        }
    }
}

/// Which records to replay. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Dead-lettered by this pipeline.
    pub pipeline: Option<String>,
    /// Any of these reasons.
    pub reasons: Vec<String>,
    /// Dead-lettered at or after.
    pub since: Option<SystemTime>,
    /// Dead-lettered before.
    pub until: Option<SystemTime>,
}

impl Filter {
    /// Whether `record` passes every set field; a record without a
    /// readable time fails a time bound.
    pub fn matches(&self, record: &DeadLetter) -> bool {
        let in_time = |bound: Option<SystemTime>, ok: fn(SystemTime, SystemTime) -> bool| match (bound, record.dead_lettered_at) {
            (None, _) => true,
            (Some(bound), Some(at)) => ok(at, bound),
            // A record without a readable time cannot be placed in a range.
            (Some(_), None) => false,
        };
        self.pipeline.as_ref().is_none_or(|p| *p == record.pipeline)
            && (self.reasons.is_empty() || self.reasons.contains(&record.reason))
            && in_time(self.since, |at, since| at >= since)
            && in_time(self.until, |at, until| at < until)
    }
}

/// A point in time for `--since`/`--until`: an RFC 3339 time
/// (`2026-01-05T10:00:00Z`, `2026-01-05 10:00:00`) or a duration ago (`90m`,
/// `2h`, `1d`).
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago).ok_or_else(|| format!("{text} ago is before the epoch")),
        Err(_) => Err(format!("{text:?} is neither a time (2026-01-05T10:00:00Z) nor a duration ago (30m, 2h, 1d)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::text_header;
    use std::time::Duration;

    fn record(reason: &str, pipeline: &str, at: &str) -> Vec<Header> {
        vec![
            text_header("trace", "t-1"),
            text_header("Nats-Msg-Id", "orig-1"),
            text_header("sluice-dlq-reason", reason),
            text_header("sluice-dlq-message", "boom"),
            text_header("sluice-dlq-pipeline", pipeline),
            text_header("sluice-dlq-event-id", "IN:7"),
            text_header("sluice-dlq-source", "orders.new"),
            text_header("sluice-dlq-last-failure", at),
        ]
    }

    #[test]
    fn a_record_becomes_its_original_event() -> Result<(), NotADeadLetter> {
        let dl = DeadLetter::parse(Some(b"k".to_vec()), b"p".to_vec(), record("rejected", "orders", "2026-01-05T10:00:00.120Z"))?;
        assert_eq!((dl.reason.as_str(), dl.pipeline.as_str(), dl.source.as_str()), ("rejected", "orders", "orders.new"));
        let r = dl.into_record(Some("orders.new".into()));
        assert_eq!(r.headers, vec![text_header("trace", "t-1")], "dlq headers and the old Nats-Msg-Id are gone");
        assert_eq!((r.key.as_deref(), r.payload.as_slice()), (Some(&b"k"[..]), &b"p"[..]));
        assert_eq!(r.id.as_deref(), Some("replay:IN:7:2026-01-05T10:00:00.120Z"));
        assert!(DeadLetter::parse(None, vec![], vec![text_header("a", "b")]).is_err());
        Ok(())
    }

    #[test]
    fn filters() -> Result<(), NotADeadLetter> {
        let dl = DeadLetter::parse(None, vec![], record("rejected", "orders", "2026-01-05T10:00:00Z"))?;
        let at = |t: &str| humantime::parse_rfc3339_weak(t).ok();
        assert!(Filter::default().matches(&dl));
        assert!(Filter { pipeline: Some("orders".into()), reasons: vec!["rejected".into()], ..Default::default() }.matches(&dl));
        assert!(!Filter { pipeline: Some("other".into()), ..Default::default() }.matches(&dl));
        assert!(!Filter { reasons: vec!["undecodable".into()], ..Default::default() }.matches(&dl));
        assert!(Filter { since: at("2026-01-05T10:00:00Z"), until: at("2026-01-05T10:00:01Z"), ..Default::default() }.matches(&dl));
        assert!(!Filter { until: at("2026-01-05T10:00:00Z"), ..Default::default() }.matches(&dl), "until is exclusive");
        Ok(())
    }

    #[test]
    fn times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_time("1h", now), Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(6_400)));
        assert!(parse_time("1970-01-01T00:00:05Z", now).is_ok());
        assert!(parse_time("yesterday", now).is_err_and(|e| e.contains("neither")));
    }
}
