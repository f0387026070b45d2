//! CPU pinning for the "pinned" variant of a broker bench: the processor
//! under test on one core, the broker and the load generator on the others,
//! so the processor's CPU per event is not shaped by which threads the
//! scheduler happens to put beside it.

use anyhow::{bail, Context, Result};

/// Which cores the processor and everything else get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// The processor under test (sluice or the native baseline).
    pub processor: usize,
    /// The bench itself and the broker it starts (inherited by children).
    pub rest: usize,
}

impl Split {
    /// Of the cores this process may use, the last for the processor and
    /// the first for the rest; refuses fewer than two.
    pub fn for_this_machine() -> Result<Self> {
        let cores = usable()?;
        match (cores.first(), cores.last()) {
            (Some(&rest), Some(&processor)) if cores.len() >= 2 => Ok(Self { processor, rest }),
            _ => bail!("--pin needs at least 2 cores, this process may use {}", cores.len()),
        }
    }

    pub fn describe(self) -> String {
        format!("processor pinned to CPU {}, broker and load generator to CPU {}", self.processor, self.rest)
    }
}

/// The cores this process may run on (its affinity mask).
fn usable() -> Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain data that `sched_getaffinity` fills in.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid set of the size given.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        bail!("cannot read this process's CPU affinity: {}", std::io::Error::last_os_error());
    }
    // SAFETY: reads a bit of the set filled above.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

fn set_of(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: `cpu_set_t` is plain data; CPU_ZERO/CPU_SET write inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins thread (or process) `tid` (0: the calling thread) to `cpu`.
fn pin(tid: libc::pid_t, cpu: usize) -> std::io::Result<()> {
    let set = set_of(cpu);
    // SAFETY: a valid set of the size given.
    match unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Pins every thread of this process to `cpu`; threads and processes it
/// starts afterwards inherit that.
pub fn pin_this_process(cpu: usize) -> Result<()> {
    for task in std::fs::read_dir("/proc/self/task").context("listing this process's threads")? {
        let name = task?.file_name();
        let Some(tid) = name.to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else { continue };
        pin(tid, cpu).with_context(|| format!("pinning thread {tid} to CPU {cpu}"))?;
    }
    Ok(())
}

/// Makes `command`'s process start pinned to `cpu`.
pub fn pin_child(command: &mut tokio::process::Command, cpu: usize) {
    // SAFETY: `sched_setaffinity` is async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(move || pin(0, cpu));
    }
}

/// The cores process `pid` may run on.
#[cfg(test)]
fn allowed(pid: u32) -> Result<Vec<usize>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).context("no Cpus_allowed_list")?.trim().to_owned();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>()?..=b.parse::<usize>()?),
            None => cpus.push(part.parse()?),
        }
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child started with [`pin_child`] runs on that core only.
    #[tokio::test]
    async fn a_pinned_child_runs_on_its_core_only() -> Result<()> {
        let cpu = *usable()?.last().context("no usable core")?;
        let mut command = tokio::process::Command::new("sleep");
        command.arg("5").kill_on_drop(true);
        pin_child(&mut command, cpu);
        let child = command.spawn()?;
        let pid = child.id().context("no pid")?;
        assert_eq!(allowed(pid)?, vec![cpu]);
        Ok(())
    }
}
