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
//!
//! Their latency runs publish at half of the native processor's maximum
//! rate (its throughput in the first round of the same run), unless
//! `--rate` says otherwise: a rate both can sustain, high enough that
//! per-event costs show.
//!
//! `sluice-bench start` ([`start`]) times `sluice run` to its first event,
//! and `sluice-bench memory` ([`memory`]) reads its resident memory, idle
//! and under load; both beside `sluice-bench native-lines`
//! ([`native_lines`]), the native file passthrough, and without a broker.

mod affinity;
mod dashboard;
mod kafka;
mod load;
mod memory;
mod native_lines;
mod processor;
mod procfs;
mod report;
mod server;
mod start;

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
        /// Publish rate of the latency runs, events/s. Default: half of the
        /// native passthrough's throughput in the first round, per mode.
        #[arg(long)]
        rate: Option<u64>,
        /// Length of each latency run after its warm-up, seconds.
        #[arg(long, default_value_t = 3)]
        latency_secs: u64,
        /// Core NATS only, no JetStream rows.
        #[arg(long)]
        core_only: bool,
        /// Run the processor on the last core alone, and this bench with
        /// its server and load generator on the first.
        #[arg(long)]
        pin: bool,
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
        /// Produce rate of the latency runs, events/s. Default: half of the
        /// native passthrough's throughput with the same guarantee in the
        /// first round.
        #[arg(long)]
        rate: Option<u64>,
        /// Length of each latency run after its warm-up, seconds.
        #[arg(long, default_value_t = 3)]
        latency_secs: u64,
        /// Leave out the exactly-once rows.
        #[arg(long)]
        no_exactly_once: bool,
        /// Leave out the `policy.version_header = false` row.
        #[arg(long)]
        no_header_row: bool,
        /// Run the processor on the last core alone, and this bench with
        /// its broker and load generator on the first.
        #[arg(long)]
        pin: bool,
        /// A line added to sluice's `[runtime]` table; repeatable.
        #[arg(long = "runtime", value_name = "TOML")]
        runtime: Vec<String>,
        /// An environment variable for the sluice process only; repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// Time from `sluice run` to the first event handled (Rust, Python,
    /// JavaScript plugin; compile cache warm and cold), vs a native process.
    Start {
        /// Rounds; the report shows the median and the range.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Only these plugin languages (`rust`, `python`, `javascript`);
        /// repeatable. Default: all three.
        #[arg(long = "lang", value_name = "LANG")]
        langs: Vec<String>,
        /// A line added to sluice's `[runtime]` table; repeatable.
        #[arg(long = "runtime", value_name = "TOML")]
        runtime: Vec<String>,
        /// An environment variable for the sluice process only; repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Where the markdown report is written (it is printed too).
        #[arg(long, default_value = "target/bench/start.md")]
        out: PathBuf,
    },
    /// Resident memory of `sluice run`: idle with one and with N pipelines,
    /// and under full load, vs a native process.
    Memory {
        /// Rounds; the report shows the median.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Idle pipelines of the "many" case.
        #[arg(long, default_value_t = 11)]
        pipelines: usize,
        /// Events of the full-load run.
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        /// A line added to sluice's `[runtime]` table (`watch_plugins =
        /// false`, `allocator = "pooling"`), to see what a setting costs;
        /// repeatable.
        #[arg(long = "runtime", value_name = "TOML")]
        runtime: Vec<String>,
        /// An environment variable for the sluice process only
        /// (`MALLOC_ARENA_MAX=2`, `LD_PRELOAD=…`); repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Where the markdown report is written (it is printed too).
        #[arg(long, default_value = "target/bench/memory.md")]
        out: PathBuf,
    },
    /// The native baseline of `start` and `memory` (run by them): JSON
    /// event lines in, payload lines out.
    /// The native NATS passthrough of `nats`, a process of its own (run by
    /// the bench; stops on SIGTERM).
    #[command(hide = true)]
    NativeNats {
        #[arg(long)]
        url: String,
        #[arg(long, value_parser = ["core", "jetstream"])]
        mode: String,
    },
    /// The native Kafka passthrough of `kafka`, a process of its own (run by
    /// the bench; stops on SIGTERM).
    #[command(hide = true)]
    NativeKafka {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        /// Transactions committed this often; at-least-once without it.
        #[arg(long)]
        exactly_once_ms: Option<u64>,
    },
    #[command(hide = true)]
    NativeLines {
        /// INPUT=OUTPUT (`-`: stdout); repeatable, one task each.
        #[arg(long = "pipe", required = true)]
        pipes: Vec<native_lines::Pipe>,
        /// Keep reading as the files grow, polling every 100 ms.
        #[arg(long)]
        follow: bool,
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
    let (events, out, runs, rate, latency_secs, core_only, pin) = match Cli::parse().command {
        Command::Dashboard { out } => return dashboard::run(&out),
        Command::Start { rounds, langs, runtime, env, out } => {
            let tweaks = Tweaks::parse(runtime, env)?;
            return start::run(start::Args { rounds, langs, tweaks, out }).await;
        }
        Command::Memory { rounds, pipelines, events, runtime, env, out } => {
            let tweaks = Tweaks::parse(runtime, env)?;
            return memory::run(memory::Args { rounds, pipelines, events, tweaks, out }).await;
        }
        Command::NativeLines { pipes, follow } => return native_lines::run(pipes, follow).await,
        Command::Nats { events, out, runs, rate, latency_secs, core_only, pin } => (events, out, runs, rate, latency_secs, core_only, pin),
        Command::NativeNats { url, mode } => {
            let mode = if mode == "jetstream" { Mode::Jetstream } else { Mode::Core };
            return processor::run_native(&url, mode).await;
        }
        Command::Kafka { events, out, runs, rate, latency_secs, no_exactly_once, no_header_row, pin, runtime, env } => {
            let tweaks = Tweaks::parse(runtime, env)?;
            let args = kafka::Args { events, out, runs, rate, latency_secs, no_exactly_once, no_header_row, pin, tweaks };
            return kafka::run(args).await;
        }
        Command::NativeKafka { brokers, group, input, output, exactly_once_ms } => {
            let topics = kafka::processor::Topics { brokers, group, input, output, dead_letter: String::new() };
            return kafka::native::run(topics, exactly_once_ms.map(Duration::from_millis)).await;
        }
    };
    if events == 0 || runs == 0 {
        bail!("--events and --runs must be at least 1");
    }
    // Before the server starts, so that it inherits the pinning.
    let split = match pin {
        true => {
            let split = affinity::Split::for_this_machine()?;
            affinity::pin_this_process(split.rest)?;
            Some(split)
        }
        false => None,
    };
    let bench = Bench {
        server: NatsServer::start().await?,
        sluice: SluiceSetup::find()?,
        events,
        latency: Duration::from_secs(latency_secs),
        cpu: split.map(|s| s.processor),
    };
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    let modes: &[Mode] = if core_only { &[Mode::Core] } else { &[Mode::Core, Mode::Jetstream] };
    for &mode in modes {
        let mut samples = [Vec::new(), Vec::new()];
        // Native runs first in each round: its first throughput sets the
        // rate of every latency run of this mode.
        let mut mode_rate = rate.map(LatencyRate::Fixed);
        for run in 1..=runs {
            for (i, kind) in [Kind::Native, Kind::Sluice].into_iter().enumerate() {
                let sample = bench.trial(mode, kind, &mut mode_rate).await?;
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
        if let Some(rate) = mode_rate {
            rates.push(format!("{}: {}", mode.name(), rate.describe()));
        }
    }
    let pinning = split.map_or("not pinned".into(), |s| s.describe());
    let setup = report::Setup { events, runs, rates: rates.join("; "), latency_secs, pinning };
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

/// Settings of the sluice process alone (not the native baseline's), to
/// see what one costs: lines for its `[runtime]` table, environment
/// variables (`MALLOC_ARENA_MAX=2`, `LD_PRELOAD=…`).
#[derive(Debug, Clone, Default)]
pub struct Tweaks {
    pub runtime: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Tweaks {
    fn parse(runtime: Vec<String>, env: Vec<String>) -> Result<Self> {
        let env = env
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
                _ => bail!("--env `{pair}` is not KEY=VALUE"),
            })
            .collect::<Result<_>>()?;
        Ok(Self { runtime, env })
    }

    pub fn is_empty(&self) -> bool {
        self.runtime.is_empty() && self.env.is_empty()
    }

    /// The `[runtime]` lines, each ending in a newline.
    pub fn runtime_lines(&self) -> String {
        self.runtime.iter().map(|line| format!("{line}\n")).collect()
    }

    /// For a report's header; empty when there is nothing.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.runtime.is_empty() {
            parts.push(format!("sluice's `[runtime]` adds `{}`", self.runtime.join("`, `")));
        }
        if !self.env.is_empty() {
            let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.push(format!("sluice's environment adds `{}`", env.join("`, `")));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("{}.\n\n", parts.join("; "))
        }
    }
}

/// The rate of a mode's latency runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatencyRate {
    /// `--rate`.
    Fixed(u64),
    /// Half of the native processor's throughput, measured in the first
    /// round of this run.
    HalfNative { native: f64 },
}

impl LatencyRate {
    /// Half of a native throughput, at least 1 event/s.
    pub fn half_of(native: f64) -> Self {
        LatencyRate::HalfNative { native }
    }

    pub fn per_sec(self) -> u64 {
        match self {
            LatencyRate::Fixed(rate) => rate,
            LatencyRate::HalfNative { native } => ((native / 2.0) as u64).max(1),
        }
    }

    /// For the report header.
    pub fn describe(self) -> String {
        match self {
            LatencyRate::Fixed(rate) => format!("{rate} events/s (--rate)"),
            LatencyRate::HalfNative { native } => {
                format!("{} events/s, half of the native throughput of the first round ({native:.0} events/s)", self.per_sec())
            }
        }
    }
}

/// What every trial shares.
struct Bench {
    server: NatsServer,
    sluice: SluiceSetup,
    events: u64,
    latency: Duration,
    /// `--pin`: the processor's core.
    cpu: Option<usize>,
}

impl Bench {
    /// One throughput and one latency measurement of `kind` in `mode`, each
    /// with a fresh processor (and, for JetStream, fresh streams). The
    /// latency run's rate is `rate`; when unset, the native processor's
    /// throughput of this trial sets it (to half).
    async fn trial(&self, mode: Mode, kind: Kind, rate: &mut Option<LatencyRate>) -> Result<Sample> {
        // Separate connections for sending and receiving, as two services would.
        let producer = self.server.client().await?;
        let receiver = self.server.client().await?;
        match mode {
            Mode::Core => {
                let mut processor = Processor::start(kind, mode, &self.server, &self.sluice, self.cpu)?;
                processor.wait_ready(mode, kind, &self.server, &producer).await?;
                let cpu_before = processor.cpu_seconds();
                let throughput = load::core_throughput(&producer, &receiver, self.events).await?;
                let cpu_per_100k = match (cpu_before, processor.cpu_seconds()) {
                    (Some(before), Some(after)) => Some((after - before) * 100_000.0 / self.events as f64),
                    _ => None,
                };
                let rate = *rate.get_or_insert(LatencyRate::half_of(throughput.events_per_sec));
                let latency = load::latency(&producer, &receiver, Publish::Core, rate.per_sec(), WARMUP, self.latency).await?;
                processor.stop().await?;
                Ok(Sample { throughput, latency, cpu_per_100k })
            }
            Mode::Jetstream => {
                self.fresh_streams(&producer).await?;
                load::prefill(&producer, self.events).await?;
                let timer = load::BacklogTimer::start(&receiver, self.events).await?;
                let processor = Processor::start(kind, mode, &self.server, &self.sluice, self.cpu)?;
                let timed = timer.finish().await;
                processor.stop().await?; // a processor that died says why here
                let events_per_sec = timed?;
                let lost = self.events.saturating_sub(stream_len(&producer, OUT_STREAM).await?);
                let throughput = load::Throughput { events_per_sec, lost };

                self.fresh_streams(&producer).await?;
                let mut processor = Processor::start(kind, mode, &self.server, &self.sluice, self.cpu)?;
                processor.wait_ready(mode, kind, &self.server, &producer).await?;
                let rate = *rate.get_or_insert(LatencyRate::half_of(throughput.events_per_sec));
                let latency = load::latency(&producer, &receiver, Publish::Jetstream, rate.per_sec(), WARMUP, self.latency).await?;
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

#[cfg(test)]
mod tests {
    use super::LatencyRate;

    #[test]
    fn the_default_latency_rate_is_half_of_native() {
        let rate = LatencyRate::half_of(81_234.0);
        assert_eq!(rate.per_sec(), 40_617);
        assert!(rate.describe().starts_with("40617 events/s, half of the native throughput"), "{}", rate.describe());
        assert_eq!(LatencyRate::Fixed(5_000).per_sec(), 5_000);
        // A native run that saw nothing still gives a rate to publish at.
        assert_eq!(LatencyRate::half_of(0.0).per_sec(), 1);
    }
}
