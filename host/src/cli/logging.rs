use tracing_subscriber::EnvFilter;

use super::LogFormat;

/// Logs go to stderr (stdout may be a sink). Filter with `SLUICE_LOG`
/// (`RUST_LOG` syntax), default `info`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
