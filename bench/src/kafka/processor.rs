//! The processors under test, each a child process with its own scratch
//! dir (config, dead letters, log). Each joins a fresh consumer group on the
//! input topic and writes every payload unchanged to the output topic:
//!
//! - native: `sluice-bench native-kafka` ([`super::native`]), rdkafka
//!   passthroughs at-least-once and exactly-once;
//! - sluice: the real `sluice` binary running `passthrough.wasm`.
//!
//! Both are stopped with SIGTERM, as in production, and measured alike:
//! CPU time from `/proc/<pid>/stat`, and with `--pin` the same core.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Variant;
use crate::processor::SluiceSetup;

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

/// A running processor.
pub struct Processor {
    child: tokio::process::Child,
    pid: u32,
    dir: tempfile::TempDir,
    /// Sluice, whose log has counters and warnings worth reporting.
    sluice: bool,
}

impl Processor {
    /// Starts one, on core `cpu` alone if given; it joins its group on its
    /// own time (the throughput measurement starts at the first output).
    pub fn start(variant: Variant, topics: &Topics, setup: &SluiceSetup, cpu: Option<usize>, tweaks: &crate::Tweaks) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("sluice-bench-run-").tempdir()?;
        let mut command = match variant {
            Variant::NativeAtLeastOnce => native_command(topics, None)?,
            Variant::NativeExactlyOnce(interval) => native_command(topics, Some(interval))?,
            Variant::Sluice { exactly_once, version_header } => {
                let config = sluice_config(topics, exactly_once, version_header, setup, dir.path(), &tweaks.runtime_lines());
                let config_path = dir.path().join("sluice.toml");
                std::fs::write(&config_path, config)?;
                let mut command = tokio::process::Command::new(&setup.bin);
                command.arg("run").arg(&config_path).envs(tweaks.env.iter().map(|(k, v)| (k, v)));
                command
            }
        };
        if let Some(cpu) = cpu {
            crate::affinity::pin_child(&mut command, cpu);
        }
        let log = std::fs::File::create(dir.path().join("processor.log"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {} processor", variant.processor()))?;
        let pid = child.id().context("the processor has no pid")?;
        Ok(Self { child, pid, dir, sluice: !variant.is_native() })
    }

    /// Fails if it has stopped on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the processor exited on its own ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// User + system CPU seconds of all its threads so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::processor::cpu::process(self.pid)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("processor.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait for its drain (bounded by sluice's
    /// `shutdown_timeout`); returns the WARN and ERROR lines sluice logged.
    pub async fn stop(mut self) -> Result<Vec<String>> {
        let signalled = Instant::now();
        let limit = Duration::from_secs(30);
        let Some(status) = crate::procfs::terminate(&mut self.child, limit).await? else {
            bail!("the processor did not stop within {limit:?} of SIGTERM:\n{}", self.log_tail());
        };
        if !status.success() {
            bail!("the processor exited with {status}:\n{}", self.log_tail());
        }
        if !self.sluice {
            return Ok(Vec::new());
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

/// `sluice-bench native-kafka` (this binary) for `topics`.
fn native_command(topics: &Topics, exactly_once: Option<Duration>) -> Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("finding sluice-bench itself (the native baseline)")?;
    let mut command = tokio::process::Command::new(exe);
    command.arg("native-kafka").args([
        "--brokers",
        &topics.brokers,
        "--group",
        &topics.group,
        "--input",
        &topics.input,
        "--output",
        &topics.output,
    ]);
    if let Some(interval) = exactly_once {
        command.arg("--exactly-once-ms").arg(interval.as_millis().to_string());
    }
    Ok(command)
}

/// `sluice run`'s config: Kafka → `passthrough.wasm` → Kafka, with the
/// source and sink defaults but for the guarantee.
fn sluice_config(
    topics: &Topics,
    exactly_once: Option<Duration>,
    version_header: bool,
    setup: &SluiceSetup,
    dir: &Path,
    runtime_lines: &str,
) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    // Paths go through JSON string escapes, which are valid TOML escapes.
    let path = |p: &Path| quote(&p.display().to_string());
    let brokers = quote(&topics.brokers);
    let (interval, eos) = match exactly_once {
        Some(interval) => (interval, true),
        None => (Duration::from_secs(1), false),
    };
    let transactional_id = if eos { format!(", transactional_id = {}", quote(&format!("sluice-{}", topics.group))) } else { String::new() };
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
        format!("{{ kind = \"file\", path = {} }}", path(&dir.join("dlq.jsonl")))
    };
    format!(
        "[runtime]\nshutdown_timeout = \"5s\"\ncache_dir = {cache}\n{runtime_lines}\n\
         [pipelines.bench]\nsource = {source}\nsink = {sink}\ndead_letter = {dead_letter}\n\n\
         [pipelines.bench.policy]\nversion_header = {version_header}\n\n\
         [pipelines.bench.plugin]\npath = {plugin}\n",
        cache = path(setup.cache.path()),
        plugin = path(&setup.plugin),
    )
}
