//! What the criterion benches share: the native twin of the `passthrough`
//! plugin, an in-memory source and a sink that accepts at once, so a bench
//! measures the dispatcher and the plugin, not a broker or a disk.

use std::collections::VecDeque;

use sluice::dispatch::{Handler, HandlerFactory};
use sluice::event::{Event, Output};
use sluice::runtime::CallError;
use sluice::runtime::HandleResult;
use sluice::sink::{Receipt, Record, Sink, SinkError};
use sluice::source::{Ack, Delivery, Source, SourceError};

/// What `passthrough` does, natively.
pub fn native_passthrough(events: &[Event]) -> Vec<HandleResult> {
    events
        .iter()
        .map(|e| {
            Ok(vec![Output { destination: None, key: e.key.clone(), payload: e.payload.clone(), headers: e.headers.clone(), reply: false }])
        })
        .collect()
}

pub struct Native;
#[async_trait::async_trait]
impl Handler for Native {
    async fn handle(&mut self, events: &[Event]) -> Result<Vec<HandleResult>, CallError> {
        Ok(native_passthrough(events))
    }
}
#[async_trait::async_trait]
impl HandlerFactory for Native {
    async fn create(&self) -> Result<Box<dyn Handler>, sluice::runtime::LoadError> {
        Ok(Box::new(Native))
    }
    fn name(&self) -> &str {
        "native"
    }
    fn digest(&self) -> &str {
        "native"
    }
}

pub struct MemorySource(pub VecDeque<Event>);
#[async_trait::async_trait]
impl Source for MemorySource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        Ok(self.0.pop_front().map(|event| Delivery { event, partition: 0, defect: None, ack: Ack::noop() }))
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// Accepts every record at once: measures the dispatcher, not a disk.
pub struct NullSink;
#[async_trait::async_trait]
impl Sink for NullSink {
    async fn send(&self, record: Record) -> Result<Receipt, SinkError> {
        std::hint::black_box(record);
        Ok(Receipt::ready(Ok(())))
    }
    async fn close(&self) -> Result<(), SinkError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "null".into()
    }
}

/// Median, minimum and maximum (of the rounds mode of the dispatch and
/// state benches; each bench is its own crate, and `schema` has no rounds).
#[allow(dead_code)]
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |i: usize| sorted.get(i).copied().unwrap_or(f64::NAN);
    (at(sorted.len() / 2), at(0), at(sorted.len().saturating_sub(1)))
}

/// User and system CPU time of the whole process so far, in seconds.
#[allow(dead_code)]
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
