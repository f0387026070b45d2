//! WASI for plugins: denied unless granted.
//!
//! The plugin sees no arguments, no environment, no files, no sockets, an
//! empty stdin, and stdout/stderr that go nowhere. Clocks and random numbers
//! stay on: every language runtime we support (Rust std, StarlingMonkey,
//! QuickJS, CPython) reads them while starting, and neither lets a plugin
//! reach anything outside itself. What a pipeline grants in
//! `[pipelines.<name>.plugin.wasi]` is added on top.

use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use crate::config::WasiGrants;

pub(super) fn context(grants: &WasiGrants, stderr: super::instance::StderrTail) -> wasmtime::Result<WasiCtx> {
    let mut builder = WasiCtxBuilder::new();
    builder.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    for name in &grants.env {
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    if grants.stdout {
        builder.inherit_stdout();
    }
    if grants.stderr {
        builder.inherit_stderr();
    } else {
        // Not shown, but the tail is kept: a Rust guest's panic message goes
        // to stderr, and it makes the trap's error message useful.
        builder.stderr(stderr);
    }
    for (guest, host) in &grants.read_dirs {
        builder.preopened_dir(host, guest, FsPerms::ReadOnly)?;
    }
    Ok(builder.build())
}
