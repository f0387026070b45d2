//! A real `nats-server` per test: its own loopback port, JetStream on, its
//! own file store, so a test can kill and restart its server without
//! touching the others. `scripts/nats-server.sh install` puts the binary on
//! the machine (`./dev test` runs it).
//!
//! A first start asks the server for any free ports (`-p -1 -m -1`) and
//! reads the ones it bound from the ports file it writes once it listens
//! (`--ports_file_dir`): no port is picked and handed over, so nothing can
//! take it in between. A restart must keep the port its clients know, so
//! it asks for that port again; the port was free until the kill a moment
//! before, and should another process take it meanwhile, the restart
//! ("address already in use" in the server's log) tries again after a
//! pause.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use crate::common::poll_until;

/// How many times a restart tries again after finding its port taken.
const BIND_ATTEMPTS: usize = 5;

/// Why a launch failed: the server exited at once because a port it was
/// given is taken (worth another try), or anything else.
enum LaunchError {
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

pub struct NatsServer {
    child: Option<Child>,
    /// The client port: 0 until the first start has bound one.
    pub port: u16,
    monitor: u16,
    store: tempfile::TempDir,
    /// More command-line arguments: logins (`--user`/`--pass`, `-c` with
    /// an `authorization` block), TLS (`--tls --tlscert …`).
    extra: Vec<String>,
}

fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/usr/bin"]) {
        let candidate = PathBuf::from(dir).join("nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("nats-server is not installed: run `scripts/nats-server.sh install` (or set SLUICE_NATS_SERVER)")
}

impl NatsServer {
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// A server started with `extra` arguments too (a login, TLS), on
    /// ports it picks itself.
    pub fn start_with(extra: &[String]) -> Result<Self> {
        let store = tempfile::Builder::new().prefix("sluice-nats-").tempdir()?;
        let mut server = Self { child: None, port: 0, monitor: 0, store, extra: extra.to_vec() };
        server.launch().map_err(|(LaunchError::PortTaken(err) | LaunchError::Other(err))| err)?;
        Ok(server)
    }

    /// Starts the server (on its ports, or on any while it has none yet),
    /// learns the ports it bound, and waits until JetStream is ready.
    fn launch(&mut self) -> std::result::Result<(), LaunchError> {
        let other = LaunchError::Other;
        let log_path = self.store.path().join("server.log");
        let log = std::fs::File::create(&log_path).context("creating the server's log").map_err(other)?;
        let ports_dir = self.store.path().join("ports");
        std::fs::create_dir_all(&ports_dir).context("creating the server's ports folder").map_err(other)?;
        // -1: any free port, which the server reports in its ports file.
        let asked = |port: u16| if port == 0 { "-1".to_owned() } else { port.to_string() };
        let child = Command::new(binary().map_err(other)?)
            .args(["-a", "127.0.0.1", "-p", &asked(self.port), "-m", &asked(self.monitor), "-js"])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-sd")
            .arg(self.store.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")
            .map_err(other)?;
        let pid = child.id();
        self.child = Some(child);
        let child = &mut self.child;
        // Fails at once when the server exits (a port taken, say) rather
        // than when the wait runs out.
        let mut exited = || -> Result<()> {
            if let Some(status) = child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                bail!("nats-server exited ({status}) while starting");
            }
            Ok(())
        };
        // The server writes its ports file once it listens on both.
        let outcome = poll_until("nats-server to report the ports it listens on", Duration::from_secs(10), || {
            exited()?;
            reported_ports(&ports_dir, pid)
        })
        .and_then(|(port, monitor)| {
            // JetStream answers only once its store is recovered.
            poll_until("JetStream to be ready", Duration::from_secs(10), || {
                exited()?;
                Ok(monitor_get(monitor, "/healthz?js-enabled-only=true").ok().filter(|body| body.contains("ok")).map(|_| ()))
            })
            .map(|()| (port, monitor))
        });
        let err = match outcome {
            Ok((port, monitor)) => {
                (self.port, self.monitor) = (port, monitor);
                return Ok(());
            }
            Err(err) => err,
        };
        let _ = self.kill();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let err = err.context(format!("nats-server asked for ports {} and {} (0: any); its log:\n{log}", self.port, self.monitor));
        Err(if log.to_lowercase().contains("address already in use") { LaunchError::PortTaken(err) } else { LaunchError::Other(err) })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), keeping its store.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts it again on the same port with the same store (clients know
    /// the port); while the port is taken, tries again after a pause.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        let mut attempt = 1;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(LaunchError::PortTaken(err)) if attempt < BIND_ATTEMPTS => {
                    eprintln!("nats-server: its port is taken ({err:#}); trying again");
                    // Whoever holds the port may let go of it; polling
                    // faster would only spawn servers that fail the same way.
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(LaunchError::PortTaken(err) | LaunchError::Other(err)) => return Err(err),
            }
            attempt += 1;
        }
    }

    pub async fn client(&self) -> Result<async_nats::Client> {
        async_nats::connect(self.url()).await.context("connecting the test client")
    }

    /// A GET on the monitoring port.
    pub fn monitor_get(&self, path: &str) -> Result<String> {
        monitor_get(self.monitor, path)
    }

    /// How many client connections subscribe to exactly `subject`.
    pub fn subscribers(&self, subject: &str) -> Result<usize> {
        let body = self.monitor_get("/connz?subs=1")?;
        let connz: serde_json::Value = serde_json::from_str(&body).context("parsing /connz")?;
        let connections = connz["connections"].as_array().cloned().unwrap_or_default();
        Ok(connections
            .iter()
            .filter(|c| c["subscriptions_list"].as_array().is_some_and(|subs| subs.iter().any(|s| s.as_str() == Some(subject))))
            .count())
    }
}

/// The client and monitoring ports server `pid` wrote to its ports file in
/// `dir` (`<binary name>_<pid>.ports`, JSON lists of URLs), once it is
/// there and complete; `None` before.
fn reported_ports(dir: &Path, pid: u32) -> Result<Option<(u16, u16)>> {
    let suffix = format!("_{pid}.ports");
    let Some(entry) = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).find(|e| e.file_name().to_string_lossy().ends_with(&suffix)) else {
        return Ok(None);
    };
    let Ok(ports) = serde_json::from_slice::<serde_json::Value>(&std::fs::read(entry.path())?) else {
        return Ok(None); // still being written
    };
    let port = |list: &str| -> Option<u16> { ports[list][0].as_str()?.rsplit(':').next()?.parse().ok() };
    Ok(port("nats").zip(port("monitoring")))
}

/// A GET on a server's monitoring port.
fn monitor_get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// One message read back from a stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub payload: String,
    pub headers: HashMap<String, String>,
}

impl Stored {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Creates a stream capturing `subjects` (file storage).
pub async fn create_stream(client: &async_nats::Client, name: &str, subjects: &[&str]) -> Result<()> {
    jetstream::new(client.clone())
        .create_stream(stream::Config {
            name: name.into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating stream {name}"))?;
    Ok(())
}

/// How many messages `stream` holds.
pub async fn stream_len(client: &async_nats::Client, name: &str) -> Result<u64> {
    let mut stream = jetstream::new(client.clone()).get_stream(name).await?;
    Ok(stream.info().await?.state.messages)
}

/// Every message of `stream`, in order, through an ephemeral consumer.
pub async fn read_stream(client: &async_nats::Client, name: &str) -> Result<Vec<Stored>> {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(name).await?;
    let total = stream.info().await?.state.messages as usize;
    let consumer: consumer::PullConsumer =
        stream.create_consumer(consumer::pull::Config { ack_policy: consumer::AckPolicy::None, ..Default::default() }).await?;
    let mut messages = consumer.messages().await?;
    let mut stored = Vec::with_capacity(total);
    while stored.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .with_context(|| format!("reading stream {name}: {} of {total} messages came", stored.len()))?
            .context("the message stream ended")??;
        let headers = message
            .headers
            .as_ref()
            .map(|h| h.iter().map(|(k, v)| (k.to_string(), v.last().map(|v| v.to_string()).unwrap_or_default())).collect())
            .unwrap_or_default();
        stored.push(Stored { payload: String::from_utf8_lossy(&message.payload).into_owned(), headers });
    }
    Ok(stored)
}

/// The consumer's unfinished work: (not yet delivered, delivered but not
/// acknowledged); `None` while the consumer does not exist yet.
pub async fn consumer_backlog(client: &async_nats::Client, stream: &str, consumer: &str) -> Result<Option<(u64, usize)>> {
    let stream = jetstream::new(client.clone()).get_stream(stream).await?;
    let Ok(mut consumer) = stream.get_consumer::<consumer::pull::Config>(consumer).await else {
        return Ok(None);
    };
    let info = consumer.info().await?;
    Ok(Some((info.num_pending, info.num_ack_pending)))
}

/// Publishes to JetStream and waits for every acknowledgement; returns each
/// message's stream sequence.
pub async fn publish_all(client: &async_nats::Client, subject: &str, payloads: impl IntoIterator<Item = String>) -> Result<Vec<u64>> {
    let js = jetstream::new(client.clone());
    let mut sequences = Vec::new();
    let mut window = Vec::new();
    // The context holds a permit per unacknowledged publish: await them in
    // windows, or publishing stalls once its permits run out.
    for payload in payloads {
        window.push(js.publish(subject.to_owned(), payload.into()).await?);
        if window.len() == 1000 {
            for ack in window.drain(..) {
                sequences.push(ack.await?.sequence);
            }
        }
    }
    for ack in window {
        sequences.push(ack.await?.sequence);
    }
    Ok(sequences)
}
