//! Write Sluice event-handler plugins in Rust.
//!
//! A Sluice plugin is a WebAssembly component that exports the `handler`
//! interface of `sluice:plugin@0.2.0` (see `wit/sluice.wit`). This crate hides
//! the component plumbing so that a plugin is one [`Plugin`] impl plus one
//! [`export!`] line:
//!
//! ```no_run
//! use sluice_plugin::{log, Config, Event, HandlerError, Output, Plugin};
//!
//! /// Tags every event with a configurable team name and drops empty ones.
//! struct Tagger {
//!     team: String,
//! }
//!
//! impl Plugin for Tagger {
//!     fn init(config: Config) -> Result<Self, String> {
//!         // Refuse typos up front: the host then refuses to load the pipeline.
//!         config.deny_unknown(&["team"])?;
//!         Ok(Tagger { team: config.require("team")?.to_owned() })
//!     }
//!
//!     fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
//!         if event.payload.is_empty() {
//!             log::debug("dropping empty event");
//!             return Ok(vec![]); // zero outputs filter the event out
//!         }
//!         let text = event.payload_str()?; // invalid UTF-8 is dead-lettered
//!         Ok(vec![Output::new(text.trim())
//!             .with_key(event.key.clone().unwrap_or_default())
//!             .with_header("team", self.team.as_str())])
//!     }
//! }
//!
//! sluice_plugin::export!(Tagger);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2`; rustc then emits a component
//! that the host loads directly:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2
//! ```
//!
//! # Map of the crate
//!
//! - [`Plugin`] and [`export!`]: the author's contract, and the glue that keeps
//!   one plugin value per instance and implements `handle-batch` and
//!   `handle-packed` (the same batch in one buffer each way) for you.
//! - [`Config`]: the `init` key/value table, with strict-validation helpers.
//! - [`Event`], [`Output`], [`HandlerError`]: the WIT records, plus helpers
//!   for headers, UTF-8 and JSON payloads, and building outputs.
//! - [`log`]: structured logging into the host's log stream.
//! - [`state`]: the pipeline's key/value state, committed with each event.
//! - [`client`]: requests to other services (NATS, Kafka, NestJS) and
//!   emits published with the event's outputs.
//! - [`metrics`]: counters, gauges and histograms on the host's `/metrics`.
//! - `http` (feature `http`): outbound HTTP through `wasi:http`, to the
//!   destinations the pipeline allows.
//! - [`bindings`]: the raw `wit-bindgen` output, for anything not wrapped here.
//!
//! # Event versions
//!
//! A plugin that only understands some event types or versions says so with
//! [`Plugin::accepts`] (selectors such as `order-created@2`,
//! `order-created@*`, `*`). The host reads the list once per loaded version,
//! after `init`, and dead-letters every other event with reason
//! `unsupported` instead of calling the plugin. The default, `*`, accepts
//! everything.
//!
//! # Errors, retries and traps
//!
//! The plugin only states a disposition; the host owns delivery.
//! [`HandlerError::retryable`] asks for a retry with backoff (up to the
//! pipeline's `max-attempts`), [`HandlerError::reject`] dead-letters the event
//! at once. A panic aborts the instance (wasm has no unwinding) and the host
//! treats it as a retryable failure on a fresh instance, so panicking is never
//! the way to refuse one bad event.
//!
//! # Features
//!
//! - `json` (default): [`Event::json`] and [`Output::json`] via `serde_json`.
//! - `http`: the `http` module (a blocking client over `wasi:http`, via the
//!   `wasip2` crate). Off by default; a plugin that does not call it never
//!   imports `wasi:http` either way.
//! - `allocator` (default): the component allocates with
//!   [talc](https://crates.io/crates/talc) instead of Rust's default for
//!   wasm (dlmalloc). Each event costs a handful of allocations in the
//!   guest (its id, key, payload, the output list), and dlmalloc's `malloc`
//!   and `free` were 45% of a passthrough's guest time; with talc the whole
//!   pipeline runs ~7% fewer instructions per event. A plugin that sets its
//!   own `#[global_allocator]` turns default features off (a crate graph may
//!   have only one).
#![warn(missing_docs)]

pub mod client;
mod config;
mod event;
#[cfg(feature = "http")]
pub mod http;
pub mod log;
pub mod metrics;
pub mod state;
mod output;
mod packed;
mod plugin;

/// Raw bindings generated from `wit/sluice.wit`.
///
/// Generated once, here, so every plugin shares the same types and the
/// [`export!`] macro can name them from another crate.
pub mod bindings {
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        // The file, not the folder: `wit/deps/` holds the frozen 0.1.0.
        path: "../../wit/sluice.wit",
        // `plugin` plus the `manifest` export (`Plugin::accepts`) and
        // `packed-handler` (batches in one buffer each way). Hosts that
        // predate either ignore the extra export.
        world: "plugin-packed",
        pub_export_macro: true,
        default_bindings_module: "sluice_plugin::bindings",
        // Lets plugin unit tests compare whole events and outputs.
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::sluice::plugin::types::{Disposition, Event, HandlerError, Header, Output};
pub use config::Config;
pub use plugin::Plugin;

/// See the `allocator` feature. Wasm components are single-threaded unless
/// built with `atomics`, which talc's wasm allocator does not support.
#[cfg(all(feature = "allocator", target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[doc(hidden)]
pub mod __private {
    //! Used by the expansion of [`export!`](crate::export); not a public API.
    pub use crate::plugin::{accepts, handle, handle_batch, handle_packed, init, Slot};
    pub use std::thread_local;
}
