//! What `/proc` says about a process's memory and threads, and the exact
//! resource usage of a child that has exited (`wait4`).
//!
//! - `VmRSS`: resident pages, shared file pages (the mapped binary, a
//!   compiled component mapped from the cache) counted whole.
//! - `Pss` (`smaps_rollup`): resident pages with each shared page divided
//!   by the processes sharing it: what the process really adds to a machine
//!   running several of it.
//! - `VmHWM`: the peak of `VmRSS` so far.
//!
//! And how a child process is stopped ([`terminate`]).

use std::process::ExitStatus;
use std::time::{Duration, Instant};

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

/// A child process of this one that [`terminate`] can stop: `std`'s (the
/// memory bench reaps its children itself, with `wait4`) or tokio's (the
/// processors under test, killed on drop should the bench fail).
pub trait Child {
    /// Its pid; `None` once reaped.
    fn pid(&self) -> Option<u32>;
    /// Its exit status if it has exited (reaping it), without blocking.
    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>>;
}

impl Child for std::process::Child {
    fn pid(&self) -> Option<u32> {
        Some(self.id())
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        std::process::Child::try_wait(self)
    }
}

impl Child for tokio::process::Child {
    fn pid(&self) -> Option<u32> {
        self.id()
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        tokio::process::Child::try_wait(self)
    }
}

/// How often [`terminate`] looks whether the child has exited: the most it
/// adds to a stop time the bench reports (sluice's drain after SIGTERM).
const EXIT_POLL: Duration = Duration::from_millis(5);

/// Stops `child` as production does: SIGTERM, then up to `timeout` for it
/// to drain and exit. One still running then gets SIGKILL and is reaped
/// (within another `timeout`, else an error). Returns how it exited, or
/// `None` if it had to be killed: the caller says why, with its log.
///
/// Polls [`Child::try_wait`], which works alike for `std`'s and tokio's
/// children; a child that has already exited is reaped and not signalled
/// (its pid may be another process's by now).
pub async fn terminate(child: &mut impl Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    let pid = child.pid().context("the child has no pid")?;
    signal(pid, libc::SIGTERM)?;
    if let Some(status) = exit_within(child, timeout).await? {
        return Ok(Some(status));
    }
    signal(pid, libc::SIGKILL)?;
    match exit_within(child, timeout).await? {
        Some(_) => Ok(None),
        None => bail!("process {pid} still runs {timeout:?} after SIGKILL"),
    }
}

/// `child`'s exit status once it has exited, or `None` if it still runs
/// after `timeout`.
async fn exit_within(child: &mut impl Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
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

    /// A child that stops on SIGTERM is not waited for any longer than
    /// that, and its status says SIGTERM ended it.
    #[tokio::test]
    async fn terminate_stops_a_child_on_sigterm() -> Result<()> {
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
        let started = Instant::now();
        let status = terminate(&mut child, Duration::from_secs(10)).await?;
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGTERM), "{status:?}");
        Ok(())
    }

    /// One that ignores SIGTERM is killed once the timeout is over, and
    /// reaped; tokio's children alike.
    #[tokio::test]
    async fn terminate_kills_a_child_that_ignores_sigterm() -> Result<()> {
        use std::os::unix::process::ExitStatusExt;
        // `exec` keeps the trap's ignored disposition and leaves no
        // grandchild holding the test's output open.
        let mut child = tokio::process::Command::new("sh").args(["-c", "trap '' TERM; exec sleep 30"]).kill_on_drop(true).spawn()?;
        // Until the trap is set, SIGTERM would end it: wait for the exec.
        let pid = child.id().context("no pid")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/comm"))?.trim() != "sleep" {
            assert!(Instant::now() < deadline, "sh did not exec sleep");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let status = terminate(&mut child, timeout).await?;
        let took = started.elapsed();
        assert!(status.is_none(), "{status:?}");
        assert!(took >= timeout && took < timeout + Duration::from_secs(5), "{took:?}");
        let reaped = child.try_wait()?;
        assert_eq!(reaped.and_then(|s| s.signal()), Some(libc::SIGKILL), "{reaped:?}");
        Ok(())
    }

    /// A child that has exited already is reaped with its own status.
    #[tokio::test]
    async fn terminate_reaps_a_child_that_has_exited() -> Result<()> {
        let mut child = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn()?;
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        // A zombie until reaped.
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))?.contains(") Z ") {
            assert!(Instant::now() < deadline, "sh did not exit");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = terminate(&mut child, Duration::from_secs(10)).await?;
        assert_eq!(status.and_then(|s| s.code()), Some(3), "{status:?}");
        Ok(())
    }
}
