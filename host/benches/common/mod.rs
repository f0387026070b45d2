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
