//! What `/proc` says about a process's memory and threads, and the exact
//! resource usage of a child that has exited (`wait4`).
//!
//! - `VmRSS`: resident pages, shared file pages (the mapped binary, a
//!   compiled component mapped from the cache) counted whole.
//! - `Pss` (`smaps_rollup`): resident pages with each shared page divided
//!   by the processes sharing it: what the process really adds to a machine
//!   running several of it.
//! - `VmHWM`: the peak of `VmRSS` so far.

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One look at a live process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: Option<u64>,
    pub hwm_kib: u64,
    pub virtual_kib: u64,
    pub threads: u64,
}

/// Reads `/proc/<pid>/status` and `smaps_rollup` (the latter may be
/// missing on old kernels; `pss_kib` is then `None`).
pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading /proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok();
    parse(&status, rollup.as_deref())
}

/// The fields of [`Memory`] from the texts of `status` and `smaps_rollup`.
pub fn parse(status: &str, rollup: Option<&str>) -> Result<Memory> {
    let rss_kib = field_kib(status, "VmRSS:").context("no VmRSS in /proc/<pid>/status")?;
    Ok(Memory {
        rss_kib,
        pss_kib: rollup.and_then(|r| field_kib(r, "Pss:")),
        hwm_kib: field_kib(status, "VmHWM:").unwrap_or(rss_kib),
        virtual_kib: field_kib(status, "VmSize:").unwrap_or(0),
        threads: field_kib(status, "Threads:").unwrap_or(0),
    })
}

/// The number after `name` on the line that starts with it (`VmRSS:  1234 kB`).
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(name)).and_then(|rest| rest.split_whitespace().next()).and_then(|n| n.parse().ok())
}

/// How a child ended, from `wait4`.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub success: bool,
    /// User + system CPU seconds over its whole life.
    pub cpu_secs: f64,
}

/// Waits for child `pid` on a blocking thread and reaps it with `wait4`,
/// which also returns its resource usage; gives up after `timeout` (the
/// caller kills it then).
pub async fn wait(pid: u32, timeout: Duration) -> Result<Exit> {
    let waited = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: `rusage` is plain data that `wait4` fills in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to locals; `pid` is our own child.
        let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if reaped < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(Exit {
            success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            cpu_secs: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        })
    });
    match tokio::time::timeout(timeout, waited).await {
        Ok(exit) => Ok(exit?.with_context(|| format!("waiting for process {pid}"))?),
        Err(_) => bail!("process {pid} did not exit within {timeout:?}"),
    }
}

/// Asks the kernel to drop `path`'s pages from the page cache, so the next
/// process to map it reads it from disk. Best effort: pages that a running
/// process has mapped stay (the bench's own binary, for one).
pub fn evict(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    if let Ok(file) = std::fs::File::open(path) {
        // SAFETY: a valid descriptor; the call only advises the kernel.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// [`evict`] for every file under `dir`.
pub fn evict_tree(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => evict_tree(&path),
            Ok(_) => evict(&path),
            Err(_) => {}
        }
    }
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    // SAFETY: a plain syscall on our own child's pid.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        bail!("cannot signal process {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Kibibytes as mebibytes, two decimals.
pub fn mib(kib: f64) -> String {
    format!("{:.2} MiB", kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\tsluice\nVmPeak:\t 1200000 kB\nVmSize:\t 1100000 kB\nVmHWM:\t   30000 kB\nVmRSS:\t   18432 kB\nThreads:\t9\n";
    const ROLLUP: &str =
        "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:               18432 kB\nPss:               12001 kB\nPss_Anon:           9000 kB\n";

    #[test]
    fn reads_status_and_rollup() -> Result<()> {
        let m = parse(STATUS, Some(ROLLUP))?;
        assert_eq!(m, Memory { rss_kib: 18432, pss_kib: Some(12001), hwm_kib: 30000, virtual_kib: 1_100_000, threads: 9 });
        Ok(())
    }

    /// `Pss_Anon:` must not be taken for `Pss:`, and a missing rollup is
    /// no Pss rather than an error.
    #[test]
    fn pss_is_the_whole_field_and_optional() -> Result<()> {
        let only_anon = "Rss: 10 kB\nPss_Anon: 7 kB\n";
        assert_eq!(parse(STATUS, Some(only_anon))?.pss_kib, None);
        assert_eq!(parse(STATUS, None)?.pss_kib, None);
        Ok(())
    }

    #[test]
    fn status_without_rss_is_an_error() {
        assert!(parse("Name:\tx\n", None).is_err());
    }

    #[tokio::test]
    async fn wait_reports_the_exit_and_cpu_of_a_child() -> Result<()> {
        let child = std::process::Command::new("true").spawn()?;
        let exit = wait(child.id(), Duration::from_secs(10)).await?;
        assert!(exit.success);
        let busy = std::process::Command::new("sh").args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exit 3"]).spawn()?;
        let exit = wait(busy.id(), Duration::from_secs(30)).await?;
        assert!(!exit.success);
        assert!(exit.cpu_secs > 0.0, "{exit:?}");
        Ok(())
    }
}
