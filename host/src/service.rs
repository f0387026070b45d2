//! Telling a service manager how the host is doing: systemd's notification
//! protocol (`Type=notify`), a datagram to `$NOTIFY_SOCKET`.
//!
//! Why: with `Type=notify`, systemd orders dependants after `READY=1` (not
//! after `fork`), shows our `STATUS=` in `systemctl status`, counts a stop
//! from `STOPPING=1`, and with `WatchdogSec=` restarts a host whose runtime
//! stopped answering. Outside systemd (`NOTIFY_SOCKET` unset) every call
//! here does nothing.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::admin::{Health, PipelineState};

/// How often readiness is re-checked while pipelines are starting.
const READY_POLL: Duration = Duration::from_millis(50);

/// Sends `READY=1` once no pipeline is starting any more (each runs, ran
/// to its end or failed: a failed pipeline is reported by `/readyz`, and
/// holding back readiness for it would make systemd kill the others with
/// it), with a status line counting them.
pub async fn announce_ready(health: Health) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let states = loop {
        let states = health.states();
        if !states.values().any(|state| *state == PipelineState::Starting) {
            break states;
        }
        tokio::time::sleep(READY_POLL).await;
    };
    let failed = states.values().filter(|state| matches!(state, PipelineState::Failed(_))).count();
    let status = if failed == 0 {
        format!("{} pipelines started", states.len())
    } else {
        format!("{} pipelines started, {failed} failed (see /readyz)", states.len())
    };
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// `STOPPING=1`: a drain begins. Sent before the drain starts and directly
/// (on the blocking pool, not through the notifier thread): a drain can end
/// within milliseconds, and the process with it, before a queued message
/// would have gone out.
pub async fn stopping() {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let sent = tokio::task::spawn_blocking(|| {
        sd_notify::notify(false, &[NotifyState::Stopping, NotifyState::Status("draining in-flight events")])
    })
    .await;
    if let Ok(Err(err)) = sent {
        tracing::warn!("cannot notify the service manager ($NOTIFY_SOCKET): {err}");
    }
}

/// `RELOADING=1` then, from [`reloaded`], `READY=1`: a config reload
/// (SIGHUP), for `Type=notify-reload` units.
pub fn reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `READY=1` after a reload: the new config is applied (or refused and the
/// old one kept), and systemd's `reload` returns.
pub fn reloaded() {
    send(&[NotifyState::Ready]);
}

/// Pings systemd's watchdog at half the `WatchdogSec=` period for as long as
/// the runtime schedules this task: a runtime wedged by a blocking call or
/// a lost worker stops the pings and systemd restarts the host.
pub async fn keep_watchdog() {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_micros(usec / 2));
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

/// Messages queued for the notifier thread, at most: a manager that stops
/// reading for this long is not reading at all.
const QUEUE: usize = 64;

/// Sends on a thread of its own, in order. The send is a blocking datagram
/// write that waits while the manager's receive queue is full
/// (`net.unix.max_dgram_qlen`, 10 by default): it must never hold a
/// runtime worker.
fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    static NOTIFIER: OnceLock<Option<SyncSender<String>>> = OnceLock::new();
    let notifier = NOTIFIER.get_or_init(|| {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let spawned = std::thread::Builder::new().name("sluice-notify".into()).spawn(move || {
            for message in rx {
                // A manager that went away is not a reason to stop serving.
                if let Err(err) = sd_notify::notify(false, &[NotifyState::Custom(message.trim_end())]) {
                    tracing::warn!("cannot notify the service manager ($NOTIFY_SOCKET): {err}");
                }
            }
        });
        match spawned {
            Ok(_) => Some(tx),
            Err(err) => {
                tracing::warn!("cannot start the service-manager notifier thread: {err}");
                None
            }
        }
    });
    let Some(notifier) = notifier else { return };
    let message: String = states.iter().map(|state| format!("{state}\n")).collect();
    match notifier.try_send(message) {
        Ok(()) => {}
        Err(TrySendError::Full(message)) => {
            tracing::warn!("the service manager is not reading its notifications; dropped {:?}", message.trim_end())
        }
        Err(TrySendError::Disconnected(_)) => {}
    }
}
