//! `sluice-bench`: end-to-end benchmarks against a real broker.
//!
//! `sluice-bench nats` measures NATS → passthrough → NATS throughput and
//! latency for 100-byte events, core NATS and JetStream, for the real
//! `sluice` binary and for a native async-nats passthrough, on one broker in
//! one run, interleaved so machine noise hits both. The ratio of the two is
//! what the WASM sandbox and sluice's machinery cost.
//!
//! - [`server`]: the `nats-server` the run shares, and its streams.
//! - [`processor`]: the native passthrough and the `sluice` child process.
//! - [`load`]: the producer and the receiver (throughput, latency).
//! - [`report`]: medians and the markdown table.
//!
//! `sluice-bench kafka` does the same for Kafka → passthrough → Kafka,
//! at-least-once and exactly-once, against a broker started with
//! `scripts/kafka.sh` (see [`kafka`]).

mod dashboard;
mod kafka;
mod load;
mod processor;
mod report;
mod server;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use load::Publish;
use processor::{Kind, Processor, SluiceSetup};
use report::{Row, Sample};
use server::{stream_len, NatsServer};

/// Subject the processors read (captured by stream [`IN_STREAM`]).
pub const IN: &str = "bench.in";
/// Subject the processors write (captured by stream [`OUT_STREAM`]).
pub const OUT: &str = "bench.out";
pub const IN_STREAM: &str = "BIN";
pub const OUT_STREAM: &str = "BOUT";

/// A latency run's warm-up, not recorded.
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Parser)]
#[command(about = "End-to-end benchmarks of sluice against native baselines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// NATS → passthrough → NATS, core and JetStream, sluice vs native.
    Nats {
        /// Events per throughput run.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Where the markdown report is written (it is printed too).
        #[arg(long, default_value = "target/bench/nats.md")]
        out: PathBuf,
        /// Runs per measurement; the report shows the median.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Publish rate of the latency runs, events/s.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Length of each latency run after its warm-up, seconds.
        #[arg(long, default_value_t = 3)]
        latency_secs: u64,
        /// Core NATS only, no JetStream rows.
        #[arg(long)]
        core_only: bool,
    },
    /// Kafka → passthrough → Kafka, at-least-once and exactly-once, sluice vs
    /// native rdkafka.
    Kafka {
        /// Events per throughput run.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Where the markdown report is written (it is printed too).
        #[arg(long, default_value = "target/bench/kafka.md")]
        out: PathBuf,
        /// Runs per measurement; the report shows the median.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Produce rate of the latency runs, events/s.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Length of each latency run after its warm-up, seconds.
        #[arg(long, default_value_t = 3)]
        latency_secs: u64,
        /// Leave out the exactly-once rows.
        #[arg(long)]
        no_exactly_once: bool,
        /// Leave out the `policy.version_header = false` row.
        #[arg(long)]
        no_header_row: bool,
    },
    /// Every benchmark's sluice/native ratios in one markdown table and a PNG
    /// plot, from the results the benchmarks left under target/.
    Dashboard {
        /// The folder for dashboard.md and dashboard.png.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
}

/// Core NATS (at most once) or JetStream (at least once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Core,
    Jetstream,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Core => "core",
            Mode::Jetstream => "jetstream",
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let (events, out, runs, rate, latency_secs, core_only) = match Cli::parse().command {
        Command::Dashboard { out } => return dashboard::run(&out),
        Command::Nats { events, out, runs, rate, latency_secs, core_only } => (events, out, runs, rate, latency_secs, core_only),
        Command::Kafka { events, out, runs, rate, latency_secs, no_exactly_once, no_header_row } => {
            let args = kafka::Args { events, out, runs, rate, latency_secs, no_exactly_once, no_header_row };
            return kafka::run(args).await;
        }
    };
    if events == 0 || runs == 0 {
        bail!("--events and --runs must be at least 1");
    }
    let bench = Bench {
        server: NatsServer::start().await?,
        sluice: SluiceSetup::find()?,
        events,
        rate,
        latency: Duration::from_secs(latency_secs),
    };
    let mut rows = Vec::new();
    let modes: &[Mode] = if core_only { &[Mode::Core] } else { &[Mode::Core, Mode::Jetstream] };
    for &mode in modes {
        let mut samples = [Vec::new(), Vec::new()];
        for run in 1..=runs {
            for (i, kind) in [Kind::Native, Kind::Sluice].into_iter().enumerate() {
                let sample = bench.trial(mode, kind).await?;
                let cpu = sample.cpu_per_100k.map_or(String::new(), |c| format!(", {c:.3} CPU s/100k events"));
                eprintln!(
                    "{} {} run {run}/{runs}: {:.0} events/s{cpu}, p50 {} µs, p99 {} µs, lost {}",
                    mode.name(),
                    kind.name(),
                    sample.throughput.events_per_sec,
                    sample.latency.p50_us,
                    sample.latency.p99_us,
                    sample.throughput.lost + sample.latency.lost,
                );
                samples[i].push(sample);
            }
        }
        let [native, sluice] = samples;
        rows.push(Row { mode, kind: Kind::Native, samples: native });
        rows.push(Row { mode, kind: Kind::Sluice, samples: sluice });
    }
    let setup = report::Setup { events, runs, rate, latency_secs };
    let table = report::render(&setup, &rows);
    print!("{table}");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, table)?;
    dashboard::save("nats", &report::ratios(&rows))?;
    eprintln!("report written to {}", out.display());
    Ok(())
}

/// What every trial shares.
struct Bench {
    server: NatsServer,
    sluice: SluiceSetup,
    events: u64,
    rate: u64,
    latency: Duration,
}

impl Bench {
    /// One throughput and one latency measurement of `kind` in `mode`, each
    /// with a fresh processor (and, for JetStream, fresh streams).
    async fn trial(&self, mode: Mode, kind: Kind) -> Result<Sample> {
        // Separate connections for sending and receiving, as two services would.
        let producer = self.server.client().await?;
        let receiver = self.server.client().await?;
        match mode {
            Mode::Core => {
                let mut processor = Processor::start(kind, mode, &self.server, &self.sluice)?;
                processor.wait_ready(mode, kind, &self.server, &producer).await?;
                let cpu_before = processor.cpu_seconds();
                let throughput = load::core_throughput(&producer, &receiver, self.events).await?;
                let cpu_per_100k = match (cpu_before, processor.cpu_seconds()) {
                    (Some(before), Some(after)) => Some((after - before) * 100_000.0 / self.events as f64),
                    _ => None,
                };
                let latency = load::latency(&producer, &receiver, Publish::Core, self.rate, WARMUP, self.latency).await?;
                processor.stop().await?;
                Ok(Sample { throughput, latency, cpu_per_100k })
            }
            Mode::Jetstream => {
                self.fresh_streams(&producer).await?;
                load::prefill(&producer, self.events).await?;
                let timer = load::BacklogTimer::start(&receiver, self.events).await?;
                let processor = Processor::start(kind, mode, &self.server, &self.sluice)?;
                let timed = timer.finish().await;
                processor.stop().await?; // a processor that died says why here
                let events_per_sec = timed?;
                let lost = self.events.saturating_sub(stream_len(&producer, OUT_STREAM).await?);
                let throughput = load::Throughput { events_per_sec, lost };

                self.fresh_streams(&producer).await?;
                let mut processor = Processor::start(kind, mode, &self.server, &self.sluice)?;
                processor.wait_ready(mode, kind, &self.server, &producer).await?;
                let latency = load::latency(&producer, &receiver, Publish::Jetstream, self.rate, WARMUP, self.latency).await?;
                processor.stop().await?;
                Ok(Sample { throughput, latency, cpu_per_100k: None })
            }
        }
    }

    /// Empty `BIN` and `BOUT`, no consumers.
    async fn fresh_streams(&self, client: &async_nats::Client) -> Result<()> {
        self.server.recreate_stream(client, IN_STREAM, IN).await?;
        self.server.recreate_stream(client, OUT_STREAM, OUT).await
    }
}

/// Polls `check` every 20 ms until it holds; fails after `timeout`, naming
/// what it waited for.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await? {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
