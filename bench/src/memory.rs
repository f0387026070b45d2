//! `sluice-bench memory`: the resident memory of `sluice run`, idle with one
//! pipeline, idle with N, and under full load, beside the native baseline
//! (`sluice-bench native-lines`, the same pipelines without WASM or sluice).
//!
//! Every pipeline is file → the Rust `passthrough` plugin → file, so no
//! broker client is in the figure. The compiled component is in a warm
//! cache (the first, untimed start fills it).
//!
//! Before every start the binary and the compiled component are dropped
//! from the page cache ([`procfs::evict`]): RSS counts the file pages a
//! process has mapped, and how many one fault maps depends on how the page
//! cache holds the file (see `Bench::spawn`).
//!
//! - idle: each pipeline follows its own file, which holds one event; once
//!   every output file has its line (so every lane has its instance), the
//!   process is left alone for [`SETTLE`] and then read: `VmRSS`, `Pss`
//!   (`smaps_rollup`), threads, virtual size. Per extra pipeline is
//!   `(RSS with N − RSS with 1) / (N − 1)`.
//! - full load: one pipeline drains a file of `--events` 100-byte events as
//!   fast as it goes, and exits at its end; the peak RSS is the largest
//!   `VmHWM` read every 5 ms while it runs (not `wait4`'s `ru_maxrss`,
//!   which a child inherits from its parent through fork and exec: it
//!   reported this process's own 73 MiB for both), with CPU time and
//!   events/s beside it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::dashboard::{Goal, Ratio};
use crate::native_lines::Pipe;
use crate::processor::SluiceSetup;
use crate::procfs::{self, mib, Memory};
use crate::report::{machine, median};

/// How long an idle process is left alone before it is read: lazily
/// freed memory (a lane's first batch, the log's first line) settles.
const SETTLE: Duration = Duration::from_secs(1);
/// Longer than this for a start or a drain is a failure.
const LIMIT: Duration = Duration::from_secs(120);

/// Issue 20's goals, KiB.
const IDLE_GOAL_MIB: f64 = 20.0;
const PER_PIPELINE_GOAL_MIB: f64 = 2.0;

/// What `sluice-bench memory` was asked for.
pub struct Args {
    pub rounds: usize,
    /// Pipelines of the "many" case.
    pub pipelines: usize,
    /// Events of the full-load run.
    pub events: u64,
    /// Settings of the sluice process alone.
    pub tweaks: crate::Tweaks,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Native,
    Sluice,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Sluice => "sluice",
        }
    }
}

/// One full-load run.
#[derive(Debug, Clone, Copy)]
struct Load {
    peak_kib: u64,
    cpu_secs: f64,
    events_per_sec: f64,
}

/// Every round of one processor.
#[derive(Default)]
struct Rounds {
    one: Vec<Memory>,
    many: Vec<Memory>,
    load: Vec<Load>,
}

impl Rounds {
    fn rss(samples: &[Memory]) -> f64 {
        median(samples.iter().map(|m| m.rss_kib as f64).collect())
    }

    fn pss(samples: &[Memory]) -> Option<f64> {
        let values: Vec<f64> = samples.iter().filter_map(|m| m.pss_kib.map(|p| p as f64)).collect();
        (!values.is_empty()).then(|| median(values))
    }

    fn threads(samples: &[Memory]) -> f64 {
        median(samples.iter().map(|m| m.threads as f64).collect())
    }

    fn virtual_kib(samples: &[Memory]) -> f64 {
        median(samples.iter().map(|m| m.virtual_kib as f64).collect())
    }

    /// KiB per pipeline beyond the first.
    fn per_extra(&self, pipelines: usize) -> f64 {
        (Self::rss(&self.many) - Self::rss(&self.one)) / (pipelines.saturating_sub(1).max(1)) as f64
    }

    fn peak(&self) -> f64 {
        median(self.load.iter().map(|l| l.peak_kib as f64).collect())
    }

    fn cpu_us_per_event(&self, events: u64) -> f64 {
        median(self.load.iter().map(|l| l.cpu_secs * 1e6 / events as f64).collect())
    }

    fn events_per_sec(&self) -> f64 {
        median(self.load.iter().map(|l| l.events_per_sec).collect())
    }
}

pub async fn run(args: Args) -> Result<()> {
    if args.rounds == 0 || args.pipelines < 2 || args.events == 0 {
        bail!("--rounds and --events must be at least 1, --pipelines at least 2");
    }
    let setup = SluiceSetup::find()?;
    let native = std::env::current_exe().context("finding sluice-bench itself (the native baseline)")?;
    let bench = Bench { setup: &setup, native: &native, tweaks: &args.tweaks };
    let load_at_start = machine::load_average();
    // Untimed: fills the compile cache.
    bench.idle(Kind::Sluice, 1).await?;

    let mut rounds = [Rounds::default(), Rounds::default()];
    for round in 1..=args.rounds {
        for (i, kind) in [Kind::Native, Kind::Sluice].into_iter().enumerate() {
            let one = bench.idle(kind, 1).await?;
            let many = bench.idle(kind, args.pipelines).await?;
            let load = bench.full_load(kind, args.events).await?;
            eprintln!(
                "round {round}/{}: {}: idle {} (1 pipeline), {} ({} pipelines), {} threads; full load peak {}, {:.0} events/s",
                args.rounds,
                kind.name(),
                mib(one.rss_kib as f64),
                mib(many.rss_kib as f64),
                args.pipelines,
                one.threads,
                mib(load.peak_kib as f64),
                load.events_per_sec,
            );
            rounds[i].one.push(one);
            rounds[i].many.push(many);
            rounds[i].load.push(load);
        }
    }
    let load = (load_at_start, machine::load_average());
    let [native, sluice] = &rounds;
    let table = render(&args, &setup.bin, native, sluice, &load);
    print!("{table}");
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, table)?;
    // A run with tweaks is an experiment: the dashboard keeps the defaults'.
    if args.tweaks.is_empty() {
        crate::dashboard::save("memory", &ratios(&args, native, sluice))?;
    }
    eprintln!("report written to {}", args.out.display());
    Ok(())
}

struct Bench<'a> {
    setup: &'a SluiceSetup,
    native: &'a Path,
    tweaks: &'a crate::Tweaks,
}

/// `n` pipelines' files in `dir`: input `in-i.jsonl`, output `out-i.jsonl`.
fn pipes(dir: &Path, n: usize) -> Vec<Pipe> {
    (0..n).map(|i| Pipe { input: dir.join(format!("in-{i}.jsonl")), output: dir.join(format!("out-{i}.jsonl")) }).collect()
}

/// One event line with a payload of exactly 100 bytes (a JSON string).
fn event_line(i: u64) -> String {
    format!("{{\"key\":\"k{}\",\"payload\":\"{:0>100}\"}}\n", i % 64, i)
}

impl Bench<'_> {
    /// Starts `kind` with `pipes`, following (idle) or not (drain and exit).
    fn spawn(&self, kind: Kind, dir: &Path, pipes: &[Pipe], follow: bool) -> Result<std::process::Child> {
        // Each start reads its binary and compiled component from disk, as
        // after a reboot or a fresh install: how the page cache holds a
        // file decides how much of it one fault maps (a binary the linker
        // has just written showed ~2 MiB more RSS than the same file read
        // back from disk), so a warm cache would measure the build.
        let program = match kind {
            Kind::Native => self.native,
            Kind::Sluice => self.setup.bin.as_path(),
        };
        procfs::evict(program);
        procfs::evict_tree(self.setup.cache.path());
        let mut command = match kind {
            Kind::Native => {
                let mut command = std::process::Command::new(self.native);
                command.arg("native-lines");
                if follow {
                    command.arg("--follow");
                }
                for pipe in pipes {
                    command.arg("--pipe").arg(pipe.arg());
                }
                command
            }
            Kind::Sluice => {
                let quote = |path: &Path| serde_json::Value::from(path.display().to_string()).to_string();
                let mut config = format!("[runtime]\ncache_dir = {}\n{}", quote(self.setup.cache.path()), self.tweaks.runtime_lines());
                for (i, pipe) in pipes.iter().enumerate() {
                    config.push_str(&format!(
                        "\n[pipelines.p{i}]\nsource = {{ kind = \"file\", path = {input}, follow = {follow} }}\n\
                         sink = {{ kind = \"file\", path = {output} }}\n\
                         dead_letter = {{ kind = \"file\", path = {dlq} }}\n\
                         plugin = {{ path = {plugin} }}\n",
                        input = quote(&pipe.input),
                        output = quote(&pipe.output),
                        dlq = quote(&dir.join(format!("dlq-{i}.jsonl"))),
                        plugin = quote(&self.setup.plugin),
                    ));
                }
                let path = dir.join("sluice.toml");
                std::fs::write(&path, config)?;
                let mut command = std::process::Command::new(&self.setup.bin);
                command.arg("run").arg(path).envs(self.tweaks.env.iter().map(|(k, v)| (k, v)));
                command
            }
        };
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(dir.join("stderr.log"))?);
        command.spawn().with_context(|| format!("starting {}", kind.name()))
    }

    /// `n` idle pipelines, each having handled one event.
    async fn idle(&self, kind: Kind, n: usize) -> Result<Memory> {
        let dir = tempfile::Builder::new().prefix("sluice-bench-memory-").tempdir()?;
        let pipes = pipes(dir.path(), n);
        for pipe in &pipes {
            std::fs::write(&pipe.input, event_line(0))?;
        }
        let mut child = self.spawn(kind, dir.path(), &pipes, true)?;
        let pid = child.id();
        let measured = async {
            let deadline = Instant::now() + LIMIT;
            loop {
                if let Some(status) = child.try_wait()? {
                    bail!("{} exited on its own ({status}):\n{}", kind.name(), tail(&dir.path().join("stderr.log")));
                }
                let done = pipes.iter().all(|p| std::fs::read(&p.output).is_ok_and(|out| out.ends_with(b"\n")));
                if done {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} did not handle its {n} events within {LIMIT:?}", kind.name());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(SETTLE).await;
            procfs::memory(pid)
        }
        .await;
        // SIGTERM drains; the process must end cleanly either way.
        let exit = procfs::terminate(&mut child, LIMIT).await;
        let memory = measured?;
        if exit?.is_none() {
            bail!("process {pid} did not exit within {LIMIT:?}");
        }
        Ok(memory)
    }

    /// One pipeline draining `events` events from a file, to its end.
    async fn full_load(&self, kind: Kind, events: u64) -> Result<Load> {
        let dir = tempfile::Builder::new().prefix("sluice-bench-load-").tempdir()?;
        let pipes = pipes(dir.path(), 1);
        // Written as it is made: a child inherits its parent's peak RSS
        // through fork and exec (`ru_maxrss`), so this process must not
        // hold the input when it spawns one.
        {
            use std::io::Write;
            let mut input = std::io::BufWriter::new(std::fs::File::create(&pipes[0].input)?);
            for i in 0..events {
                input.write_all(event_line(i).as_bytes())?;
            }
            input.flush()?;
        }
        let started = Instant::now();
        let mut child = self.spawn(kind, dir.path(), &pipes, false)?;
        // The child's own high-water mark, read every 5 ms while it runs
        // (`VmHWM` belongs to the exec'd image alone, unlike `ru_maxrss`).
        let pid = child.id();
        let watcher = tokio::spawn(async move {
            let mut peak = 0;
            while let Ok(memory) = procfs::memory(pid) {
                peak = peak.max(memory.hwm_kib);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            peak
        });
        let exit = match procfs::wait(pid, LIMIT).await {
            Ok(exit) => exit,
            Err(e) => {
                let _ = child.kill();
                return Err(e);
            }
        };
        let elapsed = started.elapsed();
        let peak_kib = watcher.await.unwrap_or(0);
        if !exit.success {
            bail!("{} failed under load:\n{}", kind.name(), tail(&dir.path().join("stderr.log")));
        }
        let written = std::fs::read(&pipes[0].output)?.iter().filter(|&&b| b == b'\n').count() as u64;
        if written != events {
            bail!("{} wrote {written} outputs for {events} events", kind.name());
        }
        Ok(Load { peak_kib, cpu_secs: exit.cpu_secs, events_per_sec: events as f64 / elapsed.as_secs_f64() })
    }
}

fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn ratios(args: &Args, native: &Rounds, sluice: &Rounds) -> Vec<Ratio> {
    let idle = Rounds::rss(&sluice.one);
    let per_extra = sluice.per_extra(args.pipelines);
    vec![
        Ratio {
            bench: "memory".into(),
            case: "idle RSS, 1 pipeline".into(),
            cost: Some(idle / Rounds::rss(&native.one)),
            figure: Some(mib(idle)),
            goal: Some(Goal::below(idle / 1024.0, IDLE_GOAL_MIB, "MiB")),
            ..Ratio::default()
        },
        Ratio {
            bench: "memory".into(),
            case: format!("idle RSS, {} pipelines", args.pipelines),
            cost: Some(Rounds::rss(&sluice.many) / Rounds::rss(&native.many)),
            figure: Some(mib(Rounds::rss(&sluice.many))),
            ..Ratio::default()
        },
        Ratio {
            // No ratio: the native baseline's extra pipeline costs a few KiB.
            bench: "memory".into(),
            case: "RSS per extra idle pipeline".into(),
            figure: Some(mib(per_extra)),
            goal: Some(Goal::below(per_extra / 1024.0, PER_PIPELINE_GOAL_MIB, "MiB")),
            ..Ratio::default()
        },
        Ratio {
            bench: "memory".into(),
            case: format!("full load ({} events from a file), peak RSS", args.events),
            throughput: Some(sluice.events_per_sec() / native.events_per_sec()),
            cost: Some(sluice.peak() / native.peak()),
            figure: Some(mib(sluice.peak())),
            ..Ratio::default()
        },
    ]
}

fn render(args: &Args, bin: &Path, native: &Rounds, sluice: &Rounds, load: &(String, String)) -> String {
    use std::fmt::Write;
    let mut out = String::from("# Memory: resident set of `sluice run`\n\n");
    let _ = writeln!(
        out,
        "machine: {} ({} CPUs, load average {} at the start, {} at the end) · {} · `{}` · median of {} rounds\n",
        machine::cpu_model(),
        machine::cpus(),
        load.0,
        load.1,
        machine::date(),
        bin.display(),
        args.rounds,
    );
    out.push_str(&args.tweaks.describe());
    let n = args.pipelines;
    let pss = |samples: &[Memory]| Rounds::pss(samples).map_or("–".to_owned(), mib);
    let _ = writeln!(out, "| measure | native | sluice | sluice / native | goal |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    let verdict = |goal: Goal| format!("{}: {}", goal.text, if goal.met { "met" } else { "**not met**" });
    let mut row = |what: String, native: f64, sluice: f64, goal: Option<Goal>| {
        let _ =
            writeln!(out, "| {what} | {} | {} | {:.2} | {} |", mib(native), mib(sluice), sluice / native, goal.map_or("–".into(), verdict));
    };
    let (idle, many) = (Rounds::rss(&sluice.one), Rounds::rss(&sluice.many));
    row("idle RSS, 1 pipeline".into(), Rounds::rss(&native.one), idle, Some(Goal::below(idle / 1024.0, IDLE_GOAL_MIB, "MiB")));
    row(format!("idle RSS, {n} pipelines"), Rounds::rss(&native.many), many, None);
    let per_extra = sluice.per_extra(n);
    row(
        "RSS per extra idle pipeline".into(),
        native.per_extra(n),
        per_extra,
        Some(Goal::below(per_extra / 1024.0, PER_PIPELINE_GOAL_MIB, "MiB")),
    );
    row(format!("peak RSS, full load ({} events)", args.events), native.peak(), sluice.peak(), None);
    let _ = writeln!(out, "\n| detail | native | sluice |\n|---|---:|---:|");
    let _ = writeln!(out, "| idle Pss, 1 pipeline | {} | {} |", pss(&native.one), pss(&sluice.one));
    let _ = writeln!(out, "| idle Pss, {n} pipelines | {} | {} |", pss(&native.many), pss(&sluice.many));
    let _ = writeln!(out, "| threads, 1 pipeline | {:.0} | {:.0} |", Rounds::threads(&native.one), Rounds::threads(&sluice.one));
    let _ = writeln!(out, "| threads, {n} pipelines | {:.0} | {:.0} |", Rounds::threads(&native.many), Rounds::threads(&sluice.many));
    let _ = writeln!(
        out,
        "| virtual size, {n} pipelines | {} | {} |",
        mib(Rounds::virtual_kib(&native.many)),
        mib(Rounds::virtual_kib(&sluice.many))
    );
    let _ = writeln!(out, "| full load, events/s | {:.0} | {:.0} |", native.events_per_sec(), sluice.events_per_sec());
    let _ = writeln!(
        out,
        "| full load, CPU µs per event (whole process life) | {:.2} | {:.2} |",
        native.cpu_us_per_event(args.events),
        sluice.cpu_us_per_event(args.events)
    );
    let every = |rounds: &Rounds| rounds.one.iter().map(|m| mib(m.rss_kib as f64)).collect::<Vec<_>>().join(", ");
    let _ = writeln!(out, "\nEvery round, idle RSS with 1 pipeline: native {}; sluice {}.", every(native), every(sluice));
    let _ = writeln!(
        out,
        "\nEvery pipeline: file → Rust `passthrough` plugin → file (sluice; compiled component \
         from a warm `cache_dir`), or `sluice-bench native-lines` (native: tokio, the payload of \
         each JSON line written as a line). Idle: each pipeline follows a file holding one event; \
         read {SETTLE:?} after every output was written. Per extra pipeline: (RSS with {n} − RSS \
         with 1) / {}. Full load: one pipeline draining {} events of 100 bytes from a file to its \
         end; peak RSS is the largest `VmHWM` read every 5 ms while it ran, events/s from spawn to exit. RSS counts \
         shared file pages (the binary, a component mapped from the cache) whole; Pss divides them.",
        n - 1,
        args.events,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_payloads_are_100_bytes() -> Result<()> {
        let line: serde_json::Value = serde_json::from_str(&event_line(12345))?;
        assert_eq!(line["payload"].as_str().map(str::len), Some(100));
        Ok(())
    }

    #[test]
    fn per_extra_pipeline_is_the_slope() {
        let at = |rss_kib| Memory { rss_kib, ..Memory::default() };
        let rounds = Rounds { one: vec![at(10_000), at(10_400)], many: vec![at(30_000), at(30_200)], load: Vec::new() };
        // medians 10,200 and 30,100 KiB over 10 extra pipelines
        assert_eq!(rounds.per_extra(11), 1990.0);
    }
}
