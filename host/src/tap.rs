//! A live, sampled view of one pipeline's inputs, outputs and dead letters,
//! for `sluice tap` and the console (`GET /pipelines/{name}/tap`).
//!
//! Watching must never cost the pipeline more than a glance:
//! - nobody watching: one relaxed atomic load per event, nothing built;
//! - someone watching: at most [`CAPTURE_PER_SECOND`] events per point and
//!   second are copied (payload and headers cut to [`PREVIEW_BYTES`]), the
//!   rest pass untouched; what is captured goes into a bounded broadcast
//!   buffer that never blocks the sender: a watcher too slow for it loses
//!   the oldest entries, and is told how many.
//!
//! Header values that look like credentials are never shown.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::event::{Event, Header, Output};

/// Captured events per point (inputs, outputs, dead letters) and second,
/// whatever the watchers ask: the bound on what watching costs.
pub const CAPTURE_PER_SECOND: u64 = 500;

/// Bytes of a payload, key or header value shown; the size says the rest.
pub const PREVIEW_BYTES: usize = 1024;

/// Entries the buffer holds for the slowest watcher.
const BUFFER: usize = 1024;

/// Watchers of one pipeline at once; more are refused (each holds a
/// connection of the admin server's `max_connections`).
pub const MAX_WATCHERS: usize = 8;

/// Where in the pipeline an event was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Point {
    Input,
    Output,
    DeadLetter,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::Input => "input",
            Point::Output => "output",
            Point::DeadLetter => "dead-letter",
        }
    }
}

/// Bytes as a watcher sees them: text when they are UTF-8, hex otherwise,
/// cut to [`PREVIEW_BYTES`], with the full size.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    pub bytes: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Preview {
    pub fn of(bytes: &[u8]) -> Self {
        Self::of_prefix(bytes, bytes.len())
    }

    /// The preview of `total` bytes that start with `prefix` (the rest
    /// already cut off by the caller).
    pub fn of_prefix(prefix: &[u8], total: usize) -> Self {
        let shown = &prefix[..prefix.len().min(PREVIEW_BYTES)];
        // A cut may split a UTF-8 sequence: text up to the last whole one.
        let text = match std::str::from_utf8(shown) {
            Ok(text) => Some(text.to_owned()),
            Err(err) if err.error_len().is_none() && shown.len() < total => {
                std::str::from_utf8(&shown[..err.valid_up_to()]).ok().map(str::to_owned)
            }
            Err(_) => None,
        };
        let hex = text.is_none().then(|| hex::encode(shown));
        Preview { text, hex, bytes: total, truncated: shown.len() < total }
    }
}

/// One captured event.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    pub point: Point,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    /// The input event's id (an output's or dead letter's: the event it
    /// came from).
    pub event: String,
    /// The plugin version (digest prefix) that made the output or failed
    /// the event; absent on inputs (not handled yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Outputs: the destination the plugin named (absent: the default
    /// route); `reply` when it answers a request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reply: bool,
    /// Dead letters: why and after how many attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Preview>,
    pub headers: Vec<(String, Preview)>,
    pub payload: Preview,
}

/// What the pipeline side of a tap sends: an event, or a count of those a
/// watcher missed.
pub type Entry = Arc<Seen>;

/// One pipeline's tap: cheap to hold, cheaper to ignore.
pub struct Tap {
    sender: broadcast::Sender<Entry>,
    watchers: AtomicUsize,
    /// Per point: the second of the current capture window (high 40 bits)
    /// and the events captured in it (low 24 bits).
    windows: [AtomicU64; 3],
    /// Events not captured because a point was over its rate.
    skipped: AtomicU64,
}

impl Default for Tap {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(BUFFER);
        Tap { sender, watchers: AtomicUsize::new(0), windows: Default::default(), skipped: AtomicU64::new(0) }
    }
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("watchers", &self.watchers.load(Ordering::Relaxed)).finish()
    }
}

/// Why a watcher was refused.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_WATCHERS} watchers already tap this pipeline (the most at once)")]
pub struct TooManyWatchers;

/// A watcher's end of the tap; the pipeline stops capturing when the last
/// one is dropped.
pub struct Watcher {
    tap: Arc<Tap>,
    pub receiver: broadcast::Receiver<Entry>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.tap.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tap {
    /// Starts watching; refused past [`MAX_WATCHERS`].
    pub fn watch(self: &Arc<Self>) -> Result<Watcher, TooManyWatchers> {
        self.watchers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < MAX_WATCHERS).then_some(n + 1))
            .map_err(|_| TooManyWatchers)?;
        Ok(Watcher { tap: self.clone(), receiver: self.sender.subscribe() })
    }

    /// Whether anyone watches: the only cost on the event path when not.
    #[inline]
    pub fn watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Events not captured because a point was over [`CAPTURE_PER_SECOND`].
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// An input as it arrives.
    pub fn input(&self, event: &Event) {
        if self.watched() && self.admit_capture(Point::Input) {
            self.send(seen(Point::Input, &event.id, event.key.as_deref(), &event.headers, &event.payload));
        }
    }

    /// An output as it is handed to its sink.
    pub fn output(&self, event_id: &str, output: &Output, version: &str) {
        if self.watched() && self.admit_capture(Point::Output) {
            self.send(Seen {
                version: Some(short(version)),
                destination: output.destination.clone(),
                reply: output.reply,
                ..seen(Point::Output, event_id, output.key.as_deref(), &output.headers, &output.payload)
            });
        }
    }

    /// An event as it goes to the dead letter.
    pub fn dead_letter(&self, event: &Event, version: &str, reason: &str, message: &str, attempts: u32) {
        if self.watched() && self.admit_capture(Point::DeadLetter) {
            self.send(Seen {
                version: Some(short(version)),
                reason: Some(reason.to_owned()),
                message: Some(message.to_owned()),
                attempts: Some(attempts),
                ..seen(Point::DeadLetter, &event.id, event.key.as_deref(), &event.headers, &event.payload)
            });
        }
    }

    fn send(&self, seen: Seen) {
        // No receiver left (the last watcher went between the check and
        // here) is not an error.
        let _ = self.sender.send(Arc::new(seen));
    }

    /// Counts the event against its point's window for this second.
    fn admit_capture(&self, point: Point) -> bool {
        let second = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.admit_at(point, second)
    }

    fn admit_at(&self, point: Point, second: u64) -> bool {
        let window = &self.windows[point as usize];
        let admitted = window
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let (at, count) = (packed >> 24, packed & 0xff_ffff);
                match (at == second & 0xff_ffff_ffff, count < CAPTURE_PER_SECOND) {
                    (false, _) => Some(((second & 0xff_ffff_ffff) << 24) | 1),
                    (true, true) => Some(packed + 1),
                    (true, false) => None,
                }
            })
            .is_ok();
        if !admitted {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }
}

fn short(digest: &str) -> String {
    digest.chars().take(12).collect()
}

fn seen(point: Point, event: &str, key: Option<&[u8]>, headers: &[Header], payload: &[u8]) -> Seen {
    Seen {
        point,
        at: crate::time::rfc3339(SystemTime::now()),
        event: event.to_owned(),
        version: None,
        destination: None,
        reply: false,
        reason: None,
        message: None,
        attempts: None,
        key: key.map(Preview::of),
        headers: headers.iter().map(|h| (h.key.clone(), shown_header(&h.key, &h.value))).collect(),
        payload: Preview::of(payload),
    }
}

/// Header names whose values are credentials, lowercase substrings.
const SECRET_NAMES: [&str; 7] = ["authorization", "cookie", "token", "secret", "password", "api-key", "apikey"];

/// A header's value as watchers (and the dead-letters view) see it:
/// `<redacted>` when its name looks like a credential's.
pub fn shown_header(name: &str, value: &[u8]) -> Preview {
    let lower = name.to_ascii_lowercase();
    if SECRET_NAMES.iter().any(|secret| lower.contains(secret)) {
        Preview { text: Some("<redacted>".into()), hex: None, bytes: value.len(), truncated: false }
    } else {
        Preview::of(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    fn event(payload: &[u8]) -> Event {
        Event {
            id: "e:1".into(),
            source: "s".into(),
            key: None,
            payload: payload.to_vec(),
            headers: vec![
                Header { key: "Authorization".into(), value: b"Bearer hunter2".to_vec() },
                Header { key: "k".into(), value: b"v".to_vec() },
            ],
            timestamp_ms: 0,
            attempt: 1,
            reply_to: None,
        }
    }

    #[test]
    fn nothing_is_captured_while_nobody_watches() -> Result {
        let tap = Arc::new(Tap::default());
        tap.input(&event(b"x"));
        let mut watcher = tap.watch()?;
        assert!(watcher.receiver.try_recv().is_err(), "the event before the watcher is not there");
        tap.input(&event(b"y"));
        let seen = watcher.receiver.try_recv()?;
        assert_eq!((seen.point, seen.payload.text.as_deref(), seen.event.as_str()), (Point::Input, Some("y"), "e:1"));
        let output = Output { destination: Some("d".into()), key: None, payload: b"z".to_vec(), headers: Vec::new(), reply: false };
        tap.output("e:1", &output, "0123456789abcdef");
        let seen = watcher.receiver.try_recv()?;
        assert_eq!((seen.point, seen.destination.as_deref(), seen.version.as_deref()), (Point::Output, Some("d"), Some("0123456789ab")));
        drop(watcher);
        assert!(!tap.watched());
        Ok(())
    }

    #[test]
    fn credentials_are_redacted_and_binary_is_hex() -> Result {
        let tap = Arc::new(Tap::default());
        let mut watcher = tap.watch()?;
        tap.dead_letter(&event(&[0xff, 0x00]), "abc", "rejected", "no", 1);
        let seen = watcher.receiver.try_recv()?;
        assert_eq!(seen.headers[0].1.text.as_deref(), Some("<redacted>"));
        assert!(!serde_json::to_string(&*seen)?.contains("hunter2"));
        assert_eq!(seen.headers[1].1.text.as_deref(), Some("v"));
        assert_eq!((seen.payload.hex.as_deref(), seen.payload.text.as_deref()), (Some("ff00"), None));
        assert_eq!((seen.reason.as_deref(), seen.attempts), (Some("rejected"), Some(1)));
        Ok(())
    }

    #[test]
    fn a_long_payload_is_cut_at_a_character_boundary() {
        let text = "é".repeat(PREVIEW_BYTES); // 2 bytes each
        let preview = Preview::of(text.as_bytes());
        assert!(preview.truncated);
        assert_eq!(preview.bytes, 2 * PREVIEW_BYTES);
        assert_eq!(preview.text.as_deref().map(str::len), Some(PREVIEW_BYTES));
    }

    #[test]
    fn capture_stops_at_the_rate_per_point_and_second() {
        let tap = Tap::default();
        let admitted = (0..CAPTURE_PER_SECOND + 50).filter(|_| tap.admit_at(Point::Input, 100)).count() as u64;
        assert_eq!((admitted, tap.skipped()), (CAPTURE_PER_SECOND, 50));
        assert!(tap.admit_at(Point::Output, 100), "each point has its own window");
        assert!(tap.admit_at(Point::Input, 101), "a new second, a new window");
    }

    #[test]
    fn watchers_are_capped() -> Result {
        let tap = Arc::new(Tap::default());
        let watchers = (0..MAX_WATCHERS).map(|_| tap.watch()).collect::<std::result::Result<Vec<_>, _>>()?;
        assert!(tap.watch().is_err(), "one too many");
        drop(watchers);
        assert!(tap.watch().is_ok(), "room again");
        Ok(())
    }
}
