//! A real Apache Kafka broker (single node, KRaft) for the tests: its own
//! loopback ports, its own store in a temporary folder, so a test can kill
//! and restart its broker without touching the others.
//!
//! The jars come from `scripts/kafka.sh install` (Maven Central, into
//! `.cache/kafka/<version>/libs`; whatever runs these tests runs it first;
//! a missing install fails with that instruction). The broker's
//! config is `scripts/kafka/server.properties`, the same file the script
//! uses; the JVM flags below are the script's too.
//!
//! A JVM broker takes seconds to start, so tests that never kill theirs
//! share one per test binary: [`KafkaBroker::shared`]. Each broker runs
//! under a small shell watchdog that kills it (and removes its folder) once
//! the test process is gone, so neither the shared broker (a static, never
//! dropped) nor the broker of a test binary killed on a timeout outlives
//! the tests.
//!
//! Its ports are picked free and written into its config, which is racy:
//! another process can take one in between. A restart must keep the ports
//! its clients know, so the broker cannot simply bind port 0; instead a
//! start that fails because a port is taken ("Address already in use" in
//! its log) starts over with fresh ports, and a restart on the same ports
//! tries again after a pause.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::common::{free_port, poll_until, root};

/// How long a broker may take to answer after its JVM starts. ~2 s on an
/// idle machine; much more on two cores busy compiling.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The cluster id the store is formatted with; each store is fresh, so any
/// valid id will do.
const CLUSTER_ID: &str = "c2x1aWNlLXRlc3QtYnJva2Vy";

/// How many times a start or restart tries again after finding a port
/// taken.
const BIND_ATTEMPTS: usize = 3;

/// Whether a failed start failed because a port was taken: the broker's
/// log, quoted in the error, says so.
fn port_taken(err: &anyhow::Error) -> bool {
    format!("{err:#}").to_lowercase().contains("address already in use")
}

/// The line the broker logs once it is registered, unfenced and accepting
/// requests on its listener.
const STARTED: &str = "Kafka Server started";

pub struct KafkaBroker {
    child: Option<Child>,
    /// The broker's port (PLAINTEXT on 127.0.0.1).
    pub port: u16,
    /// The KRaft controller's port (127.0.0.1).
    pub controller_port: u16,
    /// `server.properties`, `server.log`, `stdout.log` and the store (`data/`).
    dir: tempfile::TempDir,
    /// The TLS and SASL listeners of a broker from [`KafkaBroker::start_secured`].
    pub secured: Option<Secured>,
}

/// The extra listeners of a secured broker (`scripts/kafka/secured.properties`):
/// TLS with client certificates required, and TLS + SCRAM-SHA-512. The
/// certificates are made by `scripts/kafka/certs.sh` in the broker's folder.
pub struct Secured {
    /// SSL listener (mTLS): `ca.pem`, `client.pem` and `client.key` connect.
    pub ssl_port: u16,
    /// SASL_SSL listener: [`SCRAM_USER`] with `password`.
    pub sasl_port: u16,
    /// The SCRAM user's password, made up per broker.
    pub password: String,
}

/// The SCRAM-SHA-512 user a secured broker knows.
pub const SCRAM_USER: &str = "sluice";

/// Where `scripts/kafka.sh install` put the broker: its `libs/` folder, the
/// log4j2 config and the class-data archive beside it.
struct Install {
    libs: PathBuf,
    log4j: PathBuf,
    cds: Option<PathBuf>,
}

fn install() -> Result<&'static Install> {
    static INSTALL: OnceLock<std::result::Result<Install, String>> = OnceLock::new();
    INSTALL.get_or_init(|| find_install().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

fn find_install() -> Result<Install> {
    // The script knows the version (and SLUICE_KAFKA_VERSION); ask it rather
    // than repeat it here.
    let script = root().join("scripts/kafka.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("path")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} path", script.display()))?;
    if !output.status.success() {
        bail!("{} path failed: {}", script.display(), String::from_utf8_lossy(&output.stderr));
    }
    let libs = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !libs.join(".complete").is_file() {
        bail!(
            "the Kafka broker is not installed at {}: run `scripts/kafka.sh install` \
             (it fetches the jars with Maven, ~15 s once)",
            libs.display()
        );
    }
    let home = libs.parent().context("the libs folder has no parent")?.to_path_buf();
    let cds = Some(home.join("broker.jsa")).filter(|p| p.is_file());
    Ok(Install { libs, log4j: home.join("log4j2.properties"), cds })
}

/// `java` with the broker's classpath and the script's JVM flags.
fn java(install: &Install, heap: &str) -> Command {
    let mut command = Command::new("java");
    command.args(["-Xms128m", heap, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]);
    if let Some(cds) = &install.cds {
        // -Xlog:cds=off: a stale archive is ignored silently (just slower).
        command.arg(format!("-XX:SharedArchiveFile={}", cds.display())).arg("-Xlog:cds=off");
    }
    command.arg("-cp").arg(format!("{}/*", install.libs.display()));
    command.stdin(Stdio::null());
    command
}

/// `command` (a java process) under a watchdog: `sh` forks a loop that
/// watches the test process, then execs the command, so the child *is* the
/// java process (killing the child kills java itself) and the loop's `$$` is
/// java's pid. When the test process is gone (exited, or killed on a
/// timeout) the loop kills java and removes `dir` (unless SLUICE_KEEP_TMP is
/// set): statics like the shared broker are never dropped.
fn watched(command: &mut Command, dir: Option<&Path>) -> Command {
    let keep = if std::env::var_os("SLUICE_KEEP_TMP").is_some() { "1" } else { "0" };
    let mut watched = Command::new("sh");
    watched
        .arg("-c")
        .arg(
            r#"parent=$1 dir=$2 keep=$3; shift 3
(
    while kill -0 "$parent" 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep 1; done
    if ! kill -0 "$parent" 2>/dev/null; then
        kill -9 $$ 2>/dev/null
        sleep 1
        [ "$keep" = 1 ] || [ -z "$dir" ] || rm -rf "$dir"
    fi
) </dev/null >/dev/null 2>&1 &
exec "$@""#,
        )
        .arg("sluice-kafka-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir.map(Path::as_os_str).unwrap_or_default())
        .arg(keep)
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null());
    watched
}

impl KafkaBroker {
    /// Starts a broker of its own (fresh store, free ports) and waits until it
    /// serves requests.
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// [`KafkaBroker::start`], plus an SSL listener that requires client
    /// certificates and a SASL_SSL one with a SCRAM-SHA-512 user (added when
    /// the store is formatted): see [`Secured`].
    pub fn start_secured() -> Result<Self> {
        Self::start_with(true)
    }

    /// The secured broker shared by the tests of this binary that need one
    /// (one extra broker start for all of them).
    pub fn shared_secured() -> Result<&'static Self> {
        static SHARED: OnceLock<std::result::Result<KafkaBroker, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::start_secured().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the shared secured Kafka broker did not start: {e}"))
    }

    /// The secured listeners (fails for a plain broker).
    pub fn secured(&self) -> Result<&Secured> {
        self.secured.as_ref().context("not a secured broker: start it with KafkaBroker::start_secured")
    }

    /// The folder of the CA (`ca.pem`) and the client certificate
    /// (`client.pem`, `client.key`) of a secured broker.
    pub fn certs(&self) -> PathBuf {
        self.dir().join("certs")
    }

    fn start_with(secured: bool) -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::try_start(secured) {
                Err(err) if attempt < BIND_ATTEMPTS && port_taken(&err) => {
                    eprintln!("kafka broker: a port was taken; starting over with fresh ones");
                }
                started => return started,
            }
            attempt += 1;
        }
    }

    /// One start on freshly picked ports.
    fn try_start(secured: bool) -> Result<Self> {
        let install = install()?;
        let keep = std::env::var_os("SLUICE_KEEP_TMP").is_some();
        let dir =
            tempfile::Builder::new().prefix("sluice-kafka-").disable_cleanup(keep).tempdir().context("creating the broker's folder")?;
        if keep {
            eprintln!("kafka broker folder kept: {}", dir.path().display());
        }
        let mut taken = Vec::new();
        let mut next_port = || -> Result<u16> {
            loop {
                let candidate = free_port()?;
                if !taken.contains(&candidate) {
                    taken.push(candidate);
                    return Ok(candidate);
                }
            }
        };
        let port = next_port()?;
        let controller_port = next_port()?;
        let secured = match secured {
            true => Some(Secured {
                ssl_port: next_port()?,
                sasl_port: next_port()?,
                password: format!(
                    "pw-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos()
                ),
            }),
            false => None,
        };
        let mut broker = Self { child: None, port, controller_port, dir, secured };
        broker.configure()?;
        broker.format(install)?;
        broker.launch()?;
        Ok(broker)
    }

    /// The broker shared by every test of this test binary that does not kill
    /// or restart it: started on first use, never stopped by the test (a
    /// watchdog kills it when the test process exits). Give each test its own
    /// topics and groups.
    pub fn shared() -> Result<&'static Self> {
        static SHARED: OnceLock<std::result::Result<KafkaBroker, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the shared Kafka broker did not start: {e}"))
    }

    /// `host:port`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's folder: `server.log`, `stdout.log`, `data/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the broker at once (SIGKILL), keeping its store.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill -9 the broker")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts it again on the same ports with the same store, and waits until
    /// it serves requests again (a killed broker's old registration has to
    /// time out first: ~2 s more than a first start).
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        let mut attempt = 1;
        loop {
            match self.launch() {
                Err(err) if attempt < BIND_ATTEMPTS && port_taken(&err) => {
                    eprintln!("kafka broker: its port is taken; trying again");
                    std::thread::sleep(Duration::from_secs(1));
                }
                launched => return launched,
            }
            attempt += 1;
        }
    }

    /// Creates `name` with `partitions` partitions (one replica) through
    /// Kafka's own `TopicCommand`: a fallback for tests without an admin
    /// client (a JVM start, ~1 s).
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        let install = install()?;
        let output = watched(
            java(install, "-Xmx256m")
                .arg("-Dlog4j2.level=WARN")
                .arg("org.apache.kafka.tools.TopicCommand")
                .args(["--bootstrap-server", &self.bootstrap(), "--create", "--topic", name])
                .args(["--partitions", &partitions.to_string(), "--replication-factor", "1"]),
            None,
        )
        .output()
        .context("running Kafka's TopicCommand")?;
        if !output.status.success() {
            bail!(
                "creating topic {name} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// The broker's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default()
    }

    fn configure(&self) -> Result<()> {
        let template_path = root().join("scripts/kafka/server.properties");
        let template = std::fs::read_to_string(&template_path).with_context(|| format!("reading {}", template_path.display()))?;
        let config = template
            .replace("@PORT@", &self.port.to_string())
            .replace("@CONTROLLER_PORT@", &self.controller_port.to_string())
            .replace("@DATA_DIR@", &self.dir().join("data").to_string_lossy());
        let Some(secured) = &self.secured else {
            return std::fs::write(self.dir().join("server.properties"), config).context("writing server.properties");
        };
        let script = root().join("scripts/kafka/certs.sh");
        let output =
            Command::new("bash").arg(&script).arg(self.certs()).stdin(Stdio::null()).output().context("running scripts/kafka/certs.sh")?;
        if !output.status.success() {
            bail!("{} failed: {}{}", script.display(), String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        }
        let extra_path = root().join("scripts/kafka/secured.properties");
        let extra = std::fs::read_to_string(&extra_path)
            .with_context(|| format!("reading {}", extra_path.display()))?
            .replace("@PORT@", &self.port.to_string())
            .replace("@CONTROLLER_PORT@", &self.controller_port.to_string())
            .replace("@SSL_PORT@", &secured.ssl_port.to_string())
            .replace("@SASL_PORT@", &secured.sasl_port.to_string())
            .replace("@CERTS@", &self.certs().to_string_lossy());
        std::fs::write(self.dir().join("server.properties"), format!("{config}\n{extra}")).context("writing server.properties")
    }

    /// Formats the store (KRaft, this node its only controller).
    fn format(&self, install: &Install) -> Result<()> {
        let mut java = java(install, "-Xmx256m");
        java.arg("-Dlog4j2.level=WARN").args(["kafka.tools.StorageTool", "format", "--standalone", "-t", CLUSTER_ID]);
        if let Some(secured) = &self.secured {
            // KIP-900: the SCRAM user exists from the first start.
            java.arg("--add-scram").arg(format!("SCRAM-SHA-512=[name={SCRAM_USER},password={}]", secured.password));
        }
        let output =
            watched(java.arg("-c").arg(self.dir().join("server.properties")), None).output().context("running Kafka's StorageTool")?;
        if !output.status.success() {
            bail!(
                "formatting the broker's store failed ({})\n--- stdout\n{}\n--- stderr\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn launch(&mut self) -> Result<()> {
        let install = install()?;
        // log4j appends to server.log: a restart is ready at the next
        // "started" line, not at the previous run's.
        let before = started_count(&self.dir().join("server.log"));
        let stdout =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir().join("stdout.log")).context("opening stdout.log")?;
        let mut command = watched(
            java(install, "-Xmx512m")
                .arg(format!("-Dkafka.logs.dir={}", self.dir().display()))
                .arg(format!("-Dlog4j2.configurationFile={}", install.log4j.display())),
            Some(self.dir()),
        );
        command
            .arg("kafka.Kafka")
            .arg(self.dir().join("server.properties"))
            .stdin(Stdio::null())
            .stdout(stdout.try_clone()?)
            .stderr(stdout);
        let child = command.spawn().context("starting the Kafka broker (java)")?;
        self.child = Some(child);

        let port = self.port;
        let log = self.dir().join("server.log");
        let child = self.child.as_mut().context("no broker process")?;
        let outcome = poll_until("the Kafka broker to start", START_TIMEOUT, || {
            if let Some(status) = child.try_wait()? {
                bail!("the Kafka broker exited ({status}) while starting");
            }
            let started = started_count(&log) > before;
            Ok((started && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).then_some(()))
        });
        if let Err(err) = outcome {
            let _ = self.kill();
            let tail = |name: &str| {
                let text = std::fs::read_to_string(self.dir().join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            };
            bail!(
                "{err} (folder {})\n--- server.log (end)\n{}\n--- stdout.log (end)\n{}",
                self.dir().display(),
                tail("server.log"),
                tail("stdout.log")
            );
        }
        Ok(())
    }
}

/// How many times the broker logged that it started, in `log` so far.
fn started_count(log: &Path) -> usize {
    std::fs::read_to_string(log).map(|text| text.matches(STARTED).count()).unwrap_or(0)
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Creates `topics` (name, partitions) on the broker at `bootstrap`, one
/// replica each.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let new: Vec<NewTopic> = topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1))).collect();
    for result in admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating topic {topic}: {code}"))?;
    }
    Ok(())
}

/// Read-committed payloads of partition 0 of `topic`, read to its current
/// end (the topic's transactions must all be over).
pub fn committed_payloads(bootstrap: &str, topic: &str) -> Result<Vec<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let (_, end) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    loop {
        let position = consumer.position()?.find_partition(topic, 0).map(|e| e.offset());
        if end == 0 || matches!(position, Some(Offset::Offset(o)) if o >= end) {
            return Ok(got);
        }
        if std::time::Instant::now() >= deadline {
            bail!("timed out reading {topic} to offset {end}");
        }
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            got.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        }
    }
}
