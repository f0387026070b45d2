//! Imports the host provides to plugins: structured logging (for plugins
//! of either contract version), state (0.2.0, in [`super::state`]) and
//! service calls (0.2.0, in `super::client`), and metrics (0.2.0, in
//! [`super::metrics`]).

use std::time::Instant;

use wasmtime::component::{HasSelf, Linker};

use super::bindings::current::log::{self, Level};
use super::bindings::current::{client, http_failure, state};
use super::bindings::v0_1::sluice::plugin::log as log_v0_1;
use super::instance::PluginState;

pub(super) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    log::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    log_v0_1::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    state::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    client::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    // Plain import, not a capability: recording metrics reaches nothing
    // outside the host (see `super::metrics`).
    super::bindings::current::metrics::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    // Plain import too: a plugin learns only how its own requests failed.
    http_failure::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)
}

impl http_failure::Host for PluginState {
    fn last(&mut self) -> Option<http_failure::Failure> {
        let scope = self.scope.as_ref()?;
        let failure = scope.calls.last_http_failure(scope.attempt)?;
        Some(http_failure::Failure { target: failure.target, code: failure.code, detail: failure.detail })
    }
}

impl log_v0_1::Host for PluginState {
    fn log(&mut self, level: log_v0_1::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            log_v0_1::Level::Trace => Level::Trace,
            log_v0_1::Level::Debug => Level::Debug,
            log_v0_1::Level::Info => Level::Info,
            log_v0_1::Level::Warn => Level::Warn,
            log_v0_1::Level::Error => Level::Error,
        };
        log::Host::log(self, level, message, fields);
    }
}

/// Lines a plugin may log per second on average; bursts up to
/// [`LOG_BURST`]. A guest logging in a hot loop would otherwise flood the
/// host's log pipeline; what is dropped is counted and reported.
const LOG_RATE_PER_SEC: f64 = 100.0;
const LOG_BURST: f64 = 200.0;

/// Who is logging, and the token bucket that limits it.
pub(crate) struct GuestLog {
    pub pipeline: String,
    pub plugin: String,
    /// The plugin version (the first 12 hex digits of its sha256).
    pub version: String,
    /// The event being handled, or `FIRST..LAST` for a batch, for context.
    pub current_event: Option<String>,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl GuestLog {
    pub fn new(pipeline: String, plugin: String, version: String) -> Self {
        Self { pipeline, plugin, version, current_event: None, tokens: LOG_BURST, refilled: Instant::now(), dropped: 0 }
    }

    fn admit(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * LOG_RATE_PER_SEC).min(LOG_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

impl GuestLog {
    /// Reports, once, how many lines the rate limit dropped since the last
    /// report.
    fn report_dropped(&mut self) {
        if self.dropped > 0 {
            tracing::warn!(
                target: "sluice::guest",
                pipeline = %self.pipeline,
                plugin = %self.plugin,
                dropped = self.dropped,
                "plugin log lines dropped by the rate limit ({LOG_RATE_PER_SEC}/s)"
            );
            self.dropped = 0;
        }
    }
}

impl Drop for GuestLog {
    /// Lines dropped since the last line that got through would otherwise go
    /// unreported when the instance ends (end of run, or a trap).
    fn drop(&mut self) {
        self.report_dropped();
    }
}

impl log::Host for PluginState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let log = &mut self.log;
        if !log.admit() {
            return;
        }
        log.report_dropped();
        let event = log.current_event.as_deref().unwrap_or("-");
        let fields = Fields(&fields);
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "sluice::guest",
                    $level,
                    pipeline = %log.pipeline,
                    plugin = %log.plugin,
                    version = %log.version,
                    event = %event,
                    fields = %fields,
                    "{message}"
                )
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error => emit!(tracing::Level::ERROR),
        }
    }
}

/// Guest fields rendered as `k=v k=v` in one log field: guest keys are not
/// known at compile time, so they cannot be tracing fields of their own.
struct Fields<'a>(&'a [(String, String)]);

impl std::fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        Ok(())
    }
}
