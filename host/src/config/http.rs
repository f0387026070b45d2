//! `[pipelines.<name>.plugin.http]`: outbound HTTP for the plugin (the
//! `http` capability, `wasi:http/outgoing-handler`), and the pure verdict of
//! whether a request may go out ([`HttpConfig::allows`]).
//!
//! Denied unless granted: without this table a plugin importing
//! `wasi:http` is refused at load, and with it only the listed
//! destinations are reachable. See docs/configuration.md#outbound-http.

use std::fmt;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// The `plugin.http` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Destinations the plugin may call: `host:port` patterns, `https`
    /// unless the entry starts with `http://` (see [`AllowEntry`]).
    /// Empty: every request is denied (and counted).
    pub allow: Vec<AllowEntry>,
    /// Per request, from sending to the last byte of the response body.
    /// Default 10 s; capped by `policy.timeout`, the handler's own deadline
    /// (a request still running then fails the attempt as a timeout, so
    /// set this below it when the plugin should see the error itself).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The largest response body a request may receive, counted while it
    /// streams in: past it, reading the body fails in the guest. Default
    /// 1 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: ByteSize,
    /// Requests in flight at once, for the whole pipeline (all its lanes):
    /// a request past it waits for a free slot (within its timeout).
    /// Default 16: an external API is usually the narrowest point, and a
    /// failing one should not be hit by every lane at once.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_response_bytes() -> ByteSize {
    ByteSize::mib(1)
}
fn default_max_concurrent() -> usize {
    16
}

/// A scheme a destination may be reached with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpScheme {
    /// Plain text (port 80 by default).
    Http,
    /// TLS (port 443 by default).
    Https,
}

impl HttpScheme {
    fn default_port(self) -> u16 {
        match self {
            HttpScheme::Http => 80,
            HttpScheme::Https => 443,
        }
    }
}

/// One `allow` entry: `[http://|https://]host[:port]`, where `host` is a
/// name, an IP address (IPv6 in brackets), or `*.domain` for any name
/// under `domain` (not `domain` itself). The port defaults to the scheme's
/// (443, or 80 for `http://`). Plain HTTP only when the entry says so.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AllowEntry {
    scheme: HttpScheme,
    /// Lowercase; for a wildcard, the suffix including its leading dot.
    host: String,
    wildcard: bool,
    port: u16,
}

impl TryFrom<String> for AllowEntry {
    type Error = String;

    fn try_from(entry: String) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("`{entry}` is not a valid `allow` entry ({why}); expected `host:port`, `*.domain:port` or `http://host:port`")
        };
        let (scheme, rest) = match entry.split_once("://") {
            Some(("http", rest)) => (HttpScheme::Http, rest),
            Some(("https", rest)) => (HttpScheme::Https, rest),
            Some((other, _)) => return Err(bad(&format!("scheme `{other}`: only http and https"))),
            None => (HttpScheme::Https, entry.as_str()),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("a destination, not a URL: no path, query or login"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| bad("bad port"))?;
        let port = port.unwrap_or(scheme.default_port());
        let host = host.to_ascii_lowercase();
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(domain) => (format!(".{domain}"), true),
            None => (host, false),
        };
        if host.is_empty() || host == "." || host.contains('*') {
            return Err(bad("a wildcard is only `*.` before a domain"));
        }
        Ok(Self { scheme, host, wildcard, port })
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scheme == HttpScheme::Http {
            f.write_str("http://")?;
        }
        if self.wildcard {
            f.write_str("*")?;
        }
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `host[:port]` → (host, port); IPv6 hosts in brackets keep them. `None`
/// for a port that is not a number.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(end) = authority.strip_prefix('[').and_then(|_| authority.find(']')) {
        let (host, rest) = authority.split_at(end + 1);
        (host, rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    match port {
        Some(port) => port.parse().ok().map(|p| (host, Some(p))),
        None => Some((host, None)),
    }
}

impl AllowEntry {
    fn matches(&self, scheme: HttpScheme, host: &str, port: u16) -> bool {
        if scheme != self.scheme || port != self.port {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len() && host.ends_with(&self.host)
        } else {
            host == self.host
        }
    }
}

/// A request's destination, normalised: what the allow list, the metrics
/// and the call records name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `http` or `https`.
    pub scheme: HttpScheme,
    /// Lowercase host (IPv6 in brackets).
    pub host: String,
    /// The explicit port, or the scheme's default (80, 443).
    pub port: u16,
}

impl Destination {
    /// From a request's scheme and authority (`host[:port]`, perhaps with a
    /// login, which is dropped). `None` when it has no host or a bad port.
    pub fn parse(scheme: HttpScheme, authority: &str) -> Option<Self> {
        let authority = authority.rsplit_once('@').map_or(authority, |(_, rest)| rest);
        let (host, port) = split_host_port(authority)?;
        if host.is_empty() {
            return None;
        }
        Some(Self { scheme, host: host.to_ascii_lowercase(), port: port.unwrap_or(scheme.default_port()) })
    }

    /// `host:port`, as call records and metrics name it.
    pub fn target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            HttpScheme::Http => "http",
            HttpScheme::Https => "https",
        };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl HttpConfig {
    /// Whether a request to `destination` may go out.
    pub fn allows(&self, destination: &Destination) -> bool {
        self.allow.iter().any(|entry| entry.matches(destination.scheme, &destination.host, destination.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow: &[&str]) -> HttpConfig {
        HttpConfig {
            allow: allow.iter().filter_map(|e| AllowEntry::try_from(e.to_string()).ok()).collect(),
            timeout: default_timeout(),
            max_response_bytes: default_max_response_bytes(),
            max_concurrent: default_max_concurrent(),
        }
    }

    fn allowed(config: &HttpConfig, scheme: HttpScheme, authority: &str) -> bool {
        Destination::parse(scheme, authority).is_some_and(|d| config.allows(&d))
    }

    use HttpScheme::{Http, Https};

    #[test]
    fn an_entry_without_a_scheme_is_https_only() {
        let c = config(&["api.example.com:443", "127.0.0.1:8080"]);
        assert!(allowed(&c, Https, "api.example.com"));
        assert!(allowed(&c, Https, "API.Example.com:443"));
        assert!(allowed(&c, Https, "127.0.0.1:8080"));
        assert!(!allowed(&c, Http, "127.0.0.1:8080"), "plain HTTP needs http:// in the entry");
        assert!(!allowed(&c, Http, "api.example.com:443"));
        assert!(!allowed(&c, Https, "api.example.com:8443"));
        assert!(!allowed(&c, Https, "evil.com"));
        assert!(!allowed(&c, Https, "api.example.com.evil.com"));
    }

    #[test]
    fn plain_http_when_the_entry_says_so() {
        let c = config(&["http://127.0.0.1:9000", "http://internal"]);
        assert!(allowed(&c, Http, "127.0.0.1:9000"));
        assert!(!allowed(&c, Https, "127.0.0.1:9000"));
        assert!(allowed(&c, Http, "internal"), "the port defaults to 80 for http://");
        assert!(allowed(&c, Http, "internal:80"));
        assert!(!allowed(&c, Http, "internal:8080"));
    }

    #[test]
    fn a_wildcard_covers_subdomains_but_not_the_domain() {
        let c = config(&["*.example.com:443"]);
        assert!(allowed(&c, Https, "a.example.com"));
        assert!(allowed(&c, Https, "a.b.example.com:443"));
        assert!(!allowed(&c, Https, "example.com"));
        assert!(!allowed(&c, Https, "badexample.com"));
        assert!(!allowed(&c, Https, "a.example.com:80"));
    }

    #[test]
    fn a_login_in_the_authority_does_not_fool_the_check() {
        let c = config(&["api.example.com"]);
        assert!(allowed(&c, Https, "user:pw@api.example.com"));
        assert!(!allowed(&c, Https, "api.example.com@evil.com"));
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        let c = config(&["http://[::1]:8080"]);
        assert!(allowed(&c, Http, "[::1]:8080"));
        assert!(!allowed(&c, Http, "[::1]:8081"));
        assert_eq!(Destination::parse(Http, "[::1]").map(|d| d.target()), Some("[::1]:80".into()));
    }

    #[test]
    fn an_empty_list_denies_everything() {
        assert!(!allowed(&config(&[]), Https, "api.example.com"));
    }

    #[test]
    fn bad_entries_say_why() {
        for bad in ["ftp://x.com", "x.com:port", "https://x.com/path", "*:443", "a.*.com", "*.", ""] {
            let err = AllowEntry::try_from(bad.to_string());
            assert!(err.is_err(), "{bad} should be refused");
        }
        let shown = |e: &str| AllowEntry::try_from(e.to_string()).map(|e| e.to_string());
        assert_eq!(shown("*.Example.com"), Ok("*.example.com:443".into()));
        assert_eq!(shown("http://h"), Ok("http://h:80".into()));
    }
}
