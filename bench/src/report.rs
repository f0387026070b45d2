//! The markdown report: one row per (mode, processor), medians over the
//! runs, throughput as a ratio to the native passthrough of the same mode.

use std::fmt::Write;

use crate::load::{Latency, Throughput};
use crate::processor::Kind;
use crate::Mode;

/// One run of one processor in one mode.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub throughput: Throughput,
    pub latency: Latency,
    /// CPU seconds of the processor per 100,000 events of the throughput
    /// run (core NATS only: a JetStream run's window excludes start-up,
    /// its CPU time would not).
    pub cpu_per_100k: Option<f64>,
}

/// Every run of one processor in one mode.
pub struct Row {
    pub mode: Mode,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Row {
    fn throughput(&self) -> f64 {
        median(self.samples.iter().map(|s| s.throughput.events_per_sec).collect())
    }

    fn p50(&self) -> f64 {
        median(self.samples.iter().map(|s| s.latency.p50_us as f64).collect())
    }

    fn p99(&self) -> f64 {
        median(self.samples.iter().map(|s| s.latency.p99_us as f64).collect())
    }

    fn cpu_per_100k(&self) -> Option<f64> {
        let values: Vec<f64> = self.samples.iter().filter_map(|s| s.cpu_per_100k).collect();
        (!values.is_empty()).then(|| median(values))
    }

    /// Lost events over every run, throughput and latency alike.
    fn lost(&self) -> u64 {
        self.samples.iter().map(|s| s.throughput.lost + s.latency.lost).sum()
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// What the header says about the run.
pub struct Setup {
    pub events: u64,
    pub runs: usize,
    /// The latency runs' rate per mode, described.
    pub rates: String,
    pub latency_secs: u64,
    /// Where the processor and the rest ran (`--pin`).
    pub pinning: String,
}

/// Each mode's sluice/native ratios, for the dashboard.
pub fn ratios(rows: &[Row]) -> Vec<crate::dashboard::Ratio> {
    let find = |mode: Mode, kind: Kind| rows.iter().find(|r| r.mode == mode && r.kind == kind);
    [Mode::Core, Mode::Jetstream]
        .into_iter()
        .filter_map(|mode| {
            let (native, sluice) = (find(mode, Kind::Native)?, find(mode, Kind::Sluice)?);
            Some(crate::dashboard::Ratio {
                bench: "nats".into(),
                case: mode.name().into(),
                throughput: Some(sluice.throughput() / native.throughput()),
                p50: Some(sluice.p50() / native.p50()),
                p99: Some(sluice.p99() / native.p99()),
                ..Default::default()
            })
        })
        .collect()
}

pub fn render(setup: &Setup, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# NATS → passthrough → NATS: sluice vs native\n");
    let _ = writeln!(
        out,
        "machine: {} ({} CPUs) · nats-server {} · N = {} events of 100 bytes · {} · {} · median of {} runs\n",
        machine::cpu_model(),
        machine::cpus(),
        machine::nats_server_version(),
        setup.events,
        machine::date(),
        setup.pinning,
        setup.runs,
    );
    let _ = writeln!(
        out,
        "| mode | processor | throughput (events/s) | ratio to native | CPU s / 100k events | native/sluice CPU | p50 µs | p99 µs | lost |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let native = rows.iter().find(|r| r.mode == row.mode && r.kind == Kind::Native).map(Row::throughput);
        let ratio = native.map_or("–".into(), |n| format!("{:.1}%", 100.0 * row.throughput() / n));
        let native_cpu = rows.iter().find(|r| r.mode == row.mode && r.kind == Kind::Native).and_then(Row::cpu_per_100k);
        let cpu = row.cpu_per_100k().map_or("–".into(), |c| format!("{c:.3}"));
        let cpu_ratio = match (native_cpu, row.cpu_per_100k()) {
            (Some(n), Some(c)) if c > 0.0 => format!("{:.2}", n / c),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {} |",
            row.mode.name(),
            row.kind.name(),
            row.throughput(),
            ratio,
            cpu,
            cpu_ratio,
            row.p50(),
            row.p99(),
            row.lost(),
        );
    }
    let _ = writeln!(out, "\nEvery run, throughput (events/s):\n");
    for row in rows {
        let runs: Vec<String> = row
            .samples
            .iter()
            .map(|s| match s.cpu_per_100k {
                Some(cpu) => format!("{:.0} ({cpu:.3} CPU s/100k)", s.throughput.events_per_sec),
                None => format!("{:.0}", s.throughput.events_per_sec),
            })
            .collect();
        let _ = writeln!(out, "- {} {}: {}", row.mode.name(), row.kind.name(), runs.join(", "));
    }
    let _ = writeln!(
        out,
        "\nOne nats-server (loopback, JetStream on file storage) for the whole run; runs interleave \
         native and sluice. sluice: the release binary, a separate process, running \
         `passthrough.wasm` with the default policy. native: async-nats in the bench process, \
         on its own tokio runtime and thread. Throughput, core: {n} events with at most 8,192 \
         outstanding, from the first publish to the last output. Throughput, JetStream: {n} events \
         stored in `BIN` beforehand, from the first output to the last (start-up excluded); an \
         input is acked only after its output's publish ack. Latency: {rate}; for \
         {secs} s after a 0.5 s warm-up, send to receive on `bench.out`. lost: over all runs \
         (core: never delivered; JetStream: missing from `BOUT`). CPU: user + system time of \
         the processor (the sluice process; the native passthrough's threads) during the core \
         throughput run, per 100,000 events; native/sluice CPU is the per-event efficiency ratio.",
        n = setup.events,
        rate = setup.rates,
        secs = setup.latency_secs,
    );
    out
}

/// Facts about the machine for the header; "unknown" rather than failing.
pub mod machine {
    /// The machine's online CPUs (not this process's: `--pin` narrows
    /// that to one).
    pub fn cpus() -> usize {
        // SAFETY: a plain query.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        usize::try_from(online).ok().filter(|&n| n > 0).unwrap_or_else(|| std::thread::available_parallelism().map_or(0, usize::from))
    }

    pub fn cpu_model() -> String {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into())
    }

    pub fn nats_server_version() -> String {
        output("nats-server", &["--version"])
            .or_else(|| output("/usr/sbin/nats-server", &["--version"]))
            .map(|v| v.trim_start_matches("nats-server: ").to_owned())
            .unwrap_or_else(|| "unknown".into())
    }

    /// The 1-minute load average, from `/proc/loadavg`: the machine is
    /// shared, and a busy one skews every figure.
    pub fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    }

    pub fn date() -> String {
        output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown date".into())
    }

    pub fn output(program: &str, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new(program).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}
