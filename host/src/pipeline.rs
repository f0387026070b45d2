//! Assembles one pipeline from its config: opens the source and sinks, loads
//! the plugin, and returns a [`Dispatcher`] ready to run.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::config::{PipelineConfig, SinkConfig, SourceConfig};
use crate::dispatch::{Dispatcher, RetryPolicy, Router, Stats};
use crate::runtime::{LoadError, LoadedPlugin, PluginSpec, Runtime};
use crate::sink::lines::LineSink;
use crate::sink::{Sink, SinkError};
use crate::source::lines::LineSource;
use crate::source::{Source, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Plugin(#[from] LoadError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{0}")]
    Config(String),
}

/// The plugin spec a pipeline's config describes.
pub fn plugin_spec(name: &str, config: &PipelineConfig) -> Result<PluginSpec, BuildError> {
    Ok(PluginSpec {
        pipeline: name.to_owned(),
        path: config.plugin.path.clone(),
        sha256: config.plugin.sha256.clone(),
        config: config.plugin.init_config().map_err(BuildError::Config)?,
        wasi: config.plugin.wasi.clone(),
        timeout: config.policy.timeout,
        memory: config.policy.memory.as_u64(),
    })
}

/// Loads a plugin off the async threads: compiling can take seconds.
pub async fn load_plugin(runtime: &Runtime, spec: PluginSpec) -> Result<LoadedPlugin, BuildError> {
    let runtime = runtime.clone();
    tokio::task::spawn_blocking(move || LoadedPlugin::load(&runtime, spec))
        .await
        .map_err(|e| BuildError::Config(format!("plugin loader stopped: {e}")))?
        .map_err(BuildError::from)
}

/// Builds the dispatcher and source of pipeline `name`.
pub async fn build(
    name: &str,
    config: &PipelineConfig,
    runtime: &Runtime,
    sinks: &SinkSet,
) -> Result<(Dispatcher, Box<dyn Source>), BuildError> {
    let plugin = load_plugin(runtime, plugin_spec(name, config)?).await?;
    tracing::info!(
        pipeline = name,
        plugin = plugin.name(),
        digest = &plugin.digest()[..12],
        load_ms = plugin.load_time().as_millis() as u64,
        cached = plugin.cache_hit(),
        "plugin loaded"
    );
    let default = sinks.open(&config.sink).await?;
    let mut routes = HashMap::new();
    for (route, sink) in &config.routes {
        routes.insert(route.clone(), sinks.open(sink).await?);
    }
    let dead_letter = match &config.dead_letter {
        Some(sink) => sinks.open(sink).await?,
        None => return Err(BuildError::Config("no dead_letter sink".into())),
    };
    let source = open_source(&config.source).await?;
    let policy = &config.policy;
    let dispatcher = Dispatcher {
        pipeline: name.to_owned(),
        factory: Arc::new(plugin),
        router: Router::new(default, routes),
        dead_letter,
        retry: RetryPolicy {
            max_attempts: policy.max_attempts,
            backoff: policy.backoff.clone(),
        },
        concurrency: policy.concurrency,
        ordering: policy.ordering,
        batch_size: policy.batch_size,
        batch_bytes: (policy.memory.as_u64() / 8) as usize,
        timeout: policy.timeout,
        stats: Arc::new(Stats::default()),
    };
    Ok((dispatcher, source))
}

async fn open_source(config: &SourceConfig) -> Result<Box<dyn Source>, SourceError> {
    Ok(match config {
        SourceConfig::File {
            path,
            format,
            follow,
            checkpoint,
            name,
        } => Box::new(LineSource::file(name.clone(), path.clone(), *format, *follow, checkpoint.clone()).await?),
        SourceConfig::Stdin { format } => Box::new(LineSource::stdin(*format)),
    })
}

/// The process's open sinks, shared: two pipelines writing to stdout or to
/// the same file share one writer, so their lines never interleave.
#[derive(Default)]
pub struct SinkSet {
    open: Mutex<HashMap<String, Arc<dyn Sink>>>,
}

impl SinkSet {
    pub async fn open(&self, config: &SinkConfig) -> Result<Arc<dyn Sink>, SinkError> {
        let key = match config {
            SinkConfig::Stdout { format } => format!("stdout:{format:?}"),
            SinkConfig::File { path, format, .. } => format!("file:{}:{format:?}", path.display()),
        };
        let mut open = self.open.lock().await;
        if let Some(sink) = open.get(&key) {
            return Ok(sink.clone());
        }
        let sink: Arc<dyn Sink> = match config {
            SinkConfig::Stdout { format } => Arc::new(LineSink::stdout(*format)),
            SinkConfig::File { path, format, fsync } => Arc::new(LineSink::file(path.clone(), *format, *fsync).await?),
        };
        open.insert(key, sink.clone());
        Ok(sink)
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
        first
    }
}
