//! A host following the plugin store: for each of its pipelines, the
//! current version at start, every version pushed after, and a heartbeat.
//!
//! A version is loaded through [`PluginVersions::load_from_store`]: the checks
//! of an upload (sha256, pin, world, `init`, signature when `[plugins]
//! trusted_keys` is set), then the lossless swap. One that fails is
//! refused: the host keeps the version it runs, and its heartbeat says
//! which version it refused and why, until another one is pushed.
//!
//! A candidate the pointer names is tried here too, with the same checks
//! ([`PluginVersions::candidate`]); one that fails is reported in the
//! heartbeat (`candidate_refused`). When the pointer's candidate is
//! cleared, the local trial ends; when it became current (a host's rules
//! promoted it), the loaded candidate is promoted here as well.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::{Heartbeat, PluginStore, Pointer, Refusal, StoreConfig, StoreError, StoredCandidate, StoredVersion};
use crate::reload::PluginVersions;
use crate::rollout::Outcome;

/// Time between heartbeats (and fleet status refreshes).
pub const BEAT_EVERY: Duration = Duration::from_secs(5);

/// Time before watching the store again after the watch failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a stopping host tries to remove its heartbeat.
pub const LEAVE_WITHIN: Duration = Duration::from_secs(3);

/// The process's store, opened on first use (and tried again on the next
/// use while it cannot be opened).
pub struct Shared {
    config: StoreConfig,
    store: OnceCell<Arc<dyn PluginStore>>,
}

impl Shared {
    pub fn new(config: StoreConfig) -> Self {
        Self { config, store: OnceCell::new() }
    }

    pub async fn get(&self, connections: &crate::nats::Connections) -> Result<Arc<dyn PluginStore>, StoreError> {
        self.store.get_or_try_init(|| super::open(&self.config, connections)).await.cloned()
    }
}

/// The version of `pipeline` current in the store, to start with; `None`
/// when nothing was pushed for it, or the store cannot be read (then the
/// local file is loaded, and [`spawn`] takes the store's version once it
/// can).
pub async fn starting_version(shared: &Shared, connections: &crate::nats::Connections, pipeline: &str) -> Option<StoredVersion> {
    let read = async {
        let store = shared.get(connections).await?;
        match store.pointer(pipeline).await? {
            Some(pointer) => store.get(&pointer.digest).await.map(Some),
            None => Ok(None),
        }
    };
    match read.await {
        Ok(version) => version,
        Err(err) => {
            tracing::error!(pipeline, "cannot read the plugin store, starting with the local plugin file: {err}");
            None
        }
    }
}

/// Follows the store for `versions` until `stop` fires, then removes the
/// host's heartbeat (the task ends when it is removed, or after
/// [`LEAVE_WITHIN`]).
pub fn spawn(
    shared: Arc<Shared>,
    connections: Arc<crate::pipeline::SinkSet>,
    versions: Arc<PluginVersions>,
    pipeline: String,
    host: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut follower = Follower { versions, pipeline, host, refused: None, candidate_refused: None };
        loop {
            let watched = async {
                let store = shared.get(&connections.connections).await?;
                let watch = store.watch(&follower.pipeline).await?;
                Ok::<_, StoreError>((store, watch))
            };
            let (store, mut watch) = tokio::select! {
                _ = stop.cancelled() => return,
                watched = watched => match watched {
                    Ok(opened) => opened,
                    Err(err) => {
                        tracing::warn!(pipeline = %follower.pipeline, "cannot watch the plugin store (trying again): {err}");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(RETRY_AFTER) => continue,
                        }
                    }
                },
            };
            let mut beat = tokio::time::interval(BEAT_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return follower.leave(store.as_ref()).await,
                    _ = beat.tick() => follower.beat(store.as_ref()).await,
                    next = watch.next() => match next {
                        Some(Ok(pointer)) => {
                            follower.apply(store.as_ref(), &pointer).await;
                            follower.try_candidate(&store, &pointer).await;
                            follower.beat(store.as_ref()).await;
                        }
                        Some(Err(err)) => {
                            tracing::warn!(pipeline = %follower.pipeline, "the plugin store watch failed (watching again): {err}");
                            break;
                        }
                        None => break,
                    },
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY_AFTER) => {}
            }
        }
    })
}

struct Follower {
    versions: Arc<PluginVersions>,
    pipeline: String,
    host: String,
    /// The store's current version, when this host refused it.
    refused: Option<Refusal>,
    /// The store's candidate, when this host refused to try it.
    candidate_refused: Option<Refusal>,
}

impl Follower {
    /// Makes the pointer's version current here, unless it already is.
    async fn apply(&mut self, store: &dyn PluginStore, pointer: &Pointer) {
        if self.versions.current().digest() == pointer.digest {
            self.refused = None;
            return;
        }
        // Another host's rules (or an operator) promoted the candidate
        // this host tries: it is loaded already.
        if self.versions.candidate_digest().as_deref() == Some(pointer.digest.as_str()) {
            match self.versions.promote(None, "promoted across the fleet (the plugin store's pointer)").await {
                Ok(_) => {
                    self.versions.set_fleet_candidate(None);
                    self.refused = None;
                    return;
                }
                Err(err) => {
                    tracing::debug!(pipeline = %self.pipeline, "the candidate ended meanwhile, loading the version from the store: {err}")
                }
            }
        }
        // A refused version is tried again when it is pushed again (a
        // signature added, or the hosts' config fixed): each pointer write
        // is a change the watch delivers.
        let short = &pointer.digest[..pointer.digest.len().min(12)];
        tracing::info!(pipeline = %self.pipeline, digest = short, by = %pointer.by, "the plugin store has a new current version; loading it");
        let loaded = match store.get(&pointer.digest).await {
            Ok(version) => self.versions.load_from_store(version).await.map(|_| ()).map_err(|e| e.to_string()),
            Err(err) => Err(self.versions.refuse_from_store(&pointer.digest, &err.to_string())),
        };
        self.refused = loaded.err().map(|reason| Refusal { digest: pointer.digest.clone(), reason });
    }

    /// Starts trying the pointer's candidate here, or ends the trial of one
    /// the pointer no longer names.
    async fn try_candidate(&mut self, store: &Arc<dyn PluginStore>, pointer: &Pointer) {
        let local = self.versions.candidate_digest();
        let Some(wanted) = &pointer.candidate else {
            self.candidate_refused = None;
            // Only a candidate from the store ends here: one posted to
            // this host's admin API is the operator's.
            if let Some(digest) = local.filter(|digest| self.versions.fleet_candidate_is(digest)) {
                let outcome = if pointer.by == super::Decision::RollBack.by() { Outcome::RolledBack } else { Outcome::Aborted };
                let why = format!("{} across the fleet (the plugin store's pointer)", pointer.by);
                if self.versions.drop_candidate(None, outcome, &why).is_ok() {
                    tracing::info!(pipeline = %self.pipeline, digest = short(&digest), by = %pointer.by, "the plugin store cleared the candidate; its trial ended");
                }
                self.versions.set_fleet_candidate(None);
            }
            return;
        };
        if local.as_deref() == Some(wanted.digest.as_str()) {
            self.candidate_refused = None;
            return;
        }
        tracing::info!(pipeline = %self.pipeline, digest = short(&wanted.digest), "the plugin store names a candidate; trying it");
        let tried = match store.get(&wanted.digest).await {
            Ok(version) => self.start(version, wanted).await,
            Err(err) => Err(err.to_string()),
        };
        self.candidate_refused = match tried {
            Ok(()) => {
                self.versions.set_fleet_candidate(Some((store.clone(), wanted.digest.clone())));
                None
            }
            Err(reason) => {
                tracing::error!(pipeline = %self.pipeline, digest = short(&wanted.digest), "cannot try the plugin store's candidate: {reason}");
                Some(Refusal { digest: wanted.digest.clone(), reason })
            }
        };
    }

    async fn start(&self, version: StoredVersion, wanted: &StoredCandidate) -> Result<(), String> {
        let mut trial = self.versions.rollout().trial();
        trial.mode = wanted.mode.unwrap_or(trial.mode);
        trial.sample = wanted.sample.unwrap_or(trial.sample);
        trial.canary = wanted.canary.unwrap_or(trial.canary);
        let StoredVersion { digest, bytes, signature } = version;
        self.versions.candidate(bytes, Some(digest), signature, trial).await.map(|_| ()).map_err(|e| e.to_string())
    }

    async fn leave(&self, store: &dyn PluginStore) {
        match tokio::time::timeout(LEAVE_WITHIN, store.leave(&self.pipeline, &self.host)).await {
            Ok(Ok(())) => tracing::debug!(pipeline = %self.pipeline, "heartbeat removed from the plugin store"),
            Ok(Err(err)) => tracing::warn!(pipeline = %self.pipeline, "cannot remove the heartbeat from the plugin store: {err}"),
            Err(_) => tracing::warn!(pipeline = %self.pipeline, "removing the heartbeat from the plugin store took over {LEAVE_WITHIN:?}"),
        }
    }

    async fn beat(&self, store: &dyn PluginStore) {
        let heartbeat = Heartbeat {
            host: self.host.clone(),
            pipeline: self.pipeline.clone(),
            digest: self.versions.current().digest().to_owned(),
            refused: self.refused.clone(),
            candidate: self.versions.candidate_digest(),
            candidate_refused: self.candidate_refused.clone(),
            at: super::now(),
        };
        if let Err(err) = store.beat(&heartbeat).await {
            tracing::warn!(pipeline = %self.pipeline, "cannot send the heartbeat to the plugin store: {err}");
            return;
        }
        match super::fleet(store, &self.pipeline).await {
            Ok(status) => self.versions.set_fleet(status),
            Err(err) => tracing::debug!(pipeline = %self.pipeline, "cannot read the fleet status: {err}"),
        }
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}
