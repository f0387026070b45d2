//! The admin HTTP API: what runs, and hot reload by hand.
//!
//! | method and path | what | token |
//! |---|---|---|
//! | `GET /pipelines` | every pipeline: state (running, paused, restarting with its attempt and next try, failed with its error), restarts, plugin versions, counters | read |
//! | `GET /pipelines/{name}` | one pipeline | read |
//! | `POST /pipelines/{name}/reload` | load the plugin file again | yes |
//! | `PUT /pipelines/{name}/plugin[?sha256=…]` | upload a new version (the body is the `.wasm`; its signature line in `Sluice-Signature` when `[plugins] trusted_keys` is set) | yes |
//! | `POST /pipelines/{name}/rollback` | back to the previous version | yes |
//! | `GET /pipelines/{name}/candidate` | the candidate version being tried (shadow or canary): its counts and first differing events, and how the last one ended | read |
//! | `POST /pipelines/{name}/candidate[?sha256=…&mode=shadow\|canary&sample=…&canary=…]` | try a new version beside the current one (the body is the `.wasm`, checked as an upload; `Sluice-Signature` as for uploads) | yes |
//! | `POST /pipelines/{name}/candidate/promote` | make the candidate current | yes |
//! | `DELETE /pipelines/{name}/candidate` | stop trying the candidate | yes |
//! | `POST /pipelines/{name}/pause`, `/resume` | stop / restart taking events from the source | yes |
//! | `GET /pipelines/{name}/state?prefix=&after=&limit=` | committed state keys and values, a page at a time | read |
//! | `GET /pipelines/{name}/state/{key}` | one committed state value | read |
//! | `DELETE /pipelines/{name}/state/{key}` | delete a state key (in the commit order of events) | yes |
//! | `GET /pipelines/{name}/dead-letters?limit=&reason=&since=&until=` | the newest dead letters in the pipeline's dead-letter destination (`admin/dead_letters.rs`) | read |
//! | `POST /pipelines/{name}/dead-letters/replay` | send dead letters (`ids`, or a `filter`) back to the pipeline's source; `dry_run` previews | yes |
//! | `GET /pipelines/{name}/tap?inputs&outputs&dead_letters&sample=&rate=` | live events, server-sent (`admin/tap.rs`) | read |
//! | `GET /metrics` | Prometheus metrics ([`crate::metrics`]) | read |
//! | `GET /ui`, `/ui/app.js`, `/ui/dead-letters.js`, `/ui/app.css`, `/ui/icon.svg` | the web console (`admin/console.rs`; `/` and `/ui/` redirect to it); its requests carry the token the user types | no |
//! | `GET /healthz` | 200 while every running pipeline moves; 503 naming the stuck ones (events in flight, no progress for `policy.stuck_after`) | no |
//! | `GET /readyz` | 200 when every pipeline runs (or finished) and its broker connections are up; 503 with the reasons otherwise (a restarting or failed pipeline's last error) | no |
//!
//! It listens on loopback unless configured otherwise. Mutating endpoints
//! need `Authorization: Bearer <admin.token>`; with no token configured they
//! answer 403 and change nothing. "read" endpoints need `admin.read_token`
//! (or `admin.token`) when a read token is configured, and are open
//! otherwise.
//!
//! Nothing a client sends is trusted with resources before it is
//! authorized (see [`Limits`]): the token is checked, and a declared body
//! size compared with the route's limit, before a byte of the body is read;
//! headers must arrive within [`HEADER_TIMEOUT`] and an upload within
//! [`BODY_TIMEOUT`]; connections are capped and serve one request each.
//! With `admin.tls_cert` and `admin.tls_key` it speaks HTTPS only ([`tls`]);
//! the handshake counts against the header timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

mod console;
pub mod dead_letters;
pub mod health;
mod tap;
pub mod tls;

pub use health::{Health, Lifecycle, PipelineState, Probe, Restarting};

use crate::config::AdminConfig;
use crate::dispatch::{Stats, StatsSnapshot};
use crate::reload::{Origin, PluginStatus, PluginVersions, ReloadError};

/// A client must send a request's headers within this time, or the
/// connection is closed: a client that opens connections and sends nothing
/// (or a byte at a time) holds no slot for long. Long enough for any real
/// client on a slow link.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// An upload's body must arrive within this time (64 MiB at ~1 MiB/s), or
/// the request fails with 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bodies of every route but the upload, at most. Only the replay of dead
/// letters reads one (up to 1,000 ids); a larger declared one is refused
/// (413) rather than read.
pub const SMALL_BODY: u64 = 64 * 1024;

/// The admin server's settings and limits (from `[admin]`, and the
/// constants above, which tests shorten).
#[derive(Clone)]
pub struct Limits {
    pub listen: SocketAddr,
    /// `admin.token`: mutations (and reads) with it.
    pub token: Option<String>,
    /// `admin.read_token`: `GET /pipelines…` and `/metrics` with it.
    pub read_token: Option<String>,
    /// `admin.max_upload`: an upload's body, at most.
    pub max_upload: u64,
    /// `admin.max_connections`: open connections, at most; more are closed
    /// at once.
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// `admin.tls_cert` and `admin.tls_key`: HTTPS with them.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Limits {
    pub fn from_config(config: &AdminConfig) -> Self {
        Self {
            listen: config.listen,
            token: config.token.as_ref().map(|t| t.0.clone()),
            read_token: config.read_token.as_ref().map(|t| t.0.clone()),
            max_upload: config.max_upload.as_u64(),
            max_connections: config.max_connections,
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            tls: config.tls_cert.clone().zip(config.tls_key.clone()),
        }
    }
}

/// A running pipeline, as the admin API sees and steers it.
pub struct PipelineHandle {
    pub name: String,
    pub source: String,
    pub started_at: String,
    pub versions: Arc<PluginVersions>,
    pub pause: tokio::sync::watch::Sender<bool>,
    pub stats: Arc<Stats>,
    /// Checks of the broker connections it uses, for `/readyz`.
    pub probes: Vec<Probe>,
    /// No progress for this long with events in flight is stuck.
    pub stuck_after: std::time::Duration,
    /// The pipeline's plugin state, when it has one (operators read and
    /// delete keys through the API).
    pub state: Option<Arc<crate::state::Store>>,
    /// Its live view (`GET /pipelines/{name}/tap`).
    pub tap: Arc<crate::tap::Tap>,
    /// Where its dead letters are read back from and replayed to.
    pub dead_letters: Arc<dead_letters::DeadLetters>,
}

/// The running pipelines by name, kept by the supervisor.
pub type Registry = Arc<RwLock<BTreeMap<String, Arc<PipelineHandle>>>>;

#[derive(Serialize)]
struct PipelineView {
    name: String,
    state: &'static str,
    source: String,
    started_at: String,
    plugin: Option<PluginStatus>,
    stats: StatsSnapshot,
    /// The circuit breaker, if the pipeline has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    breaker: Option<crate::dispatch::breaker::BreakerView>,
}

impl PipelineHandle {
    fn view(&self) -> PipelineView {
        PipelineView {
            name: self.name.clone(),
            state: if *self.pause.borrow() { "paused" } else { "running" },
            source: self.source.clone(),
            started_at: self.started_at.clone(),
            plugin: self.versions.status(),
            stats: self.stats.snapshot(),
            breaker: self.stats.gauges.breaker.view(),
        }
    }
}

/// Counters of the admin server itself, shown in `/metrics`.
#[derive(Default)]
pub struct AdminCounters {
    /// Requests refused for a missing or wrong token.
    pub auth_failures: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
}

struct AdminState {
    registry: Registry,
    health: Health,
    /// sha256 of `admin.token` and of `admin.read_token`: tokens are
    /// compared as digests, so the time taken depends on neither their
    /// content nor their length.
    token: Option<[u8; 32]>,
    read_token: Option<[u8; 32]>,
    max_upload: u64,
    body_timeout: Duration,
    counters: Arc<AdminCounters>,
    /// When a refusal was last logged, and how many were not logged since.
    log_gate: Mutex<(Option<Instant>, u64)>,
    /// Fires when the server stops: ends the endless responses (taps),
    /// which a graceful connection shutdown would otherwise wait for.
    stop: CancellationToken,
}

/// Refusals (failed authentications, connections over the cap) are logged
/// at most this often; the count in `/metrics` is exact.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl AdminState {
    /// Logs a refusal unless one was logged within [`LOG_EVERY`]; the next
    /// line says how many were not.
    fn log_refusal(&self, what: std::fmt::Arguments<'_>) {
        let Ok(mut gate) = self.log_gate.lock() else { return };
        let now = Instant::now();
        if gate.0.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            gate.1 += 1;
            return;
        }
        let skipped = std::mem::take(&mut gate.1);
        gate.0 = Some(now);
        drop(gate);
        if skipped > 0 {
            tracing::warn!("admin API: {what} ({skipped} more refusals since the last line)");
        } else {
            tracing::warn!("admin API: {what}");
        }
    }
}

/// Starts the admin server; it stops when `stop` fires. Returns the
/// address it is bound to (port 0 picks a free one).
pub async fn serve(limits: Limits, registry: Registry, health: Health, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    serve_counting(limits, registry, health, Arc::default(), stop).await
}

/// [`serve`], counting into `counters` (tests read them).
async fn serve_counting(
    limits: Limits,
    registry: Registry,
    health: Health,
    counters: Arc<AdminCounters>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let tls = match &limits.tls {
        Some((cert, key)) => Some(
            tls::server_config(cert, key)
                .map_err(|(field, message)| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("admin.{field}: {message}")))?,
        ),
        None => None,
    };
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let listener = tokio::net::TcpListener::bind(limits.listen).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            "the admin API listens on {bound}, not on loopback: anyone who can reach it sees the pipelines{}{}",
            if limits.read_token.is_some() { " with the read token" } else { " and metrics (set `admin.read_token` to require a token)" },
            if tls.is_some() {
                ""
            } else {
                "; tokens and uploads travel unencrypted (set `admin.tls_cert` and `admin.tls_key`, or listen on 127.0.0.1)"
            }
        );
    }
    let digest = |token: &Option<String>| token.as_ref().map(|t| sha256(t.as_bytes()));
    let state = Arc::new(AdminState {
        registry,
        health,
        token: digest(&limits.token),
        read_token: digest(&limits.read_token),
        max_upload: limits.max_upload,
        body_timeout: limits.body_timeout,
        counters,
        log_gate: Mutex::new((None, 0)),
        stop: stop.clone(),
    });
    let app = router(state.clone());
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let header_timeout = limits.header_timeout;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!("admin API: cannot accept a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                state.counters.connections_refused.fetch_add(1, AtomicOrdering::Relaxed);
                state.log_refusal(format_args!(
                    "{} connections are open (`admin.max_connections`); closed one from {peer}",
                    limits.max_connections
                ));
                drop(stream);
                continue;
            };
            let app = app.clone();
            let stop = stop.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let failed = match tls {
                    None => serve_one(stream, app, header_timeout, stop).await.map(|e| e.to_string()),
                    // The handshake counts against the header timeout: a
                    // client that stalls in it holds its slot no longer.
                    Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_one(stream, app, header_timeout, stop).await.map(|e| e.to_string()),
                        // Plain HTTP to the HTTPS port lands here: closed.
                        Ok(Err(err)) => Some(format!("TLS handshake failed: {err}")),
                        Err(_) => Some("the TLS handshake took too long".into()),
                    },
                };
                if let Some(err) = failed {
                    tracing::debug!("admin API: connection from {peer}: {err}");
                }
                drop(permit);
            });
        }
    });
    Ok(bound)
}

/// One connection (plain or TLS): one request, then closed. The error
/// that ended it, if one did.
async fn serve_one<S>(stream: S, app: Router, header_timeout: Duration, stop: CancellationToken) -> Option<hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        tower::ServiceExt::oneshot(app.clone(), request.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // One request per connection: every connection's life is
    // bounded by the header and body timeouts and its handler.
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(false);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    served.err()
}

/// Who may call a route.
#[derive(Clone, Copy)]
enum Access {
    /// Anyone: the console's files, which hold no data.
    Open,
    /// `admin.read_token` or `admin.token` when a read token is set.
    Read,
    /// `admin.token`.
    Write,
}

fn router(state: Arc<AdminState>) -> Router {
    let read = Router::new()
        .route("/metrics", get(metrics))
        .route("/pipelines", get(list))
        .route("/pipelines/{name}", get(show))
        .route("/pipelines/{name}/state", get(state_list))
        .route("/pipelines/{name}/state/{*key}", get(state_get))
        .route("/pipelines/{name}/tap", get(tap::tap))
        .route("/pipelines/{name}/dead-letters", get(dead_letters::list))
        .route("/pipelines/{name}/candidate", get(candidate_show))
        .route_layer(axum::middleware::from_fn_with_state((state.clone(), Access::Read, SMALL_BODY), guard));
    let write = Router::new()
        .route("/pipelines/{name}/reload", post(reload))
        .route("/pipelines/{name}/rollback", post(rollback))
        .route("/pipelines/{name}/candidate/promote", post(candidate_promote))
        .route("/pipelines/{name}/candidate", axum::routing::delete(candidate_abort))
        .route("/pipelines/{name}/pause", post(pause))
        .route("/pipelines/{name}/resume", post(resume))
        .route("/pipelines/{name}/dead-letters/replay", post(dead_letters::replay))
        .route("/pipelines/{name}/state/{*key}", axum::routing::delete(state_delete))
        .route_layer(axum::middleware::from_fn_with_state((state.clone(), Access::Write, SMALL_BODY), guard))
        // A body without a declared length is cut off there too.
        .layer(axum::extract::DefaultBodyLimit::max(SMALL_BODY as usize));
    let upload_route = Router::new()
        .route("/pipelines/{name}/plugin", put(upload))
        .route("/pipelines/{name}/candidate", post(candidate_upload))
        .route_layer(axum::middleware::from_fn_with_state((state.clone(), Access::Write, state.max_upload), guard));
    let console = Router::new()
        .route("/", get(console::to_console))
        .route("/ui/", get(console::to_console))
        .route("/ui", get(console::page))
        .route("/ui/app.js", get(console::script))
        .route("/ui/dead-letters.js", get(console::dead_letters_script))
        .route("/ui/app.css", get(console::style))
        .route("/ui/icon.svg", get(console::icon))
        .route_layer(axum::middleware::from_fn_with_state((state.clone(), Access::Open, SMALL_BODY), guard));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .merge(console)
        .merge(read)
        .merge(write)
        .merge(upload_route)
        .with_state(state)
}

/// Runs before a route's handler, on the headers alone: the token, then
/// the declared body size against the route's limit. A refused request's
/// body is never read.
async fn guard(State((state, access, max_body)): State<(Arc<AdminState>, Access, u64)>, request: Request, next: Next) -> Response {
    if let Err(failure) = authorize(&state, access, request.headers()) {
        if failure.0 == StatusCode::UNAUTHORIZED {
            state.counters.auth_failures.fetch_add(1, AtomicOrdering::Relaxed);
            let route = request.uri().path().chars().take(100).collect::<String>();
            state.log_refusal(format_args!("authentication failed for {} {route:?}", request.method()));
        }
        return failure.into_response();
    }
    let declared =
        request.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|length| *length > max_body) {
        return too_large(length, max_body, request.method()).into_response();
    }
    next.run(request).await
}

fn too_large(length: u64, max: u64, method: &Method) -> Failure {
    let what = if method == Method::PUT { "`admin.max_upload`" } else { "the limit of this route" };
    Failure(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is {length} bytes, over {what} ({max} bytes)"))
}

/// The token an `Authorization` header carries, if it is a bearer token
/// (the scheme matched without regard to case, as RFC 7235 says).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Mutations need the configured bearer token; without one they are off.
/// Reads need the read token (or the token) when a read token is set.
fn authorize(state: &AdminState, access: Access, headers: &HeaderMap) -> Result<(), Failure> {
    let given = bearer(headers).map(|t| sha256(t.as_bytes()));
    let matches = |expected: &Option<[u8; 32]>| match (&given, expected) {
        (Some(given), Some(expected)) => digests_equal(given, expected),
        _ => false,
    };
    match access {
        Access::Open => Ok(()),
        Access::Read if state.read_token.is_none() => Ok(()),
        // Both compared, so timing does not tell which token was close.
        Access::Read if matches(&state.read_token) | matches(&state.token) => Ok(()),
        Access::Read => {
            Err(Failure(StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer <admin.read_token>` header is required".into()))
        }
        Access::Write if state.token.is_none() => Err(Failure(
            StatusCode::FORBIDDEN,
            "changes through the admin API are disabled: set `admin.token` in the config (e.g. token = \"${SLUICE_ADMIN_TOKEN}\")".into(),
        )),
        Access::Write if matches(&state.token) => Ok(()),
        Access::Write => Err(Failure(StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer <admin.token>` header is required".into())),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares two digests without stopping at the first difference. Tokens
/// are hashed first, so neither a token's length nor how much of a guess
/// was right shows in the time taken.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// An error answer: a status and a JSON `{"error": …}` body.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<ReloadError> for Failure {
    fn from(err: ReloadError) -> Self {
        match err {
            ReloadError::Rejected(_) => Failure(StatusCode::UNPROCESSABLE_ENTITY, err.to_string()),
            ReloadError::NoPrevious | ReloadError::NoCandidate => Failure(StatusCode::CONFLICT, err.to_string()),
        }
    }
}

type Answer = Result<Response, Failure>;

fn find(state: &AdminState, name: &str) -> Result<Arc<PipelineHandle>, Failure> {
    let registry = state.registry.read().map_err(|_| Failure(StatusCode::INTERNAL_SERVER_ERROR, "registry poisoned".into()))?;
    registry.get(name).cloned().ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no pipeline named `{name}`")))
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Answer {
    let body = crate::metrics::render(&state.registry, &state.health, &state.counters)
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render metrics: {e}")))?;
    Ok(([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response())
}

/// Ready when every pipeline runs (or ran to its end) and each running
/// one's probes pass; otherwise 503 with each pipeline's reason.
async fn ready(State(state): State<Arc<AdminState>>) -> Answer {
    let handles: BTreeMap<String, Arc<PipelineHandle>> = match state.registry.read() {
        Ok(registry) => registry.clone(),
        Err(_) => BTreeMap::new(),
    };
    let mut ready = true;
    let mut pipelines = serde_json::Map::new();
    for (name, pipeline_state) in state.health.states() {
        let problems: Vec<String> = match (&pipeline_state, handles.get(&name)) {
            (PipelineState::Running, Some(handle)) => {
                handle.probes.iter().filter_map(|probe| probe().err()).chain(health::stuck(handle)).collect()
            }
            (other, _) => other.problem().into_iter().collect(),
        };
        ready &= problems.is_empty();
        let mut entry = json!({ "state": pipeline_state.label(), "ready": problems.is_empty(), "problems": problems });
        if let PipelineState::Restarting(restart) = &pipeline_state {
            entry["restart"] = json!(restart);
        }
        pipelines.insert(name, entry);
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(json!({ "ready": ready, "pipelines": pipelines }))).into_response())
}

/// 200 while every running pipeline moves; 503 naming those that are
/// stuck (events in flight, none taken or finished for `stuck_after`): a
/// liveness probe that restarts the process then has a reason to.
async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    let stuck: Vec<String> = match state.registry.read() {
        Ok(registry) => registry.values().filter_map(|handle| health::stuck(handle).map(|why| format!("{}: {why}", handle.name))).collect(),
        Err(_) => Vec::new(),
    };
    if stuck.is_empty() {
        "ok\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("stuck\n{}\n", stuck.join("\n"))).into_response()
    }
}

/// Every pipeline: the running ones (registered) and those that are not
/// (restarting, failed, starting, finished), by name.
async fn list(State(state): State<Arc<AdminState>>) -> Answer {
    let registry = state.registry.read().map_err(|_| Failure(StatusCode::INTERNAL_SERVER_ERROR, "registry poisoned".into()))?.clone();
    let lifecycles = state.health.lifecycles();
    let names: std::collections::BTreeSet<&String> = registry.keys().chain(lifecycles.keys()).collect();
    let views: Vec<serde_json::Value> =
        names.into_iter().filter_map(|name| view_of(name, registry.get(name), lifecycles.get(name))).collect();
    Ok(Json(json!({ "pipelines": views })).into_response())
}

async fn show(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Answer {
    let handle = state.registry.read().ok().and_then(|registry| registry.get(&name).cloned());
    match view_of(&name, handle.as_ref(), state.health.lifecycle(&name).as_ref()) {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(Failure(StatusCode::NOT_FOUND, format!("no pipeline named `{name}`"))),
    }
}

/// A pipeline as `/pipelines` shows it: a running one with its plugin and
/// counters; one that is restarting or failed with its state, and its
/// restart (attempt, next try, last error) or its error. Both with
/// `restarts`, the restarts its restart policy made so far. `None` for one
/// that is not there (yet, or any more).
fn view_of(name: &str, handle: Option<&Arc<PipelineHandle>>, lifecycle: Option<&Lifecycle>) -> Option<serde_json::Value> {
    let restarts = lifecycle.map_or(0, |l| l.restarts);
    if let Some(handle) = handle {
        let mut view = serde_json::to_value(handle.view()).ok()?;
        view["restarts"] = json!(restarts);
        return Some(view);
    }
    let lifecycle = lifecycle?;
    // A pipeline appears once it is registered (its first start done), and
    // stays while it restarts or when it failed; one that finished is gone.
    let shown = match &lifecycle.state {
        PipelineState::Restarting(_) | PipelineState::Failed(_) => true,
        PipelineState::Starting => restarts > 0,
        PipelineState::Running | PipelineState::Finished => false,
    };
    if !shown {
        return None;
    }
    let mut view = json!({ "name": name, "state": lifecycle.state.label(), "restarts": restarts });
    match &lifecycle.state {
        PipelineState::Restarting(restart) => view["restart"] = json!(restart),
        PipelineState::Failed(error) => view["error"] = json!(error),
        _ => {}
    }
    Some(view)
}

#[derive(Deserialize)]
struct StateQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

/// The pipeline's state store, or 404 naming why there is none.
fn store_of(state: &AdminState, name: &str) -> Result<Arc<crate::state::Store>, Failure> {
    find(state, name)?
        .state
        .clone()
        .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("pipeline `{name}` has no state (no [pipelines.{name}.state] table)")))
}

fn state_failure(err: crate::state::StateError) -> Failure {
    Failure(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
}

/// Values as text when they are UTF-8, else base64 (`{"base64": …}`), the
/// same shape `plugin test --state` reads.
fn value_json(value: Vec<u8>) -> serde_json::Value {
    match String::from_utf8(value) {
        Ok(text) => json!(text),
        Err(bytes) => {
            use base64::Engine;
            json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes.as_bytes()) })
        }
    }
}

/// Committed keys under `prefix`, a page at a time (`next` is the `after`
/// of the following page).
async fn state_list(State(state): State<Arc<AdminState>>, Path(name): Path<String>, Query(query): Query<StateQuery>) -> Answer {
    let store = store_of(&state, &name)?;
    let (entries, next) = store.scan(&query.prefix, query.after.as_deref(), query.limit.unwrap_or(100)).await.map_err(state_failure)?;
    let entries: serde_json::Map<String, serde_json::Value> = entries.into_iter().map(|(k, v)| (k, value_json(v))).collect();
    Ok(Json(json!({ "entries": entries, "next": next })).into_response())
}

/// One committed value.
async fn state_get(State(state): State<Arc<AdminState>>, Path((name, key)): Path<(String, String)>) -> Answer {
    let store = store_of(&state, &name)?;
    match store.get(&key).await.map_err(state_failure)? {
        Some(value) => Ok(Json(json!({ "key": key, "value": value_json(value) })).into_response()),
        None => Err(Failure(StatusCode::NOT_FOUND, format!("pipeline `{name}` has no state key {key:?}"))),
    }
}

/// Deletes a key, in the commit order of the pipeline's events.
async fn state_delete(State(state): State<Arc<AdminState>>, Path((name, key)): Path<(String, String)>) -> Answer {
    let store = store_of(&state, &name)?;
    store.delete(&key).await.map_err(state_failure)?;
    tracing::info!(pipeline = %name, key = %key, "state key deleted through the admin API");
    Ok(Json(json!({ "deleted": key })).into_response())
}

async fn reload(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Answer {
    let pipeline = find(&state, &name)?;
    let version = pipeline.versions.reload(Origin::Reload).await?;
    Ok(Json(json!({ "current": version })).into_response())
}

/// The header an upload's signature line comes in.
const SIGNATURE_HEADER: &str = "sluice-signature";

#[derive(Deserialize)]
struct UploadQuery {
    sha256: Option<String>,
}

/// The signature line (`sluice plugin sign` writes it to FILE.sig):
/// checked when `[plugins] trusted_keys` is set, ignored otherwise.
fn signature_of(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    match headers.get(SIGNATURE_HEADER) {
        Some(value) => Ok(Some(
            value.to_str().map_err(|_| Failure(StatusCode::BAD_REQUEST, "the Sluice-Signature header is not text".into()))?.to_owned(),
        )),
        None => Ok(None),
    }
}

async fn upload(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let pipeline = find(&state, &name)?;
    let signature = signature_of(&headers)?;
    let wasm = read_body(body, state.max_upload, state.body_timeout).await?;
    let version = pipeline.versions.upload(wasm, query.sha256, signature).await?;
    Ok(Json(json!({ "current": version })).into_response())
}

#[derive(Deserialize)]
struct CandidateQuery {
    sha256: Option<String>,
    mode: Option<crate::config::RolloutMode>,
    sample: Option<f64>,
    canary: Option<f64>,
}

async fn candidate_show(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Answer {
    let pipeline = find(&state, &name)?;
    Ok(Json(pipeline.versions.rollout().status()).into_response())
}

/// Starts trying an uploaded version beside the current one.
async fn candidate_upload(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    Query(query): Query<CandidateQuery>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let pipeline = find(&state, &name)?;
    let mut trial = pipeline.versions.rollout().trial();
    trial.mode = query.mode.unwrap_or(trial.mode);
    for (what, given, into) in [("sample", query.sample, &mut trial.sample), ("canary", query.canary, &mut trial.canary)] {
        if let Some(fraction) = given {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(Failure(StatusCode::BAD_REQUEST, format!("`{what}` must be greater than 0 and at most 1, got {fraction}")));
            }
            *into = fraction;
        }
    }
    let signature = signature_of(&headers)?;
    let wasm = read_body(body, state.max_upload, state.body_timeout).await?;
    let candidate = pipeline.versions.candidate(wasm, query.sha256, signature, trial).await?;
    Ok(Json(json!({ "candidate": candidate })).into_response())
}

async fn candidate_promote(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Answer {
    let pipeline = find(&state, &name)?;
    let version = pipeline.versions.promote(None, "promoted by hand through the admin API").await?;
    Ok(Json(json!({ "current": version })).into_response())
}

async fn candidate_abort(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Answer {
    let pipeline = find(&state, &name)?;
    let report = pipeline.versions.drop_candidate(None, crate::rollout::Outcome::Aborted, "aborted by hand through the admin API")?;
    Ok(Json(json!({ "aborted": report })).into_response())
}

async fn rollback(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Answer {
    let pipeline = find(&state, &name)?;
    let version = pipeline.versions.rollback().await?;
    Ok(Json(json!({ "current": version })).into_response())
}

async fn pause(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Answer {
    let pipeline = find(&state, &name)?;
    pipeline.pause.send_replace(true);
    Ok(Json(pipeline.view()).into_response())
}

async fn resume(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Answer {
    let pipeline = find(&state, &name)?;
    pipeline.pause.send_replace(false);
    Ok(Json(pipeline.view()).into_response())
}

/// Reads an upload's body: at most `max` bytes (a body without a declared
/// length is cut off there, 413) within `timeout` (408).
async fn read_body(body: Body, max: u64, timeout: Duration) -> Result<Vec<u8>, Failure> {
    let read = async {
        let mut data = Vec::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")))?;
            if (data.len() + chunk.len()) as u64 > max {
                return Err(too_large((data.len() + chunk.len()) as u64, max, &Method::PUT));
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        Failure(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {}", humantime::format_duration(timeout)))
    })?
}

#[cfg(test)]
mod tests;
