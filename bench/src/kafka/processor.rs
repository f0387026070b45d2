//! The processors under test. Each joins a fresh consumer group on the input
//! topic and writes every payload unchanged to the output topic:
//!
//! - [`native_at_least_once`]: an rdkafka `StreamConsumer` → `FutureProducer`
//!   passthrough, the standard at-least-once pattern: auto-commit on, but
//!   `enable.auto.offset.store=false` and an input's offset stored only once
//!   its output's delivery report came back (in input order).
//! - [`native_exactly_once`]: a transactional passthrough (read_committed
//!   `BaseConsumer`, transactional `BaseProducer`): every `interval`, the
//!   consumer's positions are sent to the transaction and it is committed.
//! - [`Sluice`]: the real `sluice` binary running `passthrough.wasm`,
//!   stopped with SIGTERM like in production.
//!
//! The native ones run on their own thread (at-least-once: its own tokio
//! runtime) in the bench process, so they share no worker threads with the
//! load generator. Every producer is idempotent, `acks=all`,
//! `linger.ms=5`, `partitioner=murmur2_random`: sluice's sink defaults.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message};
use tokio::sync::oneshot;

use super::Variant;
use crate::processor::SluiceSetup;

/// Inputs whose output is not yet acknowledged, at most, for the native
/// at-least-once passthrough.
const MAX_IN_FLIGHT: usize = 4096;

/// What a processor reads and writes.
#[derive(Clone)]
pub struct Topics {
    pub brokers: String,
    pub group: String,
    pub input: String,
    pub output: String,
    /// Exactly-once sluice: its dead letters must go to Kafka too.
    pub dead_letter: String,
}

/// The producer settings sluice's sink uses by default.
fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random");
    config
}

/// The consumer settings sluice's source uses (less the commit ones).
fn consumer_config(topics: &Topics) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &topics.brokers)
        .set("group.id", &topics.group)
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "8192");
    config
}

/// A running processor.
pub enum Processor {
    Native(Native),
    Sluice(Sluice),
}

impl Processor {
    /// Starts one; it joins its group on its own time (the throughput
    /// measurement starts at the first output).
    pub fn start(variant: Variant, topics: &Topics, setup: &SluiceSetup) -> Result<Self> {
        match variant {
            Variant::NativeAtLeastOnce => Ok(Processor::Native(Native::start(topics.clone(), None)?)),
            Variant::NativeExactlyOnce(interval) => Ok(Processor::Native(Native::start(topics.clone(), Some(interval))?)),
            Variant::Sluice { exactly_once, version_header } => {
                Ok(Processor::Sluice(Sluice::start(topics, exactly_once, version_header, setup)?))
            }
        }
    }

    /// Fails if it has stopped on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        match self {
            Processor::Native(native) => native.check_alive(),
            Processor::Sluice(sluice) => sluice.check_alive(),
        }
    }

    /// Stops it; returns the warnings and errors sluice logged.
    pub async fn stop(self) -> Result<Vec<String>> {
        match self {
            Processor::Native(native) => native.stop().await.map(|()| Vec::new()),
            Processor::Sluice(sluice) => sluice.stop().await,
        }
    }
}

/// A native passthrough on its own thread.
pub struct Native {
    stop: Option<oneshot::Sender<()>>,
    stop_flag: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Native {
    /// `exactly_once`: the transaction interval, or at-least-once.
    fn start(topics: Topics, exactly_once: Option<Duration>) -> Result<Self> {
        let (stop, stopped) = oneshot::channel();
        let stop_flag = Arc::new(AtomicBool::new(false));
        let flag = stop_flag.clone();
        let thread = std::thread::Builder::new().name("native-passthrough".into()).spawn(move || match exactly_once {
            None => {
                let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                runtime.block_on(native_at_least_once(&topics, stopped))
            }
            Some(interval) => native_exactly_once(&topics, interval, &flag),
        })?;
        Ok(Self { stop: Some(stop), stop_flag, thread: Some(thread) })
    }

    fn check_alive(&mut self) -> Result<()> {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            self.join()?;
            bail!("the native passthrough stopped on its own");
        }
        Ok(())
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| anyhow!("the native passthrough panicked"))?,
            None => Ok(()),
        }
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.stop_flag.store(true, Ordering::Release);
        tokio::task::spawn_blocking(move || self.join()).await?
    }
}

/// At-least-once: consume, produce, and store the input's offset for the
/// next auto-commit once the output's delivery report succeeded. Delivery
/// futures are awaited in input order (up to [`MAX_IN_FLIGHT`] pending), so
/// a stored offset never passes an undelivered output.
async fn native_at_least_once(topics: &Topics, stop: oneshot::Receiver<()>) -> Result<()> {
    let consumer: StreamConsumer = consumer_config(topics)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000") // sluice's default commit_interval
        .set("enable.auto.offset.store", "false")
        .create()?;
    let producer: FutureProducer = producer_config(&topics.brokers).create()?;
    consumer.subscribe(&[&topics.input])?;
    let input_topic = topics.input.as_str();
    let mut inputs = consumer.stream().take_until(stop);
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let (partition, offset) = done?;
                consumer.store_offset(input_topic, partition, offset)?;
            }
            next = inputs.next(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(input) = next else { break };
                let input = input?;
                let (partition, offset) = (input.partition(), input.offset());
                let record = FutureRecord::<(), [u8]>::to(&topics.output).payload(input.payload().unwrap_or_default());
                let delivery = producer.send_result(record).map_err(|(e, _)| anyhow!(e).context("producing"))?;
                in_flight.push_back(async move {
                    match delivery.await {
                        Ok(Ok(_)) => Ok((partition, offset)),
                        Ok(Err((e, _))) => Err(anyhow!(e).context("an output was not delivered")),
                        Err(_) => Err(anyhow!("a delivery was cancelled")),
                    }
                });
            }
            else => break,
        }
    }
    drop(inputs);
    while let Some(done) = in_flight.next().await {
        let (partition, offset) = done?;
        consumer.store_offset(input_topic, partition, offset)?;
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Exactly-once: a read_committed consumer and a transactional producer on
/// one thread. Outputs go into the open transaction; `interval` after the
/// transaction's first output, the consumer's positions are added to it and
/// it is committed, and the next begins.
fn native_exactly_once(topics: &Topics, interval: Duration, stop: &AtomicBool) -> Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(30);
    let consumer: BaseConsumer =
        consumer_config(topics).set("enable.auto.commit", "false").set("isolation.level", "read_committed").create()?;
    let producer: BaseProducer = producer_config(&topics.brokers)
        .set("transactional.id", format!("native-{}", topics.group))
        .set("transaction.timeout.ms", "60000")
        .create()?;
    producer.init_transactions(TIMEOUT)?;
    consumer.subscribe(&[&topics.input])?;
    producer.begin_transaction()?;
    let commit = || -> Result<()> {
        let positions = consumer.position()?;
        let group = consumer.group_metadata().context("no consumer group metadata")?;
        producer.send_offsets_to_transaction(&positions, &group, TIMEOUT)?;
        producer.commit_transaction(TIMEOUT)?;
        producer.begin_transaction()?;
        Ok(())
    };
    let mut opened: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        if let Some(input) = consumer.poll(Duration::from_millis(10)) {
            let input = input?;
            let payload = input.payload().unwrap_or_default();
            loop {
                match producer.send(BaseRecord::<(), [u8]>::to(&topics.output).payload(payload)) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(anyhow!(e).context("producing")),
                }
            }
            opened.get_or_insert_with(Instant::now);
        }
        producer.poll(Duration::ZERO); // delivery reports
        if opened.is_some_and(|at| at.elapsed() >= interval) {
            commit()?;
            opened = None;
        }
    }
    if opened.is_some() {
        commit()?;
    }
    producer.abort_transaction(TIMEOUT)?; // the empty one begun last
    Ok(())
}

/// A `sluice run` child process with its own scratch dir (config, dead
/// letters, log).
pub struct Sluice {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Sluice {
    fn start(topics: &Topics, exactly_once: Option<Duration>, version_header: bool, setup: &SluiceSetup) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("sluice-bench-run-").tempdir()?;
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        // Paths go through JSON string escapes, which are valid TOML escapes.
        let path = |p: &Path| quote(&p.display().to_string());
        let brokers = quote(&topics.brokers);
        let (interval, eos) = match exactly_once {
            Some(interval) => (interval, true),
            None => (Duration::from_secs(1), false),
        };
        let transactional_id =
            if eos { format!(", transactional_id = {}", quote(&format!("sluice-{}", topics.group))) } else { String::new() };
        let source = format!(
            "{{ kind = \"kafka\", brokers = {brokers}, group = {group}, topics = [{input}], start = \"earliest\", \
             commit_interval = \"{ms}ms\", exactly_once = {eos}{transactional_id} }}",
            group = quote(&topics.group),
            input = quote(&topics.input),
            ms = interval.as_millis(),
        );
        let sink = format!("{{ kind = \"kafka\", brokers = {brokers}, topic = {} }}", quote(&topics.output));
        let dead_letter = if eos {
            format!("{{ kind = \"kafka\", brokers = {brokers}, topic = {} }}", quote(&topics.dead_letter))
        } else {
            format!("{{ kind = \"file\", path = {} }}", path(&dir.path().join("dlq.jsonl")))
        };
        let config = format!(
            "[runtime]\nshutdown_timeout = \"5s\"\ncache_dir = {cache}\n\n\
             [pipelines.bench]\nsource = {source}\nsink = {sink}\ndead_letter = {dead_letter}\n\n\
             [pipelines.bench.policy]\nversion_header = {version_header}\n\n\
             [pipelines.bench.plugin]\npath = {plugin}\n",
            cache = path(setup.cache.path()),
            plugin = path(&setup.plugin),
        );
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("sluice.log"))?;
        let child = tokio::process::Command::new(&setup.bin)
            .arg("run")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", setup.bin.display()))?;
        Ok(Self { child, dir })
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("sluice exited on its own ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait for its drain (bounded by `shutdown_timeout`);
    /// returns its WARN and ERROR lines.
    async fn stop(mut self) -> Result<Vec<String>> {
        let pid = self.child.id().context("sluice has already been reaped")?;
        let signalled = Instant::now();
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        let status = match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                self.child.kill().await?;
                bail!("sluice did not stop within 30s of SIGTERM:\n{}", self.log_tail());
            }
        };
        if !status.success() {
            bail!("sluice exited with {status}:\n{}", self.log_tail());
        }
        let log = self.log();
        // Its counters say where the time went; print them beside the
        // figures, with how long its drain took (up to shutdown_timeout).
        if let Some(line) = log.lines().find(|l| l.contains("pipeline finished")) {
            eprintln!("sluice: {}", line.split_once("stats=").map_or(line, |(_, s)| s));
        }
        eprintln!("sluice: stopped {} ms after SIGTERM", signalled.elapsed().as_millis());
        Ok(log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(str::to_owned).collect())
    }

    /// The last lines of its log, for error messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}
