//! The one place the WIT world is turned into Rust. Everything else imports
//! these types (re-exported as [`crate::event`]).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // Tests compare events and outputs; the host never hashes them.
    additional_derives: [PartialEq, Eq],
});
