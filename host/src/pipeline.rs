//! Assembles one pipeline from its config: opens the source and sinks, loads
//! the plugin, and returns a [`Dispatcher`] ready to run.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{watch, Mutex};

use crate::config::{Ordering, PipelineConfig, SinkConfig, SourceConfig};
use crate::dispatch::breaker::Breaker;
use crate::dispatch::idempotency::Guard;
use crate::dispatch::trace::Tracing;
use crate::dispatch::{Dispatcher, PluginSlot, RetryPolicy, Router, Stats};
use crate::kafka::transaction::Transaction;
use crate::nats::Connections;
use crate::reload::PluginVersions;
use crate::runtime::{LoadError, LoadedPlugin, PluginSpec, Runtime};
use crate::sink::kafka::Producers;
use crate::sink::{Sink, SinkContext, SinkError};
use crate::source::{Source, SourceContext, SourceError};
use crate::telemetry::Telemetry;

/// Why a pipeline could not be assembled; the supervisor's restart policy
/// decides whether it is tried again.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The plugin cannot be loaded (file, digest, signature, world, `init`).
    #[error(transparent)]
    Plugin(#[from] LoadError),
    /// The source cannot be opened.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink (an output's or the dead letter's) cannot be opened.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// `plugin.config` cannot be flattened into the plugin's init config.
    #[error(transparent)]
    PluginConfig(#[from] crate::config::PluginConfigError),
    /// The pipeline has no `dead_letter` (the config rules refuse this;
    /// a pipeline built without `config::load` can still get here).
    #[error("no dead_letter sink")]
    NoDeadLetter,
    /// A `clients` destination cannot be opened.
    #[error(transparent)]
    Clients(#[from] crate::client::OpenError),
    /// The `state` backend cannot be opened or recovered.
    #[error("cannot open the pipeline's state: {0}")]
    State(#[from] crate::state::StateError),
    /// The `schemas` table cannot be compiled into a gate.
    #[error("{0}")]
    Schemas(String),
    /// The plugin threads cannot be started.
    #[error(transparent)]
    Engine(#[from] crate::runtime::engine::EngineError),
}

/// The plugin spec a pipeline's config describes.
pub fn plugin_spec(name: &str, config: &PipelineConfig) -> Result<PluginSpec, BuildError> {
    Ok(PluginSpec {
        pipeline: name.to_owned(),
        path: config.plugin.path.clone(),
        sha256: config.plugin.sha256.clone(),
        config: config.plugin.init_config()?,
        wasi: config.plugin.wasi.clone(),
        timeout: config.policy.timeout,
        init_timeout: config.policy.init_timeout,
        grants: grants(config),
        metrics: crate::runtime::PluginMetrics::new(config.plugin.metrics),
        http: config.plugin.http.clone(),
        http_stubs: None,
        memory: config.policy.memory.as_u64(),
        instance: config.plugin.instance,
    })
}

/// The capabilities `config` grants its plugin: `state` with a `state`
/// table, `http` with a `plugin.http` table, `client` with at least one
/// `clients` table.
pub(crate) fn grants(config: &PipelineConfig) -> Vec<crate::runtime::Capability> {
    use crate::runtime::Capability;
    let mut grants = Vec::new();
    if config.state.is_some() {
        grants.push(Capability::State);
    }
    if config.plugin.http.is_some() {
        grants.push(Capability::Http);
    }
    if !config.clients.is_empty() {
        grants.push(Capability::Client);
    }
    grants
}

/// Loads a plugin (compiling off the async threads, `init` within its
/// timeout).
pub async fn load_plugin(runtime: &Runtime, spec: PluginSpec) -> Result<LoadedPlugin, BuildError> {
    Ok(LoadedPlugin::load(runtime, spec).await?)
}

/// A pipeline ready to run, and its handles for hot reload and pausing.
pub(crate) struct Built {
    pub dispatcher: Dispatcher,
    pub source: Box<dyn Source>,
    /// The version it starts with (also in `dispatcher.plugin`).
    pub plugin: LoadedPlugin,
    /// `true` pauses intake.
    pub pause: watch::Sender<bool>,
    /// The exactly-once transaction, to tell after a failure whether
    /// another host took it over (fenced: restarting would fence that host
    /// in turn).
    pub transaction: Option<Arc<Transaction>>,
}

/// Builds the dispatcher and source of pipeline `name`. A restart passes
/// the previous run's `versions`: the new run takes over their slot, and so
/// runs the version that was current, instead of loading the file again.
/// A first run of a pipeline whose fleet store has a current version passes
/// it as `stored`: it starts with that version (checked as an upload is)
/// rather than its file, unless the version is refused.
pub(crate) async fn build(
    name: &str,
    config: &PipelineConfig,
    runtime: &Runtime,
    sinks: &SinkSet,
    telemetry: Option<&Telemetry>,
    versions: Option<&PluginVersions>,
    stored: Option<crate::store::StoredVersion>,
) -> Result<Built, BuildError> {
    let (slot, plugin) = match versions {
        Some(versions) => {
            let plugin = versions.current();
            tracing::info!(
                pipeline = name,
                plugin = plugin.name(),
                digest = &plugin.digest()[..12],
                "restarting with the current plugin version"
            );
            (versions.slot(), plugin)
        }
        None => {
            let spec = plugin_spec(name, config)?;
            let from_store = match stored {
                Some(version) => load_stored(runtime, name, spec.clone(), version).await,
                None => None,
            };
            let plugin = match from_store {
                Some(plugin) => plugin,
                None => load_plugin(runtime, spec).await?,
            };
            tracing::info!(
                pipeline = name,
                plugin = plugin.name(),
                digest = &plugin.digest()[..12],
                load_ms = plugin.load_time().as_millis() as u64,
                cached = plugin.cache_hit(),
                accepts = plugin.accepts().map(ToString::to_string),
                "plugin loaded"
            );
            (Arc::new(PluginSlot::new(Arc::new(plugin.clone()))), plugin)
        }
    };
    // Exactly-once: every sink writes into the pipeline's own transaction.
    let transaction = open_transaction(name, config).await?;
    let open = |sink| sinks.open_for(sink, transaction.as_ref());
    let fenceable = transaction.clone();
    let default = open(&config.sink).await?;
    let mut routes = HashMap::new();
    for (route, sink) in &config.routes {
        routes.insert(route.clone(), open(sink).await?);
    }
    // Emits are outputs: each emit-capable client destination is a route.
    // Under exactly-once, a Kafka destination on the source's cluster
    // writes into the transaction; on another cluster it cannot, so it
    // gets its own idempotent producer (at-least-once).
    let emit_sinks = crate::client::emit_sinks(config);
    for (route, sink) in &emit_sinks {
        let same_cluster = match (&sink, &config.source) {
            (SinkConfig::Kafka(sink), SourceConfig::Kafka(source)) => sink.brokers == source.brokers,
            _ => true,
        };
        let sink = if same_cluster { open(sink).await? } else { sinks.open(sink).await? };
        routes.insert(route.clone(), sink);
    }
    let dead_letter = match &config.dead_letter {
        Some(sink) => open(sink).await?,
        None => return Err(BuildError::NoDeadLetter),
    };
    let stats = Arc::new(Stats::default());
    let clients = crate::client::Clients::open(name, config, &sinks.connections, &sinks.producers, stats.clients.clone()).await?;
    // Before the source: a Kafka changelog restores on the source's first
    // assignment.
    let state = match &config.state {
        Some(state) => Some(crate::state::open_for_pipeline(name, state, &config.source, &sinks.connections, transaction.as_ref()).await?),
        None => None,
    };
    let partition_state = state.as_ref().and_then(|s| s.partition_state.clone());
    let positioned = state
        .as_ref()
        .filter(|_| config.state.as_ref().is_some_and(|s| s.backend == crate::config::StateBackend::Embedded))
        .map(|s| &s.store);
    let source = open_source(config, &sinks.connections, transaction, stats.gauges.source_lag.clone(), positioned, partition_state).await?;
    let policy = &config.policy;
    let max_attempts = match source.max_deliveries() {
        Some(limit) => policy.max_attempts.min(limit),
        None => policy.max_attempts,
    };
    let (pause, paused) = watch::channel(false);
    let dispatcher = Dispatcher {
        pipeline: name.to_owned(),
        plugin: slot,
        paused,
        router: Router::new(default, routes)
            .with_replies(source.reply_sink())
            .with_codec(crate::codec::reply::for_pipeline(config.codec, matches!(config.source, SourceConfig::Kafka(_)))),
        dead_letter,
        retry: RetryPolicy { max_attempts, backoff: policy.backoff.clone() },
        concurrency: policy.concurrency,
        ordering: policy.ordering,
        batch_size: policy.batch_size,
        batch_bytes: (policy.memory.as_u64() / 8) as usize,
        timeout: policy.timeout,
        redeliver: source.redelivers() && policy.ordering == Ordering::None,
        version_header: policy.version_header,
        max_outputs: policy.max_outputs,
        max_output_bytes: policy.max_output_bytes.as_u64(),
        breaker: config.breaker.as_ref().map(|b| Breaker::new(name, b, stats.gauges.breaker.clone())),
        stats,
        idempotency: config.idempotency.as_ref().map(Guard::new),
        tracing: Tracing { correlation: config.correlation.clone(), tracer: telemetry.map(|t| t.tracer().clone()) },
        schemas: Arc::new(crate::schema::Gate::new(config.schemas.as_ref()).map_err(BuildError::Schemas)?),
        tap: Default::default(),
        state: state.map(|s| s.store),
        rollout: match versions {
            Some(versions) => versions.rollout(),
            None => Arc::new(crate::rollout::Rollout::new(name, config.rollout.as_ref(), policy.timeout)),
        },
        header_limits: crate::dispatch::limits::HeaderLimits::from_policy(policy),
        clients,
        executor: runtime.executor()?,
    };
    Ok(Built { dispatcher, source, plugin, pause, transaction: fenceable })
}

/// The fleet store's current version of pipeline `name`, loaded as an
/// upload is; `None`, logged, when it is refused (the local file is loaded
/// instead, and the store's follower tries the version again).
async fn load_stored(runtime: &Runtime, name: &str, spec: PluginSpec, version: crate::store::StoredVersion) -> Option<LoadedPlugin> {
    match LoadedPlugin::from_bytes(runtime, spec, version.bytes, version.signature).await {
        Ok(plugin) => {
            tracing::info!(pipeline = name, "starting with the plugin store's current version");
            Some(plugin)
        }
        Err(err) => {
            tracing::error!(
                pipeline = name,
                digest = &version.digest[..version.digest.len().min(12)],
                "the plugin store's current version is refused, starting with the local plugin file: {err}"
            );
            None
        }
    }
}

/// The transaction of an exactly-once Kafka pipeline.
async fn open_transaction(name: &str, config: &PipelineConfig) -> Result<Option<Arc<Transaction>>, BuildError> {
    let SourceConfig::Kafka(kafka) = &config.source else {
        return Ok(None);
    };
    kafka
        .open_transaction(name)
        .await
        .map_err(|message| BuildError::Sink(SinkError::Open { what: format!("kafka:{}", kafka.brokers), message }))
}

async fn open_source(
    pipeline: &PipelineConfig,
    connections: &Connections,
    transaction: Option<Arc<Transaction>>,
    lag: Arc<std::sync::atomic::AtomicI64>,
    state: Option<&Arc<crate::state::Store>>,
    partition_state: Option<Arc<dyn crate::source::kafka::PartitionState>>,
) -> Result<Box<dyn Source>, SourceError> {
    let cx = SourceContext {
        connections,
        transaction,
        lag,
        state,
        partition_state,
        fetch_batch: pipeline.policy.batch_size,
        codec: pipeline.codec,
    };
    pipeline.source.build(cx).await
}

/// The process's open sinks and broker connections, shared: two pipelines
/// writing to stdout or to the same file share one writer, so their lines
/// never interleave; sources and sinks on one NATS server share a connection.
#[derive(Default)]
pub(crate) struct SinkSet {
    open: Mutex<HashMap<String, Arc<dyn Sink>>>,
    /// Broker sinks opened so far: each gets its own key.
    opened: std::sync::atomic::AtomicU64,
    pub connections: Connections,
    pub producers: Producers,
}

impl SinkSet {
    pub async fn open(&self, config: &SinkConfig) -> Result<Arc<dyn Sink>, SinkError> {
        let mut open = self.open.lock().await;
        // Broker sinks nobody but this set holds belong to runs that ended
        // (a restarted pipeline's, or a start that failed part-way): their
        // records were confirmed or handed back, so they go.
        open.retain(|key, sink| !(key.starts_with('#') && Arc::strong_count(sink) == 1));
        let key = match config {
            SinkConfig::Stdout(stdout) => format!("stdout:{:?}", stdout.format),
            SinkConfig::File(file) => format!("file:{}:{:?}", file.path.display(), file.format),
            // Broker sinks are cheap (the connection is shared); each use
            // gets its own, kept here only to be closed.
            SinkConfig::Nats(_) | SinkConfig::Jetstream(_) | SinkConfig::Kafka(_) => {
                format!("#{}", self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            }
        };
        // A shared sink whose writer failed (a full disk) is opened anew
        // for the pipeline restarting after it; its old users fail on it.
        if let Some(sink) = open.get(&key).filter(|sink| !sink.failed()) {
            return Ok(sink.clone());
        }
        let sink = config.build(&SinkContext { connections: &self.connections, producers: &self.producers }).await?;
        open.insert(key, sink.clone());
        Ok(sink)
    }

    /// Like [`SinkSet::open`]; a Kafka sink of an exactly-once pipeline
    /// writes into the pipeline's `transaction` and is its own.
    pub async fn open_for(&self, config: &SinkConfig, transaction: Option<&Arc<Transaction>>) -> Result<Arc<dyn Sink>, SinkError> {
        match (transaction, config) {
            (Some(transaction), SinkConfig::Kafka(kafka)) => Ok(Arc::new(kafka.build_transactional(transaction))),
            _ => self.open(config).await,
        }
    }

    /// Flushes and closes every sink; returns the first failure.
    pub async fn close_all(&self) -> Result<(), SinkError> {
        let sinks: Vec<_> = self.open.lock().await.drain().map(|(_, s)| s).collect();
        let mut first = Ok(());
        for sink in sinks {
            if let (Err(e), Ok(())) = (sink.close().await, &first) {
                first = Err(e);
            }
        }
        self.connections.close_all().await;
        self.producers.flush_all().await;
        first
    }
}
