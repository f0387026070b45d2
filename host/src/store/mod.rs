//! The fleet's plugin store: plugin versions kept on the broker the hosts
//! already share, so a version pushed once reaches every host running the
//! pipeline (`[plugins.store]`, `sluice plugin push` / `rollback`).
//!
//! Three things live in a store, whatever the backend ([`PluginStore`]):
//! - **versions**, each stored once under its sha256, with the signature
//!   line it was pushed with beside it;
//! - a **pointer** per pipeline: the current version's digest and the
//!   digests that were current before it (newest last), so a rollback makes
//!   the previous one current again;
//! - **heartbeats**, one per host and pipeline, that expire: the version a
//!   host runs, or why it refused the current one.
//!
//! [`follow`] is the host's side: it takes the current version at start,
//! watches the pointer, loads each new version through the same checks as
//! an upload ([`crate::reload::PluginVersions::from_store`]) and beats.
//! [`nats`] is the JetStream backend, [`kafka`] the Kafka one (a compacted
//! topic); `[plugins.store]` chooses.

pub mod config;
pub mod follow;
pub mod kafka;
pub mod nats;

use std::sync::Arc;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use config::StoreConfig;

/// How many earlier versions a pointer remembers for rollback.
pub const HISTORY: usize = 32;

/// How long a heartbeat counts after the host's last one: three beats
/// ([`follow::BEAT_EVERY`]).
pub const HEARTBEAT_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// One version: the component and the signature line it was pushed with.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub signature: Option<String>,
}

/// A pipeline's current version and those current before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// sha256 (hex) of the current version.
    pub digest: String,
    /// Earlier current versions, the most recent last.
    #[serde(default)]
    pub history: Vec<String>,
    /// RFC 3339, UTC: when it was made current.
    pub at: String,
    /// What made it current: `push` or `rollback`.
    pub by: String,
}

/// What a host says about one of its pipelines, every few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host: String,
    pub pipeline: String,
    /// sha256 of the version it runs.
    pub digest: String,
    /// The store's current version this host refused, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
    /// RFC 3339, UTC.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub digest: String,
    pub reason: String,
}

/// A pipeline across the fleet: what is current in the store, what each
/// host that beat recently runs, and whether they all run it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    pub current: Option<String>,
    pub hosts: Vec<Heartbeat>,
    pub converged: bool,
}

impl FleetStatus {
    pub fn new(current: Option<String>, mut hosts: Vec<Heartbeat>) -> Self {
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let converged = current.as_ref().is_some_and(|digest| hosts.iter().all(|h| &h.digest == digest));
        Self { current, hosts, converged }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach the plugin store: {0}")]
    Unavailable(String),
    #[error("the plugin store has no version {0}")]
    NoVersion(String),
    #[error("pipeline `{0}` has no version in the plugin store")]
    NoPointer(String),
    #[error("pipeline `{0}` has no earlier version in the plugin store to roll back to")]
    NoPrevious(String),
    #[error("version {digest} in the plugin store is damaged: its bytes hash to {actual}")]
    Damaged { digest: String, actual: String },
    #[error("chunk {index} of {count} of version {digest} in the plugin store is damaged: its {size} bytes hash to {actual}, its manifest says {expected}")]
    DamagedChunk { digest: String, index: usize, count: usize, size: usize, actual: String, expected: String },
    #[error("the pointer of pipeline `{0}` changed while it was being updated; try again")]
    Conflict(String),
    #[error("the plugin store holds something this host cannot read: {0}")]
    Malformed(String),
}

/// A place plugin versions are kept: one per fleet.
#[async_trait::async_trait]
pub trait PluginStore: Send + Sync {
    /// Stores a version (once: a digest already stored is not written
    /// again, its signature is replaced when one is given) and returns its
    /// sha256.
    async fn put(&self, bytes: &[u8], signature: Option<&str>) -> Result<String, StoreError>;
    /// A stored version, checked against its digest.
    async fn get(&self, digest: &str) -> Result<StoredVersion, StoreError>;
    /// The pointer of `pipeline`, if a version was ever pushed for it.
    async fn pointer(&self, pipeline: &str) -> Result<Option<Pointer>, StoreError>;
    /// Replaces the pointer of `pipeline` by what `change` makes of the
    /// current one, unless another change landed in between.
    async fn update_pointer(
        &self,
        pipeline: &str,
        change: &(dyn Fn(Option<Pointer>) -> Result<Pointer, StoreError> + Send + Sync),
    ) -> Result<Pointer, StoreError>;
    /// The pointer of `pipeline` now (if any), then each change of it.
    async fn watch(&self, pipeline: &str) -> Result<BoxStream<'static, Result<Pointer, StoreError>>, StoreError>;
    /// Records (and keeps fresh) a host's heartbeat.
    async fn beat(&self, heartbeat: &Heartbeat) -> Result<(), StoreError>;
    /// Removes a host's heartbeat: it stopped cleanly, and is no longer
    /// part of the fleet (rather than seen until its heartbeat expires).
    async fn leave(&self, _pipeline: &str, _host: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// The heartbeats of hosts that beat recently, of every pipeline.
    async fn heartbeats(&self) -> Result<Vec<Heartbeat>, StoreError>;
}

/// Opens the store `config` describes, on the process's shared
/// connections.
pub async fn open(config: &StoreConfig, connections: &crate::nats::Connections) -> Result<Arc<dyn PluginStore>, StoreError> {
    Ok(match config.backend() {
        config::Backend::Nats => Arc::new(nats::NatsStore::open(config, connections).await?),
        config::Backend::Kafka(kafka) => Arc::new(kafka::KafkaStore::open(kafka).await?),
    })
}

/// How many times a pointer change is tried when another change lands
/// between its read and its write.
const CONFLICT_TRIES: usize = 5;

/// [`PluginStore::update_pointer`], tried again after a conflict.
async fn update(
    store: &dyn PluginStore,
    pipeline: &str,
    change: &(dyn Fn(Option<Pointer>) -> Result<Pointer, StoreError> + Send + Sync),
) -> Result<Pointer, StoreError> {
    let mut tries = 1;
    loop {
        match store.update_pointer(pipeline, change).await {
            Err(StoreError::Conflict(_)) if tries < CONFLICT_TRIES => tries += 1,
            result => return result,
        }
    }
}

/// Publishes `bytes` and makes it the current version of `pipeline`.
pub async fn push(store: &dyn PluginStore, pipeline: &str, bytes: &[u8], signature: Option<&str>) -> Result<Pointer, StoreError> {
    let digest = store.put(bytes, signature).await?;
    update(store, pipeline, &|current| {
        let mut history = match current {
            // Pushed again (with its signature, say): the same pointer,
            // written anew, so hosts that refused it try again.
            Some(pointer) if pointer.digest == digest => return Ok(Pointer { at: now(), by: "push".into(), ..pointer }),
            Some(pointer) => {
                let mut history = pointer.history;
                history.push(pointer.digest);
                history
            }
            None => Vec::new(),
        };
        let excess = history.len().saturating_sub(HISTORY);
        history.drain(..excess);
        Ok(Pointer { digest: digest.clone(), history, at: now(), by: "push".into() })
    })
    .await
}

/// Makes the version current before the current one of `pipeline` current
/// again (the current one is dropped from the history).
pub async fn rollback(store: &dyn PluginStore, pipeline: &str) -> Result<Pointer, StoreError> {
    update(store, pipeline, &|current| {
        let pointer = current.ok_or_else(|| StoreError::NoPointer(pipeline.to_owned()))?;
        let mut history = pointer.history;
        let digest = history.pop().ok_or_else(|| StoreError::NoPrevious(pipeline.to_owned()))?;
        Ok(Pointer { digest, history, at: now(), by: "rollback".into() })
    })
    .await
}

/// The fleet status of `pipeline` from the store.
pub async fn fleet(store: &dyn PluginStore, pipeline: &str) -> Result<FleetStatus, StoreError> {
    let current = store.pointer(pipeline).await?.map(|p| p.digest);
    let hosts = store.heartbeats().await?.into_iter().filter(|h| h.pipeline == pipeline).collect();
    Ok(FleetStatus::new(current, hosts))
}

pub(crate) fn now() -> String {
    crate::time::rfc3339(std::time::SystemTime::now())
}

/// A name as a KV key token: characters other than `[A-Za-z0-9_-]` become
/// `_` (as state bucket names do).
pub fn key_token(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::plugin::digest_of as digest;

    fn beat(host: &str, digest: &str) -> Heartbeat {
        Heartbeat { host: host.into(), pipeline: "p".into(), digest: digest.into(), refused: None, at: String::new() }
    }

    #[test]
    fn a_fleet_converges_when_every_host_runs_the_current_version() {
        assert!(FleetStatus::new(Some("a".into()), vec![beat("h1", "a"), beat("h2", "a")]).converged);
        assert!(!FleetStatus::new(Some("a".into()), vec![beat("h1", "a"), beat("h2", "b")]).converged);
        assert!(!FleetStatus::new(None, vec![beat("h1", "a")]).converged);
    }

    /// A store in memory, whose first `conflicts` pointer writes lose a race.
    #[derive(Default)]
    struct Memory {
        pointer: std::sync::Mutex<Option<Pointer>>,
        conflicts: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl PluginStore for Memory {
        async fn put(&self, bytes: &[u8], _: Option<&str>) -> Result<String, StoreError> {
            Ok(digest(bytes))
        }
        async fn get(&self, digest: &str) -> Result<StoredVersion, StoreError> {
            Err(StoreError::NoVersion(digest.into()))
        }
        async fn pointer(&self, _: &str) -> Result<Option<Pointer>, StoreError> {
            Ok(self.pointer.lock().map_err(|_| StoreError::Malformed("poisoned".into()))?.clone())
        }
        async fn update_pointer(
            &self,
            pipeline: &str,
            change: &(dyn Fn(Option<Pointer>) -> Result<Pointer, StoreError> + Send + Sync),
        ) -> Result<Pointer, StoreError> {
            let next = change(self.pointer(pipeline).await?)?;
            let lost =
                self.conflicts.fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| n.checked_sub(1));
            if lost.is_ok() {
                return Err(StoreError::Conflict(pipeline.into()));
            }
            *self.pointer.lock().map_err(|_| StoreError::Malformed("poisoned".into()))? = Some(next.clone());
            Ok(next)
        }
        async fn watch(&self, _: &str) -> Result<BoxStream<'static, Result<Pointer, StoreError>>, StoreError> {
            Ok(futures::stream::empty().boxed())
        }
        async fn beat(&self, _: &Heartbeat) -> Result<(), StoreError> {
            Ok(())
        }
        async fn heartbeats(&self) -> Result<Vec<Heartbeat>, StoreError> {
            Ok(Vec::new())
        }
    }

    use futures::StreamExt;

    #[tokio::test]
    async fn push_keeps_history_and_rollback_walks_it_back() -> Result<(), StoreError> {
        let store = Memory::default();
        assert!(matches!(rollback(&store, "p").await, Err(StoreError::NoPointer(_))));
        let (a, b, c) = (digest(b"a"), digest(b"b"), digest(b"c"));
        push(&store, "p", b"a", None).await?;
        assert!(matches!(rollback(&store, "p").await, Err(StoreError::NoPrevious(_))));
        push(&store, "p", b"b", None).await?;
        // Pushing the current version again keeps the history.
        let same = push(&store, "p", b"b", None).await?;
        assert_eq!((same.digest.as_str(), same.history.as_slice()), (b.as_str(), std::slice::from_ref(&a)));
        let pointer = push(&store, "p", b"c", None).await?;
        assert_eq!(pointer.history, [a.clone(), b.clone()]);
        let back = rollback(&store, "p").await?;
        assert_eq!((back.digest.as_str(), back.by.as_str(), back.history.as_slice()), (b.as_str(), "rollback", std::slice::from_ref(&a)));
        assert_eq!(rollback(&store, "p").await?.digest, a);
        assert_ne!(a, c);
        Ok(())
    }

    #[tokio::test]
    async fn a_lost_race_is_tried_again_then_reported() -> Result<(), StoreError> {
        let store = Memory { conflicts: 2.into(), ..Memory::default() };
        assert_eq!(push(&store, "p", b"a", None).await?.digest, digest(b"a"));
        store.conflicts.store(CONFLICT_TRIES, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(push(&store, "p", b"b", None).await, Err(StoreError::Conflict(_))));
        Ok(())
    }

    #[test]
    fn key_tokens() {
        assert_eq!(key_token("orders.v2 x"), "orders_v2_x");
        assert_eq!(key_token("a-b_C9"), "a-b_C9");
    }
}
