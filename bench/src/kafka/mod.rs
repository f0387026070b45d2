//! `sluice-bench kafka`: Kafka → passthrough → Kafka, 100-byte events, one
//! broker, the real `sluice` binary beside native rdkafka passthroughs with
//! the same guarantees, runs interleaved so machine noise hits all alike.
//!
//! Each trial uses fresh topics (input and output with
//! [`broker::PARTITIONS`] partitions) and a fresh consumer group:
//!
//! 1. Throughput: the input topic is pre-filled with N events, then the
//!    processor starts; the time is from the first output to the N-th
//!    distinct output seen by a receiver on the output topic, so process
//!    start-up and the group join are left out. For exactly-once, the first
//!    output is taken from a `read_uncommitted` receiver (it is visible only
//!    at the first commit otherwise) and the N-th from a `read_committed`
//!    one: the time runs until every output is committed.
//! 2. Latency, on the same processor once the backlog is done: half of the
//!    native processor's throughput with the same guarantee in the first
//!    round (or `--rate`), after a warm-up, send time in the payload, taken
//!    by the receiver (`read_committed`).
//!
//! Both processors are child processes (the native one is `sluice-bench
//! native-kafka`, [`native`]), and each throughput run also reports their
//! CPU seconds per 100k events from the first output to the last: on a
//! shared 2-core machine CPU per event moves far less than events/s. With
//! `--pin` the processor runs on the last core alone and this bench with
//! its broker on the first ([`crate::affinity`]).
//!
//! - [`broker`]: the broker and the topics.
//! - [`processor`]: the processor child processes.
//! - [`native`]: the native passthroughs.
//! - [`load`]: the producer and the receiver.
//! - [`report`]: medians and the markdown table.

mod broker;
mod load;
pub mod native;
pub mod processor;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::load::now_ns;
use crate::processor::SluiceSetup;
use crate::LatencyRate;
use broker::{Broker, PARTITIONS};
use load::{Receiver, StartAt, Watch};
use processor::{Processor, Topics};
use report::{Row, Sample};

/// A latency run's warm-up, not recorded.
const WARMUP: Duration = Duration::from_millis(500);

/// What `sluice-bench kafka` was asked for.
pub struct Args {
    pub events: u64,
    pub out: PathBuf,
    pub runs: usize,
    /// Fixed latency rate; `None`: half of the native throughput.
    pub rate: Option<u64>,
    pub latency_secs: u64,
    /// Leave out the exactly-once rows.
    pub no_exactly_once: bool,
    /// Leave out the `policy.version_header = false` row.
    pub no_header_row: bool,
    /// Processor on one core, broker and load generator on another.
    pub pin: bool,
    /// Settings of the sluice process alone.
    pub tweaks: crate::Tweaks,
}

/// A processor and its guarantee: one row of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    NativeAtLeastOnce,
    /// Transactions committed every so often.
    NativeExactlyOnce(Duration),
    Sluice {
        /// `exactly_once = true` with this `commit_interval`; else
        /// at-least-once with the default 1s.
        exactly_once: Option<Duration>,
        version_header: bool,
    },
}

impl Variant {
    /// The guarantee column.
    pub fn mode(self) -> String {
        match self {
            Variant::NativeAtLeastOnce | Variant::Sluice { exactly_once: None, .. } => "at-least-once".into(),
            Variant::NativeExactlyOnce(interval) | Variant::Sluice { exactly_once: Some(interval), .. } => {
                format!("exactly-once, {} ms", interval.as_millis())
            }
        }
    }

    /// The processor column.
    pub fn processor(self) -> &'static str {
        match self {
            Variant::NativeAtLeastOnce | Variant::NativeExactlyOnce(_) => "native",
            Variant::Sluice { version_header: true, .. } => "sluice",
            Variant::Sluice { version_header: false, .. } => "sluice, version_header = false",
        }
    }

    pub fn is_native(self) -> bool {
        matches!(self, Variant::NativeAtLeastOnce | Variant::NativeExactlyOnce(_))
    }

    fn exactly_once(self) -> bool {
        matches!(self, Variant::NativeExactlyOnce(_) | Variant::Sluice { exactly_once: Some(_), .. })
    }

    /// For topic and group names.
    fn slug(self) -> String {
        match self {
            Variant::NativeAtLeastOnce => "native-alo".into(),
            Variant::NativeExactlyOnce(i) => format!("native-eos{}", i.as_millis()),
            Variant::Sluice { exactly_once: None, version_header } => format!("sluice-alo-h{}", u8::from(version_header)),
            Variant::Sluice { exactly_once: Some(i), .. } => format!("sluice-eos{}", i.as_millis()),
        }
    }
}

pub async fn run(args: Args) -> Result<()> {
    if args.events == 0 || args.runs == 0 {
        bail!("--events and --runs must be at least 1");
    }
    let sluice = SluiceSetup::find()?;
    // Before the broker starts, so that it inherits the pinning.
    let split = match args.pin {
        true => {
            let split = crate::affinity::Split::for_this_machine()?;
            crate::affinity::pin_this_process(split.rest)?;
            Some(split)
        }
        false => None,
    };
    let broker = Broker::start()?;
    let mut variants = vec![Variant::NativeAtLeastOnce, Variant::Sluice { exactly_once: None, version_header: true }];
    if !args.no_header_row {
        variants.push(Variant::Sluice { exactly_once: None, version_header: false });
    }
    if !args.no_exactly_once {
        for interval in [Duration::from_millis(100), Duration::from_secs(1)] {
            variants.push(Variant::NativeExactlyOnce(interval));
            variants.push(Variant::Sluice { exactly_once: Some(interval), version_header: true });
        }
    }
    let load_at_start = crate::report::machine::load_average();
    let bench = Bench { broker, sluice, events: args.events, latency: Duration::from_secs(args.latency_secs), split, tweaks: args.tweaks };
    let mut rows: Vec<Row> = variants.iter().map(|&variant| Row { variant, samples: Vec::new() }).collect();
    let mut sluice_log = Vec::new();
    // Per guarantee (`Variant::mode`): the native variant comes before the
    // sluice ones of its guarantee, so its first throughput sets the rate.
    let mut rates: Vec<(String, LatencyRate)> = Vec::new();
    for run in 1..=args.runs {
        for row in &mut rows {
            let mode = row.variant.mode();
            let rate = args.rate.map(LatencyRate::Fixed).or_else(|| rates.iter().find(|(m, _)| *m == mode).map(|(_, r)| *r));
            let (sample, log, rate) = bench.trial(row.variant, run, rate).await?;
            if !rates.iter().any(|(m, _)| *m == mode) {
                rates.push((mode, rate));
            }
            let cpu = sample.cpu_per_100k.map_or(String::new(), |c| format!(", {c:.3} CPU s/100k events"));
            eprintln!(
                "{} {} run {run}/{}: {:.0} events/s{cpu}, p50 {} µs, p99 {} µs, lost {}, duplicates {}",
                row.variant.mode(),
                row.variant.processor(),
                args.runs,
                sample.events_per_sec,
                sample.p50_us,
                sample.p99_us,
                sample.lost,
                sample.duplicates,
            );
            for line in &log {
                eprintln!("  sluice log: {line}");
            }
            sluice_log.extend(log.into_iter().map(|l| format!("{} run {run}: {l}", row.variant.slug())));
            row.samples.push(sample);
        }
    }
    let setup = report::Setup {
        events: args.events,
        runs: args.runs,
        rates: rates.iter().map(|(mode, rate)| format!("{mode}: {}", rate.describe())).collect::<Vec<_>>().join("; "),
        latency_secs: args.latency_secs,
        kafka: bench.broker.version(),
        pinning: split.map_or("not pinned".into(), |s| s.describe()),
        load: (load_at_start, crate::report::machine::load_average()),
    };
    let table = format!("{}{}", bench.tweaks.describe(), report::render(&setup, &rows, &sluice_log));
    print!("{table}");
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, table)?;
    // A run with tweaks is an experiment: the dashboard keeps the defaults'.
    if bench.tweaks.is_empty() {
        crate::dashboard::save("kafka", &report::ratios(&rows))?;
    }
    eprintln!("report written to {}", args.out.display());
    Ok(())
}

/// What every trial shares.
struct Bench {
    broker: Broker,
    sluice: SluiceSetup,
    events: u64,
    latency: Duration,
    /// `--pin`: where the processor runs.
    split: Option<crate::affinity::Split>,
    /// `--runtime`, `--env`: for sluice only.
    tweaks: crate::Tweaks,
}

impl Bench {
    /// One throughput and one latency measurement of `variant` on fresh
    /// topics with a fresh group; also returns sluice's warnings and errors,
    /// and the latency run's rate: `rate`, or when unset half of this
    /// trial's throughput.
    async fn trial(&self, variant: Variant, run: usize, rate: Option<LatencyRate>) -> Result<(Sample, Vec<String>, LatencyRate)> {
        let id = format!("{}-{run}-{}", variant.slug(), std::process::id());
        let topics = Topics {
            brokers: self.broker.brokers().to_owned(),
            group: format!("bench-{id}"),
            input: format!("in-{id}"),
            output: format!("out-{id}"),
            dead_letter: format!("dlq-{id}"),
        };
        let names = [topics.input.as_str(), topics.output.as_str(), topics.dead_letter.as_str()];
        self.broker.create_topics(&names, PARTITIONS).await?;
        let result = self.measure(variant, &topics, rate).await;
        let deleted = self.broker.delete_topics(&names).await;
        let result = result?;
        deleted?;
        Ok(result)
    }

    async fn measure(&self, variant: Variant, topics: &Topics, rate: Option<LatencyRate>) -> Result<(Sample, Vec<String>, LatencyRate)> {
        let brokers = topics.brokers.as_str();
        let n = self.events;
        load::prefill(brokers, &topics.input, n).await?;

        // Throughput: drain the backlog.
        let watch = |committed, first_only| Watch {
            topic: topics.output.clone(),
            from: StartAt::Beginning,
            committed,
            seqs: 0..n,
            first_only,
            record_from: None,
        };
        let first = Receiver::start(brokers, watch(false, true))?;
        let all = Receiver::start(brokers, watch(variant.exactly_once(), false))?;
        let mut processor = Processor::start(variant, topics, &self.sluice, self.split.map(|s| s.processor), &self.tweaks)?;
        let (all, cpu_secs) = match drain(&mut processor, &first, all).await {
            Ok(drained) => drained,
            Err(e) => {
                let _ = first.cancel().await;
                let _ = processor.stop().await;
                return Err(e);
            }
        };
        let first = first.cancel().await?;
        let cpu_per_100k = cpu_secs.filter(|_| all.distinct > 0).map(|s| s * 100_000.0 / all.distinct as f64);
        let events_per_sec = match (first.first, all.last) {
            (Some(first), Some(last)) if last > first => all.distinct as f64 / (last - first).as_secs_f64(),
            _ => 0.0,
        };
        let mut lost = n - all.distinct;
        let mut duplicates = all.duplicates;

        // Latency: the same processor, now idle, fed at a fixed rate.
        let rate = rate.unwrap_or(LatencyRate::half_of(events_per_sec));
        let total = (rate.per_sec() as f64 * (WARMUP + self.latency).as_secs_f64()) as u64;
        let record_from = now_ns() + WARMUP.as_nanos() as u64;
        let receiver = Receiver::start(
            brokers,
            Watch {
                topic: topics.output.clone(),
                from: StartAt::End,
                committed: true,
                seqs: n..n + total,
                first_only: false,
                record_from: Some(record_from),
            },
        )?;
        let sent = load::produce_at_rate(brokers, &topics.input, n..n + total, rate.per_sec()).await;
        let seen = match sent {
            Ok(()) => wait(&mut processor, receiver).await,
            Err(e) => {
                let _ = receiver.cancel().await;
                Err(e)
            }
        };
        let log = processor.stop().await;
        let seen = seen?;
        let log = log?;
        lost += total - seen.distinct;
        duplicates += seen.duplicates;
        let sample = Sample {
            events_per_sec,
            p50_us: seen.latency.value_at_quantile(0.50),
            p99_us: seen.latency.value_at_quantile(0.99),
            lost,
            duplicates,
            cpu_per_100k,
        };
        Ok((sample, log, rate))
    }
}

/// How often [`drain`] looks at the receivers and the processor's CPU time:
/// the CPU time is taken within this of the first output.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// How often [`wait`] looks: during the latency run this process shares a
/// core with the broker, so it looks seldom.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Waits for `all` to see the backlog, failing early if the processor
/// stops; also returns the processor's CPU seconds from when `first` saw the
/// first output (within [`DRAIN_POLL`]) to when `all` finished.
async fn drain(processor: &mut Processor, first: &Receiver, all: Receiver) -> Result<(load::Seen, Option<f64>)> {
    follow(processor, all, Some(first), DRAIN_POLL).await
}

/// Waits for `receiver` to finish, failing early if the processor stops.
async fn wait(processor: &mut Processor, receiver: Receiver) -> Result<load::Seen> {
    Ok(follow(processor, receiver, None, WAIT_POLL).await?.0)
}

/// [`drain`] and [`wait`]: waits for `receiver` to finish, looking every
/// `poll`, failing early if the processor stops, and failing if no output
/// came at all. With `first` (a `first_only` receiver), also returns the
/// processor's CPU seconds from when `first` finished (within `poll`) to
/// when `receiver` did.
async fn follow(
    processor: &mut Processor,
    receiver: Receiver,
    first: Option<&Receiver>,
    poll: Duration,
) -> Result<(load::Seen, Option<f64>)> {
    let started = Instant::now();
    let mut cpu_at_first = None;
    while !receiver.is_finished() {
        if let Err(e) = processor.check_alive() {
            let _ = receiver.cancel().await;
            return Err(e);
        }
        if cpu_at_first.is_none() && first.is_some_and(Receiver::is_finished) {
            cpu_at_first = Some(processor.cpu_seconds());
        }
        tokio::time::sleep(poll).await;
    }
    let cpu = cpu_at_first.flatten().and_then(|before| Some(processor.cpu_seconds()? - before));
    let seen = receiver.finish().await?;
    if seen.first.is_none() {
        bail!("no output came within {:?}", started.elapsed());
    }
    Ok((seen, cpu))
}
