//! The source side of a pipeline's `codec`: a source whose events arrive in
//! a wire format (NestJS packets) is wrapped by [`Decoding`], which unwraps
//! each event into the payload and headers the plugin sees. Built with the
//! source ([`crate::config::SourceConfig::build`]), as Vector builds a
//! source's `decoding` in its `build()`; the dispatcher only asks the
//! source to [`Source::decode`] what it delivered.

use std::sync::Arc;

use super::nestjs;
use crate::config::Codec;
use crate::event::Event;
use crate::sink::Sink;
use crate::source::{Delivery, Source, SourceError};

/// The wire format of a source's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// NestJS's NATS transport: a packet (`pattern`, `data`, `id`).
    NestjsPacket,
    /// NestJS's Kafka transport: no envelope; the topic is the pattern and
    /// `kafka_correlationId` the id.
    NestjsKafka,
}

/// `source` decoding `codec`; `kafka`: the source is Kafka (NestJS's Kafka
/// transport rather than its NATS one). Without a codec, the source as it is.
pub fn decoding(source: Box<dyn Source>, codec: Codec, kafka: bool) -> Box<dyn Source> {
    let format = match (codec, kafka) {
        (Codec::None, _) => return source,
        (Codec::Nestjs, false) => Format::NestjsPacket,
        (Codec::Nestjs, true) => Format::NestjsKafka,
    };
    Box::new(Decoding { inner: source, format })
}

/// A source whose events are decoded from a wire format; everything else
/// is the inner source's.
pub struct Decoding {
    inner: Box<dyn Source>,
    format: Format,
}

#[async_trait::async_trait]
impl Source for Decoding {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        self.inner.next().await
    }

    fn decode(&self, event: &mut Event) -> Result<(), String> {
        match self.format {
            Format::NestjsPacket => nestjs::decode(event),
            Format::NestjsKafka => {
                nestjs::decode_kafka(event);
                Ok(())
            }
        }
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        self.inner.close().await
    }

    fn reply_sink(&self) -> Option<Arc<dyn Sink>> {
        self.inner.reply_sink()
    }

    fn redelivers(&self) -> bool {
        self.inner.redelivers()
    }

    fn max_deliveries(&self) -> Option<u32> {
        self.inner.max_deliveries()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
