//! HTTP responses from a file, for `sluice plugin test --http-replies`: a
//! plugin that calls HTTP APIs is tested offline, its requests answered by
//! rules instead of the network. The stub sits behind the same
//! `outgoing-handler` the plugin sees in a pipeline, so any WASI HTTP
//! client (the Rust SDK's, `fetch` in JavaScript, Python's, Go's, C's)
//! works against it unchanged.
//!
//! ```json
//! [
//!   { "method": "GET", "url": "https://api.example.com/customers/42",
//!     "body_json": { "name": "Ada" }, "headers": { "content-type": "application/json" } },
//!   { "url_prefix": "https://api.example.com/customers/", "status": 404, "body": "no such customer" },
//!   { "method": "POST", "url": "http://127.0.0.1:8080/hooks", "when": "\"vip\"", "error": "timeout" },
//!   { "url_prefix": "http://127.0.0.1:8080/", "status": 503 }
//! ]
//! ```
//!
//! Rules are tried in order; the first that matches answers. A rule
//! matches a request when its `method` (any, when absent; case does not
//! matter) and its `url` (scheme, host, port and path exactly; the query
//! too if the rule has one) or `url_prefix` (scheme, host, port, and a
//! path that starts with the rule's) fit, and the request body contains
//! `when` (text), if given. It answers with a response (`status`, default
//! 200, `headers`, and `body` text or `body_json`, sent compact) or an
//! `error`: `timeout`, `refused`, `reset`, `dns` or `denied`, which the
//! guest sees as the matching `wasi:http` error code. A request no rule
//! matches is denied (the call's error names it and the file).

use std::collections::BTreeMap;

use http::uri::{Scheme, Uri};
use serde::Deserialize;

/// One rule of the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The request method (`GET`, `POST`, …); any when absent.
    #[serde(default)]
    method: Option<String>,
    /// The request URL, exactly (see the module doc).
    #[serde(default)]
    url: Option<String>,
    /// The start of the request URL: same origin, path prefix.
    #[serde(default)]
    url_prefix: Option<String>,
    /// Text the request body must contain.
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_json: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<StubError>,
    /// `url` or `url_prefix`, parsed at load.
    #[serde(skip)]
    target: Option<Target>,
}

/// A failure a rule can answer with, as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StubError {
    /// No response in time (`http-response-timeout`).
    Timeout,
    /// The connection was refused (`connection-refused`).
    Refused,
    /// The connection broke (`connection-terminated`).
    Reset,
    /// The host name did not resolve (`dns-error`).
    Dns,
    /// The host refused the request (`http-request-denied`).
    Denied,
}

/// Where a rule's `url` or `url_prefix` points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
    query: Option<String>,
    prefix: bool,
}

impl Target {
    fn parse(text: &str, prefix: bool) -> Option<Self> {
        let uri: Uri = text.parse().ok()?;
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = match uri.path() {
            "" => "/".to_owned(),
            path => path.to_owned(),
        };
        Some(Self { https, host, port, path, query: uri.query().map(str::to_owned), prefix })
    }

    fn matches(&self, request: &Target) -> bool {
        if (self.https, &self.host, self.port) != (request.https, &request.host, request.port) {
            return false;
        }
        if self.prefix {
            return request.path.starts_with(&self.path);
        }
        self.path == request.path && self.query.as_ref().is_none_or(|q| request.query.as_ref() == Some(q))
    }
}

/// Why an HTTP replies file was refused.
#[derive(Debug, thiserror::Error)]
pub enum StubFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("{path}: rule {index}: {message}")]
    Rule { path: String, index: usize, message: String },
}

/// The rules of an HTTP replies file.
#[derive(Debug, Clone)]
pub struct HttpStubs {
    pub(crate) path: String,
    rules: Vec<Rule>,
}

/// What a stub answers one request with.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Error(StubError),
    /// No rule matched: the text names the request and the file.
    Unmatched(String),
}

impl HttpStubs {
    /// Reads and checks the rules in the JSON file at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, StubFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| StubFileError::Read { path: shown.clone(), source })?;
        Self::parse(&text, &shown)
    }

    /// Parses and checks rules from `text`; `path` names it in errors.
    pub(crate) fn parse(text: &str, path: &str) -> Result<Self, StubFileError> {
        let mut rules: Vec<Rule> = serde_json::from_str(text).map_err(|source| StubFileError::Parse { path: path.to_owned(), source })?;
        for (index, rule) in rules.iter_mut().enumerate() {
            let refuse = |message: &str| StubFileError::Rule { path: path.to_owned(), index, message: message.to_owned() };
            rule.target = match (&rule.url, &rule.url_prefix) {
                (Some(url), None) => {
                    Some(Target::parse(url, false).ok_or_else(|| refuse("`url` must be an absolute http:// or https:// URL"))?)
                }
                (None, Some(url)) => {
                    Some(Target::parse(url, true).ok_or_else(|| refuse("`url_prefix` must be an absolute http:// or https:// URL"))?)
                }
                (None, None) => return Err(refuse("give `url` or `url_prefix`")),
                (Some(_), Some(_)) => return Err(refuse("give `url` or `url_prefix`, not both")),
            };
            if let Some(method) = &mut rule.method {
                *method = method.to_ascii_uppercase();
            }
            let response = rule.status.is_some() || rule.body.is_some() || rule.body_json.is_some() || !rule.headers.is_empty();
            if rule.error.is_some() && response {
                return Err(refuse("give either `error` or a response (`status`, `headers`, `body`/`body_json`), not both"));
            }
            if rule.body.is_some() && rule.body_json.is_some() {
                return Err(refuse("give `body` or `body_json`, not both"));
            }
            if rule.status.is_some_and(|s| !(100..=999).contains(&s)) {
                return Err(refuse("`status` must be between 100 and 999"));
            }
        }
        Ok(Self { path: path.to_owned(), rules })
    }

    /// The answer of the first rule that matches the request.
    pub fn answer(&self, method: &str, uri: &Uri, body: &[u8]) -> Answer {
        let shown = format!("{method} {uri}");
        let Some(request) = Target::parse(&uri.to_string(), false) else {
            return Answer::Unmatched(format!("no rule in {} matches {shown}", self.path));
        };
        let text = String::from_utf8_lossy(body);
        let found = self.rules.iter().find(|rule| {
            rule.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
                && rule.target.as_ref().is_some_and(|t| t.matches(&request))
                && rule.when.as_deref().is_none_or(|when| text.contains(when))
        });
        let Some(rule) = found else {
            return Answer::Unmatched(format!("no rule in {} matches {shown}", self.path));
        };
        if let Some(error) = rule.error {
            return Answer::Error(error);
        }
        let body = match (&rule.body, &rule.body_json) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(value)) => value.to_string().into_bytes(),
            (None, None) => Vec::new(),
        };
        let mut headers: Vec<(String, String)> = rule.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if rule.body_json.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            headers.push(("content-type".into(), "application/json".into()));
        }
        Answer::Response { status: rule.status.unwrap_or(200), headers, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"[
        { "method": "get", "url": "https://api.example.com/customers/42", "body_json": { "name": "Ada" } },
        { "url_prefix": "https://api.example.com/customers/", "status": 404, "body": "no such customer" },
        { "method": "POST", "url": "http://127.0.0.1:8080/hooks", "when": "\"vip\"", "error": "timeout" },
        { "method": "POST", "url": "http://127.0.0.1:8080/hooks?v=2", "status": 202, "headers": { "x-seen": "1" } },
        { "url": "http://127.0.0.1:8080/hooks", "error": "refused" }
    ]"#;

    fn answer(method: &str, url: &str, body: &str) -> Result<Answer, Box<dyn std::error::Error>> {
        let stubs = HttpStubs::parse(FILE, "http.json")?;
        Ok(stubs.answer(method, &url.parse()?, body.as_bytes()))
    }

    fn status(answer: &Answer) -> Option<u16> {
        match answer {
            Answer::Response { status, .. } => Some(*status),
            _ => None,
        }
    }

    #[test]
    fn an_exact_url_and_method_answer_with_json() -> Result<(), Box<dyn std::error::Error>> {
        let got = answer("GET", "https://api.example.com/customers/42", "")?;
        assert_eq!(
            got,
            Answer::Response {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: br#"{"name":"Ada"}"#.to_vec()
            }
        );
        // The default port is the scheme's, written or not.
        assert_eq!(status(&answer("GET", "https://api.example.com:443/customers/42", "")?), Some(200));
        Ok(())
    }

    #[test]
    fn a_prefix_matches_the_paths_under_it_only() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(status(&answer("GET", "https://api.example.com/customers/7", "")?), Some(404));
        assert_eq!(status(&answer("DELETE", "https://api.example.com/customers/42", "")?), Some(404), "the first rule is GET only");
        assert!(matches!(answer("GET", "https://api.example.com/orders/7", "")?, Answer::Unmatched(_)));
        assert!(matches!(answer("GET", "http://api.example.com/customers/7", "")?, Answer::Unmatched(_)), "another scheme");
        assert!(matches!(answer("GET", "https://api.example.com:8443/customers/7", "")?, Answer::Unmatched(_)), "another port");
        Ok(())
    }

    #[test]
    fn the_body_and_the_query_select_a_rule() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(answer("POST", "http://127.0.0.1:8080/hooks", r#"{"tier":"vip"}"#)?, Answer::Error(StubError::Timeout));
        assert_eq!(answer("POST", "http://127.0.0.1:8080/hooks", r#"{"tier":"basic"}"#)?, Answer::Error(StubError::Refused));
        let with_query = answer("POST", "http://127.0.0.1:8080/hooks?v=2", "")?;
        assert_eq!(with_query, Answer::Response { status: 202, headers: vec![("x-seen".into(), "1".into())], body: vec![] });
        // A rule without a query matches any query.
        assert_eq!(answer("PUT", "http://127.0.0.1:8080/hooks?v=3", "")?, Answer::Error(StubError::Refused));
        Ok(())
    }

    #[test]
    fn an_unmatched_request_is_named_with_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let Answer::Unmatched(message) = answer("GET", "https://elsewhere.example/x", "")? else {
            return Err("expected no match".into());
        };
        assert_eq!(message, "no rule in http.json matches GET https://elsewhere.example/x");
        Ok(())
    }

    #[test]
    fn bad_rules_are_refused_by_place() {
        let refused = |text: &str| HttpStubs::parse(text, "h.json").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(refused(r#"[{"url": "https://a/"}, {"status": 200}]"#), "h.json: rule 1: give `url` or `url_prefix`");
        assert_eq!(
            refused(r#"[{"url": "https://a/", "status": 500, "error": "timeout"}]"#),
            "h.json: rule 0: give either `error` or a response (`status`, `headers`, `body`/`body_json`), not both"
        );
        assert_eq!(refused(r#"[{"url": "/relative"}]"#), "h.json: rule 0: `url` must be an absolute http:// or https:// URL");
        assert!(refused(r#"[{"url": "https://a/", "error": "gone"}]"#).starts_with("h.json: unknown variant `gone`"));
        assert!(refused(r#"[{"url": "https://a/", "bdy": "x"}]"#).contains("unknown field `bdy`"));
    }
}
