//! Stdout or a file, one line per record (JSON or payload only).
//!
//! A writer task owns the file: it takes every record queued so far, writes
//! them, flushes (and fsyncs if asked), then moves the durable watermark past
//! them. Group commit: one flush covers many records.
//!
//! A file never keeps a torn record: a write that fails part-way (disk full)
//! is cut back to the last whole line, and a file opened with a partial last
//! line (a crash, or a failure whose cut failed too) has that line removed
//! before anything is appended. A torn line was never acknowledged, so its
//! event is delivered again and nothing is lost.

use std::path::PathBuf;

use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Mutex};

/// A std mutex: held only for a counter bump and a non-blocking enqueue.
type SyncMutex<T> = std::sync::Mutex<T>;

use super::{Durable, Receipt, Record, Sink, SinkError};
use crate::codec::encode_record;

/// Records queued ahead of the writer; a full queue makes senders wait.
const QUEUE: usize = 4096;

/// The most bytes of records joined into one write.
const JOINED: usize = 256 * 1024;

/// The process's standard output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// How each record is written.
    #[serde(default)]
    pub format: RecordFormat,
}

impl StdoutSinkConfig {
    pub(crate) fn build(&self) -> LineSink {
        LineSink::stdout(self.format)
    }
}

/// A file, appended to (created if missing).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to append to.
    pub path: PathBuf,
    /// How each record is written.
    #[serde(default)]
    pub format: RecordFormat,
    /// Call fsync before acknowledging (slower; survives a power cut, not
    /// only a crash).
    #[serde(default)]
    pub fsync: bool,
}

impl FileSinkConfig {
    /// Opens the file for appending (created if missing).
    pub async fn build(&self) -> Result<LineSink, SinkError> {
        LineSink::file(self.path.clone(), self.format, self.fsync).await
    }
}

/// How a sink writes a record as a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordFormat {
    /// One JSON object per record, with payload, key, headers and destination
    /// (the same encoding a file source reads).
    #[default]
    Json,
    /// The payload alone, followed by a newline.
    Payload,
}

pub struct LineSink {
    what: String,
    format: RecordFormat,
    /// The queue, and the sequence number of the last record queued, under
    /// one lock so sequence order equals queue order. `None` once closed.
    tx: SyncMutex<(Option<mpsc::Sender<Vec<u8>>>, u64)>,
    durable: watch::Receiver<Durable>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl LineSink {
    pub fn stdout(format: RecordFormat) -> Self {
        Self::new("stdout".into(), Box::new(tokio::io::stdout()), format, None)
    }

    /// Opens `path` for appending, creating it (and its folder) if needed,
    /// after removing a partial last line (see the module comment).
    pub async fn file(path: PathBuf, format: RecordFormat, fsync: bool) -> Result<Self, SinkError> {
        let what = format!("file {}", path.display());
        let open_err = |e: std::io::Error| SinkError::Open { what: what.clone(), message: e.to_string() };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(open_err)?;
        }
        // Readable too: the torn-line check reads the end of the file.
        let file = tokio::fs::OpenOptions::new().create(true).read(true).append(true).open(&path).await.map_err(open_err)?;
        let handle = file.try_clone().await.map_err(open_err)?.into_std().await;
        let (handle, len, cut) = tokio::task::spawn_blocking(move || {
            let cut = repair_torn_tail(&handle)?;
            let len = handle.metadata()?.len();
            Ok::<_, std::io::Error>((handle, len, cut))
        })
        .await
        .map_err(|e| open_err(std::io::Error::other(e)))?
        .map_err(open_err)?;
        if cut > 0 {
            tracing::warn!("{what}: removed a partial last line ({cut} bytes) left by a write that did not finish (a crash or a full disk); its event was not acknowledged and is delivered again");
        }
        let tail = FileTail { handle: tokio::fs::File::from_std(handle), fsync, len };
        Ok(Self::start(what, Box::new(file), format, Some(tail)))
    }

    /// Any writer; used by tests. `fsync`: a handle of the file `out`
    /// writes to, synced after each flush.
    pub fn new(what: String, out: Box<dyn AsyncWrite + Send + Unpin>, format: RecordFormat, fsync: Option<tokio::fs::File>) -> Self {
        // Length unknown: a failed write is not cut back (only `file` knows it).
        let tail = fsync.map(|handle| FileTail { handle, fsync: true, len: u64::MAX });
        Self::start(what, out, format, tail)
    }

    fn start(what: String, out: Box<dyn AsyncWrite + Send + Unpin>, format: RecordFormat, tail: Option<FileTail>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (durable_tx, durable) = watch::channel(Durable::UpTo(0));
        let writer = tokio::spawn(write_loop(what.clone(), out, rx, durable_tx, tail));
        Self { what, format, tx: SyncMutex::new((Some(tx), 0)), durable, writer: Mutex::new(Some(writer)) }
    }
}

/// A second handle of a sink file, and the length of its whole lines.
struct FileTail {
    handle: tokio::fs::File,
    /// fsync after each flush.
    fsync: bool,
    /// Bytes of whole, flushed lines; `u64::MAX`: not known.
    len: u64,
}

/// Removes a last line without its newline from `file`; returns the bytes
/// removed. Reads backwards from the end in blocks, so only the torn line
/// (at most a few blocks) is read, however large the file.
fn repair_torn_tail(file: &std::fs::File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const BLOCK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let mut last = [0u8; 1];
    if len == 0 || (file.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n') {
        return Ok(0);
    }
    let mut end = len;
    let mut block = vec![0u8; BLOCK as usize];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(BLOCK);
        let chunk = &mut block[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    file.set_len(keep)?;
    file.sync_all()?;
    Ok(len - keep)
}

async fn write_loop(
    what: String,
    mut out: Box<dyn AsyncWrite + Send + Unpin>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    durable: watch::Sender<Durable>,
    mut tail: Option<FileTail>,
) {
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(1024);
    // The batch's lines joined: one write for all of them. Both tokio's
    // file and stdout hand every write to a blocking thread, so a write
    // per line cost a thread hand-off per record (~50 µs of CPU each).
    // Written whenever it reaches `JOINED` bytes, so large records do not
    // make it large.
    let mut joined = Vec::with_capacity(JOINED);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let count = batch.len() as u64;
        let bytes: u64 = batch.iter().map(|line| line.len() as u64).sum();
        let result = async {
            joined.clear();
            for line in batch.drain(..) {
                if !joined.is_empty() && joined.len() + line.len() > JOINED {
                    out.write_all(&joined).await?;
                    joined.clear();
                }
                match joined.is_empty() && line.len() >= JOINED {
                    true => out.write_all(&line).await?,
                    false => joined.extend_from_slice(&line),
                }
            }
            out.write_all(&joined).await?;
            out.flush().await?;
            if let Some(FileTail { handle, fsync: true, .. }) = &tail {
                handle.sync_data().await?;
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                written += count;
                if let Some(tail) = tail.as_mut() {
                    tail.len = tail.len.saturating_add(bytes);
                }
                durable.send_replace(Durable::UpTo(written));
            }
            Err(e) => {
                // The OS error ("No space left on device") is the message;
                // a failed cut is said too (the next open repairs it).
                let mut message = e.to_string();
                if let Some(FileTail { handle, len, .. }) = tail.as_ref().filter(|t| t.len != u64::MAX) {
                    if let Err(cut) = handle.set_len(*len).await {
                        message =
                            format!("{message}; the partly written records could not be cut off ({cut}): they will be at the next start");
                    }
                }
                durable.send_replace(Durable::Failed(SinkError::Write { what: what.clone(), message }));
                return;
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for LineSink {
    async fn send(&self, record: Record) -> Result<Receipt, SinkError> {
        let line = match self.format {
            RecordFormat::Json => encode_record(&record),
            RecordFormat::Payload => {
                let mut line = record.payload;
                line.push(b'\n');
                line
            }
        };
        // A queue closed by a failed writer reports the writer's error
        // (the OS error), not that the sink is closed.
        let closed = || match &*self.durable.borrow() {
            Durable::Failed(err) => err.clone(),
            Durable::UpTo(_) => SinkError::Closed { what: self.what.clone() },
        };
        let tx = self.tx.lock().map_err(|_| closed())?.0.clone().ok_or_else(closed)?;
        if let Durable::Failed(err) = &*self.durable.borrow() {
            return Err(err.clone());
        }
        // Wait for room without holding the lock, then number and enqueue
        // in one step.
        let permit = tx.reserve_owned().await.map_err(|_| closed())?;
        let mut guard = self.tx.lock().map_err(|_| closed())?;
        guard.1 += 1;
        permit.send(line);
        Ok(Receipt::watermark(guard.1, self.durable.clone()))
    }

    async fn close(&self) -> Result<(), SinkError> {
        if let Ok(mut tx) = self.tx.lock() {
            tx.0.take();
        }
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.await;
        }
        match &*self.durable.borrow() {
            Durable::Failed(err) => Err(err.clone()),
            Durable::UpTo(_) => Ok(()),
        }
    }

    fn failed(&self) -> bool {
        matches!(&*self.durable.borrow(), Durable::Failed(_))
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use super::*;

    fn record(payload: &str) -> Record {
        Record {
            destination: None,
            key: None,
            payload: payload.as_bytes().to_vec(),
            headers: Vec::new(),
            id: None,
            partition: None,
            version: None,
        }
    }

    #[tokio::test]
    async fn a_torn_last_line_is_removed_before_appending() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "one\ntwo\nthr")?;
        let sink = LineSink::file(path.clone(), RecordFormat::Payload, false).await?;
        sink.send(record("three")).await?.wait().await?;
        sink.close().await?;
        assert_eq!(std::fs::read_to_string(&path)?, "one\ntwo\nthree\n");
        // A whole file, or one that is a single torn line, is handled too.
        for (before, after) in [("a\n", "a\nb\n"), ("torn", "b\n"), ("", "b\n")] {
            std::fs::write(&path, before)?;
            let sink = LineSink::file(path.clone(), RecordFormat::Payload, true).await?;
            sink.send(record("b")).await?.wait().await?;
            sink.close().await?;
            assert_eq!(std::fs::read_to_string(&path)?, after, "from {before:?}");
        }
        Ok(())
    }

    #[test]
    fn a_torn_line_longer_than_a_block_is_found() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out");
        let torn = "x".repeat(200_000);
        std::fs::write(&path, format!("kept\n{torn}"))?;
        let file = std::fs::OpenOptions::new().read(true).append(true).open(&path)?;
        assert_eq!(repair_torn_tail(&file)?, 200_000);
        assert_eq!(std::fs::read_to_string(&path)?, "kept\n");
        Ok(())
    }

    /// Counts the writes it is given, and keeps their bytes.
    #[derive(Clone, Default)]
    struct CountingWriter(Arc<std::sync::Mutex<(usize, Vec<u8>)>>);

    impl AsyncWrite for CountingWriter {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let mut seen = self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?;
            seen.0 += 1;
            seen.1.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Records queued together reach the file in one write (tokio's file
    /// and stdout hand each write to a blocking thread), in order; large
    /// ones are written in chunks of at most `JOINED` bytes.
    #[tokio::test(flavor = "current_thread")]
    async fn records_queued_together_are_written_at_once() -> Result<(), Box<dyn std::error::Error>> {
        let out = CountingWriter::default();
        let sink = LineSink::new("test".into(), Box::new(out.clone()), RecordFormat::Payload, None);
        // On one thread the writer runs only when the sender yields (tokio's
        // cooperative budget makes it, every 128 sends or so).
        let mut receipts = Vec::new();
        for i in 0..500 {
            receipts.push(sink.send(record(&format!("r{i}"))).await?);
        }
        for receipt in receipts {
            receipt.wait().await?;
        }
        let expected: String = (0..500).map(|i| format!("r{i}\n")).collect();
        {
            let seen = out.0.lock().map_err(|_| "poisoned")?;
            assert!(seen.0 <= 5, "500 records in {} writes", seen.0);
            assert_eq!(String::from_utf8_lossy(&seen.1), expected);
        }
        // Three records of 100 KiB and one of 300 KiB: never more than
        // `JOINED` bytes joined, never a record split.
        let before = out.0.lock().map_err(|_| "poisoned")?.0;
        let sizes = [100 << 10, 100 << 10, 100 << 10, 300 << 10];
        let mut receipts = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            receipts.push(sink.send(record(&char::from(b'a' + i as u8).to_string().repeat(*size))).await?);
        }
        for receipt in receipts {
            receipt.wait().await?;
        }
        sink.close().await?;
        let seen = out.0.lock().map_err(|_| "poisoned")?;
        assert_eq!(seen.0 - before, 3, "the first two joined, the third alone, the large one alone");
        assert_eq!(seen.1.len(), expected.len() + sizes.iter().map(|s| s + 1).sum::<usize>());
        Ok(())
    }

    /// Accepts nothing until `release` fires, then fails every write with
    /// ENOSPC.
    struct FullDisk(Option<tokio::sync::oneshot::Receiver<()>>);

    impl AsyncWrite for FullDisk {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, _: &[u8]) -> Poll<std::io::Result<usize>> {
            if let Some(release) = self.0.as_mut() {
                match Pin::new(release).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(_) => self.0 = None,
                }
            }
            Poll::Ready(Err(std::io::Error::from_raw_os_error(libc::ENOSPC)))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    use std::future::Future as _;

    /// A sender waiting for room when the writer fails is told the OS
    /// error, not that the sink is closed.
    #[tokio::test]
    async fn a_full_disk_is_named_to_every_sender() -> Result<(), Box<dyn std::error::Error>> {
        let (release, held) = tokio::sync::oneshot::channel();
        let sink = Arc::new(LineSink::new("file f".into(), Box::new(FullDisk(Some(held))), RecordFormat::Payload, None));
        let mut receipts = Vec::new();
        // Fill the queue behind the stuck writer until a send has to wait.
        while let Ok(receipt) = tokio::time::timeout(std::time::Duration::from_millis(200), sink.send(record("r"))).await {
            receipts.push(receipt?);
            if receipts.len() > 4 * QUEUE {
                return Err("the queue never filled".into());
            }
        }
        let waiting = tokio::spawn({
            let sink = sink.clone();
            async move { sink.send(record("late")).await.map(|_| ()) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the late sender should be waiting for room");
        let _ = release.send(());
        let late = waiting.await?.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(late.contains("No space left on device"), "{late}");
        let first = receipts.remove(0).wait().await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(first.starts_with("cannot write to file f: No space left on device"), "{first}");
        Ok(())
    }
}
