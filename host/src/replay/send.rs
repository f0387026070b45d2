//! Sending replayed events: where each one goes ([`To::destination`]) and
//! the sinks that take them ([`Sinks`]), the same sinks a pipeline uses,
//! opened on first use. `sluice dlq replay` and the admin API's replay
//! both go through here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Connection, DeadLetter, ReplayError};
use crate::config::RecordFormat;
use crate::sink::kafka::{KafkaSink, Producers};
use crate::sink::lines::LineSink;
use crate::sink::nats::{JetStreamSink, NatsSink};
use crate::sink::{Receipt, Sink};

/// The kind of destination events are sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON-lines file.
    File,
    /// Core NATS (no acknowledgement).
    Nats,
    /// A JetStream stream (acknowledged).
    JetStream,
    /// A Kafka topic.
    Kafka,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::File => "file",
            Kind::Nats => "nats",
            Kind::JetStream => "jetstream",
            Kind::Kafka => "kafka",
        })
    }
}

/// Where events go: a kind and, unless each record's own source is meant,
/// a name (a path, subject or topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct To {
    /// The kind of destination.
    pub kind: Kind,
    /// A file path, subject or topic; `None`: each record goes back to
    /// the source it came from.
    pub name: Option<String>,
}

impl std::str::FromStr for To {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, name) = match text.split_once(':') {
            Some((kind, name)) => (kind, Some(name.to_owned()).filter(|n| !n.is_empty())),
            None => (text, None),
        };
        let kind = match kind {
            "file" => Kind::File,
            "nats" => Kind::Nats,
            "jetstream" => Kind::JetStream,
            "kafka" => Kind::Kafka,
            _ => {
                return Err(format!(
                    "{text:?}: write KIND or KIND:NAME, KIND being file, nats, jetstream or kafka (KIND alone: each record's own source)"
                ))
            }
        };
        Ok(To { kind, name })
    }
}

impl To {
    /// The path, subject or topic `record` goes to: this `To`'s name, or
    /// the record's own source. A file's records name its path; a subject
    /// or topic would become a new file by mistake, so a file that is not
    /// there is refused.
    pub fn destination(&self, record: &DeadLetter) -> Result<String, ReplayError> {
        let name = self.name.clone().unwrap_or_else(|| record.source.clone());
        if name.is_empty() {
            return Err(ReplayError::Send(format!(
                "record of event {} has no sluice-dlq-source: give a destination with --to KIND:NAME",
                record.event_id
            )));
        }
        if self.kind == Kind::File && self.name.is_none() && !Path::new(&name).is_file() {
            return Err(ReplayError::Send(format!(
                "record of event {} comes from `{name}`, which is not a file here: run from the folder of the pipeline's config, or give the destination with --to (e.g. --to nats or --to file:PATH)",
                record.event_id
            )));
        }
        Ok(name)
    }
}

/// The sinks events are sent through, opened on first use.
pub struct Sinks {
    connection: Connection,
    files: HashMap<String, Arc<dyn Sink>>,
    broker: Option<Arc<dyn Sink>>,
    producers: Producers,
}

impl Sinks {
    /// Sinks that reach brokers through `connection`.
    pub fn new(connection: Connection) -> Self {
        Self { connection, files: HashMap::new(), broker: None, producers: Producers::default() }
    }

    /// Sends `record`'s original event to `name` of `kind`; the receipt
    /// says when it is durable.
    pub async fn send(&mut self, kind: Kind, name: &str, record: DeadLetter) -> Result<Receipt, ReplayError> {
        let (sink, destination) = self.get(kind, name).await?;
        sink.send(record.into_record(destination)).await.map_err(|e| ReplayError::Send(format!("sending to {kind}:{name}: {e}")))
    }

    /// The sink for `name` of `kind`, and the destination to give records.
    async fn get(&mut self, kind: Kind, name: &str) -> Result<(Arc<dyn Sink>, Option<String>), ReplayError> {
        if kind == Kind::File {
            if let Some(sink) = self.files.get(name) {
                return Ok((sink.clone(), None));
            }
            let sink: Arc<dyn Sink> = Arc::new(
                LineSink::file(PathBuf::from(name), RecordFormat::Json, true)
                    .await
                    .map_err(|e| ReplayError::Send(format!("cannot open {name}: {e}")))?,
            );
            self.files.insert(name.to_owned(), sink.clone());
            return Ok((sink, None));
        }
        if let Some(sink) = &self.broker {
            return Ok((sink.clone(), Some(name.to_owned())));
        }
        let connection = &self.connection;
        let sink: Arc<dyn Sink> = match kind {
            Kind::Nats => Arc::new(NatsSink::core(connection.nats().await.map_err(ReplayError::Send)?, None)),
            Kind::JetStream => Arc::new(
                JetStreamSink::open(connection.nats().await.map_err(ReplayError::Send)?, None, None)
                    .await
                    .map_err(|e| ReplayError::Send(format!("cannot open the JetStream sink: {e}")))?,
            ),
            Kind::Kafka | Kind::File => {
                let producer = self
                    .producers
                    .get(&connection.brokers, &connection.kafka_options)
                    .await
                    .map_err(|e| ReplayError::Send(format!("cannot connect to Kafka at {}: {e}", connection.brokers)))?;
                Arc::new(KafkaSink::new(producer, &connection.brokers, None, &connection.kafka_options))
            }
        };
        self.broker = Some(sink.clone());
        Ok((sink, Some(name.to_owned())))
    }

    /// Flushes and closes every sink opened.
    pub async fn close(&self) -> Result<(), ReplayError> {
        for sink in self.files.values().chain(self.broker.iter()) {
            sink.close().await.map_err(|e| ReplayError::Send(format!("closing {}: {e}", sink.describe())))?;
        }
        self.producers.flush_all().await;
        Ok(())
    }
}
