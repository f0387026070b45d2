//! The configuration file: typed, strict (unknown keys are errors) and
//! self-documenting. The doc comments on these types are the reference in
//! `docs/configuration.md`; keep both in step.
//!
//! Loading is three steps: [`interpolate`] `${ENV}` references in the raw
//! text, deserialize with serde (which names the offending key and line), then
//! `validate` the cross-field rules serde cannot express, and read and
//! compile the event schemas ([`SchemasConfig`]).

mod error;
mod interpolate;
mod model;
mod schemas;
mod state;
mod validate;

pub use error::ConfigError;
pub use interpolate::interpolate;
pub use model::*;
pub use schemas::{SchemaEntry, SchemasConfig, Unmatched};
pub use state::{StateBackend, StateConfig};
pub use validate::valid_topic;

use std::path::Path;

/// Reads, interpolates, parses and validates a config file. Relative paths in
/// the file are resolved against the file's own directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, |name| std::env::var(name).ok())
}

/// Parses config text. `file` names the source in errors and anchors relative
/// paths; `env` resolves `${NAME}` references (injectable for tests).
pub fn parse(
    text: &str,
    file: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    // Remember what came from the environment: error messages quote config
    // text, and a secret must not reach a log through them.
    let substituted = std::cell::RefCell::new(Vec::new());
    let recording_env = |name: &str| {
        let value = env(name);
        if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
            substituted.borrow_mut().push(v.clone());
        }
        value
    };
    let text = interpolate(text, &recording_env).map_err(|e| ConfigError::Env {
        file: file.to_path_buf(),
        line: e.line,
        message: e.message,
    })?;
    let secrets = substituted.into_inner();
    let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        file: file.to_path_buf(),
        message: mask(e.to_string().trim_end(), &secrets),
    })?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    config.resolve_paths(base);
    validate::validate(&config)
        .and_then(|()| schemas::load(&mut config))
        .map_err(|e| ConfigError::Invalid {
        file: file.to_path_buf(),
        pipeline: e.pipeline,
        key: e.key,
        message: mask(&e.message, &secrets),
    })?;
    if let Some(tracing) = &config.tracing {
        validate::tracing(tracing).map_err(|(key, message)| ConfigError::Syntax {
            file: file.to_path_buf(),
            message: format!("[tracing] key `{key}`: {}", mask(&message, &secrets)),
        })?;
    }
    Ok(config)
}

/// Replaces every substituted environment value in `message` with `***`.
fn mask(message: &str, secrets: &[String]) -> String {
    let mut masked = message.to_owned();
    for secret in secrets {
        masked = masked.replace(secret.as_str(), "***");
    }
    masked
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_admin_api_listens_on_loopback_unless_told_otherwise() {
        let text = "[admin]\ntoken = \"${TOKEN}\"\n";
        let config = super::parse(text, Path::new("c.toml"), |_| Some("t".into())).ok();
        let admin = config.and_then(|c| c.admin);
        assert_eq!(admin.as_ref().map(|a| a.listen.to_string()).as_deref(), Some("127.0.0.1:9090"));
        assert!(admin.is_some_and(|a| a.listen.ip().is_loopback() && format!("{:?}", a.token) == "Some(***)"));
    }

    #[test]
    fn environment_values_never_appear_in_errors() {
        let env = |name: &str| (name == "TOKEN").then(|| "s3cr\"et".to_owned());
        let text = "[runtime]\nshutdown_timeout = \"${TOKEN}\"\n";
        let err = super::parse(text, Path::new("c.toml"), env).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(!err.is_empty());
        assert!(!err.contains("s3cr"), "{err}");
    }
}
