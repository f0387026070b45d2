//! What NATS sources and sinks share: one connection per server (and login)
//! for the whole process, and the mapping between event headers and NATS
//! headers.
//!
//! A connection reconnects by itself for as long as the process runs: a
//! restarted server costs a pause, not a pipeline. Only the first connect is
//! bounded, so a wrong URL fails the pipeline at start with a clear error.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::Arc;

use async_nats::{Client, ConnectOptions, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{Mutex, OnceCell};

use crate::config::NatsServer;
use crate::event::Header;

/// How long the first connection to a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The header that carries an event's key: NATS messages have none of
/// their own.
pub(crate) const KEY_HEADER: &str = "Sluice-Key";

/// The `url` of a NATS source or sink left unset: a server on this machine
/// at NATS's default port.
pub(crate) fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}

/// `urls` (comma-separated NATS server URLs) as they may be printed: the
/// user and password of each (`nats://user:pass@host`) replaced by `***`.
/// Every error, log line and probe answer that names a server uses this:
/// no byte of a credential is printed.
pub(crate) fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let (scheme, rest) = match url.find("://") {
                Some(i) => url.split_at(i + 3),
                None => ("", url),
            };
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}***{}", &rest[at..]),
                None => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A NATS server that could not be reached or refused the login.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {message}")]
pub struct ConnectError {
    /// The server's URL(s), credentials redacted.
    pub url: String,
    /// The client's reason.
    pub message: String,
}

/// The process's NATS connections, one per server and login.
#[derive(Default)]
pub struct Connections {
    /// A cell per server, so a server that does not answer delays only the
    /// pipelines that use it, not every connect behind one lock.
    open: Mutex<HashMap<NatsServer, Arc<OnceCell<Client>>>>,
}

impl Connections {
    /// The connection to `server`, opened on first use. A failed connect is
    /// not remembered: the next user tries again.
    pub async fn get(&self, server: &NatsServer) -> Result<Client, ConnectError> {
        let cell = self.open.lock().await.entry(server.clone()).or_default().clone();
        cell.get_or_try_init(|| connect(server)).await.cloned()
    }

    /// Flushes and drops every connection (at the end of the process).
    pub async fn close_all(&self) {
        let cells: Vec<_> = self.open.lock().await.drain().map(|(_, c)| c).collect();
        for client in cells.iter().filter_map(|cell| cell.get()) {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        }
    }
}

/// A login written into a server URL: `nats://user:password@host` or
/// `nats://token@host` (percent-encoded, as in any URL).
#[derive(Clone, PartialEq, Eq)]
enum UrlLogin {
    UserPassword(String, String),
    Token(String),
}

/// The URLs of `urls` without their logins, and the login they carry (the
/// same in every URL that has one). The client library does not read
/// logins from URLs; this makes `nats://user:pass@host` work as it does with
/// other NATS clients. Errors quote no part of a login.
fn split_url_logins(urls: &str) -> Result<(Vec<String>, Option<UrlLogin>), String> {
    let mut plain = Vec::new();
    let mut login: Option<UrlLogin> = None;
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (scheme, rest) = match url.find("://") {
            Some(i) => url.split_at(i + 3),
            None => ("", url),
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let Some(at) = rest[..authority_end].rfind('@') else {
            plain.push(url.to_owned());
            continue;
        };
        let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8().map(|t| t.into_owned());
        let bad = || format!("the login in {} is not valid percent-encoded UTF-8", redact_url(url));
        let this = match rest[..at].split_once(':') {
            Some((user, password)) => UrlLogin::UserPassword(decode(user).map_err(|_| bad())?, decode(password).map_err(|_| bad())?),
            None => UrlLogin::Token(decode(&rest[..at]).map_err(|_| bad())?),
        };
        if login.as_ref().is_some_and(|first| *first != this) {
            return Err("the URLs carry different logins; a connection logs in one way to every server of the cluster".into());
        }
        login = Some(this);
        plain.push(format!("{scheme}{}", &rest[at + 1..]));
    }
    Ok((plain, login))
}

/// The config rules of a server's login and TLS keys, checked before
/// anything connects: `Err((key, message))`, `key` one of the source's or
/// sink's keys. Messages quote no secret.
pub fn check_server(server: &NatsServer) -> Result<(), (&'static str, String)> {
    let (_, url_login) = split_url_logins(&server.url).map_err(|m| ("url", m))?;
    match (&server.user, &server.password) {
        (Some(_), None) => return Err(("password", "missing: `user` needs a `password`".into())),
        (None, Some(_)) => return Err(("user", "missing: `password` needs a `user`".into())),
        _ => {}
    }
    let ways: Vec<&str> = [
        (url_login.is_some(), "a login in `url`"),
        (server.user.is_some(), "`user`/`password`"),
        (server.token.is_some(), "`token`"),
        (server.nkey.is_some(), "`nkey`"),
        (server.credentials.is_some(), "`credentials`"),
    ]
    .into_iter()
    .filter_map(|(set, what)| set.then_some(what))
    .collect();
    if ways.len() > 1 {
        return Err(("url", format!("{} are set together; a connection logs in one way, keep one", ways.join(" and "))));
    }
    if let Some(seed) = &server.nkey {
        if !seed.0.starts_with("SU") || nkeys::KeyPair::from_seed(&seed.0).is_err() {
            return Err((
                "nkey",
                "not an NKey user seed (a seed starts with `SU`; the public key, `U…`, is what goes in the server's config)".into(),
            ));
        }
    }
    match (&server.tls_cert, &server.tls_key) {
        (Some(_), None) => return Err(("tls_key", "missing: `tls_cert` needs the private key of the certificate".into())),
        (None, Some(_)) => return Err(("tls_cert", "missing: `tls_key` needs the certificate it belongs to".into())),
        _ => {}
    }
    let files =
        [("credentials", &server.credentials), ("tls_ca", &server.tls_ca), ("tls_cert", &server.tls_cert), ("tls_key", &server.tls_key)];
    for (key, path) in files {
        if let Some(path) = path.as_ref().filter(|p| !p.is_file()) {
            return Err((key, format!("{} is not a file", path.display())));
        }
    }
    Ok(())
}

/// Whether the connection to `server` must use TLS: a `tls://` URL, or any
/// TLS key set.
fn wants_tls(server: &NatsServer) -> bool {
    server.tls_ca.is_some() || server.tls_cert.is_some() || server.url.split(',').any(|u| u.trim().starts_with("tls://"))
}

/// The client options for `server`: its login, its TLS settings, and how
/// the connection behaves. Every NATS connection the host makes (sources,
/// sinks, dead letters, replies, state, `sluice dlq replay`) is built here.
pub(crate) async fn options(server: &NatsServer) -> Result<(Vec<String>, ConnectOptions), String> {
    let (urls, url_login) = split_url_logins(&server.url)?;
    let mut options = ConnectOptions::new()
        .name(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .connection_timeout(CONNECT_TIMEOUT)
        // Keep reconnecting for as long as the process runs; a JetStream
        // consumer and its in-flight acks resume on the new connection.
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connection (re)established"),
                async_nats::Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
                async_nats::Event::SlowConsumer(sid) => {
                    tracing::warn!(
                        subscription = sid,
                        "NATS slow consumer: the server dropped messages for a subscription that fell behind"
                    )
                }
                other => tracing::debug!("NATS: {other}"),
            }
        });
    match url_login {
        Some(UrlLogin::UserPassword(user, password)) => options = options.user_and_password(user, password),
        Some(UrlLogin::Token(token)) => options = options.token(token),
        None => {}
    }
    if let (Some(user), Some(password)) = (&server.user, &server.password) {
        options = options.user_and_password(user.0.clone(), password.0.clone());
    }
    if let Some(token) = &server.token {
        options = options.token(token.0.clone());
    }
    if let Some(seed) = &server.nkey {
        options = options.nkey(seed.0.clone());
    }
    if let Some(path) = &server.credentials {
        options = options.credentials_file(path).await.map_err(|e| format!("credentials file {}: {e}", path.display()))?;
    }
    if let Some(ca) = &server.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if wants_tls(server) {
        options = options.require_tls(true);
    }
    Ok((urls, options))
}

/// Connects to `server` once, bounded in time: see [`options`].
pub(crate) async fn connect(server: &NatsServer) -> Result<Client, ConnectError> {
    let failed = |message: String| ConnectError { url: redact_url(&server.url), message };
    let (urls, options) = options(server).await.map_err(failed)?;
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, options.connect(urls.as_slice())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(failed(explain(&e))),
        Err(_) => Err(failed(format!("no answer within {CONNECT_TIMEOUT:?}; is the server running?"))),
    }
}

/// A connect error as a user reads it: what the server refused and which
/// keys to look at. The client library's text quotes no login.
fn explain(error: &async_nats::ConnectError) -> String {
    use async_nats::ConnectErrorKind as Kind;
    let text = error.to_string();
    match error.kind() {
        Kind::AuthorizationViolation | Kind::Authentication => {
            "the server refused the login (authorization violation; check the URL's login, `user`/`password`, `token`, `nkey` or `credentials`)".into()
        }
        Kind::Tls => format!("{text} (check `tls_ca`, `tls_cert` and `tls_key`)"),
        // rustls errors arrive as I/O errors.
        Kind::Io if ["certificate", "handshake", "tls", "alert"].iter().any(|word| text.to_lowercase().contains(word)) => {
            format!("TLS handshake failed: {} (check `tls_ca`, `tls_cert` and `tls_key`)", text.trim_start_matches("IO error: "))
        }
        _ => text,
    }
}

/// A JetStream KV bucket (`history = 1`, `max_age` when not zero), created
/// if missing; a bucket that exists is used as it is (its settings are the
/// operator's). Used by the state store and the plugin store.
///
/// Created as its stream, with the settings async-nats's `create_key_value`
/// would use: that call first asks for the account's info, whose answer
/// from nats-server 2.9 async-nats 0.51 cannot parse. The error says which
/// step failed, naming the bucket.
pub(crate) async fn key_value_bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<async_nats::jetstream::kv::Store, String> {
    use async_nats::jetstream::stream;
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    // Another host (or pipeline) may create it meanwhile: then the create
    // fails or returns the existing one, and the bucket is there either way.
    let created = js.create_stream(config).await;
    js.get_key_value(name).await.map_err(|e| match created {
        Err(create) => format!("creating KV bucket {name}: {create}"),
        Ok(_) => format!("opening KV bucket {name}: {e}"),
    })
}

/// NATS headers as event headers: every value of every name, in the order
/// the message carried each name's values. `Sluice-Key` becomes the key.
pub fn event_headers(map: Option<&HeaderMap>) -> (Vec<Header>, Option<Vec<u8>>) {
    let Some(map) = map else { return (Vec::new(), None) };
    let mut headers = Vec::with_capacity(map.len());
    let mut key = None;
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        if name.eq_ignore_ascii_case(KEY_HEADER) {
            key = values.last().map(|v| v.as_str().as_bytes().to_vec());
            continue;
        }
        for value in values {
            headers.push(Header { key: name.to_owned(), value: value.as_str().as_bytes().to_vec() });
        }
    }
    (headers, key)
}

/// A NATS message as an event: its subject (also its partition), headers,
/// key and payload. The rest is what only the source knows: the id (which
/// may come from the headers), the time, the attempt and who waits for a
/// reply.
pub(crate) fn message_event(
    message: &async_nats::Message,
    id: impl FnOnce(&[Header]) -> String,
    timestamp_ms: u64,
    attempt: u32,
    reply_to: Option<String>,
) -> (u32, crate::event::Event) {
    let (headers, key) = event_headers(message.headers.as_ref());
    // `as_str`, not `to_string`: the formatting machinery costs more than the copy.
    let subject = message.subject.as_str().to_owned();
    let partition = subject_partition(&subject);
    let event = crate::event::Event {
        id: id(&headers),
        source: subject,
        key,
        payload: message.payload.to_vec(),
        headers,
        timestamp_ms,
        attempt,
        reply_to,
    };
    (partition, event)
}

/// Why a record cannot be published as a NATS message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unpublishable {
    /// A header name NATS cannot carry.
    #[error("header name {0:?} is not valid in NATS (printable ASCII without `:` or spaces)")]
    HeaderName(String),
    /// A header value NATS cannot carry.
    #[error("header `{0}` has a value NATS cannot carry (it must be UTF-8 without line breaks)")]
    HeaderValue(String),
    /// A key the `Sluice-Key` header cannot carry.
    #[error("the key is not valid in NATS (the `Sluice-Key` header needs UTF-8 without line breaks)")]
    Key,
    /// A subject that is not a concrete publish subject.
    #[error("subject {0:?} is not valid for publishing (no spaces, no empty tokens, no wildcards)")]
    Subject(String),
    /// Neither the output nor the sink names a subject.
    #[error("no subject: the output has no destination and the sink has no default `subject`")]
    NoSubject,
    /// The message is over the server's `max_payload`.
    #[error("payload of {size} bytes is over the server's limit of {max}")]
    TooLarge {
        /// The message's size in bytes.
        size: usize,
        /// The server's `max_payload`.
        max: usize,
    },
}

/// Whether `headers` (and `key`) can be NATS headers, without building them.
pub fn check_headers(headers: &[Header], key: Option<&[u8]>) -> Result<(), Unpublishable> {
    for header in headers {
        let name_ok = !header.key.is_empty() && header.key.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !name_ok {
            return Err(Unpublishable::HeaderName(header.key.clone()));
        }
        if !valid_value(&header.value) {
            return Err(Unpublishable::HeaderValue(header.key.clone()));
        }
    }
    match key {
        Some(key) if !valid_value(key) => Err(Unpublishable::Key),
        _ => Ok(()),
    }
}

fn valid_value(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok() && !value.iter().any(|b| matches!(b, b'\r' | b'\n'))
}

/// Event headers (and key) as NATS headers added to `base` (the version
/// header, see [`VersionHeader`], or an empty map), taking their bytes: a
/// name or value becomes a NATS one without being copied (the publish
/// path's allocations per header are the client's map entry, nothing more).
pub(crate) fn into_nats_headers(headers: Vec<Header>, key: Option<Vec<u8>>, base: HeaderMap) -> Result<HeaderMap, Unpublishable> {
    let mut map = base;
    for header in headers {
        let Header { key: name, value } = header;
        // The client's own rule for names, checked here so the error can
        // still name the header.
        if name.bytes().any(|b| !b.is_ascii_graphic() || b == b':') {
            return Err(Unpublishable::HeaderName(name));
        }
        if !valid_value(&value) {
            return Err(Unpublishable::HeaderValue(name));
        }
        let Ok(value) = String::from_utf8(value) else { return Err(Unpublishable::HeaderValue(name)) };
        let name = HeaderName::try_from(name).map_err(|_| Unpublishable::HeaderName(String::new()))?;
        // `valid_value` has ruled out what `From<String>` asserts against
        // (line breaks), so this cannot panic.
        map.append(name, HeaderValue::from(value));
    }
    if let Some(key) = key {
        let key = String::from_utf8(key).ok().filter(|k| valid_value(k.as_bytes())).ok_or(Unpublishable::Key)?;
        map.insert(HeaderName::from_static(KEY_HEADER), HeaderValue::from(key));
    }
    Ok(map)
}

/// The version header (`sluice-plugin-digest`) as a map of its own, made
/// once per plugin version and cloned for each message. Made per message,
/// the client checked the 64-character digest and hashed the name twice
/// into a fresh map: ~5% of a core NATS pipeline's CPU (`perf`, 2026-12-08).
#[derive(Default)]
pub(crate) struct VersionHeader {
    /// The last version seen, and its map: a version changes only on a
    /// reload, so one entry is enough.
    last: std::sync::Mutex<Option<(Arc<str>, HeaderMap)>>,
}

impl VersionHeader {
    /// A map holding only the header naming `version`, or an empty map.
    pub(crate) fn map(&self, version: Option<&Arc<str>>) -> Result<HeaderMap, Unpublishable> {
        let Some(version) = version else { return Ok(HeaderMap::new()) };
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, map)) = last.as_ref().filter(|(seen, _)| Arc::ptr_eq(seen, version) || **seen == **version) {
            return Ok(map.clone());
        }
        let value: HeaderValue = version.parse().map_err(|_| Unpublishable::HeaderValue(crate::sink::VERSION_HEADER.to_owned()))?;
        let mut map = HeaderMap::new();
        map.insert(HeaderName::from_static(crate::sink::VERSION_HEADER), value);
        *last = Some((Arc::clone(version), map.clone()));
        Ok(map)
    }
}

/// Event headers (and key) as NATS headers.
pub fn nats_headers(headers: &[Header], key: Option<&[u8]>) -> Result<HeaderMap, Unpublishable> {
    let mut map = HeaderMap::new();
    for header in headers {
        let name: HeaderName = header.key.parse().map_err(|_| Unpublishable::HeaderName(header.key.clone()))?;
        let value: HeaderValue = std::str::from_utf8(&header.value)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Unpublishable::HeaderValue(header.key.clone()))?;
        map.append(name, value);
    }
    if let Some(key) = key {
        let value: HeaderValue = std::str::from_utf8(key).ok().and_then(|v| v.parse().ok()).ok_or(Unpublishable::Key)?;
        map.insert(KEY_HEADER, value);
    }
    Ok(map)
}

/// Checks a subject for publishing: non-empty dot-separated tokens, no
/// whitespace, no wildcards.
pub(crate) fn publishable_subject(subject: &str) -> Result<(), Unpublishable> {
    let valid = !subject.is_empty()
        && subject.split('.').all(|token| !token.is_empty() && token != "*" && token != ">" && !token.contains(char::is_whitespace));
    if valid {
        Ok(())
    } else {
        Err(Unpublishable::Subject(subject.to_owned()))
    }
}

/// Checks a subscription subject: like [`publishable_subject`], but `*`
/// tokens and a final `>` are allowed.
pub(crate) fn subscribable_subject(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    !subject.is_empty()
        && tokens.iter().enumerate().all(|(i, token)| {
            !token.is_empty()
                && !token.contains(char::is_whitespace)
                && (*token != ">" || i == tokens.len() - 1)
                && (!token.contains(['*', '>']) || token.len() == 1)
        })
}

/// A stream or consumer name: no dots, wildcards, slashes or whitespace.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

/// A partition number for a subject, so `ordering = "partition"` keeps the
/// messages of one subject in order while subjects run in parallel.
pub(crate) fn subject_partition(subject: &str) -> u32 {
    // FNV-1a: stable across processes and releases, unlike `DefaultHasher`.
    subject.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::text_header;

    #[test]
    fn credentials_in_urls_are_never_printed() {
        assert_eq!(redact_url("nats://user:p%40ss@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("tls://a:b@h1:1, nats://h2:2,c:d@h3:3/x@y"), "tls://***@h1:1, nats://h2:2,***@h3:3/x@y");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("nats://tok@h"), "nats://***@h");
    }

    /// `nats://user:pass@host` logs in with that user and password (the
    /// client library ignores logins in URLs), percent-decoded; the URLs
    /// handed to the library carry no login.
    #[test]
    fn logins_in_urls_are_taken_out_and_decoded() -> Result<(), String> {
        let (urls, login) = split_url_logins("nats://al%40ice:p%3Ass@h1:4222, tls://al%40ice:p%3Ass@h2:4222/,nats://h3")?;
        assert_eq!(urls, ["nats://h1:4222", "tls://h2:4222/", "nats://h3"]);
        assert!(login == Some(UrlLogin::UserPassword("al@ice".into(), "p:ss".into())));
        let (urls, login) = split_url_logins("nats://s3cret@h")?;
        assert!(urls == ["nats://h"] && login == Some(UrlLogin::Token("s3cret".into())));
        let different = split_url_logins("nats://a:b@h1,nats://a:c@h2").err().unwrap_or_default();
        assert!(different.contains("different logins") && !different.contains(":b@") && !different.contains(":c@"), "{different}");
        let bad = split_url_logins("nats://a:%ff@h").err().unwrap_or_default();
        assert_eq!(bad, "the login in nats://***@h is not valid percent-encoded UTF-8");
        Ok(())
    }

    #[test]
    fn one_way_to_log_in_and_a_user_seed() {
        let secret = |s: &str| Some(crate::config::Secret(s.into()));
        let with = |server: NatsServer| check_server(&server).err().map(|(key, message)| format!("{key}: {message}"));
        let base = || NatsServer { url: "nats://h".into(), ..NatsServer::default() };
        assert_eq!(with(NatsServer { user: secret("u"), password: secret("p"), ..base() }), None);
        let both = with(NatsServer { url: "nats://u:p@h".into(), nkey: secret("SUx"), ..base() }).unwrap_or_default();
        assert_eq!(both, "url: a login in `url` and `nkey` are set together; a connection logs in one way, keep one");
        let public =
            with(NatsServer { nkey: secret("UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"), ..base() }).unwrap_or_default();
        assert!(public.starts_with("nkey: not an NKey user seed") && !public.contains("UDXU"), "{public}");
        let seed = nkeys::KeyPair::new_user().seed().unwrap_or_default();
        assert_eq!(with(NatsServer { nkey: secret(&seed), ..base() }), None);
    }

    /// The connect error (logged, and the pipeline's failure line) names
    /// the server without its password.
    #[tokio::test]
    async fn a_failed_connect_does_not_print_the_password() {
        let server = NatsServer { url: "nats://alice:hunter2@127.0.0.1:1".into(), ..NatsServer::default() };
        let err = connect(&server).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("cannot connect to NATS at nats://***@127.0.0.1:1"), "{err}");
        assert!(!err.contains("hunter2") && !err.contains("alice"), "{err}");
    }

    #[test]
    fn headers_round_trip_with_repeated_names_and_the_key() {
        let headers = vec![text_header("a", "1"), text_header("a", "2"), text_header("b", "x y")];
        let map = nats_headers(&headers, Some(b"k-1"));
        let map = map.map_err(|e| e.to_string());
        let (mut back, key) = event_headers(map.as_ref().ok());
        back.sort_by(|x, y| (&x.key, &x.value).cmp(&(&y.key, &y.value)));
        assert_eq!(back, headers);
        assert_eq!(key.as_deref(), Some(&b"k-1"[..]));
    }

    /// The owned conversion (the publish path) gives the same map, and the
    /// same errors, as the borrowing one.
    #[test]
    fn owned_headers_convert_like_borrowed_ones() {
        let headers = vec![text_header("a", "1"), text_header("a", "2"), text_header("sluice-plugin-digest", "ab12")];
        let borrowed = nats_headers(&headers, Some(b"k-1")).map_err(|e| e.to_string());
        let owned = into_nats_headers(headers.clone(), Some(b"k-1".to_vec()), HeaderMap::new()).map_err(|e| e.to_string());
        assert_eq!(owned, borrowed);
        // The version kept apart from the headers is sent as a header too,
        // from a map made once per version.
        let (front, version) = headers.split_at(2);
        let version: Arc<str> = std::str::from_utf8(&version[0].value).unwrap_or_default().into();
        let cache = VersionHeader::default();
        for _ in 0..2 {
            let base = cache.map(Some(&version)).map_err(|e| e.to_string());
            let apart = base.and_then(|base| into_nats_headers(front.to_vec(), Some(b"k-1".to_vec()), base).map_err(|e| e.to_string()));
            assert_eq!(apart, borrowed);
        }
        for (bad, key) in [(text_header("x", "a\r\nb"), None), (text_header("a:b", "1"), None), (text_header("a", "1"), Some(vec![0xff]))] {
            let borrowed = nats_headers(std::slice::from_ref(&bad), key.as_deref()).err().map(|e| e.to_string());
            let owned = into_nats_headers(vec![bad], key, HeaderMap::new()).err().map(|e| e.to_string());
            assert!(owned.is_some() && owned == borrowed, "{owned:?} vs {borrowed:?}");
        }
    }

    /// A reload's new version gets its own header, not the last one's.
    #[test]
    fn the_version_header_follows_the_version() {
        let cache = VersionHeader::default();
        let digest = |map: Result<HeaderMap, Unpublishable>| {
            map.ok().and_then(|m| m.get(crate::sink::VERSION_HEADER).map(|v| v.as_str().to_owned()))
        };
        let (first, second): (Arc<str>, Arc<str>) = ("aa11".into(), "bb22".into());
        assert_eq!(digest(cache.map(Some(&first))).as_deref(), Some("aa11"));
        assert_eq!(digest(cache.map(Some(&second))).as_deref(), Some("bb22"));
        assert_eq!(digest(cache.map(Some(&first))).as_deref(), Some("aa11"));
        assert!(cache.map(None).is_ok_and(|m| m.is_empty()));
        let broken: Arc<str> = "a\r\nb".into();
        assert!(cache.map(Some(&broken)).err().is_some_and(|e| e.to_string().contains(crate::sink::VERSION_HEADER)));
    }

    #[test]
    fn unrepresentable_headers_are_named() {
        let bad_value = nats_headers(&[text_header("x", "a\r\nb")], None).err().map(|e| e.to_string());
        assert!(bad_value.is_some_and(|m| m.contains("`x`")));
        let bad_name = nats_headers(&[text_header("a:b", "1")], None).err().map(|e| e.to_string());
        assert!(bad_name.is_some_and(|m| m.contains("\"a:b\"")));
        assert!(nats_headers(&[], Some(&[0xff, 0xfe])).is_err());
    }

    #[test]
    fn subjects() {
        assert!(publishable_subject("orders.eu.1").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            assert!(publishable_subject(bad).is_err(), "{bad}");
        }
        assert!(subscribable_subject("orders.*.created") && subscribable_subject("orders.>"));
        for bad in ["", "a.>.b", "a.b*", "a..b", "a b"] {
            assert!(!subscribable_subject(bad), "{bad}");
        }
        assert!(valid_name("ORDERS_v2") && !valid_name("a.b") && !valid_name(""));
    }
}
