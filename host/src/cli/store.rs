//! `sluice plugin push`, `rollback` and `fleet`: the operator's side of the
//! fleet's plugin store (`[plugins.store]`, see `sluice::store`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use sluice::store::{self, PluginStore};

/// Opens the store of the config at `config`.
async fn open(config: &Path) -> Result<(Arc<dyn PluginStore>, sluice::config::Config)> {
    let loaded = sluice::config::load(config)?;
    let Some(store_config) = loaded.plugins.store.clone() else {
        bail!("{} has no `[plugins.store]` table: there is no store to push to", config.display());
    };
    let connections = sluice::nats::Connections::default();
    let store = store::open(&store_config, &connections).await.with_context(|| format!("the store of {}", config.display()))?;
    Ok((store, loaded))
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// Publishes `plugin` (with its signature) and makes it current for `pipeline`.
pub fn push(config: &Path, pipeline: &str, plugin: &Path, signature: Option<PathBuf>) -> Result<ExitCode> {
    let bytes = std::fs::read(plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
    if !bytes.starts_with(b"\0asm") {
        bail!("{} is not a WebAssembly file (it does not start with `\\0asm`): push the built component", plugin.display());
    }
    // Beside the component is where `sluice plugin sign` writes it.
    let beside = sluice::runtime::signature::signature_path(plugin);
    let signature = match signature {
        Some(path) => Some(std::fs::read_to_string(&path).with_context(|| format!("cannot read the signature {}", path.display()))?),
        None if beside.is_file() => Some(std::fs::read_to_string(&beside).with_context(|| format!("cannot read {}", beside.display()))?),
        None => None,
    };
    super::tokio_runtime()?.block_on(async {
        let (store, loaded) = open(config).await?;
        if !loaded.pipelines.contains_key(pipeline) {
            eprintln!("warning: {} has no pipeline `{pipeline}`; pushing anyway", config.display());
        }
        let pointer = store::push(store.as_ref(), pipeline, &bytes, signature.as_deref()).await?;
        println!("pushed:   {} (sha256 {})", plugin.display(), pointer.digest);
        println!("signed:   {}", if signature.is_some() { "yes" } else { "no" });
        println!("current:  {pipeline} → {}", short(&pointer.digest));
        if let Some(previous) = pointer.history.last() {
            println!("previous: {} (`sluice plugin rollback` makes it current again)", short(previous));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Makes the previous version of `pipeline` current again.
pub fn rollback(config: &Path, pipeline: &str) -> Result<ExitCode> {
    super::tokio_runtime()?.block_on(async {
        let (store, _) = open(config).await?;
        let pointer = store::rollback(store.as_ref(), pipeline).await?;
        println!("rolled back: {pipeline} → {} ({} earlier version(s) left)", short(&pointer.digest), pointer.history.len());
        Ok(ExitCode::SUCCESS)
    })
}

/// Prints, per pipeline, the current version and what each host runs.
pub fn fleet(config: &Path, pipeline: Option<&str>) -> Result<ExitCode> {
    super::tokio_runtime()?.block_on(async {
        let (store, loaded) = open(config).await?;
        let beats = store.heartbeats().await?;
        let mut names: Vec<String> = match pipeline {
            Some(name) => vec![name.to_owned()],
            None => loaded.pipelines.keys().cloned().chain(beats.iter().map(|b| b.pipeline.clone())).collect(),
        };
        names.sort();
        names.dedup();
        let mut split = false;
        for name in names {
            let status = store::fleet(store.as_ref(), &name).await?;
            let current = status.current.as_deref().map_or("-", short);
            let state = if status.converged { "converged" } else { "not converged" };
            split |= !status.converged && status.current.is_some();
            println!("{name}: current {current}, {} host(s), {state}", status.hosts.len());
            for host in &status.hosts {
                let refused = host.refused.as_ref().map(|r| format!("  refused {}: {}", short(&r.digest), r.reason)).unwrap_or_default();
                println!("  {:<24} {}  (seen {}){refused}", host.host, short(&host.digest), host.at);
            }
        }
        Ok(if split { ExitCode::from(2) } else { ExitCode::SUCCESS })
    })
}
