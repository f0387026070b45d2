//! Caps on what one input event may carry, checked at intake before any
//! per-event work (idempotency keys, schema validation, the plugin call,
//! encoding its dead letter): an input over them is dead-lettered with the
//! reason, so one hostile or broken message costs a bounded amount of CPU
//! and memory on the async workers however many headers it brings.
//!
//! Sources bound an event's total size already (a file line 16 MiB, NATS
//! `max_payload`, Kafka `message.max.bytes`); these bound the header count
//! within that, since per-header work (encoding, lookups by name) is what
//! a 200,000-header line turned into a stall.

use crate::config::PolicyConfig;
use crate::event::Event;

/// `policy.max_headers` and `policy.max_header_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Headers per event, at most.
    pub max_headers: usize,
    /// Bytes of header names and values per event, at most.
    pub max_header_bytes: u64,
}

impl HeaderLimits {
    pub fn from_policy(policy: &PolicyConfig) -> Self {
        Self { max_headers: policy.max_headers, max_header_bytes: policy.max_header_bytes.as_u64() }
    }
}

impl Default for HeaderLimits {
    fn default() -> Self {
        Self::from_policy(&PolicyConfig::default())
    }
}

/// `Err` with the dead-letter message when `event` has more headers, or
/// more header bytes, than `limits` allow. Counts first, so an event far
/// over the count is refused without summing its sizes.
pub fn check_headers(event: &Event, limits: &HeaderLimits) -> Result<(), String> {
    let count = event.headers.len();
    if count > limits.max_headers {
        return Err(format!(
            "the event has {count} headers, over policy.max_headers ({}); refused before any work on it",
            limits.max_headers
        ));
    }
    let bytes: u64 = event.headers.iter().map(|h| (h.key.len() + h.value.len()) as u64).sum();
    if bytes > limits.max_header_bytes {
        return Err(format!(
            "the event's headers are {bytes} bytes, over policy.max_header_bytes ({}); refused before any work on it",
            limits.max_header_bytes
        ));
    }
    Ok(())
}

/// Whether an event's outputs stay within `policy.max_outputs` and
/// `policy.max_output_bytes` (payloads, keys and headers); a guest that
/// returns more is buggy or hostile, and its event is rejected. `sluice
/// plugin test` applies the same rule, so a plugin passes it only if a
/// pipeline would take its outputs.
pub fn check_outputs(outputs: &[crate::event::Output], max_outputs: usize, max_bytes: u64) -> Result<(), String> {
    if outputs.len() > max_outputs {
        return Err(format!("the plugin returned {} outputs for one event, over policy.max_outputs ({max_outputs})", outputs.len()));
    }
    let bytes: u64 = outputs
        .iter()
        .map(|o| {
            (o.payload.len() + o.key.as_ref().map_or(0, Vec::len) + o.headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>())
                as u64
        })
        .sum();
    if bytes > max_bytes {
        return Err(format!(
            "the plugin returned {bytes} bytes of outputs for one event, over policy.max_output_bytes ({max_bytes} bytes)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Header;

    fn event(headers: usize, value_len: usize) -> Event {
        Event {
            id: "e".into(),
            source: "s".into(),
            key: None,
            payload: Vec::new(),
            headers: (0..headers).map(|i| Header { key: format!("h{i}"), value: vec![b'x'; value_len] }).collect(),
            timestamp_ms: 0,
            attempt: 1,
            reply_to: None,
        }
    }

    #[test]
    fn counts_and_bytes_are_capped() {
        let limits = HeaderLimits { max_headers: 3, max_header_bytes: 30 };
        assert_eq!(check_headers(&event(3, 8), &limits), Ok(()), "3 headers of 10 bytes: at both caps");
        let over_count = check_headers(&event(4, 0), &limits).err().unwrap_or_default();
        assert_eq!(over_count, "the event has 4 headers, over policy.max_headers (3); refused before any work on it");
        let over_bytes = check_headers(&event(3, 9), &limits).err().unwrap_or_default();
        assert!(over_bytes.starts_with("the event's headers are 33 bytes, over policy.max_header_bytes (30)"), "{over_bytes}");
    }

    #[test]
    fn defaults_are_generous() {
        let limits = HeaderLimits::default();
        assert_eq!((limits.max_headers, limits.max_header_bytes), (10_000, 1024 * 1024));
        assert!(check_headers(&event(200_000, 0), &limits).is_err());
        assert!(check_headers(&event(100, 100), &limits).is_ok());
    }
}
