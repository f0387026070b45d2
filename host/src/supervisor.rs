//! Runs every pipeline of a config in one process. Pipelines are isolated:
//! one that fails to start or stops on an error is reported, and the others
//! keep running. A shutdown drains them all within the configured deadline.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::StatsSnapshot;
use crate::pipeline::{self, SinkSet};
use crate::runtime::engine::EngineError;
use crate::runtime::{Runtime, RuntimeOptions};

/// How one pipeline ended.
#[derive(Debug, Clone)]
pub struct PipelineReport {
    pub name: String,
    pub stats: StatsSnapshot,
    /// `None` when it ran to its end or drained cleanly.
    pub error: Option<String>,
}

/// The runtime options a config implies.
pub fn runtime_options(config: &Config) -> RuntimeOptions {
    RuntimeOptions {
        allocator: config.runtime.allocator,
        max_memory: config
            .pipelines
            .values()
            .map(|p| p.policy.memory.as_u64())
            .max()
            .unwrap_or(0),
        cache_dir: config.runtime.cache_dir.clone(),
    }
}

/// Runs all pipelines until each ends or `shutdown` fires and they drain.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Vec<PipelineReport>, EngineError> {
    let runtime = Runtime::new(&runtime_options(&config))?;
    let sinks = Arc::new(SinkSet::default());
    let mut tasks = JoinSet::new();
    for (name, pipeline_config) in config.pipelines.clone() {
        let (runtime, sinks, shutdown) = (runtime.clone(), sinks.clone(), shutdown.clone());
        tasks.spawn(async move {
            let built = pipeline::build(&name, &pipeline_config, &runtime, &sinks).await;
            let (dispatcher, source) = match built {
                Ok(parts) => parts,
                Err(err) => {
                    tracing::error!(pipeline = %name, "cannot start pipeline: {err}");
                    return PipelineReport { name, stats: StatsSnapshot::default(), error: Some(err.to_string()) };
                }
            };
            tracing::info!(pipeline = %name, source = %source.describe(), "pipeline started");
            let stats = dispatcher.stats.clone();
            let result = dispatcher.run(source, shutdown).await;
            let stats = stats.snapshot();
            match &result {
                Ok(()) => tracing::info!(pipeline = %name, ?stats, "pipeline finished"),
                Err(err) => tracing::error!(pipeline = %name, ?stats, "pipeline stopped: {err}"),
            }
            PipelineReport { name, stats, error: result.err().map(|e| e.to_string()) }
        });
    }

    let mut reports = Vec::new();
    let mut deadline = None;
    loop {
        let joined = match deadline {
            None => tokio::select! {
                joined = tasks.join_next() => joined,
                _ = shutdown.cancelled() => {
                    tracing::info!("shutting down: draining in-flight events (up to {:?})", config.runtime.shutdown_timeout);
                    deadline = Some(tokio::time::Instant::now() + config.runtime.shutdown_timeout);
                    continue;
                }
            },
            Some(at) => match tokio::time::timeout_at(at, tasks.join_next()).await {
                Ok(joined) => joined,
                Err(_) => {
                    tracing::error!(
                        pipelines = tasks.len(),
                        "shutdown deadline passed: abandoning in-flight events; they are redelivered after a restart"
                    );
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            },
        };
        match joined {
            Some(Ok(report)) => reports.push(report),
            Some(Err(err)) => tracing::error!("a pipeline task failed: {err}"),
            None => break,
        }
    }
    if let Err(err) = sinks.close_all().await {
        tracing::error!("closing sinks: {err}");
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(reports)
}
