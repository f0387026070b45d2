//! `sluice plugin push`, `rollback` and `fleet`, and `candidate`, `promote`
//! and `abort` with `--config`: the operator's side of the fleet's plugin
//! store (`[plugins.store]`, see `sluice::store`).

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

/// The component at `plugin` and its signature line (`signature`, or the
/// file beside it when there is one).
fn component(plugin: &Path, signature: Option<&Path>) -> Result<(Vec<u8>, Option<String>)> {
    let bytes = std::fs::read(plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
    if !bytes.starts_with(b"\0asm") {
        bail!("{} is not a WebAssembly file (it does not start with `\\0asm`): push the built component", plugin.display());
    }
    // Beside the component is where `sluice plugin sign` writes it.
    let beside = sluice::runtime::signature::signature_path(plugin);
    let signature = match signature {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("cannot read the signature {}", path.display()))?),
        None if beside.is_file() => Some(std::fs::read_to_string(&beside).with_context(|| format!("cannot read {}", beside.display()))?),
        None => None,
    };
    Ok((bytes, signature))
}

/// Publishes `plugin` (with its signature) and makes it current for `pipeline`.
pub fn push(config: &Path, pipeline: &str, plugin: &Path, signature: Option<PathBuf>) -> Result<ExitCode> {
    let (bytes, signature) = component(plugin, signature.as_deref())?;
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

/// Publishes `plugin` and names it the fleet's candidate for `pipeline`.
pub fn candidate(config: &Path, pipeline: &str, plugin: &Path, trial: &super::candidate::Trial) -> Result<ExitCode> {
    let (bytes, signature) = component(plugin, trial.signature.as_deref())?;
    let mode = match trial.mode.as_deref() {
        Some(mode) => Some(
            serde_json::from_value(serde_json::Value::String(mode.to_owned()))
                .map_err(|_| anyhow::anyhow!("--mode must be `shadow` or `canary`, got `{mode}`"))?,
        ),
        None => None,
    };
    for (what, fraction) in [("--sample", trial.sample), ("--canary", trial.canary)] {
        if let Some(fraction) = fraction.filter(|f| !(*f > 0.0 && *f <= 1.0)) {
            bail!("{what} must be greater than 0 and at most 1, got {fraction}");
        }
    }
    let wanted = store::StoredCandidate { digest: String::new(), mode, sample: trial.sample, canary: trial.canary };
    super::tokio_runtime()?.block_on(async {
        let (store, _) = open(config).await?;
        let pointer = store::set_candidate(store.as_ref(), pipeline, &bytes, signature.as_deref(), wanted).await?;
        let digest = pointer.candidate.as_ref().map_or("?", |c| c.digest.as_str());
        println!("candidate: {} (sha256 {digest})", plugin.display());
        println!("signed:    {}", if signature.is_some() { "yes" } else { "no" });
        println!("current:   {pipeline} → {} (unchanged)", short(&pointer.digest));
        println!("every host following the store tries it; `sluice plugin fleet` shows who does");
        Ok(ExitCode::SUCCESS)
    })
}

/// Promotes or aborts the fleet's candidate for `pipeline`.
pub fn decide(config: &Path, pipeline: &str, decision: store::Decision) -> Result<ExitCode> {
    super::tokio_runtime()?.block_on(async {
        let (store, _) = open(config).await?;
        let before = store.pointer(pipeline).await?;
        let pointer = store::decide(store.as_ref(), pipeline, None, decision).await?;
        let candidate = before.and_then(|p| p.candidate).map(|c| c.digest).unwrap_or_default();
        match decision {
            store::Decision::Promote => println!("promoted: {pipeline} → {} across the fleet", short(&pointer.digest)),
            _ => println!("aborted: candidate {} of {pipeline}; {} stays current", short(&candidate), short(&pointer.digest)),
        }
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
            let candidate = status.candidate.as_deref().map(|c| format!(", candidate {}", short(c))).unwrap_or_default();
            println!("{name}: current {current}{candidate}, {} host(s), {state}", status.hosts.len());
            for host in &status.hosts {
                let refused = host.refused.as_ref().map(|r| format!("  refused {}: {}", short(&r.digest), r.reason)).unwrap_or_default();
                let trying = host.candidate.as_deref().map(|c| format!("  trying {}", short(c))).unwrap_or_default();
                let not_trying = host
                    .candidate_refused
                    .as_ref()
                    .map(|r| format!("  refused candidate {}: {}", short(&r.digest), r.reason))
                    .unwrap_or_default();
                println!("  {:<24} {}  (seen {}){trying}{refused}{not_trying}", host.host, short(&host.digest), host.at);
            }
        }
        Ok(if split { ExitCode::from(2) } else { ExitCode::SUCCESS })
    })
}
