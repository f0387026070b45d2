//! A file or stdin, one event per line.
//!
//! The position is the line number. With a checkpoint file, the number of
//! lines done is recorded as acks arrive (at most every
//! [`CHECKPOINT_INTERVAL`], and at close), and a restart skips them: lines
//! are processed at least once across restarts. Blank lines are skipped but
//! counted, so ids stay stable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::progress::Progress;
use super::{Ack, Acknowledge, Delivery, Settlement, Source, SourceContext, SourceError};
use crate::codec::decode_event;
use crate::event::{now_ms, Event};

/// How often a moving commit point is written to the checkpoint file.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
/// How often a followed file is checked for new lines.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Longest line accepted; a longer one is dead-lettered, truncated, as a
/// defect rather than growing memory without bound.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// Lines of a file. Ends at end of file unless `follow` is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file to read.
    pub path: PathBuf,
    /// How each line becomes an event.
    #[serde(default)]
    pub format: LineFormat,
    /// Keep reading as the file grows (like `tail -f`) instead of ending
    /// the pipeline at end of file.
    #[serde(default)]
    pub follow: bool,
    /// A file where the source records how many lines are done (every
    /// output durably written), so a restart resumes after them instead
    /// of from the top. Unset: always start at line 1.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// The path as written in the config, before it was resolved: event
    /// ids (`<name>:<line>`) use it, so they do not change with the
    /// directory sluice is started from.
    #[serde(skip)]
    pub name: String,
}

impl FileSourceConfig {
    /// Opens the file, resuming after the lines done: as the pipeline's
    /// embedded state recorded them when it has one (the position is then
    /// committed with the state; config validation refuses a `checkpoint`
    /// file beside it), else as the `checkpoint` file did.
    pub(crate) async fn build(&self, cx: SourceContext<'_>) -> Result<LineSource, SourceError> {
        let Some(store) = cx.state else {
            return LineSource::file(self.name.clone(), self.path.clone(), self.format, self.follow, self.checkpoint.clone()).await;
        };
        let done = store.position(&self.name).await.map_err(|e| SourceError::Broker {
            what: format!("source {}", self.name),
            message: format!("cannot read its position from the state database: {e}"),
        })?;
        let source = LineSource::file_after(self.name.clone(), self.path.clone(), self.format, self.follow, done.unwrap_or(0)).await?;
        let ledger = source.ledger();
        store.track_position(self.name.clone(), Arc::new(move || ledger.lock().map(|l| l.lines_done()).unwrap_or(0)));
        Ok(source)
    }

    /// Keeps the path as written as the source's name, then makes `path`
    /// and `checkpoint` relative to `base` (the config file's folder).
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        self.name = self.path.display().to_string();
        for path in std::iter::once(&mut self.path).chain(self.checkpoint.as_mut()) {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}

/// Lines of the process's standard input; ends at end of input.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceConfig {
    /// How each line becomes an event.
    #[serde(default)]
    pub format: LineFormat,
}

impl StdinSourceConfig {
    pub(crate) fn build(&self) -> LineSource {
        LineSource::stdin(self.format)
    }
}

/// How a line of text becomes an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LineFormat {
    /// Each line is a JSON object in the event encoding of
    /// `docs/configuration.md` (payload, key, headers, id…).
    #[default]
    Json,
    /// Each line is the payload, as is.
    Lines,
}

/// A source of text lines (a file or stdin), one event per line, with its
/// progress counted so a file resumes after the lines done.
pub struct LineSource {
    name: String,
    reader: Box<dyn AsyncBufRead + Send + Unpin>,
    format: LineFormat,
    follow: bool,
    line: u64,
    buf: Vec<u8>,
    ledger: Arc<Mutex<Ledger>>,
    checkpoint: Option<PathBuf>,
    last_write: Instant,
}

/// What is done, shared with the acks.
#[derive(Debug, Default)]
pub struct Ledger {
    progress: Progress,
    pub done: u64,
    pub abandoned: u64,
    dirty: bool,
}

impl Ledger {
    /// Lines settled without a gap from the start: what a resume skips.
    pub fn lines_done(&self) -> u64 {
        self.progress.committed().saturating_sub(1)
    }
}

impl LineSource {
    /// Reads `path`, resuming after the lines recorded in `checkpoint`.
    /// `name` prefixes event ids (`<name>:<line>`).
    pub async fn file(
        name: String,
        path: PathBuf,
        format: LineFormat,
        follow: bool,
        checkpoint: Option<PathBuf>,
    ) -> Result<Self, SourceError> {
        let resume = match &checkpoint {
            Some(cp) => read_checkpoint(cp).await?,
            None => 0,
        };
        let mut source = Self::file_after(name, path, format, follow, resume).await?;
        source.checkpoint = checkpoint;
        Ok(source)
    }

    /// Reads `path`, skipping its first `done` lines: for a position kept
    /// elsewhere (a pipeline's state database, committed with its state;
    /// see [`Ledger::lines_done`]).
    pub(crate) async fn file_after(name: String, path: PathBuf, format: LineFormat, follow: bool, done: u64) -> Result<Self, SourceError> {
        let what = format!("file {}", path.display());
        let file = tokio::fs::File::open(&path).await.map_err(|source| SourceError::Open { what: what.clone(), source })?;
        let mut source = Self::new(name, Box::new(BufReader::with_capacity(256 * 1024, file)), format, follow);
        source.skip(done).await?;
        Ok(source)
    }

    /// Reads the process's stdin (no position: a restart starts over).
    pub fn stdin(format: LineFormat) -> Self {
        Self::new("stdin".into(), Box::new(BufReader::new(tokio::io::stdin())), format, false)
    }

    /// Any reader; used by tests and by `sluice plugin test`.
    pub(crate) fn new(name: String, reader: Box<dyn AsyncBufRead + Send + Unpin>, format: LineFormat, follow: bool) -> Self {
        Self {
            name,
            reader,
            format,
            follow,
            line: 0,
            buf: Vec::new(),
            ledger: Arc::new(Mutex::new(Ledger::default())),
            checkpoint: None,
            last_write: Instant::now(),
        }
    }

    /// Counts of settled events so far.
    pub(crate) fn ledger(&self) -> Arc<Mutex<Ledger>> {
        self.ledger.clone()
    }

    async fn skip(&mut self, lines: u64) -> Result<(), SourceError> {
        while self.line < lines {
            self.buf.clear();
            let n = self.read_line().await?;
            if n == 0 {
                break;
            }
            self.line += 1;
        }
        // The last skipped line must not prefix the first line read next.
        self.buf.clear();
        if let Ok(mut ledger) = self.ledger.lock() {
            ledger.progress = Progress::starting_at(self.line + 1);
        }
        Ok(())
    }

    async fn read_line(&mut self) -> Result<usize, SourceError> {
        let reader = &mut self.reader;
        let mut total = 0;
        loop {
            let chunk = reader.fill_buf().await.map_err(|source| SourceError::Read { what: self.name.clone(), source })?;
            if chunk.is_empty() {
                return Ok(total);
            }
            let (take, finished) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let room = MAX_LINE.saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&chunk[..take.min(room)]);
            reader.consume(take);
            total += take;
            if finished {
                return Ok(total);
            }
        }
    }

    fn write_checkpoint_if_due(&mut self, force: bool) -> Result<(), SourceError> {
        let Some(path) = &self.checkpoint else { return Ok(()) };
        if !force && self.last_write.elapsed() < CHECKPOINT_INTERVAL {
            return Ok(());
        }
        let committed = match self.ledger.lock() {
            Ok(mut ledger) if ledger.dirty || force => {
                ledger.dirty = false;
                ledger.progress.committed()
            }
            _ => return Ok(()),
        };
        self.last_write = Instant::now();
        // Lines below the commit point are done: record how many.
        let done = committed.saturating_sub(1);
        crate::fs::write_atomically(path, format!("{done}\n").as_bytes())
            .map_err(|source| SourceError::Checkpoint { path: path.clone(), source })
    }

    fn delivery(&self, line: u64, raw: &[u8]) -> Delivery {
        let id = format!("{}:{line}", self.name);
        let now = now_ms();
        let (event, defect) = match self.format {
            LineFormat::Lines => (self.raw_event(id, raw, now), None),
            LineFormat::Json => match decode_event(raw, &self.name, id.clone(), now) {
                Ok(event) => (event, None),
                Err(err) => (self.raw_event(id, raw, now), Some(format!("line {line}: {err}"))),
            },
        };
        let defect = if raw.len() >= MAX_LINE { Some(format!("line {line} is longer than {MAX_LINE} bytes (truncated)")) } else { defect };
        Delivery { event, partition: 0, defect, ack: Ack::new(LineAck { line, ledger: self.ledger.clone() }) }
    }

    fn raw_event(&self, id: String, raw: &[u8], now: u64) -> Event {
        Event {
            id,
            source: self.name.clone(),
            key: None,
            payload: raw.to_vec(),
            headers: Vec::new(),
            timestamp_ms: now,
            attempt: 1,
            reply_to: None,
        }
    }
}

#[async_trait::async_trait]
impl Source for LineSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        loop {
            self.write_checkpoint_if_due(false)?;
            let n = self.read_line().await?;
            let complete = self.buf.last() == Some(&b'\n');
            if n == 0 || (!complete && self.follow) {
                if !self.follow {
                    // End of input; a partial last line was handled below.
                    return Ok(None);
                }
                // A followed file: keep a partial line until its newline
                // arrives, and poll for growth. Cancel-safe: the partial line
                // stays in `buf`.
                tokio::time::sleep(FOLLOW_POLL).await;
                continue;
            }
            self.line += 1;
            let mut raw = std::mem::take(&mut self.buf);
            while matches!(raw.last(), Some(b'\n' | b'\r')) {
                raw.pop();
            }
            if raw.iter().all(u8::is_ascii_whitespace) {
                // Blank: done by definition, so the commit point can pass it.
                LineAck { line: self.line, ledger: self.ledger.clone() }.settle_line(Settlement::Done);
                continue;
            }
            return Ok(Some(self.delivery(self.line, &raw)));
        }
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        self.write_checkpoint_if_due(true)?;
        if let Ok(ledger) = self.ledger.lock() {
            if ledger.abandoned > 0 && self.checkpoint.is_none() {
                tracing::warn!(
                    source = %self.name,
                    abandoned = ledger.abandoned,
                    "events were not finished and this source has no checkpoint: they are not recorded anywhere"
                );
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

struct LineAck {
    line: u64,
    ledger: Arc<Mutex<Ledger>>,
}

impl LineAck {
    fn settle_line(self, settlement: Settlement) {
        if let Ok(mut ledger) = self.ledger.lock() {
            match settlement {
                Settlement::Done | Settlement::DeadLettered => {
                    ledger.done += 1;
                    if ledger.progress.done(self.line).is_some() {
                        ledger.dirty = true;
                    }
                }
                Settlement::Redeliver { .. } | Settlement::Abandon => ledger.abandoned += 1,
            }
        }
    }
}

impl Acknowledge for LineAck {
    fn settle(self: Box<Self>, settlement: Settlement) {
        (*self).settle_line(settlement);
    }
}

async fn read_checkpoint(path: &PathBuf) -> Result<u64, SourceError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => text.trim().parse().map_err(|e| SourceError::Open {
            what: format!("checkpoint {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("expected a line count: {e}")),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(SourceError::Open { what: format!("checkpoint {}", path.display()), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    async fn drain(source: &mut LineSource) -> std::result::Result<Vec<Delivery>, SourceError> {
        let mut all = Vec::new();
        while let Some(d) = source.next().await? {
            all.push(d);
        }
        Ok(all)
    }

    #[tokio::test]
    async fn resumes_after_the_checkpoint_with_the_next_line_intact() -> Result {
        let dir = tempfile::tempdir()?;
        let events = dir.path().join("in.jsonl");
        let checkpoint = dir.path().join("state/in.checkpoint");
        std::fs::write(&events, "{\"payload\":\"a\"}\n\n{\"payload\":\"b\"}\n{\"payload\":\"c\"}\n{\"payload\":\"d\"}\n")?;

        let mut first = LineSource::file("in".into(), events.clone(), LineFormat::Json, false, Some(checkpoint.clone())).await?;
        let mut got = drain(&mut first).await?;
        assert_eq!(got.len(), 4, "the blank line is skipped");
        // Lines 1-3 done (3 out of order), line 4 ("c") handed back, 5 done.
        let d = got.pop();
        let c = got.pop();
        for delivery in got.into_iter().rev() {
            delivery.ack.settle(Settlement::Done);
        }
        if let Some(c) = c {
            c.ack.settle(Settlement::Abandon);
        }
        if let Some(d) = d {
            d.ack.settle(Settlement::Done);
        }
        first.close().await?;
        assert_eq!(std::fs::read_to_string(&checkpoint)?.trim(), "3");

        let mut second = LineSource::file("in".into(), events, LineFormat::Json, false, Some(checkpoint)).await?;
        let again = drain(&mut second).await?;
        let seen: Vec<(&str, &[u8], bool)> =
            again.iter().map(|d| (d.event.id.as_str(), d.event.payload.as_slice(), d.defect.is_none())).collect();
        assert_eq!(seen, vec![("in:4", &b"c"[..], true), ("in:5", &b"d"[..], true)]);
        Ok(())
    }

    #[tokio::test]
    async fn a_followed_file_keeps_a_partial_line_until_its_newline() -> Result {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("grow.txt");
        std::fs::write(&path, "one\ntw")?;
        let mut source = LineSource::file("grow".into(), path.clone(), LineFormat::Lines, true, None).await?;
        let first = source.next().await?.ok_or("first line")?;
        assert_eq!(first.event.payload, b"one");
        let pending = tokio::spawn(async move { source.next().await.map(|d| d.map(|d| d.event.payload)) });
        tokio::time::sleep(FOLLOW_POLL * 3).await;
        assert!(!pending.is_finished(), "a partial line must not be emitted");
        std::fs::OpenOptions::new().append(true).open(&path).and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"o\n")
        })?;
        let second = tokio::time::timeout(Duration::from_secs(5), pending).await???;
        assert_eq!(second.as_deref(), Some(&b"two"[..]));
        Ok(())
    }

    #[tokio::test]
    async fn undecodable_lines_become_defects_with_the_raw_bytes() -> Result {
        let reader = Box::new(BufReader::new(&b"{\"payload\":\"ok\"}\nnot json\r\n"[..]));
        let mut source = LineSource::new("mem".into(), reader, LineFormat::Json, false);
        let got = drain(&mut source).await?;
        assert_eq!(got.len(), 2);
        assert!(got[0].defect.is_none());
        assert_eq!(got[1].event.payload, b"not json");
        assert!(got[1].defect.as_deref().unwrap_or("").starts_with("line 2: not a valid event"));
        Ok(())
    }
}
