//! The WebAssembly runtime: everything that touches wasmtime lives here.
//!
//! - [`executor`]: the plugin threads lanes (and so guest code, and the
//!   tasks a call spawns) run on, off the main runtime's workers.
//! - [`engine`]: the one process-wide engine and its defaults (epoch ticks for
//!   deadlines, allocator, the compiled-component cache).
//! - [`plugin`]: loading and validating a component into a
//!   [`LoadedPlugin`]: digest, sha256 pin, world check, `init`.
//! - [`instance`]: one live instance with its store, limits and WASI context;
//!   calling the handler and classifying traps.
//! - `host`: the imports we provide to guests (logging, state).
//! - [`bindings`]: the `bindgen!` of the WIT worlds (0.2.0, and the frozen
//!   0.1.0), and [`world`]: calling a plugin whichever it targets.
//! - [`capability`]: imports a pipeline must grant (`state`, `client`,
//!   `wasi:http`), checked at load; [`effects`]: the event a call handles,
//!   lent to it for those imports.
//! - [`metrics`]: the `metrics` import, and the per-pipeline registry of
//!   what plugins record, rendered on `/metrics`.
//!   lent to it for those imports; [`http`]: outbound HTTP
//!   (`wasi:http/outgoing-handler`) under the pipeline's `[plugin.http]`.
//! - [`manifest`]: the optional `manifest` export (accepted event versions),
//!   looked up by name so plugins without it load unchanged.

pub mod bindings;
pub mod capability;
mod client;
pub mod effects;
pub mod engine;
pub mod executor;
mod host;
pub mod http;
pub mod instance;
pub mod manifest;
pub mod metrics;
pub mod plugin;
pub mod signature;
pub mod state;
mod trap;
mod wasi;
pub mod world;

pub use capability::Capability;
pub use effects::{CallKind, CallLog, CallRecord, EventScope};
pub use engine::{Runtime, RuntimeOptions};
pub use instance::{CallError, Instance};
pub use metrics::{MetricsLimits, PluginMetrics};
pub use plugin::{LoadError, LoadedPlugin, PluginSpec};
pub use world::Target;
