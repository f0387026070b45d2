//! Reloads a pipeline's plugin when its file changes.
//!
//! The folder of each plugin file is watched, not the file: deployments
//! replace files by renaming a new one over them, and a watch on the old
//! file would stay on the old inode. Events are debounced: a reload starts
//! once the file has been quiet for [`QUIET`], so a file written in several
//! steps is read once, whole. A file read half-written fails validation and
//! is rejected; the write that completes it triggers another reload.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Origin, PluginVersions};

/// How long a plugin file must be quiet before it is loaded.
pub const QUIET: Duration = Duration::from_millis(250);

/// Watches the plugin files of `pipelines` until `stop` fires.
pub fn spawn(pipelines: Vec<Arc<PluginVersions>>, stop: CancellationToken) -> notify::Result<()> {
    let mut by_path: HashMap<PathBuf, Vec<Arc<PluginVersions>>> = HashMap::new();
    for versions in pipelines {
        let path = versions.path();
        let path = path.canonicalize().unwrap_or(path);
        // A new version's signature may land after the component: its
        // change reloads too (an identical component is not swapped again).
        if versions.signed() {
            let signature = crate::runtime::signature::signature_path(&path);
            by_path.entry(signature).or_default().push(versions.clone());
        }
        by_path.entry(path).or_default().push(versions);
    }
    // Bounded: a change is a trigger, and one queued trigger per file is as
    // good as many.
    let (tx, mut rx) = mpsc::channel::<PathBuf>(256);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                let _ = tx.try_send(path);
            }
        }
    })?;
    let folders: HashSet<PathBuf> = by_path.keys().filter_map(|p| p.parent().map(PathBuf::from)).collect();
    for folder in &folders {
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        let _watcher = watcher; // dropped (unwatched) when this task ends
        let mut due: HashMap<PathBuf, tokio::time::Instant> = HashMap::new();
        loop {
            let next_due = due.values().min().copied();
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = rx.recv() => match changed {
                    Some(path) => {
                        let path = path.canonicalize().unwrap_or(path);
                        if by_path.contains_key(&path) {
                            due.insert(path, tokio::time::Instant::now() + QUIET);
                        }
                    }
                    None => return,
                },
                _ = sleep_until(next_due) => {
                    let now = tokio::time::Instant::now();
                    let ready: Vec<PathBuf> = due.iter().filter(|(_, at)| **at <= now).map(|(p, _)| p.clone()).collect();
                    for path in ready {
                        due.remove(&path);
                        for versions in by_path.get(&path).into_iter().flatten() {
                            // Errors are logged and recorded by `reload`.
                            let _ = versions.reload(Origin::FileWatch).await;
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
