//! The Kafka broker every measurement shares: one single-node KRaft broker
//! started with `scripts/kafka.sh` on a free port, stopped (and its data
//! removed) when the [`Broker`] is dropped, on success, error or panic.
//! Topics are made fresh for each trial with the admin API and deleted after
//! it, so native and sluice meet the same broker in the same state.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Partitions of every input and output topic.
pub const PARTITIONS: i32 = 4;

pub struct Broker {
    port: u16,
    root: PathBuf,
    brokers: String,
    admin: AdminClient<DefaultClientContext>,
}

/// The workspace root (where `scripts/kafka.sh` is).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf()
}

/// A port that is free, with the next one free too (the controller's), and
/// no run folder of another broker (the guard removes the folder).
fn free_port_pair(root: &Path) -> Result<u16> {
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let unused = !root.join(".cache/kafka/run").join(port.to_string()).exists();
        if unused && port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no two consecutive free ports found")
}

/// Stops the broker on `port` and removes its run folder; what
/// [`Broker`]'s drop does, usable before the broker is fully built.
struct StopGuard {
    port: u16,
    root: PathBuf,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        eprintln!("stopping the Kafka broker on port {}", self.port);
        let _ = Command::new("bash")
            .arg(self.root.join("scripts/kafka.sh"))
            .args(["stop", &self.port.to_string()])
            .current_dir(&self.root)
            .status();
        let _ = std::fs::remove_dir_all(self.root.join(".cache/kafka/run").join(self.port.to_string()));
    }
}

impl Broker {
    pub fn start() -> Result<Self> {
        let root = root();
        let port = free_port_pair(&root)?;
        // From here on, whatever happens, the broker is stopped.
        let guard = StopGuard { port, root: root.clone() };
        eprintln!("starting a Kafka broker on 127.0.0.1:{port}");
        let status = Command::new("bash")
            .arg(root.join("scripts/kafka.sh"))
            .args(["start", &port.to_string()])
            .current_dir(&root)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running scripts/kafka.sh start")?;
        if !status.success() {
            bail!("scripts/kafka.sh start {port} failed ({status})");
        }
        let brokers = format!("127.0.0.1:{port}");
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().context("creating the admin client")?;
        std::mem::forget(guard); // Broker's own drop takes over
        Ok(Self { port, root, brokers, admin })
    }

    /// `host:port`, for `bootstrap.servers`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The broker version: the folder `scripts/kafka.sh` installed it in.
    pub fn version(&self) -> String {
        Command::new("bash")
            .arg(self.root.join("scripts/kafka.sh"))
            .arg("path")
            .current_dir(&self.root)
            .output()
            .ok()
            .and_then(|out| {
                let libs = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                Some(libs.parent()?.file_name()?.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "unknown".into())
    }

    /// Creates `topics` with `partitions` partitions each.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> Result<()> {
        let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
        for result in self.admin.create_topics(&new, &options).await? {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic}: {code}");
            }
        }
        // Wait until every partition has a leader, so the first produce and
        // fetch do not race the topic's creation.
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.brokers).create()?;
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            for topic in &topics {
                loop {
                    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
                    let ready = metadata.topics().first().is_some_and(|t| {
                        t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0 && p.error().is_none())
                    });
                    if ready {
                        break;
                    }
                    if std::time::Instant::now() > deadline {
                        bail!("topic {topic} has no leader for every partition after 20s");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Ok(())
        })
        .await?
    }

    /// Deletes `topics` (their data is not needed after a trial).
    pub async fn delete_topics(&self, topics: &[&str]) -> Result<()> {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
        for result in self.admin.delete_topics(topics, &options).await? {
            if let Err((topic, code)) = result {
                bail!("deleting topic {topic}: {code}");
            }
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        drop(StopGuard { port: self.port, root: self.root.clone() });
    }
}
