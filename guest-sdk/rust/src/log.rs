//! Structured logging into the host's log stream.
//!
//! The host tags every line with the pipeline, plugin and event id and
//! rate-limits it per plugin, so log freely but do not repeat those tags as
//! fields. Outside a component (native unit tests) these calls panic: the
//! import only exists when the host provides it.

pub use crate::bindings::sluice::plugin::log::Level;

/// Logs `message` at `level` with key/value `fields`, e.g.
/// `with_fields(Level::Warn, "slow lookup", &[("ms", &ms.to_string())])`.
pub fn with_fields(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    crate::bindings::sluice::plugin::log::log(level, message, &fields);
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
