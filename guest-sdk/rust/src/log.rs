//! Structured logging into the host's log stream.
//!
//! The host tags every line with the pipeline and plugin, so do not repeat
//! those as fields. It also tags the id of the event being handled, but
//! during a `handle-batch` call that is the id of the batch's first event:
//! add the event id as a field where the exact event matters. Lines are
//! rate-limited per plugin instance (100 a second on average, bursts of 200);
//! the excess is dropped and counted.
//!
//! Outside a component (native unit tests of a plugin) there is no host to
//! log to: lines are printed to stderr instead, so code that logs can be
//! tested natively as it is.

pub use crate::bindings::sluice::plugin::log::Level;

/// Logs `message` at `level` with key/value `fields`, e.g.
/// `with_fields(Level::Warn, "slow lookup", &[("ms", &ms.to_string())])`.
pub fn with_fields(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        crate::bindings::sluice::plugin::log::log(level, message, &fields);
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message} {fields:?}");
}

/// Logs at [`Level::Trace`].
pub fn trace(message: &str) {
    with_fields(Level::Trace, message, &[]);
}

/// Logs at [`Level::Debug`].
pub fn debug(message: &str) {
    with_fields(Level::Debug, message, &[]);
}

/// Logs at [`Level::Info`].
pub fn info(message: &str) {
    with_fields(Level::Info, message, &[]);
}

/// Logs at [`Level::Warn`].
pub fn warn(message: &str) {
    with_fields(Level::Warn, message, &[]);
}

/// Logs at [`Level::Error`].
pub fn error(message: &str) {
    with_fields(Level::Error, message, &[]);
}
