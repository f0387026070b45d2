use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

pub fn run(path: &Path, admin_addr_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = sluice::config::load(path)?;
    if config.pipelines.is_empty() {
        anyhow::bail!("{}: no pipelines configured", path.display());
    }
    let runtime = super::tokio_runtime()?;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
        tokio::spawn(watch_hangups(reload_tx));
        let options = sluice::supervisor::RunOptions { config_path: Some(path.to_path_buf()), admin_addr_file };
        let reports = sluice::supervisor::run_with_reloads(config, options, shutdown, reloads).await?;
        let failed: Vec<_> = reports.iter().filter(|r| r.error.is_some()).collect();
        for report in &failed {
            eprintln!("pipeline `{}` failed: {}", report.name, report.error.as_deref().unwrap_or(""));
        }
        Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    });
    // A plugin call abandoned by the watchdog may still hold a blocking
    // thread; do not wait for it to exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// First SIGINT/SIGTERM: drain. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!("cannot listen for SIGTERM: {err}");
            return;
        }
    };
    for round in 0..2 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if round == 0 {
            tracing::info!("signal received: stopping intake and draining (signal again to exit now)");
            sluice::service::stopping().await;
            shutdown.cancel();
        }
    }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

/// SIGHUP: re-read the config and apply what changed. Signals that arrive
/// while a reload is queued fold into it.
async fn watch_hangups(reloads: tokio::sync::mpsc::Sender<()>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::error!("cannot listen for SIGHUP (config reload): {err}");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        let _ = reloads.try_send(());
    }
}
