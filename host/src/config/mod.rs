//! The configuration file: typed, strict (unknown keys are errors) and
//! self-documenting. The doc comments on these types are the reference in
//! `docs/configuration.md`; keep both in step.
//!
//! This module holds the document and the pipeline (`model.rs`), the tagged
//! enums that select a component by its `kind` ([`SourceConfig`],
//! [`SinkConfig`]), interpolation, validation and error reporting. Each
//! source and sink owns its config type and its `build()`, beside the
//! component (`source::kafka::KafkaSourceConfig`, `sink::nats::NatsSinkConfig`,
//! …); they are re-exported here.
//!
//! Loading is three steps: [`interpolate`] `${ENV}` references in the raw
//! text, deserialize with serde (which names the offending key and line), then
//! `validate` the cross-field rules serde cannot express, and read and
//! compile the event schemas ([`SchemasConfig`]).

mod client;
mod error;
mod files;
mod http;
mod interpolate;
mod model;
mod rollout;
mod schemas;
mod state;
pub(crate) mod validate;

pub use client::{ClientConfig, ClientUse, Transport};
pub use error::{ConfigError, Problem, Scope};
pub use files::{canonical, subject_matches};
pub use http::{AllowEntry, Destination, HttpConfig, HttpScheme};
pub use interpolate::interpolate;
pub use model::*;
pub use rollout::{RolloutConfig, RolloutMode};
pub use schemas::{SchemaEntry, SchemasConfig, Unmatched};
pub use state::{StateBackend, StateConfig};
pub use validate::valid_topic;
// Each component's own config, selected by the `kind` of its `source` or
// sink table.
pub use crate::sink::kafka::KafkaSinkConfig;
pub use crate::sink::lines::{FileSinkConfig, RecordFormat, StdoutSinkConfig};
pub use crate::sink::nats::{JetStreamSinkConfig, NatsSinkConfig};
pub use crate::source::jetstream::{DeliverFrom, JetStreamSourceConfig};
pub use crate::source::kafka::{KafkaSourceConfig, StartFrom};
pub use crate::source::lines::{FileSourceConfig, LineFormat, StdinSourceConfig};
pub use crate::source::nats::NatsSourceConfig;

use std::path::Path;

/// Reads, interpolates, parses and validates a config file. Relative paths in
/// the file are resolved against the file's own directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_path_buf(), source })?;
    parse(&text, path, |name| std::env::var(name).ok())
}

/// What `sluice check` learns from the file: the config, and every problem
/// of it (those [`load`] refuses, and those of the machine: a missing source
/// file, a sink folder that cannot be written) listed rather than returned
/// as an error, so all of them are reported at once.
pub struct Checked {
    /// The config as parsed, problems and all.
    pub config: Config,
    /// Every rule the file or the machine breaks, in file order.
    pub problems: Vec<Problem>,
    /// The pipelines that break a rule of their own (a key out of range, a
    /// schema that does not compile): their plugins are not worth loading,
    /// since the settings a load uses may be the ones at fault.
    pub invalid: std::collections::BTreeSet<String>,
}

/// For `sluice check`: see [`Checked`].
pub fn load_for_check(path: &Path) -> Result<Checked, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_path_buf(), source })?;
    let Parsed { config, broken, shared } = parse_collecting(&text, path, |name| std::env::var(name).ok())?;
    let invalid = broken.iter().filter_map(|p| p.scope.pipeline()).map(str::to_owned).collect();
    let mut problems = broken;
    problems.extend(shared);
    problems.extend(files::environment(&config));
    Ok(Checked { config, problems, invalid })
}

/// Parses config text. `file` names the source in errors and anchors relative
/// paths; `env` resolves `${NAME}` references (injectable for tests). Every
/// rule broken is reported, not just the first.
pub fn parse(text: &str, file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let Parsed { config, broken, shared } = parse_collecting(text, file, env)?;
    let mut problems: Vec<Problem> = broken.into_iter().chain(shared).collect();
    match problems.len() {
        0 => Ok(config),
        1 => Err(ConfigError::Invalid { file: file.to_path_buf(), problem: problems.remove(0) }),
        _ => Err(ConfigError::Problems { file: file.to_path_buf(), problems }),
    }
}

/// A config that parsed, with the rules it breaks.
struct Parsed {
    config: Config,
    /// The rules of `[admin]` and `[tracing]`, then of each pipeline (its
    /// keys, its schemas), grouped by pipeline in the order they were
    /// checked.
    broken: Vec<Problem>,
    /// The problems of files and subjects shared between pipelines.
    shared: Vec<Problem>,
}

/// [`parse`], with the rules broken returned beside the config rather than
/// as an error.
fn parse_collecting(text: &str, file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Parsed, ConfigError> {
    // Remember where values from the environment went: an error about
    // text there names the variable and never quotes the text.
    let (text, substitutions) = interpolate::interpolate_tracked(text, &env).map_err(|e| ConfigError::Env {
        file: file.to_path_buf(),
        line: e.line,
        message: e.message,
    })?;
    let origin = Origin { text: &text, substitutions: &substitutions };
    let mut config: Config =
        toml::from_str(&text).map_err(|e| ConfigError::Syntax { file: file.to_path_buf(), message: origin.syntax_error(&e) })?;
    let base = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
    config.resolve_paths(base);
    let mut broken = validate::validate(&config);
    broken.extend(schemas::load(&mut config));
    let tables = [
        ("admin", config.admin.as_ref().map(validate::admin)),
        ("tracing", config.tracing.as_ref().map(validate::tracing)),
        ("plugins", config.plugins.store.as_ref().map(store_rules)),
    ];
    for (table, found) in tables {
        broken.extend(found.into_iter().flatten().map(|(key, message)| Problem { scope: Scope::Table(table), key: key.into(), message }));
    }
    // Stable: tables first, then each pipeline's problems in the order
    // they were checked.
    broken.sort_by(|a, b| a.scope.cmp(&b.scope));
    let located = |p: Problem| {
        let message = match &p.scope {
            Scope::Pipeline(name) => origin.violation(&["pipelines", name.as_str()], &p.key, p.message),
            Scope::Table(table) => origin.violation(&[*table], &p.key, p.message),
        };
        Problem { message, ..p }
    };
    let broken = broken.into_iter().map(located).collect();
    let shared = files::rules(&config).into_iter().map(located).collect();
    Ok(Parsed { config, broken, shared })
}

/// `[plugins.store]`'s rules, at keys under `[plugins]`.
fn store_rules(store: &crate::store::StoreConfig) -> Vec<(&'static str, String)> {
    store
        .validate()
        .into_iter()
        .map(|(key, message)| {
            let key: &'static str = match key {
                "url" => "store.nats",
                "bucket" => "store.bucket",
                "token" => "store.token",
                "user" => "store.user",
                "password" => "store.password",
                "nkey" => "store.nkey",
                "credentials" => "store.credentials",
                "tls_ca" => "store.tls_ca",
                "tls_cert" => "store.tls_cert",
                "tls_key" => "store.tls_key",
                "kafka" => "store.kafka",
                "kafka.brokers" => "store.kafka.brokers",
                "kafka.topic" => "store.kafka.topic",
                "kafka.tls.cert_file" => "store.kafka.tls.cert_file",
                "kafka.tls.key_file" => "store.kafka.tls.key_file",
                "kafka.tls.key_password" => "store.kafka.tls.key_password",
                "kafka.sasl.username" => "store.kafka.sasl.username",
                "kafka.sasl.password" => "store.kafka.sasl.password",
                "kafka.options" => "store.kafka.options",
                _ => "store",
            };
            (key, message)
        })
        .collect()
}

/// The interpolated config text and where environment values sit in it:
/// an error is judged by where the bad value came from, not by searching
/// its text for secrets (which missed what a message re-encodes and, for a
/// short secret, masked letters everywhere and so revealed it).
struct Origin<'a> {
    text: &'a str,
    substitutions: &'a [interpolate::Substitution],
}

impl Origin<'_> {
    /// The variables whose values overlap `range`.
    fn names_in(&self, range: std::ops::Range<usize>) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .substitutions
            .iter()
            .filter(|s| s.range.start < range.end.max(range.start + 1) && range.start < s.range.end)
            .map(|s| s.name.as_str())
            .collect();
        names.dedup();
        names
    }

    fn withheld(names: &[&str]) -> String {
        let vars = names.iter().map(|n| format!("`${{{n}}}`")).collect::<Vec<_>>().join(", ");
        format!("the value from the environment ({vars}) is not valid here; it is not shown, check what the variable is set to")
    }

    /// A TOML error: as toml prints it (with the line quoted) when no
    /// environment value is on that line; otherwise without the quote, and
    /// without toml's message too when the error is about such a value.
    fn syntax_error(&self, e: &toml::de::Error) -> String {
        if self.substitutions.is_empty() {
            return e.to_string().trim_end().to_owned();
        }
        let Some(span) = e.span() else {
            return "not valid TOML (the details are not shown: they may quote values from the environment)".into();
        };
        let line_start = self.text[..span.start.min(self.text.len())].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[span.end.min(self.text.len())..].find('\n').map_or(self.text.len(), |i| span.end + i);
        let line = self.text[..line_start].matches('\n').count() + 1;
        let column = self.text[line_start..span.start.min(self.text.len())].chars().count() + 1;
        let on_value = self.names_in(span.clone());
        if !on_value.is_empty() {
            return format!("line {line}, column {column}: {}", Self::withheld(&on_value));
        }
        if self.names_in(line_start..line_end).is_empty() {
            return e.to_string().trim_end().to_owned();
        }
        format!("line {line}, column {column}: {}", e.message().trim_end())
    }

    /// A rule broken at `key` (dotted) under the table `table`: withheld
    /// when that key's value holds an environment value.
    fn violation(&self, table: &[&str], key: &str, message: String) -> String {
        if self.substitutions.is_empty() {
            return message;
        }
        let Ok(document) = toml_edit::ImDocument::parse(self.text) else { return message };
        let mut item = document.as_item();
        for part in table.iter().copied().chain(key.split('.')) {
            match item.as_table_like().and_then(|t| t.get(part)) {
                Some(next) => item = next,
                // A missing key: its message quotes no value.
                None => return message,
            }
        }
        match item.span().map(|span| self.names_in(span)) {
            Some(names) if !names.is_empty() => Self::withheld(&names),
            _ => message,
        }
    }
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

    /// A `[tracing]` or `[admin]` mistake is a rule broken in that table,
    /// not a syntax error, and is listed with the pipelines' problems.
    #[test]
    fn table_rules_are_violations_of_the_table() {
        let text = "[tracing]\notlp_endpoint = \"https://c:4318\"\n";
        let err = super::parse(text, Path::new("c.toml"), |_| None);
        assert!(
            matches!(&err, Err(super::ConfigError::Invalid { problem, .. }) if problem.scope == super::Scope::Table("tracing") && problem.key == "otlp_endpoint"),
            "not a rule violation of [tracing]: {err:?}"
        );
        let text = "[admin]\ntls_key = \"k.pem\"\n[tracing]\notlp_endpoint = \"ftp://c\"\nsample_ratio = 2.0\n";
        let err = super::parse(text, Path::new("c.toml"), |_| None);
        let problems = match err {
            Err(super::ConfigError::Problems { problems, .. }) => problems,
            other => Vec::from([super::Problem { scope: super::Scope::Table("?"), key: format!("{other:?}"), message: String::new() }]),
        };
        let keys: Vec<String> = problems.iter().map(|p| format!("{:?} {}", p.scope, p.key)).collect();
        assert_eq!(keys, [r#"Table("admin") tls_cert"#, r#"Table("tracing") otlp_endpoint"#, r#"Table("tracing") sample_ratio"#]);
    }

    fn error(text: &str, secret: &str) -> String {
        let env = |name: &str| (name == "SECRET").then(|| secret.to_owned());
        super::parse(text, Path::new("c.toml"), env).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn environment_values_never_appear_in_errors() {
        let err = error("[runtime]\nshutdown_timeout = \"${SECRET}\"\n", "s3cr\"et");
        assert!(!err.is_empty());
        assert!(!err.contains("s3cr"), "{err}");
        assert!(err.contains("`${SECRET}`"), "the variable is named: {err}");
    }

    /// A short secret is not masked by replacing its letters in the message
    /// (`must b*** at l***ast 1` revealed an `e`): the message about it is
    /// withheld, and other messages are left whole.
    #[test]
    fn a_short_secret_is_withheld_by_origin_not_by_text() {
        let pipeline = |policy: &str| {
            format!("[pipelines.p]\nsource = {{ kind = \"stdin\" }}\nsink = {{ kind = \"stdout\" }}\ndead_letter = {{ kind = \"stdout\" }}\nplugin = {{ path = \"p.wasm\" }}\npolicy = {{ {policy} }}\n")
        };
        let err = error(&pipeline("max_attempts = ${SECRET}"), "0");
        assert!(
            err.ends_with(
                "the value from the environment (`${SECRET}`) is not valid here; it is not shown, check what the variable is set to"
            ),
            "{err}"
        );
        // A message about another key keeps its letters.
        let err = error(&(pipeline("max_attempts = 0") + "[admin]\ntoken = \"${SECRET}\"\n"), "e");
        assert!(err.contains("must be at least 1, got 0"), "{err}");
    }

    /// A multi-line secret in a string breaks the TOML: the line is not
    /// quoted (it used to show the first line of the secret).
    #[test]
    fn a_multi_line_secret_is_not_quoted() {
        let err = error("[admin]\ntoken = \"${SECRET}\"\n", "first-line\nsecond");
        assert!(err.starts_with("c.toml: line 2, column"), "{err}");
        assert!(!err.contains("first-line") && !err.contains("second"), "{err}");
    }

    /// A URL from the environment, invalid: its credentials are not printed
    /// whatever the message.
    #[test]
    fn a_bad_url_from_the_environment_is_not_printed() {
        let text = "[pipelines.p]\nsource = { kind = \"nats\", url = \"${SECRET}\", subject = \"a\" }\nsink = { kind = \"stdout\" }\ndead_letter = { kind = \"stdout\" }\nplugin = { path = \"p.wasm\" }\n";
        let err = error(text, "nats://u:hunter2@h/bad path");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("key `source.url`"), "{err}");
        // Written in the file, the URL is printed without its credentials.
        let err = error(&text.replace("${SECRET}", "nats://u:hunter2@h/bad path"), "");
        assert!(err.contains("\"nats://***@h/bad path\" is not a NATS server address"), "{err}");
    }
}
