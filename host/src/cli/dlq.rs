//! `sluice dlq replay`: reads dead-letter records from a file, a JetStream
//! stream or a Kafka topic, keeps those that match the filters, and sends the
//! original events back to their source (or to `--to`), through the same
//! sinks a pipeline uses, waiting until each is durably accepted.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use sluice::config::RecordFormat;
use sluice::replay::{DeadLetter, Filter};
use sluice::sink::kafka::{KafkaSink, Producers};
use sluice::sink::lines::LineSink;
use sluice::sink::nats::{JetStreamSink, NatsSink};
use sluice::sink::{Receipt, Sink};

/// Receipts awaited at once: bounds the records in flight.
const WINDOW: usize = 1024;

/// Where dead-letter records are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A JSON-lines dead-letter file.
    File(PathBuf),
    /// Every message of a JetStream stream (optionally of one subject).
    JetStream { stream: String, subject: Option<String> },
    /// Every message of a Kafka topic, all partitions.
    Kafka(String),
}

impl std::str::FromStr for Origin {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(Origin::File(path.into())),
            Some(("jetstream", rest)) if !rest.is_empty() => Ok(match rest.split_once(':') {
                Some((stream, subject)) => Origin::JetStream { stream: stream.into(), subject: Some(subject.into()) },
                None => Origin::JetStream { stream: rest.into(), subject: None },
            }),
            Some(("kafka", topic)) if !topic.is_empty() => Ok(Origin::Kafka(topic.into())),
            _ => Err(format!(
                "{text:?}: write file:PATH, jetstream:STREAM (or jetstream:STREAM:SUBJECT) or kafka:TOPIC"
            )),
        }
    }
}

/// The kind of destination events are sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Nats,
    JetStream,
    Kafka,
}

/// Where events go: a kind and, unless each record's own source is meant,
/// a name (a path, subject or topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct To {
    pub kind: Kind,
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

pub struct Options {
    pub from: Origin,
    pub to: Option<To>,
    pub filter: Filter,
    pub dry_run: bool,
    pub nats: sluice::config::NatsServer,
    pub brokers: String,
}

pub fn replay(options: &Options) -> Result<std::process::ExitCode> {
    let runtime = super::tokio_runtime()?;
    let result = runtime.block_on(run(options));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// What a replay did, for the closing line.
#[derive(Default)]
struct Tally {
    read: u64,
    replayed: u64,
    filtered: u64,
    not_dead_letters: u64,
}

async fn run(options: &Options) -> Result<std::process::ExitCode> {
    let to = options.to.clone().unwrap_or(To {
        kind: match options.from {
            Origin::File(_) => Kind::File,
            Origin::JetStream { .. } => Kind::JetStream,
            Origin::Kafka(_) => Kind::Kafka,
        },
        name: None,
    });
    let (tx, mut records) = tokio::sync::mpsc::channel::<(Option<Vec<u8>>, Vec<u8>, Vec<sluice::event::Header>)>(WINDOW);
    let (total, reader) = open_reader(options, tx).await?;
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} records [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut sinks = Sinks::new(options);
    let mut tally = Tally::default();
    let mut receipts: Vec<Receipt> = Vec::new();
    while let Some((key, payload, headers)) = records.recv().await {
        tally.read += 1;
        progress.inc(1);
        let record = match DeadLetter::parse(key, payload, headers) {
            Ok(record) => record,
            Err(_) => {
                tally.not_dead_letters += 1;
                continue;
            }
        };
        if !options.filter.matches(&record) {
            tally.filtered += 1;
            continue;
        }
        let name = to.name.clone().unwrap_or_else(|| record.source.clone());
        if name.is_empty() {
            bail!("record of event {} has no sluice-dlq-source: give a destination with --to KIND:NAME", record.event_id);
        }
        if to.kind == Kind::File && to.name.is_none() && !std::path::Path::new(&name).is_file() {
            // A file's records name its path; a subject or topic would
            // become a new file here by mistake.
            bail!(
                "record of event {} comes from `{name}`, which is not a file here: run from the folder of the pipeline's config, or give the destination with --to (e.g. --to nats or --to file:PATH)",
                record.event_id
            );
        }
        if options.dry_run {
            let at = record.dead_lettered_at.map(sluice::dispatch::dead_letter::rfc3339).unwrap_or_else(|| "?".into());
            progress.suspend(|| {
                println!(
                    "would replay {} (pipeline {}, {} at {}: {}) to {}:{}",
                    record.event_id, record.pipeline, record.reason, at, record.message, to.kind, name
                )
            });
            tally.replayed += 1;
            continue;
        }
        let (sink, destination) = sinks.get(to.kind, &name).await?;
        receipts.push(sink.send(record.into_record(destination)).await.with_context(|| format!("sending to {}:{name}", to.kind))?);
        tally.replayed += 1;
        if receipts.len() >= WINDOW {
            for receipt in receipts.drain(..) {
                receipt.wait().await.context("a replayed event was not accepted")?;
            }
        }
    }
    reader.await.context("the reader stopped")??;
    for receipt in receipts.drain(..) {
        receipt.wait().await.context("a replayed event was not accepted")?;
    }
    sinks.close().await?;
    progress.finish_and_clear();
    let verb = if options.dry_run { "would replay" } else { "replayed" };
    println!(
        "{verb} {} of {} records ({} filtered out, {} not dead-letter records)",
        tally.replayed, tally.read, tally.filtered, tally.not_dead_letters
    );
    Ok(std::process::ExitCode::SUCCESS)
}

type Parts = (Option<Vec<u8>>, Vec<u8>, Vec<sluice::event::Header>);

/// Starts reading every record into `tx`; returns how many there are (for
/// the progress bar) and the reading task.
async fn open_reader(
    options: &Options,
    tx: tokio::sync::mpsc::Sender<Parts>,
) -> Result<(u64, tokio::task::JoinHandle<Result<()>>)> {
    match &options.from {
        Origin::File(path) => {
            let file = std::fs::File::open(path).with_context(|| format!("cannot open dead-letter file {}", path.display()))?;
            let total = std::io::BufReader::new(file).lines().count() as u64;
            let path = path.clone();
            Ok((total, tokio::task::spawn_blocking(move || read_file(&path, &tx))))
        }
        Origin::JetStream { stream, subject } => {
            let client = connect_nats(&options.nats).await?;
            let (total, messages) = jetstream_messages(&client, stream, subject.as_deref()).await?;
            Ok((total, tokio::spawn(read_jetstream(messages, total, tx))))
        }
        Origin::Kafka(topic) => {
            let (total, consumer, ends) = kafka_consumer(&options.brokers, topic)?;
            Ok((total, tokio::spawn(read_kafka(consumer, ends, tx))))
        }
    }
}

fn read_file(path: &std::path::Path, tx: &tokio::sync::mpsc::Sender<Parts>) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open dead-letter file {}", path.display()))?;
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = sluice::codec::decode_event(line.as_bytes(), "", String::new(), 0)
            .map_err(|e| anyhow::anyhow!("{}:{}: not a record: {e}", path.display(), number + 1))?;
        if tx.blocking_send((event.key, event.payload, event.headers)).is_err() {
            break;
        }
    }
    Ok(())
}

/// Through the host's own connection builder: the URL's login and the TLS
/// flags work as in a pipeline, and no credential is printed.
async fn connect_nats(server: &sluice::config::NatsServer) -> Result<async_nats::Client> {
    sluice::nats::check_server(server).map_err(|(key, message)| anyhow::anyhow!("--nats-{}: {message}", key.replace('_', "-")))?;
    Ok(sluice::nats::connect(server).await?)
}

async fn jetstream_messages(
    client: &async_nats::Client,
    stream: &str,
    subject: Option<&str>,
) -> Result<(u64, async_nats::jetstream::consumer::pull::Stream)> {
    use async_nats::jetstream::{self, consumer};
    let js = jetstream::new(client.clone());
    let stream_handle = js.get_stream(stream).await.with_context(|| format!("cannot open stream {stream}"))?;
    // An ephemeral consumer that acknowledges nothing: reading changes nothing.
    let mut reader: consumer::PullConsumer = stream_handle
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            filter_subject: subject.unwrap_or_default().to_owned(),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot read stream {stream}"))?;
    let total = reader.info().await.with_context(|| format!("cannot read stream {stream}"))?.num_pending;
    let messages = reader.messages().await.with_context(|| format!("cannot read stream {stream}"))?;
    Ok((total, messages))
}

async fn read_jetstream(
    mut messages: async_nats::jetstream::consumer::pull::Stream,
    total: u64,
    tx: tokio::sync::mpsc::Sender<Parts>,
) -> Result<()> {
    for read in 0..total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| anyhow::anyhow!("the stream stopped delivering after {read} of {total} records"))?
            .context("the stream's message feed ended")?
            .map_err(|e| anyhow::anyhow!("reading the stream: {e}"))?;
        let (headers, key) = sluice::nats::event_headers(message.headers.as_ref());
        if tx.send((key, message.payload.to_vec(), headers)).await.is_err() {
            break;
        }
    }
    Ok(())
}

type KafkaReader = rdkafka::consumer::StreamConsumer;

/// A consumer assigned to every partition of `topic` from its start, the
/// end offsets to read up to, and how many records that is.
fn kafka_consumer(brokers: &str, topic: &str) -> Result<(u64, KafkaReader, HashMap<i32, i64>)> {
    use rdkafka::consumer::Consumer;
    let consumer: KafkaReader = sluice::kafka::client_config(brokers, &BTreeMap::new())
        .set("group.id", format!("sluice-dlq-replay-{:x}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Dead letters of an exactly-once pipeline are written in transactions.
        .set("isolation.level", "read_committed")
        .create()
        .with_context(|| format!("cannot create a Kafka consumer for {brokers}"))?;
    let timeout = sluice::kafka::OPEN_TIMEOUT;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the metadata of topic {topic} from {brokers}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} does not exist on {brokers}");
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut ends = HashMap::new();
    let mut total = 0;
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .with_context(|| format!("cannot read the offsets of {topic}/{partition}"))?;
        if high > low {
            assignment.add_partition_offset(topic, partition, rdkafka::Offset::Offset(low))?;
            ends.insert(partition, high);
            total += (high - low) as u64;
        }
    }
    if !ends.is_empty() {
        consumer.assign(&assignment).context("cannot assign the topic's partitions")?;
    }
    Ok((total, consumer, ends))
}

async fn read_kafka(consumer: KafkaReader, ends: HashMap<i32, i64>, tx: tokio::sync::mpsc::Sender<Parts>) -> Result<()> {
    use rdkafka::consumer::Consumer;
    use rdkafka::Message;
    let mut idle_since = std::time::Instant::now();
    loop {
        // Done when every partition's position reached its end (transaction
        // markers take offsets but are never delivered).
        let positions = consumer.position().context("cannot read the consumer's position")?;
        let done = ends.iter().all(|(partition, end)| {
            positions
                .elements()
                .iter()
                .find(|e| e.partition() == *partition)
                .and_then(|e| e.offset().to_raw())
                .is_some_and(|at| at >= *end)
        });
        if done {
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Ok(Ok(message)) => {
                idle_since = std::time::Instant::now();
                if ends.get(&message.partition()).is_some_and(|end| message.offset() >= *end) {
                    continue;
                }
                let event = sluice::kafka::message_event(&message);
                if tx.send((event.key, event.payload, event.headers)).await.is_err() {
                    return Ok(());
                }
            }
            Ok(Err(err)) => bail!("reading the topic: {err}"),
            Err(_) if idle_since.elapsed() > Duration::from_secs(30) => {
                bail!("no records for 30s before the end of the topic (an open transaction?)")
            }
            Err(_) => {}
        }
    }
}

/// The sinks events are sent through, opened on first use.
struct Sinks<'o> {
    options: &'o Options,
    files: HashMap<String, Arc<dyn Sink>>,
    broker: Option<Arc<dyn Sink>>,
    producers: Producers,
}

impl<'o> Sinks<'o> {
    fn new(options: &'o Options) -> Self {
        Self { options, files: HashMap::new(), broker: None, producers: Producers::default() }
    }

    /// The sink for `name` of `kind`, and the destination to give records.
    async fn get(&mut self, kind: Kind, name: &str) -> Result<(Arc<dyn Sink>, Option<String>)> {
        if kind == Kind::File {
            if let Some(sink) = self.files.get(name) {
                return Ok((sink.clone(), None));
            }
            let sink: Arc<dyn Sink> = Arc::new(
                LineSink::file(PathBuf::from(name), RecordFormat::Json, true)
                    .await
                    .with_context(|| format!("cannot open {name}"))?,
            );
            self.files.insert(name.to_owned(), sink.clone());
            return Ok((sink, None));
        }
        if let Some(sink) = &self.broker {
            return Ok((sink.clone(), Some(name.to_owned())));
        }
        let options = self.options;
        let sink: Arc<dyn Sink> = match kind {
            Kind::Nats => Arc::new(NatsSink::core(connect_nats(&options.nats).await?, None)),
            Kind::JetStream => Arc::new(
                JetStreamSink::open(connect_nats(&options.nats).await?, None, None)
                    .await
                    .context("cannot open the JetStream sink")?,
            ),
            Kind::Kafka | Kind::File => {
                let producer = self
                    .producers
                    .get(&options.brokers, &BTreeMap::new())
                    .await
                    .with_context(|| format!("cannot connect to Kafka at {}", options.brokers))?;
                Arc::new(KafkaSink::new(producer, &options.brokers, None, &BTreeMap::new()))
            }
        };
        self.broker = Some(sink.clone());
        Ok((sink, Some(name.to_owned())))
    }

    async fn close(&self) -> Result<()> {
        for sink in self.files.values().chain(self.broker.iter()) {
            sink.close().await.with_context(|| format!("closing {}", sink.describe()))?;
        }
        self.producers.flush_all().await;
        Ok(())
    }
}

/// `--since`/`--until` as clap parses them.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    sluice::replay::parse_time(text, SystemTime::now())
}
