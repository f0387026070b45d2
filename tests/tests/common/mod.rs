//! Helpers shared by the end-to-end tests: where the binary and the plugins
//! are, a scratch folder per test with its config and events, running the
//! binary under a deadline, and reading JSON-lines files back.
//!
//! Nothing here sleeps and hopes: anything that waits polls a condition
//! until a deadline and fails with what it was waiting for.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// How long a whole `sluice` run may take before the test gives up. Generous:
/// a debug build compiling a component takes a second or two on a busy
/// machine, and the slowest test handles a few thousand events.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// How often [`wait_for`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// The workspace root (the folder holding `host/`, `plugins/`, `tests/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The `sluice` binary under test: `$SLUICE_BIN`, or the workspace's debug
/// build. Panics with how to build it when it is missing, so a fresh checkout
/// gets an instruction rather than "No such file or directory".
pub fn sluice_bin() -> PathBuf {
    let path = std::env::var_os("SLUICE_BIN").map(PathBuf::from).unwrap_or_else(|| root().join("target/debug/sluice"));
    assert!(
        path.is_file(),
        "the sluice binary is missing at {}: run `cargo build -p sluice` first \
         (or set SLUICE_BIN to the binary to test); `./dev test` does both",
        path.display()
    );
    path
}

/// The component of example plugin `name` (`chaos`, `uppercase`…). Panics
/// with how to build the plugins when it is missing.
pub fn plugin(name: &str) -> PathBuf {
    let path = root().join("plugins/target/wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(path.is_file(), "plugin {name} is missing at {}: run `bash scripts/build-plugins.sh` first", path.display());
    path
}

/// sha256 of a file, hex: what the host reports as a plugin's digest.
pub fn sha256_hex(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(bytes)))
}

/// Where compiled components are cached between runs of the suite. Keyed by
/// the component's sha256 and the engine's settings (see
/// `host/src/runtime/engine.rs`), so a rebuilt plugin or host never loads a
/// stale artefact; it only spares each test the second or two of compiling.
pub fn compile_cache() -> PathBuf {
    root().join("target/sluice-tests/compiled")
}

/// A path or string as a TOML basic string, quotes included. JSON string
/// escapes are valid TOML escapes.
pub fn toml_str(text: impl AsRef<str>) -> String {
    serde_json::Value::String(text.as_ref().to_owned()).to_string()
}

/// [`toml_str`] for a path.
pub fn toml_path(path: &Path) -> String {
    toml_str(path.to_string_lossy())
}

/// A `[runtime]` table using the shared [`compile_cache`].
pub fn runtime_table() -> String {
    format!("[runtime]\ncache_dir = {}\n", toml_path(&compile_cache()))
}

/// A one-pipeline config: `events.jsonl` → `plugin` → `out.jsonl`, failures to
/// `dlq.jsonl` (all relative to the config's folder). `plugin_config` and
/// `policy` are TOML lines for the plugin's `config` and `policy` tables.
pub fn one_pipeline(name: &str, plugin_name: &str, plugin_config: &str, policy: &str) -> String {
    format!(
        r#"{runtime}
[pipelines.{name}]
source = {{ kind = "file", path = "events.jsonl" }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}

[pipelines.{name}.plugin]
path = {plugin}

[pipelines.{name}.plugin.config]
{plugin_config}

[pipelines.{name}.policy]
{policy}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin(plugin_name)),
    )
}

/// Pipeline `counts`: `events.jsonl` → the component at `plugin` →
/// `out.jsonl`, failures to `dlq.jsonl`, embedded state in `state.redb`,
/// retries 1–2 ms apart; `policy` holds more policy lines.
pub fn stateful_pipeline(plugin: &Path, policy: &str) -> String {
    format!(
        r#"{runtime}
[pipelines.counts]
source = {{ kind = "file", path = "events.jsonl" }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
state = {{ backend = "embedded", path = "state.redb" }}

[pipelines.counts.plugin]
path = {plugin}

[pipelines.counts.policy]
backoff = {{ initial = "1ms", max = "2ms" }}
{policy}
"#,
        runtime = runtime_table(),
        plugin = toml_path(plugin),
    )
}

/// An event line of the file source's JSON encoding with only a payload.
pub fn event(payload: &str) -> Value {
    serde_json::json!({ "payload": payload })
}

/// A loopback port nothing listens on right now. Racy for a server started
/// later (another process may take the port in between): only for an
/// address that must stay closed (a client's "cannot connect" path). A
/// `sluice run` listens on [`ANY_PORT`] and reports its port
/// ([`Running::admin_port`]); a test's own server binds port 0 in-process
/// and passes the listener on; `nats-server` picks its own ports and
/// reports them (`nats::NatsServer`); Kafka, whose controller port is in
/// its config, retries on a taken port (`kafka::KafkaBroker`).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `[admin] listen` for tests: loopback, any free port. The host writes the
/// port it bound to the file [`Scratch::sluice`] names in
/// `SLUICE_ADMIN_ADDR_FILE`; [`Running::admin_port`] reads it.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// The environment variable `sluice run` reads for `--admin-addr-file`.
const ADMIN_ADDR_FILE: &str = "SLUICE_ADMIN_ADDR_FILE";

/// A scratch folder for one test: config, events, outputs. Removed when
/// dropped (kept, with its path printed, when `SLUICE_KEEP_TMP` is set).
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Result<Self> {
        let keep = std::env::var_os("SLUICE_KEEP_TMP").is_some();
        let dir = tempfile::Builder::new().prefix("sluice-e2e-").disable_cleanup(keep).tempdir().context("creating a temporary folder")?;
        if keep {
            eprintln!("scratch folder kept: {}", dir.path().display());
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a file (creating folders), replacing it.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Writes `events` as JSON lines, replacing the file.
    pub fn write_events(&self, relative: &str, events: &[Value]) -> Result<PathBuf> {
        self.write(relative, jsonl(events))
    }

    /// Appends `events` as JSON lines.
    pub fn append_events(&self, relative: &str, events: &[Value]) -> Result<()> {
        use std::io::Write;
        let path = self.path(relative);
        let mut file =
            std::fs::OpenOptions::new().append(true).open(&path).with_context(|| format!("opening {} to append", path.display()))?;
        file.write_all(jsonl(events).as_bytes()).with_context(|| format!("appending to {}", path.display()))
    }

    /// The file as text; a missing file reads as empty.
    pub fn read(&self, relative: &str) -> Result<String> {
        read_or_empty(&self.path(relative))
    }

    /// Every line of a JSON-lines file, parsed; a missing file has none.
    pub fn read_jsonl(&self, relative: &str) -> Result<Vec<Value>> {
        read_jsonl(&self.path(relative))
    }

    /// Complete lines (newline-terminated) in a file so far; a missing file
    /// has none. For polling a file that is still being written.
    pub fn count_lines(&self, relative: &str) -> usize {
        std::fs::read(self.path(relative)).map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count()).unwrap_or(0)
    }

    /// A `sluice` command running in this folder. A `run` is told to write
    /// its admin address to a file of its own (`admin-<n>.addr`), so a host
    /// restarted in the same folder, or two side by side, never read each
    /// other's.
    pub fn sluice(&self, args: &[&str]) -> Command {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut command = Command::new(sluice_bin());
        command.args(args).current_dir(self.dir());
        if args.first() == Some(&"run") {
            let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            command.env(ADMIN_ADDR_FILE, self.path(&format!("admin-{n}.addr")));
        }
        command
    }

    /// Runs `sluice args…` in this folder to completion, within [`RUN_TIMEOUT`].
    pub fn run(&self, args: &[&str]) -> Result<Finished> {
        Running::spawn(self.sluice(args))?.wait(RUN_TIMEOUT)
    }
}

fn jsonl(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

fn read_or_empty(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Every line of a JSON-lines file, parsed; a missing file has none.
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    parse_jsonl(&read_or_empty(path)?).with_context(|| format!("in {}", path.display()))
}

/// Parses JSON lines (blank lines skipped).
pub fn parse_jsonl(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("line {} is not JSON: {line}", i + 1)))
        .collect()
}

/// The `payload` field of each record, as text.
pub fn payloads(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["payload"].as_str().unwrap_or("<no text payload>").to_owned()).collect()
}

/// The first header `name` of a record, whichever header encoding it uses
/// (an object, or an array of `[name, value]` pairs when a name repeats).
pub fn header<'a>(record: &'a Value, name: &str) -> Option<&'a str> {
    match &record["headers"] {
        Value::Object(map) => map.get(name).and_then(Value::as_str),
        Value::Array(pairs) => pairs.iter().find(|pair| pair[0].as_str() == Some(name)).and_then(|pair| pair[1].as_str()),
        _ => None,
    }
}

/// Polls `probe` every few milliseconds until it yields a value or `within`
/// passes; the error names `what` was awaited.
pub fn poll_until<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `condition` holds, or fails after `within` naming `what`.
pub fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
    poll_until(what, within, || Ok(condition().then_some(())))
}

/// How a process ended, with everything it printed.
/// [`poll_until`] for an async probe (a broker query): polls every 20 ms
/// until it gives a value, failing with `what` after `within`.
pub async fn wait_async<T>(what: &str, within: Duration, mut probe: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails with the process's output unless it exited with status 0.
    pub fn ensure_success(&self) -> Result<&Self> {
        if !self.status.success() {
            bail!("sluice exited with {}\n--- stdout\n{}\n--- stderr\n{}", self.status, self.stdout, self.stderr);
        }
        Ok(self)
    }

    /// Fails with the process's output if it exited with status 0.
    pub fn ensure_failure(&self) -> Result<&Self> {
        if self.status.success() {
            bail!("sluice exited with 0 but should have failed\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        }
        Ok(self)
    }
}

/// A process under test, its output collected as it runs. Dropping it kills
/// the process, so a failing test leaves nothing behind.
pub struct Running {
    child: Child,
    stdout: Option<(Sink, JoinHandle<()>)>,
    stderr: Option<(Sink, JoinHandle<()>)>,
    /// Where the host writes its admin address (`SLUICE_ADMIN_ADDR_FILE`).
    admin_addr_file: Option<PathBuf>,
}

impl Running {
    pub fn spawn(mut command: Command) -> Result<Self> {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let admin_addr_file = command.get_envs().find(|(name, _)| *name == ADMIN_ADDR_FILE).and_then(|(_, value)| value.map(PathBuf::from));
        let mut child = command.spawn().with_context(|| format!("starting {command:?}"))?;
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take().map(collect);
        Ok(Self { child, stdout, stderr, admin_addr_file })
    }

    /// The port the host's admin API bound (its config says [`ANY_PORT`]),
    /// once it listens: read from the address file the host writes after
    /// binding. Fails with the host's output if it exits first.
    pub fn admin_port(&mut self) -> Result<u16> {
        let path = self.admin_addr_file.clone().context("not a `sluice run` started through Scratch::sluice")?;
        let mut port = None;
        self.wait_until("the admin API's address file", RUN_TIMEOUT, || {
            port = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse::<std::net::SocketAddr>().ok())
                .map(|addr| addr.port());
            port.is_some()
        })?;
        port.context("no admin address")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as a service manager does to stop a service.
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().context("running `kill`")?;
        if !status.success() {
            bail!("`kill -TERM {}` failed: {status}", self.pid());
        }
        Ok(())
    }

    /// Kills the process at once (SIGKILL: no drain, no final commit) and
    /// reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("kill -9 sluice")?;
        self.child.wait()?;
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Waits until `condition` holds while the process keeps running. Fails
    /// early if the process exits first, and on either failure kills it and
    /// reports what it printed.
    pub fn wait_until(&mut self, what: &str, within: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
        let child = &mut self.child;
        let outcome = poll_until(what, within, || {
            if condition() {
                return Ok(Some(()));
            }
            if let Some(status) = child.try_wait()? {
                bail!("sluice exited ({status}) while we waited for {what}");
            }
            Ok(None)
        });
        if let Err(err) = outcome {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let (stdout, stderr) = self.output();
            bail!("{err}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
        }
        Ok(())
    }

    /// Waits for the process to exit within `within`; kills it and fails
    /// (with what it printed) otherwise.
    pub fn wait(mut self, within: Duration) -> Result<Finished> {
        let child = &mut self.child;
        let status = poll_until("sluice to exit", within, || Ok(child.try_wait()?));
        let status = match status {
            Ok(status) => status,
            Err(err) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let (stdout, stderr) = self.output();
                bail!("{err}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
            }
        };
        let (stdout, stderr) = self.output();
        Ok(Finished { status, stdout, stderr })
    }

    /// How much the process has logged (to stderr) so far: a mark for
    /// [`Running::wait_for_log`].
    pub fn log_mark(&self) -> usize {
        self.stderr.as_ref().and_then(|(sink, _)| sink.lock().ok().map(|bytes| bytes.len())).unwrap_or(0)
    }

    /// Waits until the process logs a line containing `needle` after `mark`
    /// (from [`Running::log_mark`]), while it keeps running: the sign that
    /// it got past a point, before a test asserts that something did not
    /// happen.
    pub fn wait_for_log(&mut self, needle: &str, mark: usize, within: Duration) -> Result<()> {
        let sink = self.stderr.as_ref().map(|(sink, _)| sink.clone()).context("stderr is not collected")?;
        self.wait_until(&format!("the log line `{needle}`"), within, || {
            sink.lock().is_ok_and(|bytes| bytes.get(mark..).is_some_and(|new| String::from_utf8_lossy(new).contains(needle)))
        })
    }

    fn output(&mut self) -> (String, String) {
        let text = |handle: Option<(Sink, JoinHandle<()>)>| {
            handle
                .and_then(|(sink, reader)| reader.join().ok().and_then(|()| sink.lock().ok().map(|b| b.clone())))
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default()
        };
        (text(self.stdout.take()), text(self.stderr.take()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Output read so far, shared with the thread reading it.
type Sink = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// Reads `stream` to its end into a buffer the test can look at meanwhile
/// ([`Running::wait_for_log`]).
fn collect(mut stream: impl Read + Send + 'static) -> (Sink, JoinHandle<()>) {
    let sink = Sink::default();
    let filling = sink.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => match filling.lock() {
                    Ok(mut bytes) => bytes.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                },
            }
        }
    });
    (sink, reader)
}

/// Checks that every record carries the `sluice-plugin-digest` header of
/// plugin `name`'s build, then removes it (an empty `headers` goes too), so
/// records can be compared with fixed expectations: the digest differs from
/// one machine's build to another's.
pub fn strip_digest(mut records: Vec<Value>, name: &str) -> Result<Vec<Value>> {
    let digest = sha256_hex(&plugin(name))?;
    for record in &mut records {
        let headers = record.get_mut("headers").and_then(Value::as_object_mut).context("a record without headers")?;
        let found = headers.remove("sluice-plugin-digest");
        if found.as_ref().and_then(Value::as_str) != Some(digest.as_str()) {
            bail!("expected sluice-plugin-digest {digest}, found {found:?}");
        }
        if headers.is_empty() {
            if let Some(object) = record.as_object_mut() {
                object.remove("headers");
            }
        }
    }
    Ok(records)
}

/// One HTTP/1.1 request to a local server (the admin API); returns the
/// status and the body as text.
pub fn http_request(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Result<(u16, String)> {
    http_request_with(port, method, path, token, &[], body)
}

/// [`http_request`] with more header lines (`name`, `value`).
pub fn http_request_with(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).context("connecting to the admin API")?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    for (name, value) in headers {
        auth.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n", body.len())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status")?;
    Ok((status, body.to_owned()))
}

/// A one-pipeline config for broker tests: `source`, `sink` and
/// `dead_letter` are inline TOML tables, `policy` the body of its policy
/// table; the drain at shutdown gets `shutdown_timeout`.
pub fn broker_pipeline(name: &str, plugin_name: &str, tables: [&str; 3], policy: &str, shutdown_timeout: &str) -> String {
    let [source, sink, dead_letter] = tables;
    format!(
        r#"{runtime}
shutdown_timeout = "{shutdown_timeout}"

[pipelines.{name}]
source = {source}
sink = {sink}
dead_letter = {dead_letter}

[pipelines.{name}.plugin]
path = {plugin}

[pipelines.{name}.policy]
{policy}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin(plugin_name)),
    )
}

/// Writes `config` to `file` in `scratch` and starts `sluice run` on it.
pub fn start(scratch: &Scratch, config: &str, file: &str) -> Result<Running> {
    scratch.write(file, config)?;
    Running::spawn(scratch.sluice(&["run", file]))
}

/// The samples of a Prometheus exposition: `name{labels}` → value.
pub fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

pub fn metrics(port: u16) -> Result<std::collections::BTreeMap<String, f64>> {
    let (status, body) = http_request(port, "GET", "/metrics", None, b"")?;
    ensure!(status == 200, "/metrics answered {status}: {body}");
    Ok(samples(&body))
}
