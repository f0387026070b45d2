//! Reading dead-letter records back from where a pipeline wrote them: a
//! JSON-lines file, a JetStream stream or a Kafka topic.
//!
//! Three ways to read, each bounded in memory:
//! - [`read_all`]: every record, oldest first, into a bounded channel
//!   (`sluice dlq replay`);
//! - [`recent`]: the newest records that match a filter, newest first,
//!   examining at most [`MAX_SCAN`] records (the admin API's list);
//! - [`by_ids`]: a few records by their [`Positioned::id`], fetched
//!   directly (the admin API's replay).
//!
//! An id says where a record is: a file's byte offset of the line, a
//! stream's sequence number, a topic's `partition:offset`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{DeadLetter, Filter, ReplayError};
use crate::config::{NatsServer, Secret};
use crate::event::Header;

/// Records [`recent`] examines at most, matching or not: a filter that
/// matches nothing in a huge destination answers after this many, saying
/// it stopped early.
pub const MAX_SCAN: usize = 10_000;

/// How long a broker may take to answer one request of [`recent`] or
/// [`by_ids`] before the read fails.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from the end of a file at a time by [`recent`].
const CHUNK: usize = 64 * 1024;

/// Where dead-letter records are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A JSON-lines dead-letter file.
    File(PathBuf),
    /// The messages of a JetStream stream (optionally of one subject). No
    /// stream: the one that captures `subject`.
    JetStream {
        /// The stream; `None`: the one whose subjects capture `subject`.
        stream: Option<String>,
        /// Only the messages of this subject.
        subject: Option<String>,
    },
    /// Every message of a Kafka topic, all partitions.
    Kafka(String),
}

impl std::str::FromStr for Origin {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(Origin::File(path.into())),
            Some(("jetstream", rest)) if !rest.is_empty() => Ok(match rest.split_once(':') {
                Some((stream, subject)) => Origin::JetStream { stream: Some(stream.into()), subject: Some(subject.into()) },
                None => Origin::JetStream { stream: Some(rest.into()), subject: None },
            }),
            Some(("kafka", topic)) if !topic.is_empty() => Ok(Origin::Kafka(topic.into())),
            _ => Err(format!("{text:?}: write file:PATH, jetstream:STREAM (or jetstream:STREAM:SUBJECT) or kafka:TOPIC")),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::JetStream { stream: Some(stream), subject: Some(subject) } => write!(f, "JetStream stream {stream}, subject {subject}"),
            Origin::JetStream { stream: Some(stream), subject: None } => write!(f, "JetStream stream {stream}"),
            Origin::JetStream { stream: None, subject } => write!(f, "JetStream subject {}", subject.as_deref().unwrap_or("?")),
            Origin::Kafka(topic) => write!(f, "Kafka topic {topic}"),
        }
    }
}

/// How to reach the brokers: the NATS server, the Kafka brokers and their
/// librdkafka properties (TLS, SASL, options).
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The NATS server (JetStream origins and destinations).
    pub nats: NatsServer,
    /// Kafka bootstrap servers, comma-separated.
    pub brokers: String,
    /// librdkafka properties for Kafka (TLS, SASL, options).
    pub kafka_options: BTreeMap<String, Secret>,
}

impl Connection {
    /// A new connection to the NATS server, through the host's own
    /// connection builder: the URL's login and the TLS settings work as in
    /// a pipeline, and no credential is printed.
    pub async fn nats(&self) -> Result<async_nats::Client, String> {
        crate::nats::connect(&self.nats).await.map_err(|e| e.to_string())
    }
}

/// A record's parts and where it is.
#[derive(Debug, Clone)]
pub struct Positioned {
    /// Where the record is, as the admin API's dead-letter routes name it
    /// (a file's byte offset, a stream sequence, a partition and offset).
    pub id: String,
    /// The message key.
    pub key: Option<Vec<u8>>,
    /// The message body.
    pub payload: Vec<u8>,
    /// The message headers.
    pub headers: Vec<Header>,
}

impl Positioned {
    /// The dead letter it is, if it is one.
    pub fn dead_letter(self) -> Option<(String, DeadLetter)> {
        DeadLetter::parse(self.key, self.payload, self.headers).ok().map(|record| (self.id, record))
    }
}

fn read_error(what: impl std::fmt::Display) -> ReplayError {
    ReplayError::Read(what.to_string())
}

/// Starts reading every record, oldest first, into `tx`; returns how many
/// there are (for a progress bar) and the reading task.
pub async fn read_all(
    origin: &Origin,
    connection: &Connection,
    tx: mpsc::Sender<Positioned>,
) -> Result<(u64, tokio::task::JoinHandle<Result<(), ReplayError>>), ReplayError> {
    match origin {
        Origin::File(path) => {
            let file =
                std::fs::File::open(path).map_err(|e| read_error(format!("cannot open dead-letter file {}: {e}", path.display())))?;
            let total = std::io::BufReader::new(file).lines().count() as u64;
            let path = path.clone();
            Ok((total, tokio::task::spawn_blocking(move || read_file(&path, &tx))))
        }
        Origin::JetStream { stream, subject } => {
            let client = connection.nats().await.map_err(read_error)?;
            let stream = stream_of(&client, stream.as_deref(), subject.as_deref()).await?;
            let (total, messages) = jetstream_messages(&stream, subject.as_deref()).await?;
            Ok((total, tokio::spawn(read_jetstream(messages, total, tx))))
        }
        Origin::Kafka(topic) => {
            let (total, consumer, ends, _) = kafka_consumer(connection, topic, None)?;
            Ok((total, tokio::spawn(read_kafka(consumer, ends, tx))))
        }
    }
}

fn file_record(path: &Path, offset: u64, line: &[u8]) -> Result<Positioned, ReplayError> {
    let event = crate::codec::decode_event(line, "", String::new(), 0)
        .map_err(|e| read_error(format!("{} at byte {offset}: not a record: {e}", path.display())))?;
    Ok(Positioned { id: offset.to_string(), key: event.key, payload: event.payload, headers: event.headers })
}

fn read_file(path: &Path, tx: &mpsc::Sender<Positioned>) -> Result<(), ReplayError> {
    let file = std::fs::File::open(path).map_err(|e| read_error(format!("cannot open dead-letter file {}: {e}", path.display())))?;
    let mut reader = std::io::BufReader::new(file);
    let mut offset = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(|e| read_error(format!("reading {}: {e}", path.display())))?;
        if read == 0 {
            return Ok(());
        }
        let at = offset;
        offset += read as u64;
        if line.trim_ascii().is_empty() {
            continue;
        }
        if tx.blocking_send(file_record(path, at, &line)?).is_err() {
            return Ok(());
        }
    }
}

/// The stream named, or the one that captures `subject`.
async fn stream_of(
    client: &async_nats::Client,
    stream: Option<&str>,
    subject: Option<&str>,
) -> Result<async_nats::jetstream::stream::Stream, ReplayError> {
    let js = async_nats::jetstream::new(client.clone());
    let name = match (stream, subject) {
        (Some(stream), _) => stream.to_owned(),
        (None, Some(subject)) => {
            js.stream_by_subject(subject).await.map_err(|e| read_error(format!("no stream captures subject {subject}: {e}")))?
        }
        (None, None) => return Err(read_error("neither a stream nor a subject to read")),
    };
    js.get_stream(&name).await.map_err(|e| read_error(format!("cannot open stream {name}: {e}")))
}

async fn jetstream_messages(
    stream: &async_nats::jetstream::stream::Stream,
    subject: Option<&str>,
) -> Result<(u64, async_nats::jetstream::consumer::pull::Stream), ReplayError> {
    use async_nats::jetstream::consumer;
    let name = &stream.cached_info().config.name;
    // An ephemeral consumer that acknowledges nothing: reading changes nothing.
    let mut reader: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            filter_subject: subject.unwrap_or_default().to_owned(),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| read_error(format!("cannot read stream {name}: {e}")))?;
    let total = reader.info().await.map_err(|e| read_error(format!("cannot read stream {name}: {e}")))?.num_pending;
    let messages = reader.messages().await.map_err(|e| read_error(format!("cannot read stream {name}: {e}")))?;
    Ok((total, messages))
}

async fn read_jetstream(
    mut messages: async_nats::jetstream::consumer::pull::Stream,
    total: u64,
    tx: mpsc::Sender<Positioned>,
) -> Result<(), ReplayError> {
    for read in 0..total {
        let message = tokio::time::timeout(BROKER_TIMEOUT, messages.next())
            .await
            .map_err(|_| read_error(format!("the stream stopped delivering after {read} of {total} records")))?
            .ok_or_else(|| read_error("the stream's message feed ended"))?
            .map_err(|e| read_error(format!("reading the stream: {e}")))?;
        let id = message.info().map(|info| info.stream_sequence.to_string()).unwrap_or_default();
        let (headers, key) = crate::nats::event_headers(message.headers.as_ref());
        if tx.send(Positioned { id, key, payload: message.payload.to_vec(), headers }).await.is_err() {
            break;
        }
    }
    Ok(())
}

type KafkaReader = rdkafka::consumer::StreamConsumer;

/// What [`kafka_consumer`] opened: records to read, the consumer, each
/// partition's end, and whether records before the start were left out.
type KafkaRead = (u64, KafkaReader, HashMap<i32, i64>, bool);

/// A consumer assigned to every partition of `topic`, the end offsets to
/// read up to, and how many records that is: from each partition's start,
/// or only its last `last` records (then also whether older ones were left
/// out).
fn kafka_consumer(connection: &Connection, topic: &str, last: Option<i64>) -> Result<KafkaRead, ReplayError> {
    use rdkafka::consumer::Consumer;
    let brokers = &connection.brokers;
    let consumer: KafkaReader = crate::kafka::client_config(brokers, &connection.kafka_options)
        .set("group.id", format!("sluice-dlq-replay-{:x}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Dead letters of an exactly-once pipeline are written in transactions.
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| read_error(format!("cannot create a Kafka consumer for {brokers}: {e}")))?;
    let timeout = crate::kafka::OPEN_TIMEOUT;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| read_error(format!("cannot read the metadata of topic {topic} from {brokers}: {e}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(read_error(format!("topic {topic} does not exist on {brokers}")));
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut ends = HashMap::new();
    let mut total = 0;
    let mut older = false;
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| read_error(format!("cannot read the offsets of {topic}/{partition}: {e}")))?;
        let start = last.map_or(low, |last| low.max(high - last));
        older |= start > low;
        if high > start {
            assignment
                .add_partition_offset(topic, partition, rdkafka::Offset::Offset(start))
                .map_err(|e| read_error(format!("cannot assign {topic}/{partition}: {e}")))?;
            ends.insert(partition, high);
            total += (high - start) as u64;
        }
    }
    if !ends.is_empty() {
        consumer.assign(&assignment).map_err(|e| read_error(format!("cannot assign the topic's partitions: {e}")))?;
    }
    Ok((total, consumer, ends, older))
}

async fn read_kafka(consumer: KafkaReader, ends: HashMap<i32, i64>, tx: mpsc::Sender<Positioned>) -> Result<(), ReplayError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::Message;
    let mut idle_since = std::time::Instant::now();
    loop {
        // Done when every partition's position reached its end (transaction
        // markers take offsets but are never delivered).
        let positions = consumer.position().map_err(|e| read_error(format!("cannot read the consumer's position: {e}")))?;
        let done = ends.iter().all(|(partition, end)| {
            positions.elements().iter().find(|e| e.partition() == *partition).and_then(|e| e.offset().to_raw()).is_some_and(|at| at >= *end)
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
                let id = format!("{}:{}", message.partition(), message.offset());
                let event = crate::kafka::message_event(&message);
                if tx.send(Positioned { id, key: event.key, payload: event.payload, headers: event.headers }).await.is_err() {
                    return Ok(());
                }
            }
            Ok(Err(err)) => return Err(read_error(format!("reading the topic: {err}"))),
            Err(_) if idle_since.elapsed() > Duration::from_secs(30) => {
                return Err(read_error("no records for 30s before the end of the topic (an open transaction?)"))
            }
            Err(_) => {}
        }
    }
}

/// What [`recent`] found.
#[derive(Debug, Default)]
pub struct Recent {
    /// Matching dead letters, newest first, at most the limit asked for.
    /// Payloads are cut to the `keep` bytes asked for;
    /// [`Found::payload_bytes`] is the full size.
    pub found: Vec<Found>,
    /// Records examined.
    pub scanned: usize,
    /// Whether older records were left unexamined (the limit was reached,
    /// or [`MAX_SCAN`]).
    pub more: bool,
}

/// A dead letter and where it is.
#[derive(Debug)]
pub struct Found {
    pub id: String,
    pub record: DeadLetter,
    pub payload_bytes: usize,
}

/// Collects matches, newest first, until `limit` or [`MAX_SCAN`].
struct Collector<'f> {
    filter: &'f Filter,
    limit: usize,
    keep: usize,
    recent: Recent,
}

impl Collector<'_> {
    /// Takes one record; false once no more are wanted.
    fn take(&mut self, record: Positioned) -> bool {
        self.recent.scanned += 1;
        if let Some((id, mut record)) = record.dead_letter() {
            if self.filter.matches(&record) {
                let payload_bytes = record.payload.len();
                record.payload.truncate(self.keep);
                self.recent.found.push(Found { id, record, payload_bytes });
            }
        }
        self.wants_more()
    }

    /// Counts a record that cannot be read; false once no more are wanted.
    fn skip(&mut self) -> bool {
        self.recent.scanned += 1;
        self.wants_more()
    }

    fn wants_more(&self) -> bool {
        self.recent.found.len() < self.limit && self.recent.scanned < MAX_SCAN
    }
}

/// The newest `limit` dead letters that match `filter`, newest first, each
/// payload cut to `keep` bytes. Reads backwards from the end (a file in
/// chunks, a stream by sequence) and stops after [`MAX_SCAN`] records.
pub async fn recent(origin: &Origin, connection: &Connection, filter: &Filter, limit: usize, keep: usize) -> Result<Recent, ReplayError> {
    let mut collector = Collector { filter, limit: limit.max(1), keep, recent: Recent::default() };
    match origin {
        Origin::File(path) => {
            let path = path.clone();
            let filter = filter.clone();
            let limit = collector.limit;
            let recent = tokio::task::spawn_blocking(move || {
                let mut collector = Collector { filter: &filter, limit, keep, recent: Recent::default() };
                // A line that is not a record (a hand edit, a torn write) is
                // counted and passed over, as a record that is not a dead letter.
                let more = tail_file(&path, |offset, line| {
                    Ok(match file_record(&path, offset, line) {
                        Ok(record) => collector.take(record),
                        Err(_) => collector.skip(),
                    })
                })?;
                collector.recent.more = more;
                Ok::<_, ReplayError>(collector.recent)
            })
            .await
            .map_err(|e| read_error(format!("the reader stopped: {e}")))??;
            return Ok(recent);
        }
        Origin::JetStream { stream, subject } => {
            let client = connection.nats().await.map_err(read_error)?;
            let stream = stream_of(&client, stream.as_deref(), subject.as_deref()).await?;
            let info = stream.get_info().await.map_err(|e| read_error(format!("cannot read the stream's state: {e}")))?;
            let (first, last) = (info.state.first_sequence, info.state.last_sequence);
            let mut sequence = last;
            while sequence >= first.max(1) {
                if let Some(record) = stream_message(&stream, sequence, subject.as_deref()).await? {
                    if !collector.take(record) {
                        break;
                    }
                }
                sequence -= 1;
            }
            collector.recent.more = sequence >= first.max(1);
        }
        Origin::Kafka(topic) => {
            // Offsets say nothing of time across partitions: read the last
            // records of each, then order them by when they failed.
            let connection = connection.clone();
            let topic = topic.clone();
            let whole = filter.reasons.is_empty() && filter.since.is_none() && filter.until.is_none() && filter.pipeline.is_none();
            let last = if whole { collector.limit } else { MAX_SCAN } as i64;
            let (total, consumer, ends, older) = tokio::task::spawn_blocking(move || kafka_consumer(&connection, &topic, Some(last)))
                .await
                .map_err(|e| read_error(format!("the reader stopped: {e}")))??;
            let (tx, mut rx) = mpsc::channel(1024);
            let reader = tokio::spawn(read_kafka(consumer, ends, tx));
            let limit = collector.limit;
            collector.limit = usize::MAX;
            // Matches left out for older ones.
            let mut dropped = false;
            while let Some(record) = rx.recv().await {
                collector.take(record);
                // Bounded: keep the newest `limit` only, now and then.
                if collector.recent.found.len() >= 2 * limit {
                    newest_first(&mut collector.recent.found);
                    collector.recent.found.truncate(limit);
                    dropped = true;
                }
                if collector.recent.scanned >= MAX_SCAN {
                    break;
                }
            }
            drop(rx);
            reader.await.map_err(|e| read_error(format!("the reader stopped: {e}")))??;
            let found = &mut collector.recent.found;
            newest_first(found);
            collector.recent.more = older || dropped || found.len() > limit || collector.recent.scanned < total as usize;
            found.truncate(limit);
        }
    }
    Ok(collector.recent)
}

fn newest_first(found: &mut [Found]) {
    found.sort_by_key(|found| std::cmp::Reverse(found.record.dead_lettered_at));
}

/// Message `sequence` of `stream`, unless it was deleted or is on another
/// subject than `subject`.
async fn stream_message(
    stream: &async_nats::jetstream::stream::Stream,
    sequence: u64,
    subject: Option<&str>,
) -> Result<Option<Positioned>, ReplayError> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let got = tokio::time::timeout(BROKER_TIMEOUT, stream.get_raw_message(sequence))
        .await
        .map_err(|_| read_error(format!("the stream did not answer within {}", humantime::format_duration(BROKER_TIMEOUT))))?;
    let message = match got {
        Ok(message) => message,
        Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(err) => return Err(read_error(format!("reading message {sequence} of the stream: {err}"))),
    };
    if subject.is_some_and(|subject| message.subject.as_str() != subject) {
        return Ok(None);
    }
    let (headers, key) = crate::nats::event_headers(Some(&message.headers));
    Ok(Some(Positioned { id: sequence.to_string(), key, payload: message.payload.to_vec(), headers }))
}

/// Calls `visit` with each line of the file (its byte offset and its bytes,
/// without the newline), last first, until it returns false. A last line
/// without its newline is being written: skipped. Reads [`CHUNK`] bytes at
/// a time; only the lines of one chunk (and a line longer than one) are in
/// memory. Returns whether lines were left unvisited.
fn tail_file(path: &Path, mut visit: impl FnMut(u64, &[u8]) -> Result<bool, ReplayError>) -> Result<bool, ReplayError> {
    let failed = |e: std::io::Error| read_error(format!("reading dead-letter file {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| read_error(format!("cannot open dead-letter file {}: {e}", path.display())))?;
    // `buf` holds the file from `pos` up to the lines not visited yet; once
    // `whole`, it ends with a newline.
    let mut pos = file.metadata().map_err(failed)?.len();
    let mut buf: Vec<u8> = Vec::new();
    let mut whole = false;
    while pos > 0 {
        let start = pos.saturating_sub(CHUNK as u64);
        let mut chunk = vec![0; (pos - start) as usize];
        file.seek(SeekFrom::Start(start)).map_err(failed)?;
        file.read_exact(&mut chunk).map_err(failed)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        pos = start;
        if !whole {
            match buf.iter().rposition(|b| *b == b'\n') {
                Some(newline) => {
                    buf.truncate(newline + 1);
                    whole = true;
                }
                None => {
                    buf.clear();
                    continue;
                }
            }
        }
        // Every line that starts inside `buf` (after one of its newlines).
        while let Some(newline) = buf[..buf.len() - 1].iter().rposition(|b| *b == b'\n') {
            let line = &buf[newline + 1..buf.len() - 1];
            if !line.trim_ascii().is_empty() && !visit(pos + newline as u64 + 1, line.trim_ascii_end())? {
                return Ok(true);
            }
            buf.truncate(newline + 1);
        }
    }
    // The first line of the file.
    if whole && !buf.trim_ascii().is_empty() {
        visit(0, buf.trim_ascii_end())?;
    }
    Ok(false)
}

/// The records with these ids (those not found are left out), in the order
/// given.
pub async fn by_ids(origin: &Origin, connection: &Connection, ids: &[String]) -> Result<Vec<Positioned>, ReplayError> {
    let bad = |id: &str| ReplayError::Id(format!("{id:?} is not a record id of the {origin}"));
    match origin {
        Origin::File(path) => {
            let offsets = ids.iter().map(|id| id.parse::<u64>().map_err(|_| bad(id))).collect::<Result<Vec<_>, _>>()?;
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let failed = |e: std::io::Error| read_error(format!("reading dead-letter file {}: {e}", path.display()));
                let mut reader = std::io::BufReader::new(
                    std::fs::File::open(&path).map_err(|e| read_error(format!("cannot open dead-letter file {}: {e}", path.display())))?,
                );
                let mut found = Vec::new();
                for offset in offsets {
                    // An offset must be a line's start: the byte before it a newline.
                    if offset > 0 {
                        reader.seek(SeekFrom::Start(offset - 1)).map_err(failed)?;
                        let mut before = [0u8];
                        if reader.read(&mut before).map_err(failed)? == 0 || before[0] != b'\n' {
                            continue;
                        }
                    } else {
                        reader.seek(SeekFrom::Start(0)).map_err(failed)?;
                    }
                    let mut line = Vec::new();
                    reader.read_until(b'\n', &mut line).map_err(failed)?;
                    if line.ends_with(b"\n") && !line.trim_ascii().is_empty() {
                        found.push(file_record(&path, offset, line.trim_ascii_end())?);
                    }
                }
                Ok(found)
            })
            .await
            .map_err(|e| read_error(format!("the reader stopped: {e}")))?
        }
        Origin::JetStream { stream, subject } => {
            let sequences = ids.iter().map(|id| id.parse::<u64>().map_err(|_| bad(id))).collect::<Result<Vec<_>, _>>()?;
            let client = connection.nats().await.map_err(read_error)?;
            let stream = stream_of(&client, stream.as_deref(), subject.as_deref()).await?;
            let mut found = Vec::new();
            for sequence in sequences {
                found.extend(stream_message(&stream, sequence, subject.as_deref()).await?);
            }
            Ok(found)
        }
        Origin::Kafka(topic) => {
            let positions = ids
                .iter()
                .map(|id| {
                    let (partition, offset) = id.split_once(':').ok_or_else(|| bad(id))?;
                    Ok((partition.parse::<i32>().map_err(|_| bad(id))?, offset.parse::<i64>().map_err(|_| bad(id))?))
                })
                .collect::<Result<Vec<_>, ReplayError>>()?;
            let connection = connection.clone();
            let topic = topic.clone();
            let (_, consumer, _, _) = tokio::task::spawn_blocking(move || kafka_consumer(&connection, &topic, Some(0)))
                .await
                .map_err(|e| read_error(format!("the reader stopped: {e}")))??;
            let topic = match origin {
                Origin::Kafka(topic) => topic.as_str(),
                _ => "",
            };
            let mut found = Vec::new();
            for (partition, offset) in positions {
                found.extend(kafka_message(&consumer, topic, partition, offset).await?);
            }
            Ok(found)
        }
    }
}

/// The record at `offset` of `partition`, if there is one.
async fn kafka_message(consumer: &KafkaReader, topic: &str, partition: i32, offset: i64) -> Result<Option<Positioned>, ReplayError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::Message;
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
        .map_err(|e| read_error(format!("cannot assign {topic}/{partition}: {e}")))?;
    consumer.assign(&assignment).map_err(|e| read_error(format!("cannot assign {topic}/{partition}: {e}")))?;
    let message = match tokio::time::timeout(BROKER_TIMEOUT, consumer.recv()).await {
        Ok(Ok(message)) => message,
        Ok(Err(err)) => return Err(read_error(format!("reading {topic}/{partition}: {err}"))),
        Err(_) => return Ok(None),
    };
    if message.partition() != partition || message.offset() != offset {
        return Ok(None);
    }
    let event = crate::kafka::message_event(&message);
    Ok(Some(Positioned { id: format!("{partition}:{offset}"), key: event.key, payload: event.payload, headers: event.headers }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_backwards(text: &str) -> Result<(Vec<(u64, String)>, bool), ReplayError> {
        let dir = tempfile::tempdir().map_err(read_error)?;
        let path = dir.path().join("dlq.jsonl");
        std::fs::write(&path, text).map_err(read_error)?;
        let mut seen = Vec::new();
        let more = tail_file(&path, |offset, line| {
            seen.push((offset, String::from_utf8_lossy(line).into_owned()));
            Ok(true)
        })?;
        Ok((seen, more))
    }

    #[test]
    fn a_file_is_read_backwards_by_line_with_offsets() -> Result<(), ReplayError> {
        let (seen, more) = lines_backwards("a\nbb\n\nccc\npartial")?;
        assert_eq!(seen, [(6, "ccc".to_owned()), (2, "bb".to_owned()), (0, "a".to_owned())]);
        assert!(!more);
        // Lines across chunk boundaries.
        let long: String = (0..3 * CHUNK / 10).map(|i| format!("{i:09}\n")).collect();
        let (seen, _) = lines_backwards(&long)?;
        assert_eq!(seen.len(), 3 * CHUNK / 10);
        assert!(seen.iter().rev().enumerate().all(|(i, (offset, line))| *offset == 10 * i as u64 && line == &format!("{i:09}")));
        // One line longer than a chunk, without a newline after it.
        let (seen, _) = lines_backwards(&"x".repeat(2 * CHUNK))?;
        assert!(seen.is_empty());
        let (seen, _) = lines_backwards(&format!("{}\nend\n", "y".repeat(2 * CHUNK)))?;
        assert_eq!(seen.iter().map(|(o, l)| (*o, l.len())).collect::<Vec<_>>(), [(2 * CHUNK as u64 + 1, 3), (0, 2 * CHUNK)]);
        Ok(())
    }

    fn line(reason: &str, payload: &str, at: &str) -> String {
        serde_json::json!({
            "payload": payload,
            "headers": { "trace": "t", "sluice-dlq-reason": reason, "sluice-dlq-last-failure": at, "sluice-dlq-attempts": "3" },
        })
        .to_string()
            + "\n"
    }

    #[tokio::test]
    async fn recent_reads_a_file_newest_first_bounded_and_filtered() -> Result<(), ReplayError> {
        let dir = tempfile::tempdir().map_err(read_error)?;
        let path = dir.path().join("dlq.jsonl");
        let mut text = String::new();
        text += &line("rejected", "one", "2026-01-05T10:00:01Z");
        text += "not json\n";
        text += &line("timeout", &"é".repeat(1000), "2026-01-05T10:00:02Z");
        text += &line("rejected", "three", "2026-01-05T10:00:03Z");
        text += "{\"payload\": \"half-writ";
        std::fs::write(&path, &text).map_err(read_error)?;
        let origin = Origin::File(path.clone());
        let all = recent(&origin, &Connection::default(), &Filter::default(), 10, 16).await?;
        let payloads: Vec<&[u8]> = all.found.iter().map(|f| f.record.payload.as_slice()).collect();
        assert_eq!(payloads, [&b"three"[..], "é".repeat(8).as_bytes(), b"one"], "newest first, cut to 16 bytes");
        assert_eq!((all.scanned, all.more), (4, false), "the line that is not a record counted, the torn one not read");
        assert_eq!(all.found[1].payload_bytes, 2000);
        assert_eq!(all.found[0].record.attempts, Some(3));
        let rejected = Filter { reasons: vec!["rejected".into()], ..Default::default() };
        let one = recent(&origin, &Connection::default(), &rejected, 1, 1024).await?;
        assert_eq!((one.found.len(), one.more, one.found[0].record.payload.as_slice()), (1, true, &b"three"[..]));
        // What replay selects by: the id fetches the same record back.
        let back = by_ids(&origin, &Connection::default(), &[all.found[2].id.clone(), all.found[0].id.clone(), "5".into()]).await?;
        let back: Vec<Vec<u8>> = back.into_iter().map(|p| p.payload).collect();
        assert_eq!(back, [b"one".to_vec(), b"three".to_vec()], "an offset that is not a line's start finds nothing");
        assert!(matches!(by_ids(&origin, &Connection::default(), &["x".into()]).await, Err(ReplayError::Id(_))));
        Ok(())
    }
}
