//! Service replies from a file, for `sluice plugin test --replies`: a
//! plugin that calls services is tested offline, its requests answered by
//! rules instead of a broker.
//!
//! ```json
//! {
//!   "inventory": [
//!     { "when": "\"sku\":\"none\"", "error": { "code": "409", "message": "out of stock" } },
//!     { "when": "slow", "timeout": true },
//!     { "reply_json": { "reserved": true }, "headers": { "x-stock": "4" } }
//!   ],
//!   "audit": []
//! }
//! ```
//!
//! Each destination named in the file exists (requests and emits
//! allowed); its rules are tried in order, the first whose `when` the
//! request's payload contains (no `when`: every request) answers with
//! `reply` (text), `reply_json` (any JSON, sent compact), `error` (a
//! service error: `message`, optional `code` and `payload`), `timeout` or
//! `no_responders`. A request no rule matches fails as `not-allowed`,
//! naming the file, as an HTTP request no rule matches is denied: the
//! test file allows no such request, and no retry will change that, so
//! every SDK rejects it by default (`unavailable`, which they retry, would
//! read as a broker that is down). A destination the file does not name is
//! unknown.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::event::{text_header, Header};
use crate::runtime::bindings::current::client::{CallError, Reply, ServiceError};

/// One destination's rules, or a single rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Rules {
    Many(Vec<Rule>),
    One(Rule),
}

/// How one kind of request is answered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Text the request's payload must contain.
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    reply: Option<String>,
    #[serde(default)]
    reply_json: Option<serde_json::Value>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    error: Option<StubError>,
    #[serde(default)]
    timeout: bool,
    #[serde(default)]
    no_responders: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StubError {
    #[serde(default)]
    code: Option<String>,
    message: String,
    #[serde(default)]
    payload: Option<String>,
}

/// Why a replies file was refused.
#[derive(Debug, thiserror::Error)]
pub enum StubFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("{path}: destination `{destination}`, rule {index}: give exactly one of `reply`, `reply_json`, `error`, `timeout` or `no_responders`")]
    Ambiguous { path: String, destination: String, index: usize },
}

/// The rules of every destination in a replies file.
#[derive(Debug, Clone)]
pub struct StubReplies {
    pub(crate) path: String,
    pub(crate) destinations: BTreeMap<String, Vec<Rule>>,
}

impl StubReplies {
    /// Reads and checks the rules in the JSON file at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, StubFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| StubFileError::Read { path: shown.clone(), source })?;
        Self::parse(&text, &shown)
    }

    /// Parses and checks rules from `text`; `path` names it in errors.
    pub(crate) fn parse(text: &str, path: &str) -> Result<Self, StubFileError> {
        let raw: BTreeMap<String, Rules> =
            serde_json::from_str(text).map_err(|source| StubFileError::Parse { path: path.to_owned(), source })?;
        let mut destinations = BTreeMap::new();
        for (destination, rules) in raw {
            let rules = match rules {
                Rules::Many(rules) => rules,
                Rules::One(rule) => vec![rule],
            };
            for (index, rule) in rules.iter().enumerate() {
                let answers = [rule.reply.is_some(), rule.reply_json.is_some(), rule.error.is_some(), rule.timeout, rule.no_responders];
                if answers.iter().filter(|a| **a).count() != 1 {
                    return Err(StubFileError::Ambiguous { path: path.to_owned(), destination, index });
                }
            }
            destinations.insert(destination, rules);
        }
        Ok(Self { path: path.to_owned(), destinations })
    }
}

/// The answer of the first rule that matches `payload`.
pub(crate) fn answer(rules: &[Rule], payload: &[u8], timeout_ms: u32, path: &str) -> Result<Reply, CallError> {
    let text = String::from_utf8_lossy(payload);
    let Some(rule) = rules.iter().find(|rule| rule.when.as_deref().is_none_or(|when| text.contains(when))) else {
        return Err(CallError::NotAllowed(format!("no rule in {path} matches this request")));
    };
    let headers: Vec<Header> = rule.headers.iter().map(|(k, v)| text_header(k, v.as_str())).collect();
    if let Some(reply) = &rule.reply {
        return Ok(Reply { payload: reply.clone().into_bytes(), headers });
    }
    if let Some(value) = &rule.reply_json {
        return Ok(Reply { payload: value.to_string().into_bytes(), headers });
    }
    if let Some(error) = &rule.error {
        return Err(CallError::Service(ServiceError {
            code: error.code.clone(),
            message: error.message.clone(),
            payload: error.payload.clone().unwrap_or_default().into_bytes(),
        }));
    }
    if rule.timeout {
        return Err(CallError::Timeout(timeout_ms));
    }
    Err(CallError::NoResponders)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{
        "inventory": [
            { "when": "none", "error": { "code": "409", "message": "out of stock" } },
            { "when": "slow", "timeout": true },
            { "reply_json": { "reserved": true }, "headers": { "x-stock": "4" } }
        ],
        "audit": [],
        "one": { "reply": "pong" }
    }"#;

    #[test]
    fn the_first_matching_rule_answers() -> Result<(), Box<dyn std::error::Error>> {
        let stubs = StubReplies::parse(FILE, "replies.json")?;
        let inventory = &stubs.destinations["inventory"];
        let reply = answer(inventory, b"{\"sku\":\"a\"}", 500, "replies.json").map_err(|e| format!("{e:?}"))?;
        assert_eq!(reply.payload, br#"{"reserved":true}"#);
        assert_eq!(reply.headers, vec![text_header("x-stock", "4")]);
        let refused = answer(inventory, b"{\"sku\":\"none\"}", 500, "replies.json");
        assert!(
            matches!(&refused, Err(CallError::Service(e)) if e.code.as_deref() == Some("409") && e.message == "out of stock"),
            "a service error, got {refused:?}"
        );
        assert!(matches!(answer(inventory, b"slow", 500, "replies.json"), Err(CallError::Timeout(500))));
        assert!(
            matches!(answer(&stubs.destinations["audit"], b"x", 500, "replies.json"), Err(CallError::NotAllowed(m)) if m.contains("replies.json"))
        );
        assert_eq!(answer(&stubs.destinations["one"], b"ping", 1, "f").map(|r| r.payload).map_err(|e| format!("{e:?}"))?, b"pong");
        Ok(())
    }

    #[test]
    fn a_rule_with_two_answers_is_refused_by_place() {
        let err = StubReplies::parse(r#"{"inventory": [{"reply": "a"}, {"reply": "b", "timeout": true}]}"#, "r.json").err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some(
                "r.json: destination `inventory`, rule 1: give exactly one of `reply`, `reply_json`, `error`, `timeout` or `no_responders`"
            )
        );
    }
}
