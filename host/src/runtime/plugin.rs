//! Loading a plugin: read, check the pin, compile (or load from cache),
//! check the world, and prove `init` accepts the config, all before any
//! event reaches it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex};

use super::capability::Capability;
use super::engine::Runtime;
use super::host::GuestLog;
use super::instance::{CallError, Instance, StderrTail};
use super::manifest;
use super::signature::signature_path;
use super::world::{Pre, Target};
use crate::config::{InstancePolicy, WasiGrants};
use crate::schema::Accepts;

/// The world every plugin must implement (or its frozen 0.1.0 version).
pub const WORLD: &str = "sluice:plugin/plugin@0.2.0";

/// What to load and under which limits.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Pipeline name, for logs.
    pub pipeline: String,
    /// The component file.
    pub path: PathBuf,
    /// Expected sha256 (hex); any other file is refused.
    pub sha256: Option<String>,
    /// Handed to `init`.
    pub config: Vec<(String, String)>,
    /// What of WASI the plugin may use beyond clocks and random numbers
    /// (environment variables, stdio, directories); denied by default.
    pub wasi: WasiGrants,
    /// Per-event deadline.
    pub timeout: Duration,
    /// Deadline for a new instance's start and `init`.
    pub init_timeout: Duration,
    /// Linear memory cap per instance, bytes.
    pub memory: u64,
    /// One instance per lane, or one per event.
    pub instance: InstancePolicy,
    /// The capabilities the pipeline grants; a plugin importing any other
    /// is refused.
    pub grants: Vec<Capability>,
    /// The pipeline's plugin metrics: one registry for every version, so
    /// values survive reloads (see [`PluginMetrics`](super::PluginMetrics)).
    pub metrics: super::metrics::PluginMetrics,
    /// Outbound HTTP (`[plugin.http]`), when granted.
    pub http: Option<crate::config::HttpConfig>,
    /// Answer the plugin's HTTP requests from these rules instead of the
    /// network (`sluice plugin test --http-replies`); `None` in pipelines.
    pub http_stubs: Option<Arc<super::http::stub::HttpStubs>>,
}

/// Why a plugin could not be loaded: the message names the file and, where
/// it can, what to change.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read plugin {}: {source}", path.display())]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not the one the config's `sha256` pins.
    #[error("plugin {} has sha256 {actual} but the config pins {expected}", path.display())]
    DigestMismatch {
        /// The plugin file.
        path: PathBuf,
        /// The sha256 the config pins.
        expected: String,
        /// The file's sha256.
        actual: String,
    },
    /// `[plugins] trusted_keys` is set and the file has no valid signature by one of them.
    #[error("plugin {} is refused: {reason}", path.display())]
    Unsigned {
        /// The plugin file.
        path: PathBuf,
        /// Why the signature check failed.
        reason: super::signature::SignatureError,
    },
    /// Not WebAssembly at all (a wrong path, a text file).
    #[error("plugin {} is not a WebAssembly file (it does not start with `\\0asm`)", path.display())]
    NotWasm {
        /// The plugin file.
        path: PathBuf,
    },
    /// A core module where a component is needed.
    #[error("plugin {} is a core WebAssembly module, not a component: build it for the wasm32-wasip2 target, or wrap it with `wasm-tools component new`", path.display())]
    CoreModule {
        /// The plugin file.
        path: PathBuf,
    },
    /// A component wasmtime cannot compile.
    #[error("plugin {} is not a valid component: {detail}", path.display())]
    Invalid {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's or the guest's explanation.
        detail: String,
    },
    /// A component that does not implement Sluice's plugin world.
    #[error("plugin {} does not implement the world {WORLD}: {detail}", path.display())]
    WrongWorld {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's or the guest's explanation.
        detail: String,
    },
    /// Instantiating the component failed.
    #[error("plugin {} failed to start: {detail}", path.display())]
    Start {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's or the guest's explanation.
        detail: String,
    },
    /// The plugin's `init` returned an error: its configuration is wrong.
    #[error("plugin {} refused its configuration: {message}", path.display())]
    InitRejected {
        /// The plugin file.
        path: PathBuf,
        /// The plugin's error message.
        message: String,
    },
    /// `init` trapped or ran out of memory or time.
    #[error("plugin {} failed in init: {source}", path.display())]
    InitFailed {
        /// The plugin file.
        path: PathBuf,
        /// The underlying error.
        source: CallError,
    },
    /// Start and `init` took longer than `policy.init_timeout`.
    #[error("plugin {} did not finish starting and `init` within policy.init_timeout ({limit:?}): it loops or waits in `init`", path.display())]
    InitTimeout {
        /// The plugin file.
        path: PathBuf,
        /// `policy.init_timeout`.
        limit: Duration,
    },
    /// The optional `manifest` export is malformed.
    #[error("plugin {} exports `{interface}` but: {detail}", path.display())]
    Manifest {
        /// The plugin file.
        path: PathBuf,
        /// The exported interface at fault.
        interface: String,
        /// wasmtime's or the guest's explanation.
        detail: String,
    },
    /// The plugin imports a capability its pipeline does not grant.
    #[error("plugin {} imports the `{capability}` capability, which pipeline `{pipeline}` does not grant: {}", path.display(), capability.how_to_grant())]
    NotGranted {
        /// The plugin file.
        path: PathBuf,
        /// The pipeline loading it.
        pipeline: String,
        /// The capability imported but not granted.
        capability: Capability,
    },
}

/// A compiled, validated plugin from which instances are made. Cheap to
/// clone; shared by the lanes of a pipeline.
#[derive(Clone)]
pub struct LoadedPlugin {
    inner: Arc<Inner>,
}

struct Inner {
    spec: PluginSpec,
    name: String,
    digest: Arc<str>,
    size: usize,
    runtime: Runtime,
    component: Component,
    pre: Pre,
    load_time: Duration,
    cache_hit: bool,
    /// `manifest.accepts` of this version, when it exports it.
    manifest: Option<ComponentExportIndex>,
    capabilities: Vec<Capability>,
    accepts: std::sync::OnceLock<Accepts>,
    /// The instance the load started (and ran `init` on) to validate the
    /// plugin, kept for the first [`LoadedPlugin::instantiate`]: without
    /// it every start and reload paid one instantiation and one `init`
    /// twice before its first event (half of a JavaScript plugin's start).
    spare: std::sync::Mutex<Option<Instance>>,
    /// The HTTP grant, shared by every instance (its concurrency slots are
    /// the pipeline's).
    http: Option<Arc<super::http::Outbound>>,
}

impl LoadedPlugin {
    /// Loads and validates, including one instantiation and `init`, so a
    /// plugin that is loaded is one that has accepted its config.
    pub async fn load(runtime: &Runtime, spec: PluginSpec) -> Result<Self, LoadError> {
        let path = spec.path.clone();
        let bytes = tokio::fs::read(&path).await.map_err(|source| LoadError::Read { path: path.clone(), source })?;
        // Read only when signatures are required; a missing file is an
        // unsigned component, which `compile` refuses by name.
        let signature = match runtime.trusted_keys() {
            Some(_) => match tokio::fs::read_to_string(signature_path(&path)).await {
                Ok(line) => Some(line),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => return Err(LoadError::Read { path: signature_path(&path), source }),
            },
            None => None,
        };
        Self::from_bytes(runtime, spec, bytes, signature).await
    }

    /// Loads a component from memory (an uploaded version); `spec.path`
    /// names it in errors and gives the plugin its name. Compiling runs on a
    /// blocking thread (it takes seconds for JavaScript and Python); the
    /// first instance and its `init` run as a future within
    /// `spec.init_timeout`.
    /// `signature` is its signature line, checked when `[plugins]
    /// trusted_keys` is set.
    pub async fn from_bytes(runtime: &Runtime, spec: PluginSpec, bytes: Vec<u8>, signature: Option<String>) -> Result<Self, LoadError> {
        let started = Instant::now();
        let path = spec.path.clone();
        let compiling = runtime.clone();
        let size = bytes.len();
        let task = tokio::task::spawn_blocking(move || compile(&compiling, spec, &bytes, signature.as_deref()));
        let compiled = announce_slow_compile(task, &path, size)
            .await
            .map_err(|e| LoadError::Start { path: path.clone(), detail: format!("the compiler thread stopped: {e}") })??;
        let mut plugin = compiled;
        let (instance, accepts) = plugin.first_start(runtime).await?;
        if let Some(accepts) = accepts {
            let _ = plugin.inner.accepts.set(accepts);
        }
        *plugin.inner.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(instance);
        if let Some(inner) = Arc::get_mut(&mut plugin.inner) {
            inner.load_time = started.elapsed();
        }
        Ok(plugin)
    }

    /// The first instance and its `init`, on a plugin thread when there
    /// are any (guest code never runs on the async workers that serve the
    /// admin API and the sources); returns the instance and what `accepts`
    /// said.
    async fn first_start(&self, runtime: &Runtime) -> Result<(Instance, Option<Accepts>), LoadError> {
        let Ok(Some(executor)) = runtime.executor() else {
            return self.start(true).await;
        };
        let plugin = self.clone();
        executor.spawn(async move { plugin.start(true).await }).await.unwrap_or_else(|e| {
            Err(LoadError::Start { path: self.inner.spec.path.clone(), detail: format!("the host failed while starting the plugin: {e}") })
        })
    }

    /// A fresh instance with its config applied through `init` (the first
    /// call gets the one the load validated the plugin with, which has
    /// handled no event).
    pub async fn instantiate(&self) -> Result<Instance, LoadError> {
        if let Some(spare) = self.inner.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            return Ok(spare);
        }
        self.start(false).await.map(|(instance, _)| instance)
    }

    /// A fresh instance; with `read_manifest`, also what its `accepts`
    /// returns (after `init`) when the component exports it. Start and
    /// `init` together get `init_timeout`.
    async fn start(&self, read_manifest: bool) -> Result<(Instance, Option<Accepts>), LoadError> {
        let spec = &self.inner.spec;
        let limit = spec.init_timeout;
        match tokio::time::timeout(limit, self.start_within(read_manifest, limit)).await {
            Ok(started) => started,
            Err(_) => Err(LoadError::InitTimeout { path: spec.path.clone(), limit }),
        }
    }

    async fn start_within(&self, read_manifest: bool, limit: Duration) -> Result<(Instance, Option<Accepts>), LoadError> {
        let inner = &*self.inner;
        let spec = &inner.spec;
        let path = &spec.path;
        let stderr = StderrTail::default();
        let wasi = super::wasi::context(&spec.wasi, stderr.clone())
            .map_err(|e| LoadError::Start { path: path.clone(), detail: format!("cannot grant WASI capabilities: {e:#}") })?;
        let log = GuestLog::new(spec.pipeline.clone(), inner.name.clone(), inner.digest.get(..12).unwrap_or(&inner.digest).to_owned());
        let mut store = Instance::store(inner.runtime.engine(), wasi, log, spec.metrics.clone(), spec.memory);
        store.data_mut().http = super::http::HttpState::new(inner.http.clone());
        let start_error = |e: wasmtime::Error| LoadError::Start { path: path.clone(), detail: format!("{e:#}") };
        // The manifest needs the raw instance; other instances use the
        // indices `PluginPre` resolved once (and the raw instance too when
        // the plugin takes packed batches, see `world::Pre::instantiate`).
        let (bindings, raw) = match (read_manifest, &inner.manifest) {
            (true, Some(_)) => {
                let (bindings, raw) = inner.pre.instantiate_raw(&mut store).await.map_err(start_error)?;
                (bindings, Some(raw))
            }
            _ => (inner.pre.instantiate(&mut store).await.map_err(start_error)?, None),
        };
        let mut instance = Instance::new(store, bindings, spec.timeout, spec.memory, stderr);
        match instance.init(&spec.config, limit).await {
            Ok(Ok(())) => {
                let accepts = match (raw, &inner.manifest) {
                    (Some(raw), Some(func)) => Some(
                        instance
                            .with_store(|store| Box::pin(manifest::accepts(store, raw, *func)))
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|accepts| accepts)
                            .map_err(|detail| LoadError::Manifest {
                                path: path.clone(),
                                interface: self.target().interface("manifest"),
                                detail,
                            })?,
                    ),
                    _ => None,
                };
                Ok((instance, accepts))
            }
            Ok(Err(message)) => Err(LoadError::InitRejected { path: path.clone(), message }),
            Err(CallError::Timeout(limit)) => Err(LoadError::InitTimeout { path: path.clone(), limit }),
            Err(source) => Err(LoadError::InitFailed { path: path.clone(), source }),
        }
    }

    /// Short name for logs and metrics: the file stem.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// sha256 of the component file, hex.
    pub fn digest_arc(&self) -> Arc<str> {
        self.inner.digest.clone()
    }

    /// sha256 of the component file, hex.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }
    /// The component file's size, bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }
    /// What it was loaded from and under which limits.
    pub fn spec(&self) -> &PluginSpec {
        &self.inner.spec
    }
    /// The compiled component.
    pub fn component(&self) -> &Component {
        &self.inner.component
    }
    /// Time taken by [`LoadedPlugin::load`], compile or cache load included.
    pub fn load_time(&self) -> Duration {
        self.inner.load_time
    }
    /// The event versions this version accepts (`manifest.accepts`);
    /// `None` when it does not export `manifest`.
    pub fn accepts(&self) -> Option<&Accepts> {
        self.inner.accepts.get()
    }
    /// The contract version the plugin was built against.
    pub fn target(&self) -> Target {
        self.inner.pre.target()
    }
    /// The capabilities it imports (all granted, or it would not load).
    pub fn capabilities(&self) -> &[Capability] {
        &self.inner.capabilities
    }
    /// Whether the compiled component came from the cache.
    pub fn cache_hit(&self) -> bool {
        self.inner.cache_hit
    }
}

/// What names a plugin version everywhere (config pins, uploads, the
/// fleet store, signatures, the `sluice-plugin-digest` header): the
/// sha256 of its bytes, in lower-case hex.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks the pin and the header, compiles (or loads from the cache) and
/// checks the world: everything before the first instance. Blocking.
fn compile(runtime: &Runtime, spec: PluginSpec, bytes: &[u8], signature: Option<&str>) -> Result<LoadedPlugin, LoadError> {
    let path = spec.path.clone();
    let digest = digest_of(bytes);
    if let Some(expected) = &spec.sha256 {
        if !expected.eq_ignore_ascii_case(&digest) {
            return Err(LoadError::DigestMismatch { path, expected: expected.clone(), actual: digest });
        }
    }
    // Before compiling: bytes nobody trusted never reach the compiler.
    if let Some(trusted) = runtime.trusted_keys() {
        let key = trusted.verify(&digest, signature).map_err(|reason| LoadError::Unsigned { path: path.clone(), reason })?;
        tracing::debug!(pipeline = %spec.pipeline, key, digest = &digest[..12], "plugin signature verified");
    }
    check_header(&path, bytes)?;
    let (component, cache_hit) =
        runtime.compile(bytes, &digest).map_err(|e| LoadError::Invalid { path: path.clone(), detail: format!("{e:#}") })?;
    let instance_pre = runtime.linker().instantiate_pre(&component).map_err(|e| LoadError::WrongWorld {
        path: path.clone(),
        detail: format!("it imports something the host does not provide: {e:#}"),
    })?;
    let pre = Pre::new(&component, instance_pre).map_err(|e| LoadError::WrongWorld { path: path.clone(), detail: format!("{e:#}") })?;
    let capabilities = super::capability::imported(&component, runtime.engine());
    if let Some(&capability) = capabilities.iter().find(|c| !spec.grants.contains(c)) {
        return Err(LoadError::NotGranted { path, pipeline: spec.pipeline.clone(), capability });
    }
    let name = plugin_name(&path);
    let manifest = manifest::find(&component, pre.target());
    let http = match spec.http.clone() {
        Some(config) => {
            let outbound = super::http::Outbound::new(&spec.pipeline, config, spec.timeout)
                .map_err(|detail| LoadError::Start { path: path.clone(), detail })?;
            Some(Arc::new(outbound.stubbed(spec.http_stubs.clone())))
        }
        None => None,
    };
    Ok(LoadedPlugin {
        inner: Arc::new(Inner {
            spec,
            name,
            digest: Arc::from(digest),
            size: bytes.len(),
            runtime: runtime.clone(),
            component,
            pre,
            load_time: Duration::ZERO,
            cache_hit,
            manifest,
            capabilities,
            accepts: std::sync::OnceLock::new(),
            spare: std::sync::Mutex::new(None),
            http,
        }),
    })
}

/// Waits for a compile, saying what is compiled when it takes more than a
/// second and every few seconds after: a JavaScript or Python component
/// (10–20 MB) takes seconds to minutes on a slow machine, and a silent
/// `run`, `check` or `plugin test` looks hung.
async fn announce_slow_compile<T>(mut task: tokio::task::JoinHandle<T>, path: &Path, size: usize) -> Result<T, tokio::task::JoinError> {
    let started = Instant::now();
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        tokio::select! {
            done = &mut task => {
                if started.elapsed() >= std::time::Duration::from_secs(1) {
                    tracing::info!(plugin = %path.display(), "compiled in {:.1}s (cached for the next start)", started.elapsed().as_secs_f64());
                }
                return done;
            }
            _ = tokio::time::sleep(wait) => {
                tracing::info!(plugin = %path.display(), "compiling {:.1} MiB of WebAssembly… ({}s)", size as f64 / (1 << 20) as f64, started.elapsed().as_secs());
                wait = std::time::Duration::from_secs(5);
            }
        }
    }
}

fn plugin_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into())
}

/// Distinguishes "not wasm" and "a core module" from a component before
/// handing the bytes to the compiler, whose errors for these are cryptic.
fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(LoadError::CoreModule { path: path.to_path_buf() }),
        Some([0, b'a', b's', b'm', ..]) => Ok(()),
        _ => Err(LoadError::NotWasm { path: path.to_path_buf() }),
    }
}
