//! Runs every pipeline of a config in one process. Pipelines are isolated:
//! one that fails to start or stops on an error is reported, and the others
//! keep running. A shutdown drains them all within the configured deadline.
//!
//! A pipeline that stops on an error after it started is started again by
//! its restart policy (`restart`, `[pipelines.<name>.restart]`): its run
//! ended as any failed run does (in-flight events handed back to the
//! source unacknowledged, uncommitted state aborted), and the new run opens
//! source, sinks and state anew with the plugin version that was current.
//! The wait before it is cut short by a shutdown or a config reload.
//!
//! It also applies a changed config while running (`Supervisor::reload`,
//! on SIGHUP): pipelines that were added start, removed ones drain and stop,
//! changed ones restart (or, when only their plugin changed, get the new
//! version swapped in), and the others are not touched. A config that does
//! not load changes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) mod restart;

use crate::admin::{self, Health, PipelineHandle, PipelineState, Probe, Registry, Restarting};
use crate::config::{Config, PipelineConfig};
use crate::dispatch::StatsSnapshot;
use crate::pipeline::{self, SinkSet};
use crate::reload::{self, PluginVersions};
use crate::runtime::engine::EngineError;
use crate::runtime::{Runtime, RuntimeOptions};
use crate::telemetry::Telemetry;

/// How one pipeline ended.
#[derive(Debug, Clone)]
pub struct PipelineReport {
    /// The pipeline's name in the config.
    pub name: String,
    /// The counters of its last run when it ended.
    pub stats: StatsSnapshot,
    /// `None` when it ran to its end or drained cleanly.
    pub error: Option<String>,
}

/// Writes `bound` to `path` through a temporary file and a rename, so a
/// reader polling for the file never sees half an address.
async fn write_address(path: &std::path::Path, bound: std::net::SocketAddr) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    tokio::fs::write(&partial, format!("{bound}\n")).await?;
    tokio::fs::rename(&partial, path).await
}

/// The runtime options a config implies.
pub fn runtime_options(config: &Config) -> RuntimeOptions {
    RuntimeOptions {
        allocator: config.runtime.allocator,
        max_memory: config.pipelines.values().map(|p| p.policy.memory.as_u64()).max().unwrap_or(0),
        cache_dir: config.runtime.cache_dir.clone(),
        trusted_keys: config.plugins.trusted_keys.clone(),
        plugin_threads: config.runtime.plugin_threads,
    }
}

/// Why the host could not start: nothing runs, and `sluice run` exits
/// non-zero with this message.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The wasmtime engine or its compiled-component cache cannot be set up.
    #[error("cannot start the WebAssembly runtime: {0}")]
    Engine(#[from] EngineError),
    /// `[admin] listen` is taken or not ours to bind. Failing the start
    /// (rather than running without the API) keeps health checks and
    /// `sluice status` from silently pointing at nothing or at another
    /// process.
    #[error("cannot start the admin API on {listen} (`[admin] listen`): {source}")]
    Admin {
        /// The address `[admin] listen` asks for.
        listen: std::net::SocketAddr,
        /// Why it cannot be bound.
        source: std::io::Error,
    },
    /// `--admin-addr-file` cannot be written, so whoever waits for it
    /// would never learn the address.
    #[error("cannot write the admin API's address to {} (--admin-addr-file): {source}", path.display())]
    AdminAddrFile {
        /// The file asked for.
        path: PathBuf,
        /// Why it cannot be written.
        source: std::io::Error,
    },
}

/// How `sluice run` was asked to run, beyond the config itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The config file, re-read on each reload.
    pub config_path: Option<PathBuf>,
    /// Where to write the admin API's bound address once it listens.
    pub admin_addr_file: Option<PathBuf>,
}

/// Runs all pipelines until each ends or `shutdown` fires and they drain.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Vec<PipelineReport>, StartError> {
    let (_keep, reloads) = mpsc::channel(1);
    run_with_reloads(config, RunOptions::default(), shutdown, reloads).await
}

/// Like [`run`]; each message on `reloads` re-reads `options.config_path`
/// and applies what changed.
pub async fn run_with_reloads(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
    mut reloads: mpsc::Receiver<()>,
) -> Result<Vec<PipelineReport>, StartError> {
    let RunOptions { config_path, admin_addr_file } = options;
    let runtime = Runtime::new(&runtime_options(&config))?;
    crate::kafka::instance::configure(config.runtime.instance_id.clone());
    let telemetry = start_telemetry(&config).await;
    let (finished_tx, mut finished) = mpsc::channel(64);
    let mut supervisor = Supervisor {
        runtime,
        sinks: Arc::new(SinkSet::default()),
        registry: Arc::new(RwLock::new(BTreeMap::new())),
        health: Health::default(),
        running: BTreeMap::new(),
        finished: finished_tx,
        config: config.clone(),
        shutdown: shutdown.clone(),
        runs: 0,
        telemetry: telemetry.clone(),
        store: config.plugins.store.clone().map(|store| Arc::new(crate::store::follow::Shared::new(store))),
    };
    let admin_stop = CancellationToken::new();
    match &config.admin {
        Some(admin) => {
            let limits = admin::Limits::from_config(admin);
            let bound = admin::serve(limits, supervisor.registry.clone(), supervisor.health.clone(), admin_stop.clone())
                .await
                .map_err(|source| StartError::Admin { listen: admin.listen, source })?;
            tracing::info!(%bound, "admin API listening on {bound}");
            if let Some(path) = &admin_addr_file {
                if let Err(source) = write_address(path, bound).await {
                    admin_stop.cancel();
                    return Err(StartError::AdminAddrFile { path: path.clone(), source });
                }
            }
        }
        None if admin_addr_file.is_some() => {
            tracing::warn!("--admin-addr-file is set but the config has no `[admin]` table: no address is written");
        }
        None => {}
    }
    for (name, pipeline) in config.pipelines.clone() {
        supervisor.start(name, pipeline, None);
    }
    let announce = tokio::spawn(crate::service::announce_ready(supervisor.health.clone()));
    let watchdog = tokio::spawn(crate::service::keep_watchdog());

    let mut reports = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    while !supervisor.running.is_empty() {
        let at = deadline.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            Some(ended) = finished.recv() => {
                // A restarted pipeline's old run ends after its new run is
                // registered: only the current run's end removes the name.
                if supervisor.running.get(&ended.name).is_some_and(|r| r.run == ended.run) {
                    supervisor.running.remove(&ended.name);
                    if !supervisor.config.pipelines.contains_key(&ended.name) {
                        supervisor.health.remove(&ended.name, ended.run);
                    }
                    if let Ok(mut registry) = supervisor.registry.write() {
                        registry.remove(&ended.name);
                    }
                }
                reports.push(ended.report);
            }
            _ = shutdown.cancelled(), if deadline.is_none() => {
                tracing::info!("shutting down: draining in-flight events (up to {:?})", supervisor.config.runtime.shutdown_timeout);
                deadline = Some(tokio::time::Instant::now() + supervisor.config.runtime.shutdown_timeout);
            }
            Some(()) = reloads.recv(), if deadline.is_none() => {
                if let Some(path) = &config_path {
                    crate::service::reloading();
                    supervisor.reload(path).await;
                    crate::service::reloaded();
                }
            }
            _ = tokio::time::sleep_until(at), if deadline.is_some() => {
                tracing::error!(
                    pipelines = supervisor.running.len(),
                    "shutdown deadline passed: abandoning in-flight events; they are redelivered after a restart"
                );
                for (_, running) in std::mem::take(&mut supervisor.running) {
                    running.task.abort();
                }
            }
        }
    }
    admin_stop.cancel();
    announce.abort();
    watchdog.abort();
    // Closing flushes the sinks; a broker that is down would hold a flush
    // (and the process) for as long as it stays down. The close gets what is
    // left of the shutdown deadline (at least a second; without a shutdown,
    // `shutdown_timeout`); records it could not confirm were never
    // acknowledged at their source, so they are delivered again.
    let now = tokio::time::Instant::now();
    let close_by = deadline.unwrap_or(now + supervisor.config.runtime.shutdown_timeout).max(now + std::time::Duration::from_secs(1));
    match tokio::time::timeout_at(close_by, supervisor.sinks.close_all()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!("closing sinks: {err}"),
        Err(_) => tracing::error!(
            "sinks did not close by the shutdown deadline (a broker down?): records not confirmed are delivered again after a restart"
        ),
    }
    if let Some(telemetry) = telemetry {
        drop(supervisor);
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(reports)
}

/// Starts the OpenTelemetry exporter if `[tracing]` asks for it. One that
/// cannot start is logged, and the pipelines run without spans: tracing is
/// not worth an outage.
async fn start_telemetry(config: &Config) -> Option<Arc<Telemetry>> {
    let tracing_config = config.tracing.clone()?;
    match tokio::task::spawn_blocking(move || Telemetry::start(&tracing_config)).await {
        Ok(Ok(telemetry)) => Some(Arc::new(telemetry)),
        Ok(Err(err)) => {
            tracing::error!("{err}; running without span export");
            None
        }
        Err(err) => {
            tracing::error!("the OpenTelemetry exporter did not start: {err}; running without span export");
            None
        }
    }
}

/// A pipeline task's end, tagged with which run of that name it was.
struct Running {
    name: String,
    run: u64,
    report: PipelineReport,
}

struct Entry {
    config: PipelineConfig,
    run: u64,
    stop: CancellationToken,
    task: tokio::task::AbortHandle,
    /// Resolves once the run's task ended (a restart waits for it).
    done: tokio::sync::watch::Receiver<bool>,
}

struct Supervisor {
    runtime: Runtime,
    sinks: Arc<SinkSet>,
    registry: Registry,
    /// Pipeline states for `/readyz`.
    health: Health,
    running: BTreeMap<String, Entry>,
    finished: mpsc::Sender<Running>,
    config: Config,
    shutdown: CancellationToken,
    /// Runs started so far: tells a restarted pipeline's old run from its new one.
    runs: u64,
    /// The OpenTelemetry exporter (`[tracing]`).
    telemetry: Option<Arc<Telemetry>>,
    /// The fleet's plugin store (`[plugins.store]`).
    store: Option<Arc<crate::store::follow::Shared>>,
}

impl Supervisor {
    /// Starts pipeline `name`, after `after` (a previous run) has ended.
    fn start(&mut self, name: String, config: PipelineConfig, after: Option<tokio::sync::watch::Receiver<bool>>) {
        self.runs += 1;
        let run = self.runs;
        let stop = self.shutdown.child_token();
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let finished = self.finished.clone();
        self.health.set(&name, run, PipelineState::Starting);
        let context = RunContext {
            runtime: self.runtime.clone(),
            sinks: self.sinks.clone(),
            registry: self.registry.clone(),
            health: self.health.clone(),
            run,
            watch: self.config.runtime.watch_plugins,
            telemetry: self.telemetry.clone(),
            store: self.store.clone(),
        };
        let (task_name, task_config, task_stop) = (name.clone(), config.clone(), stop.clone());
        let task = tokio::spawn(async move {
            if let Some(mut previous) = after {
                let _ = previous.wait_for(|ended| *ended).await;
            }
            let report = supervise(&task_name, &task_config, &context, task_stop).await;
            let _ = done_tx.send(true);
            let _ = finished.send(Running { name: task_name, run, report }).await;
        });
        self.running.insert(name, Entry { config, run, stop, task: task.abort_handle(), done });
    }

    /// Re-reads the config and applies what changed.
    async fn reload(&mut self, path: &std::path::Path) {
        let new = match crate::config::load(path) {
            Ok(new) => new,
            Err(err) => {
                tracing::error!("config reload refused, nothing changed: {err}");
                return;
            }
        };
        if new.runtime != self.config.runtime
            || new.admin != self.config.admin
            || new.tracing != self.config.tracing
            || new.plugins != self.config.plugins
        {
            tracing::warn!("config reload: `[runtime]`, `[admin]`, `[tracing]` and `[plugins]` changes take effect at the next restart");
        }
        let (mut added, mut removed, mut restarted, mut swapped) = (0, 0, 0, 0);
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            if !new.pipelines.contains_key(&name) {
                if let Some(entry) = self.running.get(&name) {
                    tracing::info!(pipeline = %name, "config reload: pipeline removed, draining it");
                    entry.stop.cancel();
                    removed += 1;
                }
            }
        }
        for (name, config) in &new.pipelines {
            let Some(entry) = self.running.get(name) else {
                tracing::info!(pipeline = %name, "config reload: new pipeline, starting it");
                self.start(name.clone(), config.clone(), None);
                added += 1;
                continue;
            };
            if &entry.config == config {
                continue;
            }
            let mut same_but_plugin = entry.config.clone();
            same_but_plugin.plugin = config.plugin.clone();
            let handle = self.registry.read().ok().and_then(|r| r.get(name).cloned());
            if &same_but_plugin == config {
                if let (Some(handle), Ok(spec)) = (handle, pipeline::plugin_spec(name, config)) {
                    tracing::info!(pipeline = %name, "config reload: only the plugin changed, loading the new version");
                    if handle.versions.reconfigure(spec).await.is_ok() {
                        if let Some(entry) = self.running.get_mut(name) {
                            entry.config = config.clone();
                        }
                        swapped += 1;
                    }
                    continue;
                }
            }
            tracing::info!(pipeline = %name, "config reload: pipeline changed, draining it and starting it again");
            entry.stop.cancel();
            let after = entry.done.clone();
            self.start(name.clone(), config.clone(), Some(after));
            restarted += 1;
        }
        self.config.pipelines = new.pipelines;
        tracing::info!(added, removed, restarted, swapped, "config reloaded");
    }
}

/// What a pipeline's run shares with the supervisor.
struct RunContext {
    runtime: Runtime,
    sinks: Arc<SinkSet>,
    registry: Registry,
    health: Health,
    /// Which run of the pipeline's name this is.
    run: u64,
    /// Watch the plugin file for changes.
    watch: bool,
    telemetry: Option<Arc<Telemetry>>,
    store: Option<Arc<crate::store::follow::Shared>>,
}

/// Runs pipeline `name` until it ends, starting it again after failures
/// as its restart policy says; sets its final state.
async fn supervise(name: &str, config: &PipelineConfig, context: &RunContext, stop: CancellationToken) -> PipelineReport {
    let mut restarts = restart::Restarts::new(&config.restart);
    // The plugin versions of the last run that started: a restart runs the
    // version that was current.
    let mut versions: Option<Arc<PluginVersions>> = None;
    loop {
        let ended = run_pipeline(name, config, context, stop.clone(), versions.clone()).await;
        let report = ended.report;
        let Some(error) = report.error.clone() else {
            context.health.set(name, context.run, PipelineState::Finished);
            return report;
        };
        let first = versions.is_none() && ended.versions.is_none();
        versions = ended.versions.or(versions);
        // A pipeline that never started has a config or deployment error,
        // reported at once; a stop (shutdown, reload) is not a failure to
        // retry; nor is a fenced exactly-once producer: another host took
        // its transactional id, and a restart would fence that one in turn.
        if first || stop.is_cancelled() || ended.fenced {
            context.health.set(name, context.run, PipelineState::Failed(error));
            return report;
        }
        match restarts.after_failure(std::time::Instant::now(), ended.up, rand::random_range(-1.0..=1.0)) {
            restart::Verdict::Restart { attempt, delay } => {
                let next_try = crate::time::rfc3339(std::time::SystemTime::now() + delay);
                // The error is on the line before ("pipeline stopped: …" or
                // "cannot start pipeline: …"): one line per failure says it.
                tracing::warn!(
                    pipeline = %name,
                    attempt,
                    "pipeline restarts in {} (attempt {attempt})",
                    humantime::format_duration(round_to_millis(delay))
                );
                let state = Restarting { attempt, next_try, last_error: error.clone() };
                context.health.set(name, context.run, PipelineState::Restarting(state));
                tokio::select! {
                    _ = stop.cancelled() => {
                        context.health.set(name, context.run, PipelineState::Failed(error));
                        return report;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                context.health.restarted(name);
                context.health.set(name, context.run, PipelineState::Starting);
            }
            restart::Verdict::Disabled => {
                context.health.set(name, context.run, PipelineState::Failed(error));
                return report;
            }
            restart::Verdict::GiveUp { restarts, window } => {
                let reason = format!(
                    "failed after {restarts} restart(s) within {} (restart.max_restarts); not restarted again: {error}",
                    humantime::format_duration(window)
                );
                tracing::error!(pipeline = %name, "restart limit reached, the pipeline stays failed: {reason}");
                context.health.set(name, context.run, PipelineState::Failed(reason.clone()));
                return PipelineReport { error: Some(reason), ..report };
            }
        }
    }
}

fn round_to_millis(delay: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(delay.as_millis() as u64)
}

/// How one run of a pipeline ended.
struct Ended {
    report: PipelineReport,
    /// Its plugin versions, if it got as far as loading its plugin.
    versions: Option<Arc<PluginVersions>>,
    /// How long it ran after it started (zero if it did not start).
    up: std::time::Duration,
    /// Its exactly-once producer was fenced by another with the same id.
    fenced: bool,
}

/// Builds, registers and runs one pipeline to its end; unregisters it.
/// `versions`: the previous run's (on a restart).
async fn run_pipeline(
    name: &str,
    config: &PipelineConfig,
    context: &RunContext,
    stop: CancellationToken,
    versions: Option<Arc<PluginVersions>>,
) -> Ended {
    let RunContext { runtime, sinks, registry, health, run, watch, telemetry, store } = context;
    // A start that waits on a broker that is down must not hold a shutdown
    // (or a config reload) up: the stop cuts it short.
    let building = async {
        // A first run takes the fleet's current version; a restart keeps
        // the one it ran (the follower brings it up to date).
        let stored = match (store, &versions) {
            (Some(store), None) => crate::store::follow::starting_version(store, &sinks.connections, name).await,
            _ => None,
        };
        pipeline::build(name, config, runtime, sinks, telemetry.as_deref(), versions.as_deref(), stored).await
    };
    let built = tokio::select! {
        built = building => built,
        _ = stop.cancelled() => {
            tracing::info!(pipeline = %name, "stopped while starting");
            let report = PipelineReport { name: name.to_owned(), stats: StatsSnapshot::default(), error: None };
            return Ended { report, versions, up: std::time::Duration::ZERO, fenced: false };
        }
    };
    let built = match built {
        Ok(built) => built,
        Err(err) => {
            tracing::error!(pipeline = %name, "cannot start pipeline: {err}");
            let report = PipelineReport { name: name.to_owned(), stats: StatsSnapshot::default(), error: Some(err.to_string()) };
            return Ended { report, versions: None, up: std::time::Duration::ZERO, fenced: false };
        }
    };
    let dispatcher = built.dispatcher;
    let versions = versions.unwrap_or_else(|| {
        Arc::new(PluginVersions::new(name, runtime.clone(), dispatcher.plugin.clone(), built.plugin, dispatcher.rollout.clone()))
    });
    let handle = Arc::new(PipelineHandle {
        name: name.to_owned(),
        source: built.source.describe(),
        started_at: crate::time::rfc3339(std::time::SystemTime::now()),
        versions: versions.clone(),
        pause: built.pause,
        stats: dispatcher.stats.clone(),
        probes: connection_probes(config, sinks).await,
        stuck_after: config.policy.stuck_threshold(),
        state: dispatcher.state.clone(),
        tap: dispatcher.tap.clone(),
        dead_letters: Arc::new(crate::admin::dead_letters::DeadLetters::of(config)),
    });
    if let Ok(mut registry) = registry.write() {
        registry.insert(name.to_owned(), handle.clone());
    }
    health.set(name, *run, PipelineState::Running);
    let started = std::time::Instant::now();
    // The pipeline watches its own plugin file for as long as it runs.
    let watching = CancellationToken::new();
    let _stop_watching = watching.clone().drop_guard();
    // With a fleet store, the store says which version runs: a local file
    // change would split this host from the fleet unseen.
    if *watch && store.is_none() {
        if let Err(err) = reload::watch::spawn(vec![versions.clone()], watching.clone()) {
            tracing::warn!(pipeline = %name, "cannot watch the plugin file; reload it through the admin API: {err}");
        }
    }
    reload::drive_rollout(versions.clone(), watching.clone());
    let follower = store.as_ref().map(|store| {
        let host = crate::kafka::instance::instance_id();
        crate::store::follow::spawn(store.clone(), sinks.clone(), versions.clone(), name.to_owned(), host, watching.clone())
    });
    tracing::info!(pipeline = %name, source = %built.source.describe(), "pipeline started");
    let stats = dispatcher.stats.clone();
    let result = dispatcher.run(built.source, stop).await;
    if let Some(follower) = follower {
        // It removes this host's heartbeat: the fleet view drops the host
        // now, not when the heartbeat expires.
        watching.cancel();
        let _ = follower.await;
    }
    let up = started.elapsed();
    let stats = stats.snapshot();
    match &result {
        Ok(()) => tracing::info!(pipeline = %name, %stats, "pipeline finished"),
        Err(err) => tracing::error!(pipeline = %name, %stats, "pipeline stopped: {err}"),
    }
    // This run is over: `/pipelines` and `/metrics` stop showing it (a new
    // run, of a restart or a config reload, registers itself).
    if let Ok(mut registry) = registry.write() {
        if registry.get(name).is_some_and(|current| Arc::ptr_eq(current, &handle)) {
            registry.remove(name);
        }
    }
    let fenced = built.transaction.as_ref().filter(|t| t.fenced());
    // The error that stopped the run may predate librdkafka learning of the
    // fencing (a commit failing with a bare broker error): say it now.
    let error = result.err().map(|e| match fenced {
        Some(transaction) if !e.is_fenced() => transaction.explain(e).into_message(),
        _ => e.to_string(),
    });
    let fenced = fenced.is_some();
    let report = PipelineReport { name: name.to_owned(), stats, error };
    Ended { report, versions: Some(versions), up, fenced }
}

/// Probes of the NATS connections a pipeline uses (its source's and its
/// sinks'): not ready while one is disconnected. Kafka clients reconnect on
/// their own and have no connection state to probe; their trouble shows in
/// the logs and in `sluice_source_lag`.
async fn connection_probes(config: &PipelineConfig, sinks: &SinkSet) -> Vec<Probe> {
    let servers = config.source.nats_server().into_iter().chain(
        std::iter::once(&config.sink).chain(config.routes.values()).chain(config.dead_letter.iter()).filter_map(|s| s.nats_server()),
    );
    let mut unique = Vec::new();
    for server in servers {
        if !unique.contains(&server) {
            unique.push(server);
        }
    }
    let mut probes = Vec::new();
    for server in unique {
        if let Ok(client) = sinks.connections.get(&server).await {
            let url = crate::nats::redact_url(&server.url);
            probes.push(Arc::new(move || match client.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                state => Err(format!("NATS connection to {url} is {state:?}")),
            }) as Probe);
        }
    }
    probes
}
