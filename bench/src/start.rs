//! `sluice-bench start`: how long from spawning `sluice run` to the first
//! event handled, for the same plugin (the JSON enricher, no config: it
//! re-serialises each JSON object unchanged) in Rust, Python and JavaScript,
//! with the compiled-component cache warm and cold.
//!
//! "First event handled" is the first output line read from sluice's
//! stdout sink: the event was read from the file source, run through the
//! plugin, written and flushed. The source is a file holding one event, so
//! no broker is involved and the figure is sluice's own: process start,
//! config, engine, plugin load (from the cache, or compiled), the first
//! instance and `init`, the pipeline's tasks, the event's path. The file,
//! the binary and the plugin are in the OS page cache in every case (each
//! is read by the first, untimed run).
//!
//! - warm: a cache dir filled by an untimed run beforehand.
//! - cold: a new, empty cache dir per run: the component is compiled, and
//!   written to the cache, before the event can be handled.
//! - native: `sluice-bench native-lines` (a tokio process that reads the
//!   same file and writes the payload to stdout), timed the same way.
//!
//! Cases interleave within each round so machine noise hits all alike; the
//! report gives the median and the range over the rounds.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::dashboard::{Goal, Ratio};
use crate::processor::SluiceSetup;
use crate::report::{machine, median};

/// A start that takes longer has failed.
const LIMIT: Duration = Duration::from_secs(120);

/// What `sluice-bench start` was asked for.
pub struct Args {
    pub rounds: usize,
    /// Only these languages; empty: all.
    pub langs: Vec<String>,
    /// Settings of the sluice process alone.
    pub tweaks: crate::Tweaks,
    pub out: PathBuf,
}

/// A plugin language and issue 20's goal for its warm start.
struct Plugin {
    lang: &'static str,
    path: PathBuf,
    warm_goal_ms: f64,
}

/// The example plugins `scripts/build-plugins.sh` and
/// `scripts/build-lang-plugins.sh` build; a missing one is left out, named.
fn plugins(root: &Path) -> Vec<Plugin> {
    let candidates = [
        ("rust", "plugins/target/wasm32-wasip2/release/json_enricher.wasm", 50.0, "bash scripts/build-plugins.sh"),
        ("python", "plugins/target/components/json_enricher_py.wasm", 150.0, "bash scripts/build-lang-plugins.sh python"),
        ("javascript", "plugins/target/components/json_enricher_js.wasm", 150.0, "bash scripts/build-lang-plugins.sh js"),
    ];
    candidates
        .into_iter()
        .filter_map(|(lang, path, warm_goal_ms, build)| {
            let path = root.join(path);
            if path.is_file() {
                Some(Plugin { lang, path, warm_goal_ms })
            } else {
                eprintln!("no {} ({lang}): left out; build it with `{build}`", path.display());
                None
            }
        })
        .collect()
}

/// Which process a measurement starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Native,
    Sluice { plugin: usize, warm: bool },
}

/// One timed start.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Spawn to the first output line.
    first: Duration,
    /// Spawn to exit (the source ends after its one event).
    exit: Duration,
    /// What sluice logged as the plugin's load time (`load_ms`).
    load_ms: Option<f64>,
}

pub async fn run(args: Args) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let setup = SluiceSetup::find()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    let known = ["rust", "python", "javascript"];
    if let Some(unknown) = args.langs.iter().find(|l| !known.contains(&l.as_str())) {
        bail!("--lang {unknown}: the languages are {}", known.join(", "));
    }
    let plugins: Vec<Plugin> =
        plugins(root).into_iter().filter(|p| args.langs.is_empty() || args.langs.iter().any(|l| l == p.lang)).collect();
    let dir = tempfile::Builder::new().prefix("sluice-bench-start-").tempdir()?;
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"key\":\"k\",\"payload\":{\"user\":\"u\",\"n\":1}}\n")?;
    let native = std::env::current_exe().context("finding sluice-bench itself (the native baseline)")?;
    let load_at_start = machine::load_average();

    let mut cases = vec![Case::Native];
    for plugin in 0..plugins.len() {
        cases.push(Case::Sluice { plugin, warm: true });
        cases.push(Case::Sluice { plugin, warm: false });
    }
    let starter = Starter { setup: &setup, events: &events, dir: dir.path(), native: &native, plugins: &plugins, tweaks: &args.tweaks };
    // Untimed: fills the warm cache, and brings every file into the page cache.
    for plugin in 0..plugins.len() {
        starter.once(Case::Sluice { plugin, warm: true }, 0).await?;
    }
    starter.once(Case::Native, 0).await?;

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
    for round in 1..=args.rounds {
        for (i, &case) in cases.iter().enumerate() {
            let sample = starter.once(case, round).await?;
            eprintln!(
                "round {round}/{}: {}: first event {:.1} ms, exit {:.1} ms{}",
                args.rounds,
                starter.name(case),
                ms(sample.first),
                ms(sample.exit),
                sample.load_ms.map_or(String::new(), |l| format!(", plugin load {l:.0} ms")),
            );
            samples[i].push(sample);
        }
    }
    let load = (load_at_start, machine::load_average());
    let table = render(&starter, &cases, &samples, args.rounds, &load);
    let table = table.replacen("\n\n", &format!("\n\n{}", args.tweaks.describe()), 1);
    print!("{table}");
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, table)?;
    // A run with tweaks or fewer languages is an experiment: the dashboard
    // keeps the full default run's figures.
    if args.tweaks.is_empty() && args.langs.is_empty() {
        crate::dashboard::save("start", &ratios(&starter, &cases, &samples))?;
    }
    eprintln!("report written to {}", args.out.display());
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median and range of `f` over `samples`, as `12.3 (11.0–15.2)`.
fn spread(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, String) {
    let values: Vec<f64> = samples.iter().map(f).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mid = median(values);
    (mid, format!("{mid:.1} ({lo:.1}–{hi:.1})"))
}

struct Starter<'a> {
    setup: &'a SluiceSetup,
    events: &'a Path,
    dir: &'a Path,
    native: &'a Path,
    plugins: &'a [Plugin],
    tweaks: &'a crate::Tweaks,
}

impl Starter<'_> {
    fn name(&self, case: Case) -> String {
        match case {
            Case::Native => "native".into(),
            Case::Sluice { plugin, warm } => format!("{}, {} cache", self.plugins[plugin].lang, if warm { "warm" } else { "cold" }),
        }
    }

    /// Writes the config of `case` for round `round`; a cold case gets a
    /// new, empty cache dir.
    fn config(&self, plugin: &Plugin, warm: bool, round: usize) -> Result<PathBuf> {
        let cache =
            if warm { self.dir.join(format!("cache-{}", plugin.lang)) } else { self.dir.join(format!("cold-{}-{round}", plugin.lang)) };
        if !warm && cache.exists() {
            std::fs::remove_dir_all(&cache)?;
        }
        let quote = |path: &Path| serde_json::Value::from(path.display().to_string()).to_string();
        let config = format!(
            "[runtime]\ncache_dir = {cache}\n{tweaks}\n\
             [pipelines.start]\nsource = {{ kind = \"file\", path = {events} }}\nsink = {{ kind = \"stdout\" }}\n\
             dead_letter = {{ kind = \"file\", path = {dlq} }}\n\n\
             [pipelines.start.plugin]\npath = {plugin}\n",
            cache = quote(&cache),
            tweaks = self.tweaks.runtime_lines(),
            events = quote(self.events),
            dlq = quote(&self.dir.join("dlq.jsonl")),
            plugin = quote(&plugin.path),
        );
        let path = self.dir.join(format!("{}-{}.toml", plugin.lang, if warm { "warm" } else { "cold" }));
        std::fs::write(&path, config)?;
        Ok(path)
    }

    /// One start of `case`, timed.
    async fn once(&self, case: Case, round: usize) -> Result<Sample> {
        let log_path = self.dir.join("stderr.log");
        let mut command = match case {
            Case::Native => {
                let mut command = tokio::process::Command::new(self.native);
                command.arg("native-lines").arg("--pipe").arg(format!("{}=-", self.events.display()));
                command
            }
            Case::Sluice { plugin, warm } => {
                let config = self.config(&self.plugins[plugin], warm, round)?;
                let mut command = tokio::process::Command::new(&self.setup.bin);
                command.arg("run").arg(config).envs(self.tweaks.env.iter().map(|(k, v)| (k, v)));
                command
            }
        };
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(&log_path)?).kill_on_drop(true);
        let started = Instant::now();
        let mut child = command.spawn().with_context(|| format!("starting {}", self.name(case)))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = match tokio::time::timeout(LIMIT, lines.next_line()).await {
            Ok(Ok(Some(_))) => started.elapsed(),
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                let _ = child.kill().await;
                bail!("{} wrote no output:\n{}", self.name(case), tail(&log_path));
            }
        };
        // Read the rest so a full pipe never holds it up.
        while let Ok(Ok(Some(_))) = tokio::time::timeout(LIMIT, lines.next_line()).await {}
        let status = tokio::time::timeout(LIMIT, child.wait()).await.context("no exit after its source ended")??;
        let exit = started.elapsed();
        if !status.success() {
            bail!("{} exited with {status}:\n{}", self.name(case), tail(&log_path));
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Ok(Sample { first, exit, load_ms: load_ms(&log) })
    }
}

/// `load_ms=N` of sluice's "plugin loaded" line.
fn load_ms(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("plugin loaded"))?;
    let value = line.split_once("load_ms=")?.1;
    value.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Sluice's median start over the native one's, per case, with the goals
/// of issue 20 on the warm starts.
fn ratios(starter: &Starter, cases: &[Case], samples: &[Vec<Sample>]) -> Vec<Ratio> {
    let native = median(samples[0].iter().map(|s| ms(s.first)).collect());
    cases
        .iter()
        .zip(samples)
        .filter_map(|(&case, samples)| {
            let Case::Sluice { plugin, warm } = case else { return None };
            let first = median(samples.iter().map(|s| ms(s.first)).collect());
            let limit = starter.plugins[plugin].warm_goal_ms;
            Some(Ratio {
                bench: "start".into(),
                case: starter.name(case),
                cost: Some(first / native),
                figure: Some(format!("{first:.1} ms")),
                goal: warm.then(|| Goal::below(first, limit, "ms")),
                ..Ratio::default()
            })
        })
        .collect()
}

fn render(starter: &Starter, cases: &[Case], samples: &[Vec<Sample>], rounds: usize, load: &(String, String)) -> String {
    use std::fmt::Write;
    let mut out = String::from("# Start: `sluice run` to the first event handled\n\n");
    let _ = writeln!(
        out,
        "machine: {} ({} CPUs, load average {} at the start, {} at the end) · {} · median (min–max) of {rounds} rounds\n",
        machine::cpu_model(),
        machine::cpus(),
        load.0,
        load.1,
        machine::date(),
    );
    let _ = writeln!(out, "| case | first event, ms | ratio to native | exit, ms | plugin load (sluice's `load_ms`) | goal |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|");
    let native = median(samples[0].iter().map(|s| ms(s.first)).collect());
    for (&case, samples) in cases.iter().zip(samples) {
        let (first, first_text) = spread(samples, |s| ms(s.first));
        let (_, exit) = spread(samples, |s| ms(s.exit));
        let load: Vec<f64> = samples.iter().filter_map(|s| s.load_ms).collect();
        let load = if load.is_empty() { "–".to_owned() } else { format!("{:.0}", median(load)) };
        let goal = match case {
            Case::Sluice { plugin, warm: true } => {
                let goal = Goal::below(first, starter.plugins[plugin].warm_goal_ms, "ms");
                format!("{}: {}", goal.text, if goal.met { "met" } else { "**not met**" })
            }
            Case::Sluice { warm: false, .. } => "reported".into(),
            Case::Native => "–".into(),
        };
        let _ = writeln!(out, "| {} | {first_text} | {:.2} | {exit} | {load} | {goal} |", starter.name(case), first / native);
    }
    let _ = writeln!(
        out,
        "\nFirst event: from spawning the process to reading the first output line from its stdout \
         (the event read from a one-line file, run through the plugin, written and flushed by the \
         stdout sink). No broker. The plugin is the JSON enricher without config in each language \
         (`json_enricher`, `json_enricher_py`, `json_enricher_js`). warm: the compiled component \
         is in `runtime.cache_dir` (filled by an untimed run); cold: an empty `cache_dir`, so the \
         component is compiled and written to the cache first. native: `sluice-bench \
         native-lines`, a tokio process that reads the same file and writes the payload to \
         stdout. exit: spawn to exit, the source having ended. Every file is in the page cache."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_ms_is_read_from_the_plugin_loaded_line() {
        let log = "2026-12-06T23:00:00Z  INFO sluice::supervisor: starting\n\
                   2026-12-06T23:00:00Z  INFO sluice::pipeline: plugin loaded pipeline=\"start\" plugin=\"json_enricher\" load_ms=12 cached=true\n";
        assert_eq!(load_ms(log), Some(12.0));
        assert_eq!(load_ms("no such line"), None);
    }

    #[test]
    fn spread_is_median_and_range() {
        let sample = |ms: u64| Sample { first: Duration::from_millis(ms), exit: Duration::ZERO, load_ms: None };
        let samples = [sample(30), sample(10), sample(20)];
        assert_eq!(spread(&samples, |s| ms(s.first)), (20.0, "20.0 (10.0–30.0)".to_owned()));
    }
}
