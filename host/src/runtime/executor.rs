//! The plugin executor: where lanes run, and so where guest code runs.
//!
//! A small pool of single-threaded tokio runtimes, each driven by its own
//! named OS thread (`sluice-plugin-N`). A pipeline's lanes are spawned on
//! them, the least loaded first, and stay there: the lane's plugin calls,
//! its publisher and completer, and everything wasmtime spawns during a
//! call (the `wasi:http` request task, the connection driver, body pumps,
//! timers) run on that one thread.
//!
//! Why (measured, see docs/architecture.md and docs/benchmarks.md):
//! - On a multi-threaded runtime, each task a call spawns pushes the
//!   lane's own task out of its worker's LIFO slot, an idle worker steals
//!   it, and the call ping-pongs between CPUs: an outbound HTTP call cost
//!   ~60 µs more than the same call made natively, ~17 µs when the same
//!   code ran on one CPU. On one thread there is nobody to steal. (On a
//!   later, slower VM: 128 µs added on a plugin thread against 172 µs on
//!   the workers; a pipeline without calls gains nothing, so the pool is
//!   off by default.)
//! - Guest code never runs on the main runtime's workers, so a guest
//!   burning CPU cannot delay the admin API, intake, the sinks or health
//!   checks there. Guests on the same plugin thread share it: each yields
//!   at every epoch tick (`Instance::store`, through
//!   [`tokio::task::yield_now`], which lets the thread's timers and I/O run
//!   before the next task).
//!
//! Tokio's channels, `Notify`, timers and I/O work across runtimes, so a
//! lane talks to intake (on the main runtime) as before. There is no work
//! stealing between plugin threads: a lane placed beside busy guests waits
//! its turn (a tick each) rather than moving.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Blocking threads each plugin thread may start (`spawn_blocking` from a
/// lane: freeing a replaced instance, the embedded state database, a
/// plugin's DNS lookups and granted file access). Tokio's default (512 per
/// runtime) would let a busy host grow hundreds of threads per plugin
/// thread; beyond 8, blocking work queues. Idle ones exit after 10 s.
const BLOCKING_PER_THREAD: usize = 8;

/// How long a stopping plugin thread waits for its blocking tasks.
const STOP_GRACE: Duration = Duration::from_secs(1);

thread_local! {
    /// Set on the plugin threads: lets shared state keep per-thread parts
    /// (see `runtime::http`'s connection pools).
    static PLUGIN_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the caller runs on a plugin thread.
pub fn on_plugin_thread() -> bool {
    PLUGIN_THREAD.with(Cell::get)
}

/// One plugin thread per CPU the process may use: what the benches run
/// with (`[runtime] plugin_threads` itself defaults to 0, none).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A pool of plugin threads. Cheap to clone; the threads stop when the
/// last clone is dropped (their remaining tasks are dropped with them).
#[derive(Clone)]
pub struct Executor {
    pool: Arc<Pool>,
}

struct Pool {
    threads: Vec<PluginThread>,
    /// Where the search for the least loaded thread starts: rotates, so
    /// ties (an empty pool, one lane per pipeline) spread across threads.
    cursor: AtomicUsize,
    stop: CancellationToken,
}

struct PluginThread {
    handle: Handle,
    /// Lanes running on this thread now.
    lanes: Arc<AtomicUsize>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Executor {
    /// Starts `threads` plugin threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut started = Vec::with_capacity(threads.max(1));
        for index in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(BLOCKING_PER_THREAD)
                .thread_name(format!("sluice-pblk-{index}"))
                .build()?;
            let handle = runtime.handle().clone();
            let stopped = stop.clone();
            let thread = std::thread::Builder::new().name(format!("sluice-plugin-{index}")).spawn(move || {
                PLUGIN_THREAD.with(|on| on.set(true));
                runtime.block_on(stopped.cancelled());
                runtime.shutdown_timeout(STOP_GRACE);
            });
            let thread = match thread {
                Ok(thread) => thread,
                Err(err) => {
                    stop.cancel();
                    return Err(err);
                }
            };
            started.push(PluginThread { handle, lanes: Arc::default(), thread: Mutex::new(Some(thread)) });
        }
        Ok(Self { pool: Arc::new(Pool { threads: started, cursor: AtomicUsize::new(0), stop }) })
    }

    /// How many plugin threads there are.
    pub fn threads(&self) -> usize {
        self.pool.threads.len()
    }

    /// Lanes running on each plugin thread now.
    pub fn load(&self) -> Vec<usize> {
        self.pool.threads.iter().map(|t| t.lanes.load(Ordering::Relaxed)).collect()
    }

    /// Spawns `lane` into `set` on the plugin thread with the fewest lanes.
    /// The lane counts there until its future ends or is dropped (aborted).
    pub fn spawn_lane<F>(&self, set: &mut JoinSet<F::Output>, lane: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let thread = self.pick();
        let counted = Counted::new(thread.lanes.clone());
        set.spawn_on(
            async move {
                let _counted = counted;
                lane.await
            },
            &thread.handle,
        );
    }

    /// Spawns `task` on the plugin thread with the fewest lanes, counted
    /// as a lane while it runs (benches, and work that must run where a
    /// lane would).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let thread = self.pick();
        let counted = Counted::new(thread.lanes.clone());
        thread.handle.spawn(async move {
            let _counted = counted;
            task.await
        })
    }

    /// The least loaded thread, searching from the cursor (which moves on
    /// by one each time).
    fn pick(&self) -> &PluginThread {
        let threads = &self.pool.threads;
        let start = self.pool.cursor.fetch_add(1, Ordering::Relaxed);
        (0..threads.len())
            .map(|i| &threads[(start + i) % threads.len()])
            .min_by_key(|t| t.lanes.load(Ordering::Relaxed))
            .unwrap_or(&threads[0])
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.cancel();
        let current = std::thread::current().id();
        for thread in &self.threads {
            let joined = thread.thread.lock().ok().and_then(|mut t| t.take());
            // The last clone can be dropped by a task on a plugin thread:
            // that thread stops by itself, it cannot wait for itself.
            if let Some(joined) = joined.filter(|t| t.thread().id() != current) {
                let _ = joined.join();
            }
        }
    }
}

/// One lane counted on its thread while it lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(lanes: Arc<AtomicUsize>) -> Self {
        lanes.fetch_add(1, Ordering::Relaxed);
        Self(lanes)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool started on first use: `sluice check` and the other commands
/// that build a [`super::Runtime`] without running lanes start no thread.
pub(super) struct Lazy {
    threads: usize,
    started: std::sync::OnceLock<Executor>,
    starting: Mutex<()>,
}

impl Lazy {
    /// `threads = 0`: no pool, lanes run on the caller's runtime.
    pub(super) fn new(threads: usize) -> Self {
        Self { threads, started: std::sync::OnceLock::new(), starting: Mutex::new(()) }
    }

    pub(super) fn get(&self) -> std::io::Result<Option<Executor>> {
        if self.threads == 0 {
            return Ok(None);
        }
        if let Some(executor) = self.started.get() {
            return Ok(Some(executor.clone()));
        }
        // One starter at a time; a failed start is tried again next time.
        let _starting = self.starting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(executor) = self.started.get() {
            return Ok(Some(executor.clone()));
        }
        let executor = Executor::start(self.threads)?;
        Ok(Some(self.started.get_or_init(|| executor).clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    /// A lane, and every task it spawns, run on the plugin thread it was
    /// given: nothing it starts moves to another thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_and_its_tasks_stay_on_its_plugin_thread() -> Result<(), Box<dyn std::error::Error>> {
        let executor = Executor::start(2)?;
        let mut set = JoinSet::new();
        let go = CancellationToken::new();
        for _ in 0..4 {
            let go = go.clone();
            executor.spawn_lane(&mut set, async move {
                go.cancelled().await;
                let lane = name();
                let mut spawned = Vec::new();
                for _ in 0..8 {
                    let child = tokio::spawn(async {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        tokio::task::yield_now().await;
                        name()
                    });
                    spawned.push(child.await.unwrap_or_default());
                }
                (lane, spawned)
            });
        }
        assert_eq!(executor.load(), [2, 2], "lanes spread evenly");
        go.cancel();
        let mut lanes = Vec::new();
        while let Some(joined) = set.join_next().await {
            let (lane, spawned) = joined?;
            assert!(lane.starts_with("sluice-plugin-"), "the lane ran on {lane:?}");
            assert!(spawned.iter().all(|s| *s == lane), "a lane on {lane} spawned tasks that ran on {spawned:?}");
            lanes.push(lane);
        }
        lanes.sort();
        assert_eq!(lanes, ["sluice-plugin-0", "sluice-plugin-0", "sluice-plugin-1", "sluice-plugin-1"], "lanes spread evenly");
        assert_eq!(executor.load(), [0, 0], "ended lanes no longer count");
        Ok(())
    }

    /// A new lane goes to the thread with the fewest lanes.
    #[tokio::test]
    async fn lanes_go_to_the_least_loaded_thread() -> Result<(), Box<dyn std::error::Error>> {
        let executor = Executor::start(3)?;
        let mut set = JoinSet::new();
        let held = CancellationToken::new();
        for _ in 0..5 {
            let held = held.clone();
            executor.spawn_lane(&mut set, async move { held.cancelled().await });
        }
        let mut load = executor.load();
        load.sort();
        assert_eq!(load, [1, 2, 2]);
        held.cancel();
        while set.join_next().await.is_some() {}
        assert_eq!(executor.load(), [0, 0, 0]);
        Ok(())
    }

    /// A panicking lane is reported through its join handle, as on the
    /// main runtime, and its thread keeps serving other lanes.
    #[allow(clippy::panic)]
    #[tokio::test]
    async fn a_panicking_lane_is_reported_and_its_thread_lives_on() -> Result<(), Box<dyn std::error::Error>> {
        let executor = Executor::start(1)?;
        let mut set = JoinSet::new();
        executor.spawn_lane(&mut set, async {
            if name().starts_with("sluice-plugin-") {
                panic!("lane bug");
            }
            0
        });
        let joined = set.join_next().await.ok_or("no lane")?;
        assert!(joined.is_err_and(|e| e.is_panic()));
        executor.spawn_lane(&mut set, async { 7 });
        assert_eq!(set.join_next().await.ok_or("no lane")??, 7);
        Ok(())
    }

    /// Aborting a lane (a pipeline abandoned at the shutdown deadline)
    /// drops it on its thread, and dropping the executor stops the threads.
    #[tokio::test]
    async fn aborted_lanes_are_dropped_and_the_threads_stop() -> Result<(), Box<dyn std::error::Error>> {
        let executor = Executor::start(2)?;
        let mut set = JoinSet::new();
        let (dropped_tx, mut dropped) = tokio::sync::mpsc::channel::<()>(4);
        for _ in 0..2 {
            let guard = dropped_tx.clone();
            executor.spawn_lane(&mut set, async move {
                let _guard = guard;
                std::future::pending::<()>().await
            });
        }
        drop(dropped_tx);
        set.abort_all();
        tokio::time::timeout(Duration::from_secs(10), dropped.recv()).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while executor.load() != [0, 0] && tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert_eq!(executor.load(), [0, 0], "aborted lanes no longer count");
        let threads: Vec<_> = executor.pool.threads.iter().filter_map(|t| t.thread.lock().ok()?.take()).collect();
        drop(executor);
        for thread in threads {
            thread.join().map_err(|_| "a plugin thread panicked")?;
        }
        Ok(())
    }
}
