//! This host's instance id: the last part of the default transactional id
//! of exactly-once pipelines.
//!
//! A transactional id must differ between the producers running at once
//! (the second one to start fences the first, which then fails), and should
//! be reused when a host restarts: initialising a producer with the id of a
//! dead one aborts the dead one's open transaction at once, instead of after
//! `transaction.timeout.ms` (meanwhile `read_committed` readers of its
//! partitions see nothing new).
//!
//! `runtime.instance_id` sets it. Otherwise it is the host name, and hosts
//! on one machine tell themselves apart by slots: each claims the lowest
//! free one by locking a file `slot-N.lock` (an advisory lock the kernel
//! drops when the process dies, whatever killed it). Slot 0 is the bare host
//! name (the default before slots existed, so an upgraded host keeps its
//! id), slot N is `<hostname>-N`. A restarted host takes the lowest free
//! slot: its own when it is the one that stopped.

use std::path::PathBuf;
use std::sync::OnceLock;

/// Slots tried before giving up on the machine-local lock (then the id is
/// the host name and the process id: unique, not stable).
const MAX_SLOTS: usize = 64;

/// The id and, for a claimed slot, the locked file (kept open for the
/// process's life: closing it would free the slot).
struct Claimed {
    id: String,
    _lock: Option<std::fs::File>,
}

static CONFIGURED: OnceLock<Option<String>> = OnceLock::new();
static CLAIMED: OnceLock<Claimed> = OnceLock::new();

/// Records `runtime.instance_id` (first call wins: the runtime settings do
/// not change on a reload).
pub fn configure(configured: Option<String>) {
    let _ = CONFIGURED.set(configured.filter(|id| !id.trim().is_empty()));
}

/// This host's instance id: the configured one, else a slot claimed on
/// first use (a blocking file lock attempt per slot: microseconds).
pub fn instance_id() -> String {
    if let Some(Some(id)) = CONFIGURED.get() {
        return id.clone();
    }
    CLAIMED.get_or_init(|| claim(&slot_dir(), &super::hostname())).id.clone()
}

/// Where the slot files live: per user, machine-local.
fn slot_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("sluice"),
        None => {
            // SAFETY: getuid cannot fail and has no preconditions.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir().join(format!("sluice-{uid}"))
        }
    }
}

fn claim(dir: &std::path::Path, hostname: &str) -> Claimed {
    let unique = || Claimed { id: format!("{hostname}-pid{}", std::process::id()), _lock: None };
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!(
            "cannot create {} for instance slots ({e}): the instance id is {} (set `runtime.instance_id` for a stable one)",
            dir.display(),
            unique().id
        );
        return unique();
    }
    for slot in 0..MAX_SLOTS {
        let path = dir.join(format!("slot-{slot}.lock"));
        let file = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(
                    "cannot open {} ({e}): the instance id is {} (set `runtime.instance_id` for a stable one)",
                    path.display(),
                    unique().id
                );
                return unique();
            }
        };
        match file.try_lock() {
            Ok(()) => {
                let id = if slot == 0 { hostname.to_owned() } else { format!("{hostname}-{slot}") };
                return Claimed { id, _lock: Some(file) };
            }
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(
                    "cannot lock {} ({e}): the instance id is {} (set `runtime.instance_id` for a stable one)",
                    path.display(),
                    unique().id
                );
                return unique();
            }
        }
    }
    tracing::warn!("all {MAX_SLOTS} instance slots in {} are taken: the instance id is {}", dir.display(), unique().id);
    unique()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first claim gets the bare host name, a second one at the same
    /// time slot 1; once the first is gone, the next claim gets its slot.
    #[test]
    fn hosts_on_one_machine_get_their_own_slot_and_a_restart_reuses_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = claim(dir.path(), "box");
        let second = claim(dir.path(), "box");
        assert_eq!((first.id.as_str(), second.id.as_str()), ("box", "box-1"));
        drop(first);
        let restarted = claim(dir.path(), "box");
        assert_eq!(restarted.id, "box", "the freed slot is taken again");
        let third = claim(dir.path(), "box");
        assert_eq!(third.id, "box-2");
        Ok(())
    }
}
