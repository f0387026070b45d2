//! Stdout or a file, one line per record (JSON or payload only).
//!
//! A writer task owns the file: it takes every record queued so far, writes
//! them, flushes (and fsyncs if asked), then moves the durable watermark past
//! them. Group commit: one flush covers many records.

use std::path::PathBuf;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Mutex};

/// A std mutex: held only for a counter bump and a non-blocking enqueue.
type SyncMutex<T> = std::sync::Mutex<T>;

use super::{Durable, Receipt, Record, Sink, SinkError};
use crate::codec::encode_record;
use crate::config::RecordFormat;

/// Records queued ahead of the writer; a full queue makes senders wait.
const QUEUE: usize = 4096;

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

    /// Opens `path` for appending, creating it (and its folder) if needed.
    pub async fn file(path: PathBuf, format: RecordFormat, fsync: bool) -> Result<Self, SinkError> {
        let what = format!("file {}", path.display());
        let open_err = |e: std::io::Error| SinkError::Open { what: what.clone(), message: e.to_string() };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(open_err)?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(open_err)?;
        let sync = if fsync {
            Some(file.try_clone().await.map_err(open_err)?)
        } else {
            None
        };
        Ok(Self::new(what, Box::new(file), format, sync))
    }

    /// Any writer; used by tests.
    pub fn new(
        what: String,
        out: Box<dyn AsyncWrite + Send + Unpin>,
        format: RecordFormat,
        fsync: Option<tokio::fs::File>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (durable_tx, durable) = watch::channel(Durable::UpTo(0));
        let writer = tokio::spawn(write_loop(what.clone(), out, rx, durable_tx, fsync));
        Self {
            what,
            format,
            tx: SyncMutex::new((Some(tx), 0)),
            durable,
            writer: Mutex::new(Some(writer)),
        }
    }
}

async fn write_loop(
    what: String,
    mut out: Box<dyn AsyncWrite + Send + Unpin>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    durable: watch::Sender<Durable>,
    fsync: Option<tokio::fs::File>,
) {
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(1024);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let count = batch.len() as u64;
        let result = async {
            for line in batch.drain(..) {
                out.write_all(&line).await?;
            }
            out.flush().await?;
            if let Some(file) = &fsync {
                file.sync_data().await?;
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                written += count;
                durable.send_replace(Durable::UpTo(written));
            }
            Err(e) => {
                durable.send_replace(Durable::Failed(SinkError::Write {
                    what: what.clone(),
                    message: e.to_string(),
                }));
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
        let closed = || SinkError::Closed { what: self.what.clone() };
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

    fn describe(&self) -> String {
        self.what.clone()
    }
}
