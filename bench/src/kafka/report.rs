//! The markdown report: one row per variant, medians over the runs,
//! throughput as a ratio to the native passthrough with the same guarantee
//! and to the native at-least-once one.

use std::fmt::Write;

use super::Variant;
use crate::report::{machine, median};

/// One run of one variant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub events_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Throughput and latency runs together.
    pub lost: u64,
    pub duplicates: u64,
    /// The processor's CPU seconds (user + system, all its threads) per
    /// 100,000 events of the throughput run, first output to last.
    pub cpu_per_100k: Option<f64>,
}

/// Every run of one variant.
pub struct Row {
    pub variant: Variant,
    pub samples: Vec<Sample>,
}

impl Row {
    fn throughput(&self) -> f64 {
        median(self.samples.iter().map(|s| s.events_per_sec).collect())
    }

    fn p50(&self) -> f64 {
        median(self.samples.iter().map(|s| s.p50_us as f64).collect())
    }

    fn p99(&self) -> f64 {
        median(self.samples.iter().map(|s| s.p99_us as f64).collect())
    }

    fn cpu_per_100k(&self) -> Option<f64> {
        let values: Vec<f64> = self.samples.iter().filter_map(|s| s.cpu_per_100k).collect();
        (!values.is_empty()).then(|| median(values))
    }

    /// The native processor with this row's guarantee.
    fn native<'a>(&self, rows: &'a [Row]) -> Option<&'a Row> {
        rows.iter().find(|r| r.variant.is_native() && r.variant.mode() == self.variant.mode())
    }
}

/// What the header says about the run.
pub struct Setup {
    pub events: u64,
    pub runs: usize,
    /// The latency runs' rate per guarantee, described.
    pub rates: String,
    pub latency_secs: u64,
    pub kafka: String,
    /// Where the processor and the rest ran (`--pin`).
    pub pinning: String,
    /// The machine's 1-minute load average at the start and at the end: the
    /// machine is shared, and a busy one skews every figure.
    pub load: (String, String),
}

/// Microseconds as milliseconds: one decimal below 100 ms.
fn millis(us: f64) -> String {
    let ms = us / 1000.0;
    if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Each sluice variant against the native processor with the same
/// guarantee, for the dashboard.
pub fn ratios(rows: &[Row]) -> Vec<crate::dashboard::Ratio> {
    rows.iter()
        .filter(|row| !row.variant.is_native())
        .filter_map(|row| {
            let native = row.native(rows)?;
            Some(crate::dashboard::Ratio {
                bench: "kafka".into(),
                case: format!("{} ({})", row.variant.mode(), row.variant.processor()),
                throughput: Some(row.throughput() / native.throughput()),
                p50: Some(row.p50() / native.p50()),
                p99: Some(row.p99() / native.p99()),
                ..Default::default()
            })
        })
        .collect()
}

pub fn render(setup: &Setup, rows: &[Row], sluice_log: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Kafka → passthrough → Kafka: sluice vs native\n");
    let _ = writeln!(
        out,
        "machine: {} ({} CPUs, load average {} at the start, {} at the end) · Apache Kafka {} (KRaft, single node) · \
         N = {} events of 100 bytes · {} · {} · median of {} runs\n",
        machine::cpu_model(),
        machine::cpus(),
        setup.load.0,
        setup.load.1,
        setup.kafka,
        setup.events,
        machine::date(),
        setup.pinning,
        setup.runs,
    );
    let _ = writeln!(
        out,
        "| guarantee | processor | throughput (events/s) | vs native, same guarantee | vs native at-least-once | CPU s / 100k events | native/this CPU, same guarantee | p50 ms | p99 ms | lost | duplicates |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let native_alo = rows.iter().find(|r| r.variant == Variant::NativeAtLeastOnce).map(Row::throughput);
    for row in rows {
        let native_same = row.native(rows).map(Row::throughput);
        let ratio = |base: Option<f64>| base.map_or("–".into(), |n| format!("{:.1}%", 100.0 * row.throughput() / n));
        let cpu = row.cpu_per_100k().map_or("–".into(), |c| format!("{c:.3}"));
        let cpu_ratio = match (row.native(rows).and_then(Row::cpu_per_100k), row.cpu_per_100k()) {
            (Some(native), Some(this)) if this > 0.0 => format!("{:.2}", native / this),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.variant.mode(),
            row.variant.processor(),
            row.throughput(),
            ratio(native_same),
            ratio(native_alo),
            cpu,
            cpu_ratio,
            millis(row.p50()),
            millis(row.p99()),
            row.samples.iter().map(|s| s.lost).sum::<u64>(),
            row.samples.iter().map(|s| s.duplicates).sum::<u64>(),
        );
    }
    let _ = writeln!(out, "\nEvery run, throughput (events/s) and CPU seconds per 100k events:\n");
    for row in rows {
        let runs: Vec<String> = row
            .samples
            .iter()
            .map(|s| match s.cpu_per_100k {
                Some(cpu) => format!("{:.0} ({cpu:.3})", s.events_per_sec),
                None => format!("{:.0}", s.events_per_sec),
            })
            .collect();
        let _ = writeln!(out, "- {} {}: {}", row.variant.mode(), row.variant.processor(), runs.join(", "));
    }
    let _ = writeln!(
        out,
        "\nOne broker (loopback) for the whole run; every trial has fresh topics ({partitions} partitions) \
         and a fresh consumer group; runs interleave the variants. Every producer is idempotent, \
         acks=all, linger.ms=5, murmur2_random. sluice: the release binary, a separate process, \
         running `passthrough.wasm`. native: `sluice-bench native-kafka`, also a separate process. \
         native at-least-once: rdkafka StreamConsumer → FutureProducer \
         on a tokio runtime, auto-commit every 1 s of offsets stored only after \
         the output's delivery report. native exactly-once: read_committed BaseConsumer and \
         transactional BaseProducer on one thread, positions sent to the transaction and \
         committed every interval. Throughput: {n} events stored in the input topic beforehand, \
         from the first output to the {n}-th distinct one (start-up and group join excluded; \
         exactly-once: first output produced to last output committed); CPU: the processor's user + system \
         time over the same span, from /proc/<pid>/stat (10 ms ticks, read every 5 ms). Latency: {rate}; \
         for {secs} s after a 0.5 s warm-up on the same processor, send to receive (read_committed). \
         lost and duplicates: over all runs, throughput and latency runs together.",
        partitions = super::PARTITIONS,
        n = setup.events,
        rate = setup.rates,
        secs = setup.latency_secs,
    );
    if !sluice_log.is_empty() {
        let _ = writeln!(out, "\nsluice logged {} warnings or errors:\n", sluice_log.len());
        for line in sluice_log.iter().take(20) {
            let _ = writeln!(out, "- `{line}`");
        }
    }
    out
}
