//! The broker every measurement shares: one `nats-server` with JetStream on,
//! on free loopback ports, its file store in a temp dir, killed on drop.
//! One broker for the whole run, so native and sluice meet the same server
//! in the same state (only the streams are recreated between runs).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, stream};

use crate::wait_until;

pub struct NatsServer {
    child: Child,
    port: u16,
    monitor: u16,
    _store: tempfile::TempDir,
}

/// `nats-server` on `PATH`, or where Debian's package puts it.
fn binary() -> Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').chain(["/usr/sbin", "/usr/bin"]) {
        let candidate = PathBuf::from(dir).join("nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("nats-server is not installed: run `bash scripts/nats-server.sh install`")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsServer {
    pub async fn start() -> Result<Self> {
        let store = tempfile::Builder::new().prefix("sluice-bench-nats-").tempdir()?;
        let (port, monitor) = (free_port()?, free_port()?);
        let child = Command::new(binary()?)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let server = Self { child, port, monitor, _store: store };
        wait_until("nats-server to accept connections", Duration::from_secs(10), || async move {
            Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
        })
        .await?;
        // JetStream answers only once its store is ready.
        let ready = &server;
        wait_until("JetStream to be ready", Duration::from_secs(10), || async move {
            Ok(ready.monitor_get("/healthz?js-enabled-only=true").is_ok_and(|body| body.contains("ok")))
        })
        .await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> Result<async_nats::Client> {
        async_nats::connect(self.url()).await.context("connecting to nats-server")
    }

    /// A GET on the monitoring port; returns the body.
    fn monitor_get(&self, path: &str) -> Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.monitor))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
    }

    /// Whether some connection subscribes to exactly `subject`: how we know a
    /// core NATS processor is ready (a publish before that is simply lost).
    pub fn has_subscriber(&self, subject: &str) -> Result<bool> {
        let connz: serde_json::Value = serde_json::from_str(&self.monitor_get("/connz?subs=1")?).context("parsing /connz")?;
        let connections = connz["connections"].as_array().cloned().unwrap_or_default();
        Ok(connections
            .iter()
            .any(|c| c["subscriptions_list"].as_array().is_some_and(|subs| subs.iter().any(|s| s.as_str() == Some(subject)))))
    }

    /// Deletes stream `name` (and so its consumers) if it exists and creates
    /// it afresh, file storage, capturing `subject`: every JetStream run
    /// starts from empty streams and no consumer.
    pub async fn recreate_stream(&self, client: &async_nats::Client, name: &str, subject: &str) -> Result<()> {
        let js = jetstream::new(client.clone());
        let _ = js.delete_stream(name).await;
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating stream {name}"))?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many messages stream `name` holds.
pub async fn stream_len(client: &async_nats::Client, name: &str) -> Result<u64> {
    let mut stream = jetstream::new(client.clone()).get_stream(name).await?;
    Ok(stream.info().await?.state.messages)
}

/// Whether durable consumer `consumer` exists on `stream`.
pub async fn consumer_exists(client: &async_nats::Client, stream: &str, consumer: &str) -> Result<bool> {
    let stream = jetstream::new(client.clone()).get_stream(stream).await?;
    Ok(stream.consumer_info(consumer).await.is_ok())
}
