//! Engine defaults, in one place, with the reason for each.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::instance::PluginState;
use super::signature::{KeyError, TrustedKeys};
use crate::config::Allocator;

/// How often the epoch advances. Per-event deadlines are counted in these
/// ticks, so this is their resolution. Epochs cost 3–15% per call where fuel
/// costs 25–55% (measured, see `../shared/TOOLCHAINS.md`), and a 5 ms tick is
/// a thread waking 200 times a second: negligible.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Process-wide runtime settings, taken from `[runtime]` in the config.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Pooling (instances from pre-reserved slots) or on-demand.
    pub allocator: Allocator,
    /// The largest memory cap of any pipeline: the pooling allocator reserves
    /// slots of this size.
    pub max_memory: u64,
    /// Where compiled components are cached, keyed by digest and engine;
    /// `None`: every load compiles.
    pub cache_dir: Option<PathBuf>,
    /// `[plugins] trusted_keys`: when any, only components signed by one
    /// of them are compiled.
    pub trusted_keys: Vec<PathBuf>,
    /// `[runtime] plugin_threads`: the threads lanes run on (see
    /// [`super::executor`]). `None` or `Some(0)`: none (the default until
    /// they are measured), lanes run on the runtime that starts them.
    pub plugin_threads: Option<usize>,
}

/// The wasmtime engine, the linker with our imports and WASI, and the
/// compiled-component cache. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<PluginState>>,
    cache_dir: Option<PathBuf>,
    trusted: Option<Arc<TrustedKeys>>,
    /// The plugin threads, started when the first pipeline runs.
    executor: Arc<super::executor::Lazy>,
    _ticker: Arc<EpochTicker>,
}

/// Why the runtime could not be set up: nothing can run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the engine's configuration (the pooling
    /// allocator's reservations, say).
    #[error("cannot configure the WebAssembly engine: {0:#}")]
    Engine(wasmtime::Error),
    /// The host's imports or WASI could not be added to the linker.
    #[error("cannot link host functions: {0:#}")]
    Link(wasmtime::Error),
    /// The thread that advances epochs (deadlines) could not be started.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
    /// A `[plugins] trusted_keys` file cannot be read or is not a key.
    #[error("[plugins] trusted_keys: {0}")]
    TrustedKeys(#[from] KeyError),
    /// The OS refused a plugin thread (`[runtime] plugin_threads`).
    #[error("cannot start the plugin threads ([runtime] plugin_threads): {0}")]
    PluginThreads(std::io::Error),
}

impl Runtime {
    /// Configures the engine from `options`, links the host's imports and
    /// starts the epoch ticker: once per process.
    pub fn new(options: &RuntimeOptions) -> Result<Self, EngineError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Guest code runs as a future on the async workers (see
        // `Instance::store`): every epoch tick it yields to the executor, so
        // a guest spinning in a loop shares its worker thread, and a guest
        // waiting in a host call (a WASI sleep or poll) is a pending future
        // that holds no thread at all. Deadlines are timers around that
        // future: dropping it cancels the call wherever the guest is.
        config.epoch_interruption(true);
        // A fiber stack per running call; wasmtime's default (2 MiB) must
        // exceed `max_wasm_stack`, stated so it is visible.
        config.async_stack_size(2 << 20);
        // 512 KiB of wasm stack (wasmtime's default), stated so it is visible.
        config.max_wasm_stack(512 * 1024);
        if options.allocator == Allocator::Pooling {
            let mut pool = PoolingAllocationConfig::new();
            // Slots sized for the biggest memory cap of any pipeline; 1,000
            // instances is far above a realistic lane count and keeps the
            // virtual reservation reasonable.
            pool.max_memory_size(options.max_memory.max(1 << 20) as usize);
            pool.total_component_instances(1_000);
            pool.total_core_instances(2_000);
            pool.total_memories(2_000);
            pool.total_tables(2_000);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        // `SLUICE_PERFMAP=1`: names the JIT-compiled guest functions in
        // `/tmp/perf-<pid>.map`, so `perf report` shows a plugin's own
        // functions instead of bare addresses (docs/benchmarks.md,
        // "Profiling"). Off by default: the file grows with every compile.
        if std::env::var_os("SLUICE_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(EngineError::Engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(EngineError::Link)?;
        super::host::add_to_linker(&mut linker).map_err(EngineError::Link)?;
        super::http::add_to_linker(&mut linker).map_err(EngineError::Link)?;
        let ticker = EpochTicker::start(engine.clone()).map_err(EngineError::Ticker)?;
        let trusted = match options.trusted_keys.as_slice() {
            [] => None,
            paths => Some(Arc::new(TrustedKeys::load(paths)?)),
        };
        let threads = options.plugin_threads.unwrap_or(0);
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            cache_dir: options.cache_dir.clone(),
            trusted,
            executor: Arc::new(super::executor::Lazy::new(threads)),
            _ticker: Arc::new(ticker),
        })
    }

    /// The plugin threads lanes run on, started on the first call; `None`
    /// with `plugin_threads = 0` (lanes then run where they are started).
    pub fn executor(&self) -> Result<Option<super::executor::Executor>, EngineError> {
        self.executor.get().map_err(EngineError::PluginThreads)
    }

    /// The keys a component must be signed by, when `[plugins]
    /// trusted_keys` names any.
    pub fn trusted_keys(&self) -> Option<&TrustedKeys> {
        self.trusted.as_deref()
    }

    /// The wasmtime engine, for compiling a component outside a pipeline
    /// (`sluice plugin inspect`).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(super) fn linker(&self) -> &Linker<PluginState> {
        &self.linker
    }

    /// Compiles `bytes`, or loads the precompiled artifact from the cache.
    /// Returns whether the cache answered (for logs and metrics).
    pub(super) fn compile(&self, bytes: &[u8], digest: &str) -> wasmtime::Result<(Component, bool)> {
        let Some(dir) = &self.cache_dir else {
            return Ok((Component::new(&self.engine, bytes)?, false));
        };
        let path = self.cache_path(dir, digest);
        if path.exists() {
            // SAFETY: the artifact was written by `precompile_component` of an
            // engine with the same compatibility hash (it is in the file
            // name), into a directory the operator keeps private.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(err) => tracing::warn!(path = %path.display(), "ignoring unusable cached component: {err:#}"),
            }
        }
        let compiled = self.engine.precompile_component(bytes)?;
        if let Err(err) = crate::fs::write_atomically(&path, &compiled) {
            tracing::warn!(path = %path.display(), "cannot write the component cache: {err}");
        }
        // SAFETY: these bytes were produced just above by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &compiled)? };
        Ok((component, false))
    }

    fn cache_path(&self, dir: &Path, digest: &str) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        let mut key = Sha256::new();
        key.update(digest.as_bytes());
        key.update(hasher.finish().to_le_bytes());
        dir.join(format!("{}.cwasm", hex::encode(&key.finalize()[..16])))
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
