//! The WebAssembly runtime: everything that touches wasmtime lives here.
//!
//! - `executor`: the plugin threads lanes (and so guest code, and the
//!   tasks a call spawns) can run on, off the main runtime's workers
//!   (`[runtime] plugin_threads`; public for the benches).
//! - `engine`: the one process-wide engine and its defaults (epoch ticks for
//!   deadlines, allocator, the compiled-component cache): [`Runtime`].
//! - `plugin`: loading and validating a component into a
//!   [`LoadedPlugin`]: digest, sha256 pin, world check, `init`.
//! - `instance`: one live [`Instance`] with its store, limits and WASI
//!   context; calling the handler and classifying traps.
//! - `host`: the imports we provide to guests (logging, state).
//! - `bindings`: the `bindgen!` of the WIT worlds (0.2.0, and the frozen
//!   0.1.0), and `world`: calling a plugin whichever it targets.
//! - `capability`: imports a pipeline must grant (`state`, `client`,
//!   `wasi:http`), checked at load; `effects`: the event a call handles,
//!   lent to it for those imports.
//! - `metrics`: the `metrics` import, and the per-pipeline registry of
//!   what plugins record, rendered on `/metrics`.
//! - `http`: outbound HTTP (`wasi:http/outgoing-handler`) under the
//!   pipeline's `[plugin.http]`.
//! - `manifest`: the optional `manifest` export (accepted event versions),
//!   looked up by name so plugins without it load unchanged; `packed`: the
//!   optional `packed-handler` export (a batch in one buffer each way),
//!   preferred to `handle-batch` when a plugin has it.
//! - [`signature`]: signing plugins and checking their signatures, public
//!   for `sluice plugin keygen` and `sign`.
//!
//! The submodules are private; what the binary, benches and embedders use
//! is re-exported here.

pub(crate) mod bindings;
pub(crate) mod capability;
mod client;
pub(crate) mod effects;
pub(crate) mod engine;
pub mod executor;
mod host;
pub(crate) mod http;
pub(crate) mod instance;
pub(crate) mod manifest;
pub(crate) mod metrics;
pub(crate) mod packed;
pub(crate) mod plugin;
pub mod signature;
pub(crate) mod state;
mod trap;
mod wasi;
pub(crate) mod world;

pub use capability::{imported, Capability};
pub use effects::{CallKind, CallLog, CallRecord, EventScope};
pub use engine::{EngineError, Runtime, RuntimeOptions};
pub use http::stub::HttpStubs;
pub use instance::{CallError, HandleResult, Instance};
pub use metrics::{MetricsLimits, PluginMetrics};
pub use packed::find as find_packed;
pub use plugin::{digest_of, LoadError, LoadedPlugin, PluginSpec, WORLD};
pub use world::Target;
