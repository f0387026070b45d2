//! The one place the WIT worlds are turned into Rust. Everything else
//! imports these types (re-exported as [`crate::event`]).
//!
//! Two packages: `sluice:plugin@0.2.0` (`wit/sluice.wit`, the current one,
//! whose types every stage uses) and the frozen `sluice:plugin@0.1.0`
//! (`wit/deps/`), in [`v0_1`], whose records are mapped onto the same Rust
//! types: a 0.1.0 plugin gets and returns exactly what a 0.2.0 one does.

wasmtime::component::bindgen!({
    // The file, not the folder: the folder's `deps/` holds 0.1.0 too, and
    // bindgen would then put versions in the module names.
    path: "../wit/sluice.wit",
    world: "plugin",
    // Calls into the guest are futures (see `engine.rs`): a guest waiting
    // in a host call holds no thread, and a deadline drops the call.
    exports: { default: async },
    // A state read may wait on a broker (a JetStream KV read): a pending
    // future, not a blocked thread. `set` and `delete` only write the
    // attempt's overlay, so they are plain calls: an async host call costs
    // a boxed future and a poll on the guest's fiber each time.
    imports: {
        "sluice:plugin/state.get": async,
        "sluice:plugin/state.increment": async,
        "sluice:plugin/state.scan": async,
        "sluice:plugin/client": async,
    },
    // Tests compare events and outputs; the host never hashes them.
    additional_derives: [PartialEq, Eq],
});

/// The interfaces of the current package (0.2.0).
pub use self::sluice::plugin as current;

/// The frozen `sluice:plugin@0.1.0`, for plugins built before 0.2.0.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/deps/sluice-plugin@0.1.0",
        world: "plugin",
        exports: { default: async },
        with: { "sluice:plugin/types": crate::runtime::bindings::current::types },
    });
}
