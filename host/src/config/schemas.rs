//! `[pipelines.<name>.schemas]`: JSON Schemas for a pipeline's inputs and
//! outputs, chosen by an event-type and an event-version header. The schema
//! files are read and compiled while the config loads, so a missing file or
//! an invalid schema is a config error, and the documents are kept in the
//! config: a config reload that finds a schema file changed restarts the
//! pipeline with it, as for any other changed setting.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::model::Config;
use super::validate::Violation;

/// Event schemas of one pipeline. Without this table, nothing is validated
/// (a plugin's declared `accepts` list still applies, read from the default
/// headers).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemasConfig {
    /// The header that names an event's type. Default `event-type`. For
    /// CloudEvents in binary mode write `ce-type` (HTTP, NATS) or `ce_type`
    /// (Kafka). Compared without regard to case.
    #[serde(default = "default_type_header")]
    pub type_header: String,
    /// The header that holds an event's version. Default `event-version`.
    /// CloudEvents has no version attribute (`ce-dataschema` is a URI), so
    /// CloudEvents producers usually put it in a header of their own.
    #[serde(default = "default_version_header")]
    pub version_header: String,
    /// Schemas inputs are validated against before the plugin sees them.
    /// Empty (default): inputs are not validated.
    #[serde(default)]
    pub input: Vec<SchemaEntry>,
    /// Schemas every output is validated against. An output's type and
    /// version come from its own headers; an output without a type header is
    /// taken to be of its input's type and version. Empty (default): outputs
    /// are not validated.
    #[serde(default)]
    pub output: Vec<SchemaEntry>,
    /// What happens to an event (or output) whose type and version have no
    /// schema in a non-empty list: `reject` (default; dead letter) or `pass`
    /// (handled, or sent, unvalidated).
    #[serde(default)]
    pub unknown: Unmatched,
    /// What happens to an event without the type header (or an output
    /// without one whose input had none): `reject` (default) or `pass`.
    #[serde(default)]
    pub missing: Unmatched,
}

impl Default for SchemasConfig {
    fn default() -> Self {
        Self {
            type_header: default_type_header(),
            version_header: default_version_header(),
            input: Vec::new(),
            output: Vec::new(),
            unknown: Unmatched::default(),
            missing: Unmatched::default(),
        }
    }
}

/// One schema: which type (and version) it is for, and its file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaEntry {
    /// The event type, as the type header carries it, e.g. `order-created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The version, as the version header carries it, e.g. `"2"`. Unset: any
    /// version of the type (and events without a version header) that no
    /// entry names exactly.
    #[serde(default)]
    pub version: Option<String>,
    /// The JSON Schema file (drafts 4, 6, 7, 2019-09 and 2020-12, chosen by
    /// its `$schema`; 2020-12 when absent). Relative to the config file.
    /// `$ref` to other files or URLs is not resolved: a schema is one
    /// self-contained file (use `$defs` within it).
    pub path: PathBuf,
    /// The parsed file, filled in while the config loads.
    #[serde(skip)]
    pub document: Arc<serde_json::Value>,
}

impl SchemaEntry {
    /// `type@version`, or `type@*` for an entry of any version.
    pub fn selector(&self) -> String {
        format!("{}@{}", self.event_type, self.version.as_deref().unwrap_or("*"))
    }
}

/// What to do with what no schema covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unmatched {
    /// Dead-letter the event (reason `invalid`), or reject the event whose
    /// output it is.
    #[default]
    Reject,
    /// Let it through unvalidated.
    Pass,
}

fn default_type_header() -> String {
    "event-type".into()
}
fn default_version_header() -> String {
    "event-version".into()
}

impl SchemasConfig {
    /// Makes the schema paths relative to `base` (the config file's folder).
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for entry in self.input.iter_mut().chain(self.output.iter_mut()) {
            if entry.path.is_relative() {
                entry.path = base.join(&entry.path);
            }
        }
    }
}

/// Reads, parses and compiles every schema file of every pipeline, keeping
/// the documents in the config. Returns every problem, each naming the
/// pipeline, the entry and the file; an entry with a problem is skipped.
pub(super) fn load(config: &mut Config) -> Vec<Violation> {
    let mut found = Vec::new();
    for (name, pipeline) in &mut config.pipelines {
        let Some(schemas) = pipeline.schemas.as_mut() else { continue };
        let mut violation = |key: String, message: String| found.push(Violation::in_pipeline(name, key, message));
        for header in [&schemas.type_header, &schemas.version_header] {
            if header.is_empty() || header.contains(|c: char| c.is_whitespace() || c == ':') {
                violation("schemas".into(), format!("{header:?} is not a header name"));
            }
        }
        if schemas.type_header.eq_ignore_ascii_case(&schemas.version_header) {
            violation("schemas.version_header".into(), "must differ from `type_header`".into());
        }
        for (list, entries) in [("input", &mut schemas.input), ("output", &mut schemas.output)] {
            let mut seen = std::collections::HashSet::new();
            for (i, entry) in entries.iter_mut().enumerate() {
                let key = format!("schemas.{list}[{i}]");
                if entry.event_type.is_empty() || entry.event_type.contains('@') || entry.event_type == "*" {
                    violation(format!("{key}.type"), format!("{:?} is not an event type (empty, `*`, or has an `@`)", entry.event_type));
                    continue;
                }
                if !seen.insert((entry.event_type.clone(), entry.version.clone())) {
                    violation(key, format!("a second {list} schema for {}", entry.selector()));
                    continue;
                }
                let document = match read(&entry.path) {
                    Ok(document) => document,
                    Err(message) => {
                        violation(format!("{key}.path"), message);
                        continue;
                    }
                };
                match crate::schema::Schema::compile(&document) {
                    Ok(_) => entry.document = Arc::new(document),
                    Err(e) => violation(format!("{key}.path"), format!("{} is not a valid JSON Schema: {e}", entry.path.display())),
                }
            }
        }
    }
    found
}

fn read(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read schema file {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("schema file {} is not JSON: {e}", path.display()))
}
