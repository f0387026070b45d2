//! Event schemas and versions: what an event is (its type and version,
//! read from two headers), whether its payload matches the JSON Schema for
//! that type and version, and whether the plugin accepts that version.
//!
//! - [`Schema`]: one compiled JSON Schema and the capped, readable report of
//!   why a payload does not match it.
//! - [`Gate`]: a pipeline's schemas for inputs and outputs, built from
//!   `[pipelines.<name>.schemas]`, and the checks the lanes run before and
//!   after the plugin call (see `dispatch::validate`).
//! - `accepts` ([`Accepts`]): the versions a plugin declares it handles (its optional
//!   `manifest` export).

pub(crate) mod accepts;

use std::collections::HashMap;

use crate::config::{SchemaEntry, SchemasConfig, Unmatched};
use crate::event::Header;

pub use accepts::Accepts;

/// Longest validation message kept, in bytes: it goes into a dead-letter
/// header and a log line, and a payload with a thousand bad items would
/// otherwise make a header of megabytes.
pub const MESSAGE_CAP: usize = 1024;
/// Failing places listed in a message, at most (the rest are counted).
const ERRORS_LISTED: usize = 8;

/// One compiled JSON Schema.
pub struct Schema {
    validator: jsonschema::Validator,
}

impl Schema {
    /// Compiles a schema document; the error says what is wrong with it.
    pub fn compile(document: &serde_json::Value) -> Result<Self, String> {
        jsonschema::validator_for(document).map(|validator| Self { validator }).map_err(|e| {
            let at = e.instance_path().as_str();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("at {at}: {e}")
            }
        })
    }

    /// Checks a payload: `Err` lists where it fails and why, capped at
    /// [`MESSAGE_CAP`]. A payload that is not JSON fails too.
    pub fn check(&self, payload: &[u8]) -> Result<(), String> {
        let instance: serde_json::Value = serde_json::from_slice(payload).map_err(|e| cap(format!("the payload is not JSON: {e}")))?;
        self.check_value(&instance)
    }

    /// Checks a parsed payload.
    pub fn check_value(&self, instance: &serde_json::Value) -> Result<(), String> {
        if self.validator.is_valid(instance) {
            return Ok(());
        }
        let mut listed = Vec::new();
        let mut more = 0usize;
        for error in self.validator.iter_errors(instance) {
            if listed.len() < ERRORS_LISTED {
                // Masked: the message says where and what, never the data
                // itself, which may be large or personal.
                let at = error.instance_path().as_str();
                let at = if at.is_empty() { "/" } else { at };
                listed.push(format!("{at}: {}", error.masked()));
            } else {
                more += 1;
            }
        }
        let mut message = listed.join("; ");
        if more > 0 {
            message.push_str(&format!("; and {more} more"));
        }
        Err(cap(message))
    }
}

/// Cuts a message to [`MESSAGE_CAP`] bytes (on a character boundary), with
/// an ellipsis when cut.
pub fn cap(mut message: String) -> String {
    if message.len() > MESSAGE_CAP {
        let mut end = MESSAGE_CAP - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// An event's type and version, as its headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind<'a> {
    /// The type header's value.
    pub event_type: &'a str,
    /// The version header's value; `None` when the event has none.
    pub version: Option<&'a str>,
}

impl std::fmt::Display for Kind<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(version) => write!(f, "{}@{version}", self.event_type),
            None => write!(f, "{} (no version)", self.event_type),
        }
    }
}

/// Why an input is refused before the plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No schema or a failed one (dead-letter reason `invalid`).
    Invalid(String),
    /// The plugin does not accept its type or version (reason `unsupported`).
    Unsupported(String),
}

/// Schemas for one direction (inputs or outputs).
#[derive(Default)]
struct Set {
    exact: HashMap<(String, String), Schema>,
    any_version: HashMap<String, Schema>,
}

impl Set {
    fn build(entries: &[SchemaEntry]) -> Result<Self, String> {
        let mut set = Set::default();
        for entry in entries {
            let schema =
                Schema::compile(&entry.document).map_err(|e| format!("schema {} ({}): {e}", entry.selector(), entry.path.display()))?;
            match &entry.version {
                Some(version) => set.exact.insert((entry.event_type.clone(), version.clone()), schema),
                None => set.any_version.insert(entry.event_type.clone(), schema),
            };
        }
        Ok(set)
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.any_version.is_empty()
    }

    /// The schema for `kind`: the exact version first, then the entry for
    /// any version of the type.
    fn find(&self, kind: &Kind<'_>) -> Option<&Schema> {
        kind.version
            .and_then(|v| self.exact.get(&(kind.event_type.to_owned(), v.to_owned())))
            .or_else(|| self.any_version.get(kind.event_type))
    }
}

/// A pipeline's schemas and header names: what the lanes check.
pub struct Gate {
    type_header: String,
    version_header: String,
    input: Set,
    output: Set,
    unknown: Unmatched,
    missing: Unmatched,
}

impl Default for Gate {
    /// No schemas, default headers: only a plugin's `accepts` applies.
    fn default() -> Self {
        Self::from_parts(&SchemasConfig::default(), Set::default(), Set::default())
    }
}

impl Gate {
    /// Compiles a pipeline's schemas (`None`: no schemas).
    pub fn new(config: Option<&SchemasConfig>) -> Result<Self, String> {
        let Some(config) = config else { return Ok(Self::default()) };
        Ok(Self::from_parts(config, Set::build(&config.input)?, Set::build(&config.output)?))
    }

    fn from_parts(config: &SchemasConfig, input: Set, output: Set) -> Self {
        Self {
            type_header: config.type_header.clone(),
            version_header: config.version_header.clone(),
            input,
            output,
            unknown: config.unknown,
            missing: config.missing,
        }
    }

    /// Whether outputs are validated at all.
    pub fn checks_outputs(&self) -> bool {
        !self.output.is_empty()
    }

    /// The type and version `headers` name; `None` without a type header.
    /// The first header of each name counts; values are trimmed.
    pub fn kind<'h>(&self, headers: &'h [Header]) -> Option<Kind<'h>> {
        let find = |name: &str| {
            headers
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(&h.value).ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        Some(Kind { event_type: find(&self.type_header)?, version: find(&self.version_header) })
    }

    /// Checks an input event before the plugin call: its schema first, then
    /// whether the plugin (`accepts`, when it declared one) handles it.
    pub fn check_input(&self, headers: &[Header], payload: &[u8], accepts: Option<&Accepts>) -> Result<(), Refusal> {
        // `*` (the Rust SDK's default) is the same as no list.
        let accepts = accepts.filter(|a| !a.is_everything());
        if self.input.is_empty() && accepts.is_none() {
            return Ok(());
        }
        let kind = self.kind(headers);
        if !self.input.is_empty() {
            self.check(&self.input, kind.as_ref(), payload, "the event").map_err(Refusal::Invalid)?;
        }
        if let Some(accepts) = accepts {
            if !accepts.covers(kind.as_ref()) {
                let what = match &kind {
                    Some(kind) => format!("event type {kind}"),
                    None => format!("an event without a `{}` header", self.type_header),
                };
                return Err(Refusal::Unsupported(format!("the plugin does not accept {what}; it accepts: {accepts}")));
            }
        }
        Ok(())
    }

    /// Checks one output: its own type header, or else its input's kind.
    pub fn check_output(&self, input: Option<&Kind<'_>>, headers: &[Header], payload: &[u8]) -> Result<(), String> {
        if self.output.is_empty() {
            return Ok(());
        }
        let own = self.kind(headers);
        self.check(&self.output, own.as_ref().or(input), payload, "the output")
    }

    fn check(&self, set: &Set, kind: Option<&Kind<'_>>, payload: &[u8], what: &str) -> Result<(), String> {
        let Some(kind) = kind else {
            return match self.missing {
                Unmatched::Pass => Ok(()),
                Unmatched::Reject => Err(format!("{what} has no `{}` header, and schemas.missing is \"reject\"", self.type_header)),
            };
        };
        let Some(schema) = set.find(kind) else {
            return match self.unknown {
                Unmatched::Pass => Ok(()),
                Unmatched::Reject => Err(format!("no schema for {what}'s type {kind}, and schemas.unknown is \"reject\"")),
            };
        };
        schema.check(payload).map_err(|e| cap(format!("{what} does not match the schema for {kind}: {e}")))
    }
}

#[cfg(test)]
mod tests;
