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
//! - optionally, the pipeline's **candidate** in the pointer: a version the
//!   whole fleet tries beside the current one (shadow or canary, with the
//!   trial's fractions); the first host whose rollout rules decide writes
//!   the decision back (promotion: the candidate becomes current;
//!   rollback: it is cleared), and every host follows the pointer;
//! - **heartbeats**, one per host and pipeline, that expire: the version a
//!   host runs, or why it refused the current one.
//!
//! `follow` is the host's side: it takes the current version at start,
//! watches the pointer, loads each new version through the same checks as
//! an upload (`PluginVersions::load_from_store`) and beats.
//! `nats` is the JetStream backend, `kafka` the Kafka one (a compacted
//! topic); `[plugins.store]` chooses.

pub(crate) mod config;
pub(crate) mod follow;
pub(crate) mod kafka;
pub(crate) mod nats;

use std::sync::Arc;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use config::StoreConfig;

/// How many earlier versions a pointer remembers for rollback.
pub const HISTORY: usize = 32;

/// How long a heartbeat counts after the host's last one: three beats
/// (`follow::BEAT_EVERY`).
pub const HEARTBEAT_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// One version: the component and the signature line it was pushed with.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    /// sha256 (hex) of `bytes`.
    pub digest: String,
    /// The component.
    pub bytes: Vec<u8>,
    /// The `.sig` line pushed with it, checked against the host's
    /// trusted keys before it runs.
    pub signature: Option<String>,
}

/// A pipeline's current version and those current before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    /// sha256 (hex) of the current version.
    pub digest: String,
    /// Earlier current versions, the most recent last.
    #[serde(default)]
    pub history: Vec<String>,
    /// RFC 3339, UTC: when it was made current.
    pub at: String,
    /// What wrote it last: `push`, `rollback`, `candidate`, `promotion`,
    /// `candidate-rollback` or `abort`.
    pub by: String,
    /// The version the fleet tries beside the current one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<StoredCandidate>,
}

/// A candidate named in the pointer: its digest and how to try it (unset
/// fields are each host's `rollout` config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCandidate {
    /// sha256 (hex) of the candidate version.
    pub digest: String,
    /// `shadow` or `canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::config::RolloutMode>,
    /// Shadow: the share of events also given to the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<f64>,
    /// Canary: the share of events the candidate serves instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<f64>,
}

/// What a host says about one of its pipelines, every few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The host's instance id (`[runtime] instance_id`, or one claimed
    /// from its hostname).
    pub host: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// sha256 of the version it runs.
    pub digest: String,
    /// The store's current version this host refused, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
    /// sha256 of the candidate it tries beside the current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// The store's candidate this host refused to try, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_refused: Option<Refusal>,
    /// RFC 3339, UTC.
    pub at: String,
}

/// A version a host would not run (its signature or its checks failed):
/// it keeps the one it has and says so in its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// sha256 of the refused version.
    pub digest: String,
    /// Why, as the host's load error says it.
    pub reason: String,
}

/// A pipeline across the fleet: what is current in the store, what each
/// host that beat recently runs, and whether they all run it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// sha256 of the store's current version; `None` before a first push.
    pub current: Option<String>,
    /// The candidate the store names, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// The hosts that beat recently, by name.
    pub hosts: Vec<Heartbeat>,
    /// Whether every one of them runs `current`.
    pub converged: bool,
}

impl FleetStatus {
    /// The status of `hosts` against `current`, without a candidate.
    pub fn new(current: Option<String>, mut hosts: Vec<Heartbeat>) -> Self {
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let converged = current.as_ref().is_some_and(|digest| hosts.iter().all(|h| &h.digest == digest));
        Self { current, candidate: None, hosts, converged }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The broker behind the store cannot be reached or refused.
    #[error("cannot reach the plugin store: {0}")]
    Unavailable(String),
    /// No version with this digest was pushed.
    #[error("the plugin store has no version {0}")]
    NoVersion(String),
    /// Nothing was ever pushed for the pipeline.
    #[error("pipeline `{0}` has no version in the plugin store")]
    NoPointer(String),
    /// A promote or abort found no candidate to decide on.
    #[error("pipeline `{0}` has no candidate in the plugin store (none was set, or a host or an operator already decided)")]
    NoCandidate(String),
    /// A candidate must differ from the version it is tried beside.
    #[error("the candidate {0} is already the current version")]
    CandidateIsCurrent(String),
    /// A rollback with no history to go back to.
    #[error("pipeline `{0}` has no earlier version in the plugin store to roll back to")]
    NoPrevious(String),
    /// A stored version's bytes do not hash to its digest.
    #[error("version {digest} in the plugin store is damaged: its bytes hash to {actual}")]
    Damaged {
        /// The digest it was stored under.
        digest: String,
        /// What its bytes hash to.
        actual: String,
    },
    /// One chunk of a version stored in chunks (Kafka) is damaged.
    #[error("chunk {index} of {count} of version {digest} in the plugin store is damaged: its {size} bytes hash to {actual}, its manifest says {expected}")]
    DamagedChunk {
        /// The version's digest.
        digest: String,
        /// 0-based index of the chunk.
        index: usize,
        /// How many chunks the version has.
        count: usize,
        /// The chunk's size in bytes.
        size: usize,
        /// What the chunk hashes to.
        actual: String,
        /// What the version's manifest says it should hash to.
        expected: String,
    },
    /// Another writer changed the pointer first (compare-and-set lost).
    #[error("the pointer of pipeline `{0}` changed while it was being updated; try again")]
    Conflict(String),
    /// A record the store holds does not parse (written by a newer host?).
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
    update(store, pipeline, &|current| Ok(make_current(current, &digest, "push"))).await
}

/// `digest` as the current version after `current`, which goes to the
/// history. A candidate with that digest is no longer a candidate; any
/// other keeps being tried against the new current version.
fn make_current(current: Option<Pointer>, digest: &str, by: &str) -> Pointer {
    let Some(pointer) = current else {
        return Pointer { digest: digest.to_owned(), history: Vec::new(), at: now(), by: by.into(), candidate: None };
    };
    let candidate = pointer.candidate.filter(|c| c.digest != digest);
    if pointer.digest == digest {
        // Pushed again (with its signature, say): the same pointer,
        // written anew, so hosts that refused it try again.
        return Pointer { at: now(), by: by.into(), candidate, ..pointer };
    }
    let mut history = pointer.history;
    history.push(pointer.digest);
    let excess = history.len().saturating_sub(HISTORY);
    history.drain(..excess);
    Pointer { digest: digest.to_owned(), history, at: now(), by: by.into(), candidate }
}

/// Makes the version current before the current one of `pipeline` current
/// again (the current one is dropped from the history).
pub async fn rollback(store: &dyn PluginStore, pipeline: &str) -> Result<Pointer, StoreError> {
    update(store, pipeline, &|current| {
        let pointer = current.ok_or_else(|| StoreError::NoPointer(pipeline.to_owned()))?;
        let mut history = pointer.history;
        let digest = history.pop().ok_or_else(|| StoreError::NoPrevious(pipeline.to_owned()))?;
        let candidate = pointer.candidate.filter(|c| c.digest != digest);
        Ok(Pointer { digest, history, at: now(), by: "rollback".into(), candidate })
    })
    .await
}

/// Publishes `bytes` and names it the candidate of `pipeline`: every host
/// following the store tries it beside the current version, which stays
/// current.
pub async fn set_candidate(
    store: &dyn PluginStore,
    pipeline: &str,
    bytes: &[u8],
    signature: Option<&str>,
    trial: StoredCandidate,
) -> Result<Pointer, StoreError> {
    let digest = store.put(bytes, signature).await?;
    let candidate = StoredCandidate { digest, ..trial };
    update(store, pipeline, &|current| {
        let pointer = current.ok_or_else(|| StoreError::NoPointer(pipeline.to_owned()))?;
        if pointer.digest == candidate.digest {
            return Err(StoreError::CandidateIsCurrent(candidate.digest.clone()));
        }
        Ok(Pointer { candidate: Some(candidate.clone()), at: now(), by: "candidate".into(), ..pointer })
    })
    .await
}

/// What ends a candidate fleet-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It becomes current (as a push would make it).
    Promote,
    /// Its rules rolled it back: it is cleared.
    RollBack,
    /// An operator stopped it: it is cleared.
    Abort,
}

impl Decision {
    /// The pointer's `by` for it.
    pub fn by(self) -> &'static str {
        match self {
            Self::Promote => "promotion",
            Self::RollBack => "candidate-rollback",
            Self::Abort => "abort",
        }
    }
}

/// Ends the candidate of `pipeline` with `decision`. `expected`: only if
/// the candidate is still that digest (a host's rules decided on it: the
/// first host to decide wins, a later one gets [`StoreError::NoCandidate`]
/// and follows the pointer).
pub async fn decide(store: &dyn PluginStore, pipeline: &str, expected: Option<&str>, decision: Decision) -> Result<Pointer, StoreError> {
    update(store, pipeline, &|current| {
        let pointer = current.ok_or_else(|| StoreError::NoPointer(pipeline.to_owned()))?;
        let Some(candidate) = pointer.candidate.clone().filter(|c| expected.is_none_or(|digest| c.digest == digest)) else {
            return Err(StoreError::NoCandidate(pipeline.to_owned()));
        };
        Ok(match decision {
            Decision::Promote => make_current(Some(pointer), &candidate.digest, decision.by()),
            Decision::RollBack | Decision::Abort => Pointer { candidate: None, at: now(), by: decision.by().into(), ..pointer },
        })
    })
    .await
}

/// The fleet status of `pipeline` from the store.
pub async fn fleet(store: &dyn PluginStore, pipeline: &str) -> Result<FleetStatus, StoreError> {
    let pointer = store.pointer(pipeline).await?;
    let hosts = store.heartbeats().await?.into_iter().filter(|h| h.pipeline == pipeline).collect();
    let candidate = pointer.as_ref().and_then(|p| p.candidate.as_ref()).map(|c| c.digest.clone());
    Ok(FleetStatus { candidate, ..FleetStatus::new(pointer.map(|p| p.digest), hosts) })
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
        Heartbeat {
            host: host.into(),
            pipeline: "p".into(),
            digest: digest.into(),
            refused: None,
            candidate: None,
            candidate_refused: None,
            at: String::new(),
        }
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

    #[tokio::test]
    async fn a_candidate_is_decided_once_for_the_fleet() -> Result<(), StoreError> {
        let store = Memory::default();
        let trial = StoredCandidate { digest: String::new(), mode: None, sample: None, canary: Some(0.5) };
        assert!(matches!(set_candidate(&store, "p", b"b", None, trial.clone()).await, Err(StoreError::NoPointer(_))));
        push(&store, "p", b"a", None).await?;
        assert!(matches!(set_candidate(&store, "p", b"a", None, trial.clone()).await, Err(StoreError::CandidateIsCurrent(_))));
        let (a, b) = (digest(b"a"), digest(b"b"));
        let named = set_candidate(&store, "p", b"b", None, trial.clone()).await?;
        assert_eq!((named.digest.as_str(), named.candidate.as_ref().map(|c| c.digest.as_str())), (a.as_str(), Some(b.as_str())));
        // The first host's promotion wins; a second decision on it finds
        // no candidate, and the pointer stays the first one's.
        let promoted = decide(&store, "p", Some(&b), Decision::Promote).await?;
        assert_eq!(
            (promoted.digest.as_str(), promoted.history.as_slice(), promoted.by.as_str()),
            (b.as_str(), std::slice::from_ref(&a), "promotion")
        );
        assert!(promoted.candidate.is_none());
        assert!(matches!(decide(&store, "p", Some(&b), Decision::RollBack).await, Err(StoreError::NoCandidate(_))));
        // A rollback clears the candidate and keeps the current version.
        set_candidate(&store, "p", b"c", None, trial.clone()).await?;
        assert!(matches!(decide(&store, "p", Some(&a), Decision::RollBack).await, Err(StoreError::NoCandidate(_))));
        let cleared = decide(&store, "p", Some(&digest(b"c")), Decision::RollBack).await?;
        assert_eq!((cleared.digest.as_str(), cleared.candidate.is_none(), cleared.by.as_str()), (b.as_str(), true, "candidate-rollback"));
        // Pushing the candidate makes it current and clears it.
        set_candidate(&store, "p", b"c", None, trial).await?;
        let pushed = push(&store, "p", b"c", None).await?;
        assert!(pushed.candidate.is_none() && pushed.digest == digest(b"c"));
        Ok(())
    }

    #[test]
    fn key_tokens() {
        assert_eq!(key_token("orders.v2 x"), "orders_v2_x");
        assert_eq!(key_token("a-b_C9"), "a-b_C9");
    }
}
