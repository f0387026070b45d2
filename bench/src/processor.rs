//! The two processors under test. Both read `bench.in` (core) or stream
//! `BIN` (JetStream) and write every payload unchanged to `bench.out`:
//!
//! - [`Native`]: async-nats and nothing else (`sluice-bench native-nats`),
//!   on a tokio runtime in a process of its own. It is the ceiling: what the
//!   broker and the client allow.
//! - [`Sluice`]: the real `sluice` binary (release build) running the
//!   `passthrough` WASM plugin.
//!
//! Both are separate processes, stopped with SIGTERM like in production,
//! measured alike (CPU time from `/proc/<pid>/stat`) and, with `--pin`, run
//! on the same core alone.
//!
//! The ratio between the two is the price of the WASM sandbox and of
//! everything sluice does around it (dispatch, batching, acks).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream::{self, consumer};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::server::{consumer_exists, NatsServer};
use crate::{Mode, IN, IN_STREAM, OUT};

/// Messages delivered but not acknowledged, at most, for both processors'
/// JetStream consumers: the same bound on work in flight for each.
const MAX_ACK_PENDING: usize = 4096;

/// Which processor a measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Native,
    Sluice,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Sluice => "sluice",
        }
    }

    /// The durable JetStream consumer it reads through.
    fn consumer(self) -> &'static str {
        self.name()
    }
}

/// What every sluice run needs: the binary, the plugin, and one compile cache
/// for the whole bench so only the first run compiles the component.
pub struct SluiceSetup {
    pub bin: PathBuf,
    pub plugin: PathBuf,
    pub cache: tempfile::TempDir,
}

impl SluiceSetup {
    /// `$SLUICE_BIN` or the workspace's release build, and the passthrough
    /// plugin; fails with how to build whichever is missing.
    pub fn find() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
        let bin = std::env::var_os("SLUICE_BIN").map(PathBuf::from).unwrap_or_else(|| root.join("target/release/sluice"));
        if !bin.is_file() {
            bail!("no sluice binary at {}: run `cargo build --release -p sluice` (or set SLUICE_BIN)", bin.display());
        }
        let plugin = root.join("plugins/target/wasm32-wasip2/release/passthrough.wasm");
        if !plugin.is_file() {
            bail!("no passthrough plugin at {}: run `bash scripts/build-plugins.sh`", plugin.display());
        }
        let cache = tempfile::Builder::new().prefix("sluice-bench-cache-").tempdir()?;
        Ok(Self { bin, plugin, cache })
    }
}

/// A running processor.
pub enum Processor {
    Native(Native),
    Sluice(Sluice),
}

impl Processor {
    /// Starts one; it may still be connecting when this returns (see
    /// [`Processor::wait_ready`]).
    /// On core `cpu` alone if given (`--pin`).
    pub fn start(kind: Kind, mode: Mode, server: &NatsServer, sluice: &SluiceSetup, cpu: Option<usize>) -> Result<Self> {
        match kind {
            Kind::Native => Ok(Processor::Native(Native::start(mode, server.url(), cpu)?)),
            Kind::Sluice => Ok(Processor::Sluice(Sluice::start(mode, &server.url(), sluice, cpu)?)),
        }
    }

    /// Waits until input published from now on reaches it: the core
    /// subscription is registered, or the durable consumer exists.
    pub async fn wait_ready(&mut self, mode: Mode, kind: Kind, server: &NatsServer, client: &async_nats::Client) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive()?;
            let ready = match mode {
                Mode::Core => server.has_subscriber(IN)?,
                Mode::Jetstream => consumer_exists(client, IN_STREAM, kind.consumer()).await?,
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} did not become ready within 60s", kind.name());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails if it has stopped on its own.
    fn check_alive(&mut self) -> Result<()> {
        match self {
            Processor::Native(native) => native.check_alive(),
            Processor::Sluice(sluice) => sluice.check_alive(),
        }
    }

    /// CPU seconds (user + system) its process has used so far. `None`
    /// where `/proc` cannot say (not Linux).
    pub fn cpu_seconds(&self) -> Option<f64> {
        match self {
            Processor::Native(native) => cpu::process(native.pid),
            Processor::Sluice(sluice) => cpu::process(sluice.child.id()?),
        }
    }

    pub async fn stop(self) -> Result<()> {
        match self {
            Processor::Native(native) => native.stop().await,
            Processor::Sluice(sluice) => sluice.stop().await,
        }
    }
}

/// The native passthrough: `sluice-bench native-nats`, a process of its
/// own as `sluice run` is, so both are measured alike (CPU time from
/// `/proc/<pid>/stat`, the same core with `--pin`).
pub struct Native {
    child: tokio::process::Child,
    pid: u32,
}

impl Native {
    fn start(mode: Mode, url: String, cpu: Option<usize>) -> Result<Self> {
        let exe = std::env::current_exe().context("finding sluice-bench itself (the native baseline)")?;
        let mut command = tokio::process::Command::new(exe);
        command.args(["native-nats", "--url", &url, "--mode", mode.name()]);
        if let Some(cpu) = cpu {
            crate::affinity::pin_child(&mut command, cpu);
        }
        let child = command.stdin(Stdio::null()).kill_on_drop(true).spawn().context("starting the native passthrough")?;
        let pid = child.id().context("the native passthrough has no pid")?;
        Ok(Self { child, pid })
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the native passthrough stopped on its own ({status})");
        }
        Ok(())
    }

    async fn stop(mut self) -> Result<()> {
        let limit = Duration::from_secs(20);
        let Some(status) = crate::procfs::terminate(&mut self.child, limit).await? else {
            bail!("the native passthrough did not stop within {limit:?} of SIGTERM");
        };
        if !status.success() {
            bail!("the native passthrough exited with {status}");
        }
        Ok(())
    }
}

/// `sluice-bench native-nats`: runs the passthrough of `mode` until SIGTERM.
pub async fn run_native(url: &str, mode: Mode) -> Result<()> {
    let (stop, stopped) = oneshot::channel();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        term.recv().await;
        let _ = stop.send(());
    });
    match mode {
        Mode::Core => native_core(url, stopped).await,
        Mode::Jetstream => native_jetstream(url, stopped).await,
    }
}

/// Core NATS: subscribe, publish each payload on; the client flushes.
async fn native_core(url: &str, stop: oneshot::Receiver<()>) -> Result<()> {
    let client = async_nats::connect(url).await?;
    let mut inputs = client.subscribe(IN).await?.take_until(stop);
    while let Some(input) = inputs.next().await {
        client.publish(OUT, input.payload).await?;
    }
    client.flush().await?;
    Ok(())
}

/// JetStream: a durable pull consumer (explicit ack, batches of 256); each
/// input is published to `bench.out` with a `Nats-Msg-Id` and acknowledged
/// once the stream has acknowledged that publish, the same guarantee sluice
/// gives. Publishes are
/// pipelined, up to [`MAX_ACK_PENDING`] awaiting their ack, in order.
async fn native_jetstream(url: &str, stop: oneshot::Receiver<()>) -> Result<()> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let name = Kind::Native.consumer();
    let consumer: consumer::PullConsumer = js
        .get_stream(IN_STREAM)
        .await?
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: MAX_ACK_PENDING as i64,
                ..Default::default()
            },
        )
        .await?;
    let mut inputs = consumer.stream().max_messages_per_batch(256).messages().await?.take_until(stop);
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let input: jetstream::Message = done?;
                input.ack().await.map_err(|e| anyhow!(e))?;
            }
            next = inputs.next(), if in_flight.len() < MAX_ACK_PENDING => {
                let Some(input) = next else { break };
                let input = input?;
                // The same deduplication sluice asks for: a Nats-Msg-Id from
                // the input's stream sequence, so the broker does the same work.
                let info = input.info().map_err(|e| anyhow!(e))?;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("{}:{}:0", info.stream, info.stream_sequence).as_str());
                let published = js.publish_with_headers(OUT, headers, input.payload.clone()).await?;
                in_flight.push_back(async move { published.await.map(|_| input) });
            }
            else => break,
        }
    }
    Ok(())
}

/// A `sluice run` child process with its own scratch dir (config, dead
/// letter, log).
pub struct Sluice {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Sluice {
    fn start(mode: Mode, url: &str, setup: &SluiceSetup, cpu: Option<usize>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("sluice-bench-run-").tempdir()?;
        let (source, sink) = match mode {
            Mode::Core => (
                format!(r#"{{ kind = "nats", url = "{url}", subject = "{IN}" }}"#),
                format!(r#"{{ kind = "nats", url = "{url}", subject = "{OUT}" }}"#),
            ),
            Mode::Jetstream => (
                format!(
                    r#"{{ kind = "jetstream", url = "{url}", stream = "{IN_STREAM}", consumer = "{}", max_ack_pending = {MAX_ACK_PENDING} }}"#,
                    Kind::Sluice.consumer()
                ),
                format!(r#"{{ kind = "jetstream", url = "{url}", subject = "{OUT}" }}"#),
            ),
        };
        // Paths go through JSON string escapes, which are valid TOML escapes.
        let quote = |path: &Path| serde_json::Value::from(path.display().to_string()).to_string();
        // `SLUICE_BENCH_PLUGIN_THREADS=N`: `[runtime] plugin_threads = N`
        // (0: lanes on the shared workers), to compare in one session.
        let threads = std::env::var("SLUICE_BENCH_PLUGIN_THREADS")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .map(|n| format!("plugin_threads = {n}\n"))
            .unwrap_or_default();
        // `SLUICE_BENCH_POLICY='version_header = false'`: lines for the
        // pipeline's `[policy]`, to see what a setting costs.
        let policy = std::env::var("SLUICE_BENCH_POLICY").map(|lines| format!("\n[pipelines.bench.policy]\n{lines}\n")).unwrap_or_default();
        let config = format!(
            "[runtime]\nshutdown_timeout = \"5s\"\ncache_dir = {cache}\n{threads}\n\
             [pipelines.bench]\nsource = {source}\nsink = {sink}\n\
             dead_letter = {{ kind = \"file\", path = {dlq} }}\n\n\
             [pipelines.bench.plugin]\npath = {plugin}\n{policy}",
            cache = quote(setup.cache.path()),
            dlq = quote(&dir.path().join("dlq.jsonl")),
            plugin = quote(&setup.plugin),
        );
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("sluice.log"))?;
        let mut command = tokio::process::Command::new(&setup.bin);
        if let Some(cpu) = cpu {
            crate::affinity::pin_child(&mut command, cpu);
        }
        let child = command
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

    /// SIGTERM, then wait for its drain (bounded by `shutdown_timeout`).
    async fn stop(mut self) -> Result<()> {
        let limit = Duration::from_secs(20);
        let Some(status) = crate::procfs::terminate(&mut self.child, limit).await? else {
            bail!("sluice did not stop within {limit:?} of SIGTERM:\n{}", self.log_tail());
        };
        if !status.success() {
            bail!("sluice exited with {status}:\n{}", self.log_tail());
        }
        // Its counters (received, calls: the mean batch size…) say where the
        // time went; print them beside the figures.
        let log = std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("pipeline finished")) {
            eprintln!("sluice: {}", line.split_once("stats=").map_or(line, |(_, s)| s));
        }
        Ok(())
    }

    /// The last lines of its log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// CPU time from `/proc`, so the figures can be read per event: throughput
/// on a shared 2-core machine moves with its load, CPU per event much less.
pub(crate) mod cpu {
    /// Clock ticks per second of `/proc/*/stat` (`USER_HZ`): 100 on every
    /// Linux architecture the bench runs on.
    const TICKS: f64 = 100.0;

    /// utime + stime of a `/proc/.../stat` line, in seconds.
    fn stat_seconds(stat: &str) -> Option<f64> {
        // The command name may hold spaces; the fields after it don't.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / TICKS)
    }

    /// Every thread of process `pid`, live or exited.
    pub fn process(pid: u32) -> Option<f64> {
        stat_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }
}
