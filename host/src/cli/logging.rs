use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use super::LogFormat;

/// Cranelift and wasmtime log every compiled function at debug; keep them at
/// warn unless the filter names them, so `SLUICE_LOG=debug` stays readable.
const QUIET: &str = "cranelift_codegen=warn,wasmtime_cranelift=warn,wasmtime=warn";

/// Logs go to stderr (stdout may be a sink). Filter with `SLUICE_LOG`
/// (`RUST_LOG` syntax), default `info`. Colours only on a terminal.
pub fn init(format: LogFormat) {
    let user = std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(format!("{QUIET},{user}")).unwrap_or_else(|_| {
        eprintln!("warning: SLUICE_LOG `{user}` is not a valid filter; using `info`");
        EnvFilter::new(format!("{QUIET},info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
