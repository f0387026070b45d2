//! Hot reload: new plugin versions, loaded off the hot path and swapped in
//! between batches, with the previous version kept for rollback.
//!
//! A new version (from the plugin file, an upload or a changed config) is
//! read, hashed, checked against the pin, compiled, linked against the world
//! and instantiated once with its `init` config, on a blocking thread, while
//! the current version keeps serving. Only a version that passes all of that
//! is swapped in ([`crate::dispatch::PluginSlot`]); anything else is a
//! rejection: logged, counted and shown by the admin API, and nothing
//! changes. [`watch`] triggers reloads when plugin files change.

pub mod watch;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::dispatch::{HandlerFactory, PluginSlot};
use crate::rollout::{CandidateStatus, Outcome, Rollout, Trial};
use crate::runtime::{LoadedPlugin, PluginSpec, Runtime};

/// What made a version current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Loaded at start from the config.
    Start,
    /// The plugin file changed.
    FileWatch,
    /// `POST /pipelines/NAME/reload` (re-read the file).
    Reload,
    /// `PUT /pipelines/NAME/plugin` (bytes in the request).
    Upload,
    /// `POST /pipelines/NAME/rollback`.
    Rollback,
    /// The config changed (SIGHUP) in the plugin section only.
    Config,
    /// The fleet's plugin store (`sluice plugin push` / `rollback`).
    Store,
    /// A candidate promoted (by its rollout rules, or by hand).
    Promotion,
    /// `POST /pipelines/NAME/candidate` (a candidate to try).
    Candidate,
}

/// A version as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub digest: String,
    pub generation: u64,
    pub origin: Origin,
    /// RFC 3339, UTC.
    pub loaded_at: String,
    pub load_ms: u64,
    /// The event versions it declared it accepts (`manifest.accepts`);
    /// absent when it does not export `manifest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepts: Option<Vec<String>>,
}

/// A version that was refused, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub origin: Origin,
    pub error: String,
    pub at: String,
}

/// Everything the admin API shows about a pipeline's plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub path: String,
    pub current: VersionInfo,
    pub previous: Option<VersionInfo>,
    pub reloads: u64,
    pub rejections: u64,
    pub last_rejection: Option<Rejection>,
    /// The pipeline across the fleet (`[plugins.store]`): what each host
    /// runs, from their heartbeats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::store::FleetStatus>,
    /// The candidate version being tried, and how the last one ended.
    pub rollout: crate::rollout::RolloutStatus,
}

/// Why a reload did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// The new version failed a check; the current one keeps serving.
    #[error("{0}")]
    Rejected(String),
    #[error("there is no previous version to roll back to")]
    NoPrevious,
    #[error("there is no candidate version being tried")]
    NoCandidate,
}

struct State {
    spec: PluginSpec,
    current: (LoadedPlugin, VersionInfo),
    previous: Option<(LoadedPlugin, VersionInfo)>,
    reloads: u64,
    rejections: u64,
    last_rejection: Option<Rejection>,
    fleet: Option<crate::store::FleetStatus>,
}

/// One pipeline's plugin versions.
pub struct PluginVersions {
    pipeline: String,
    runtime: Runtime,
    slot: Arc<PluginSlot>,
    state: Mutex<State>,
    /// One load at a time per pipeline, so two quick reloads land in order.
    loading: tokio::sync::Mutex<()>,
    /// The candidate version tried beside the current one.
    rollout: Arc<Rollout>,
    /// The store that named the candidate, and its digest, when the
    /// candidate came from the fleet's store: a verdict on it is written
    /// there first, so the whole fleet follows one decision.
    fleet_candidate: Mutex<Option<(Arc<dyn crate::store::PluginStore>, String)>>,
}

impl PluginVersions {
    pub fn new(pipeline: &str, runtime: Runtime, slot: Arc<PluginSlot>, plugin: LoadedPlugin, rollout: Arc<Rollout>) -> Self {
        let info = VersionInfo {
            digest: plugin.digest().to_owned(),
            generation: slot.generation(),
            origin: Origin::Start,
            loaded_at: now(),
            load_ms: plugin.load_time().as_millis() as u64,
            accepts: plugin.accepts().map(crate::schema::Accepts::selectors),
        };
        Self {
            pipeline: pipeline.to_owned(),
            runtime,
            slot,
            state: Mutex::new(State {
                spec: plugin.spec().clone(),
                current: (plugin, info),
                previous: None,
                reloads: 0,
                rejections: 0,
                last_rejection: None,
                fleet: None,
            }),
            loading: tokio::sync::Mutex::new(()),
            rollout,
            fleet_candidate: Mutex::new(None),
        }
    }

    /// The pipeline's rollout: a restarted run's dispatcher takes it over
    /// with the slot, so a candidate keeps being tried.
    pub fn rollout(&self) -> Arc<Rollout> {
        self.rollout.clone()
    }

    /// Loads a candidate version with the checks of an upload (sha256,
    /// world, `init`, signature) and starts trying it beside the current
    /// one; `trial` overrides the config's mode and fractions.
    pub async fn candidate(
        &self,
        bytes: Vec<u8>,
        sha256: Option<String>,
        signature: Option<String>,
        trial: Trial,
    ) -> Result<CandidateStatus, ReloadError> {
        let _one_at_a_time = self.loading.lock().await;
        if let Some(expected) = &sha256 {
            let actual = crate::runtime::plugin::digest_of(&bytes);
            if !expected.eq_ignore_ascii_case(&actual) {
                return Err(
                    self.reject(Origin::Candidate, format!("the candidate has sha256 {actual}, not the {expected} the request expects"))
                );
            }
        }
        let plugin = match LoadedPlugin::from_bytes(&self.runtime, self.spec(), bytes, signature).await {
            Ok(plugin) => plugin,
            Err(err) => return Err(self.reject(Origin::Candidate, format!("the candidate: {err}"))),
        };
        if plugin.digest() == self.current().digest() {
            return Err(ReloadError::Rejected(format!("the candidate {} is the current version", &plugin.digest()[..12])));
        }
        Ok(self.rollout.begin(plugin, trial))
    }

    /// Records that the candidate `digest` came from `store` (`None`: no
    /// candidate from the store any more).
    pub fn set_fleet_candidate(&self, from: Option<(Arc<dyn crate::store::PluginStore>, String)>) {
        if let Ok(mut fleet) = self.fleet_candidate.lock() {
            *fleet = from;
        }
    }

    /// The store that named the candidate `digest`, if one did.
    fn fleet_candidate(&self, digest: &str) -> Option<Arc<dyn crate::store::PluginStore>> {
        let fleet = self.fleet_candidate.lock().ok()?;
        fleet.as_ref().filter(|(_, named)| named == digest).map(|(store, _)| store.clone())
    }

    /// Whether the candidate `digest` came from the fleet's store.
    pub fn fleet_candidate_is(&self, digest: &str) -> bool {
        self.fleet_candidate(digest).is_some()
    }

    /// The sha256 of the candidate being tried, if any.
    pub fn candidate_digest(&self) -> Option<String> {
        self.rollout.status().candidate.map(|c| c.digest)
    }

    /// Makes the candidate current (the current one becomes previous, so
    /// a rollback undoes it). `id`: only that candidate (the rules'
    /// verdict on it); `None`: whichever is tried (by hand).
    pub async fn promote(&self, id: Option<u64>, reason: &str) -> Result<VersionInfo, ReloadError> {
        let _one_at_a_time = self.loading.lock().await;
        let candidate = self.rollout.end(id, Outcome::Promoted, reason).ok_or(ReloadError::NoCandidate)?;
        let plugin =
            candidate.plugin.clone().ok_or_else(|| ReloadError::Rejected("the candidate has no loaded plugin to promote".into()))?;
        self.settle(Ok(plugin), Origin::Promotion, false)
    }

    /// Stops trying the candidate: rolled back by its rules, or aborted by
    /// hand. The current version never stopped serving.
    pub fn drop_candidate(&self, id: Option<u64>, outcome: Outcome, reason: &str) -> Result<CandidateStatus, ReloadError> {
        self.rollout.end(id, outcome, reason).map(|candidate| candidate.status()).ok_or(ReloadError::NoCandidate)
    }

    /// Loads the plugin file again (the file changed, or an operator asked).
    /// An identical file is not swapped in again.
    pub async fn reload(&self, origin: Origin) -> Result<VersionInfo, ReloadError> {
        let _one_at_a_time = self.loading.lock().await;
        let loaded = LoadedPlugin::load(&self.runtime, self.spec()).await;
        self.settle(loaded, origin, true)
    }

    /// Loads an uploaded version. `sha256`, when given, must match it (on top
    /// of any pin in the config).
    /// `signature` is checked when `[plugins] trusted_keys` is set.
    pub async fn upload(&self, bytes: Vec<u8>, sha256: Option<String>, signature: Option<String>) -> Result<VersionInfo, ReloadError> {
        let _one_at_a_time = self.loading.lock().await;
        if let Some(expected) = &sha256 {
            let actual = crate::runtime::plugin::digest_of(&bytes);
            if !expected.eq_ignore_ascii_case(&actual) {
                return Err(self
                    .reject(Origin::Upload, format!("the uploaded version has sha256 {actual}, not the {expected} the request expects")));
            }
        }
        let loaded = LoadedPlugin::from_bytes(&self.runtime, self.spec(), bytes, signature).await;
        self.settle(loaded, Origin::Upload, false)
    }

    /// Loads a version from the fleet's plugin store: the checks of an
    /// upload (its sha256 included), then the swap.
    pub async fn load_from_store(&self, version: crate::store::StoredVersion) -> Result<VersionInfo, ReloadError> {
        let _one_at_a_time = self.loading.lock().await;
        let crate::store::StoredVersion { digest, bytes, signature } = version;
        let actual = crate::runtime::plugin::digest_of(&bytes);
        if actual != digest {
            return Err(self.reject(Origin::Store, format!("the store's version {digest} has sha256 {actual}")));
        }
        let loaded = LoadedPlugin::from_bytes(&self.runtime, self.spec(), bytes, signature).await;
        self.settle(loaded, Origin::Store, true)
    }

    /// Records that the store's current version `digest` could not be
    /// loaded; returns the reason as the heartbeat reports it.
    pub fn refuse_from_store(&self, digest: &str, error: &str) -> String {
        self.reject(Origin::Store, format!("the store's version {digest}: {error}")).to_string()
    }

    /// The fleet status the store last showed.
    pub fn set_fleet(&self, status: crate::store::FleetStatus) {
        if let Ok(mut state) = self.state.lock() {
            state.fleet = Some(status);
        }
    }

    /// Loads the plugin a changed config describes (SIGHUP).
    pub async fn reconfigure(&self, mut spec: PluginSpec) -> Result<VersionInfo, ReloadError> {
        let _one_at_a_time = self.loading.lock().await;
        // The metrics belong to the pipeline: the new version records into
        // the same registry, under the new caps once it is loaded.
        let limits = spec.metrics.limits();
        spec.metrics = self.spec().metrics;
        let loaded = LoadedPlugin::load(&self.runtime, spec.clone()).await;
        let result = self.settle(loaded, Origin::Config, false);
        if result.is_ok() {
            spec.metrics.set_limits(limits);
            if let Ok(mut state) = self.state.lock() {
                state.spec = spec;
            }
        }
        result
    }

    /// Makes the previous version current again (and the current one
    /// previous, so a second rollback undoes the first).
    pub async fn rollback(&self) -> Result<VersionInfo, ReloadError> {
        let _one_at_a_time = self.loading.lock().await;
        let mut state = self.state.lock().map_err(|_| ReloadError::Rejected("state poisoned".into()))?;
        let (plugin, mut info) = state.previous.take().ok_or(ReloadError::NoPrevious)?;
        info.generation = self.slot.swap(Arc::new(plugin.clone()));
        info.origin = Origin::Rollback;
        info.loaded_at = now();
        let old = std::mem::replace(&mut state.current, (plugin, info.clone()));
        state.previous = Some(old);
        state.reloads += 1;
        tracing::info!(pipeline = %self.pipeline, digest = &info.digest[..12], generation = info.generation, "rolled back to the previous plugin version");
        Ok(info)
    }

    pub fn status(&self) -> Option<PluginStatus> {
        let state = self.state.lock().ok()?;
        Some(PluginStatus {
            name: state.current.0.name().to_owned(),
            path: state.spec.path.display().to_string(),
            current: state.current.1.clone(),
            previous: state.previous.as_ref().map(|(_, info)| info.clone()),
            reloads: state.reloads,
            rejections: state.rejections,
            last_rejection: state.last_rejection.clone(),
            fleet: state.fleet.clone(),
            rollout: self.rollout.status(),
        })
    }

    /// The slot the current version is in: a restarted pipeline's new run
    /// takes it over, so it runs the version that was current (an upload
    /// or a reload included), not the file it started with.
    pub fn slot(&self) -> Arc<PluginSlot> {
        self.slot.clone()
    }

    /// The current version.
    pub fn current(&self) -> LoadedPlugin {
        match self.state.lock() {
            Ok(state) => state.current.0.clone(),
            Err(poisoned) => poisoned.into_inner().current.0.clone(),
        }
    }

    /// The metrics the pipeline's plugin records (every version's).
    pub fn metrics(&self) -> crate::runtime::PluginMetrics {
        self.spec().metrics
    }

    /// The plugin file this pipeline's versions come from.
    pub fn path(&self) -> std::path::PathBuf {
        self.spec().path
    }

    /// Whether versions must be signed (`[plugins] trusted_keys`).
    pub fn signed(&self) -> bool {
        self.runtime.trusted_keys().is_some()
    }

    fn spec(&self) -> PluginSpec {
        match self.state.lock() {
            Ok(state) => state.spec.clone(),
            Err(poisoned) => poisoned.into_inner().spec.clone(),
        }
    }

    fn settle(
        &self,
        loaded: Result<LoadedPlugin, crate::runtime::LoadError>,
        origin: Origin,
        skip_identical: bool,
    ) -> Result<VersionInfo, ReloadError> {
        let plugin = match loaded {
            Ok(plugin) => plugin,
            Err(err) if origin == Origin::Upload => return Err(self.reject(origin, format!("the uploaded version: {err}"))),
            Err(err) if origin == Origin::Store => return Err(self.reject(origin, format!("the store's version: {err}"))),
            Err(err) if origin == Origin::Candidate => return Err(self.reject(origin, format!("the candidate: {err}"))),
            Err(err) => return Err(self.reject(origin, err.to_string())),
        };
        let mut state = self.state.lock().map_err(|_| ReloadError::Rejected("state poisoned".into()))?;
        if skip_identical && plugin.digest() == state.current.0.digest() {
            return Ok(state.current.1.clone());
        }
        let generation = self.slot.swap(Arc::new(plugin.clone()) as Arc<dyn HandlerFactory>);
        let info = VersionInfo {
            digest: plugin.digest().to_owned(),
            generation,
            origin,
            loaded_at: now(),
            load_ms: plugin.load_time().as_millis() as u64,
            accepts: plugin.accepts().map(crate::schema::Accepts::selectors),
        };
        let old = std::mem::replace(&mut state.current, (plugin, info.clone()));
        state.previous = Some(old);
        state.reloads += 1;
        tracing::info!(
            pipeline = %self.pipeline,
            digest = &info.digest[..12],
            generation,
            ?origin,
            load_ms = info.load_ms,
            accepts = info.accepts.as_ref().map(|list| list.join(", ")),
            "new plugin version swapped in"
        );
        Ok(info)
    }

    fn reject(&self, origin: Origin, error: String) -> ReloadError {
        tracing::error!(pipeline = %self.pipeline, ?origin, "new plugin version rejected, the current one keeps serving: {error}");
        if let Ok(mut state) = self.state.lock() {
            state.rejections += 1;
            state.last_rejection = Some(Rejection { origin, error: error.clone(), at: now() });
        }
        ReloadError::Rejected(error)
    }
}

/// Acts on what a candidate's rollout rules decide, for as long as the
/// pipeline's run lasts (`stop`). A candidate named by the fleet's store
/// is decided there first: when another host decided before this one, the
/// store says so and this host follows the pointer instead
/// ([`crate::store::follow`]).
pub fn drive_rollout(versions: Arc<PluginVersions>, stop: tokio_util::sync::CancellationToken) {
    use crate::rollout::rules::Judgement;
    tokio::spawn(async move {
        let rollout = versions.rollout();
        loop {
            let (candidate, verdict) = tokio::select! {
                _ = stop.cancelled() => return,
                decided = rollout.decided() => decided,
            };
            let decision = match &verdict {
                Judgement::Promote(_) => crate::store::Decision::Promote,
                Judgement::RollBack(_) => crate::store::Decision::RollBack,
                Judgement::Wait => continue,
            };
            let digest = candidate.status().digest;
            if let Some(store) = versions.fleet_candidate(&digest) {
                match crate::store::decide(store.as_ref(), &versions.pipeline, Some(&digest), decision).await {
                    Ok(_) => {
                        tracing::info!(pipeline = %versions.pipeline, digest = &digest[..digest.len().min(12)], ?decision, "rollout decision written to the plugin store")
                    }
                    Err(crate::store::StoreError::NoCandidate(_)) => {
                        tracing::info!(pipeline = %versions.pipeline, "another host or an operator decided on the candidate first; following the plugin store");
                        if !until_replaced(&rollout, &candidate, &stop).await {
                            return;
                        }
                        continue;
                    }
                    // The store cannot be reached: the decision holds here
                    // (the current version is safe either way); the
                    // follower brings this host back to the store's pointer.
                    Err(err) => {
                        tracing::warn!(pipeline = %versions.pipeline, "cannot write the rollout decision to the plugin store: {err}")
                    }
                }
            }
            let acted = match verdict {
                Judgement::Promote(why) => versions.promote(Some(candidate.id), &why).await.map(|_| ()),
                Judgement::RollBack(why) => versions.drop_candidate(Some(candidate.id), Outcome::RolledBack, &why).map(|_| ()),
                Judgement::Wait => Ok(()),
            };
            if let Err(err) = acted {
                tracing::debug!(pipeline = %versions.pipeline, "rollout verdict not acted on: {err}");
                if !until_replaced(&rollout, &candidate, &stop).await {
                    return;
                }
            }
        }
    });
}

/// Waits until `candidate` is no longer on trial (the follower or an
/// operator ended it); `false` when the pipeline stopped first. A decided
/// candidate left in place would make `decided` return at once, and the
/// driver spin (writing to the store each turn) until it goes.
async fn until_replaced(
    rollout: &crate::rollout::Rollout,
    candidate: &Arc<crate::rollout::Candidate>,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    while rollout.is_trying(candidate) {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    true
}

fn now() -> String {
    crate::time::rfc3339(SystemTime::now())
}
