//! The admin HTTP API: what runs, and hot reload by hand.
//!
//! | method and path | what | token |
//! |---|---|---|
//! | `GET /pipelines` | every pipeline: state, plugin versions, counters | no |
//! | `GET /pipelines/{name}` | one pipeline | no |
//! | `POST /pipelines/{name}/reload` | load the plugin file again | yes |
//! | `PUT /pipelines/{name}/plugin[?sha256=…]` | upload a new version (the body is the `.wasm`) | yes |
//! | `POST /pipelines/{name}/rollback` | back to the previous version | yes |
//! | `POST /pipelines/{name}/pause`, `/resume` | stop / restart taking events from the source | yes |
//! | `GET /metrics` | Prometheus metrics ([`crate::metrics`]) | no |
//! | `GET /healthz` | 200 while the process serves requests | no |
//! | `GET /readyz` | 200 when every pipeline runs (or finished) and its broker connections are up; 503 with the reasons otherwise | no |
//!
//! It listens on loopback unless configured otherwise. Mutating endpoints
//! need `Authorization: Bearer <admin.token>`; with no token configured they
//! answer 403 and change nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub mod health;

pub use health::{Health, PipelineState, Probe};

use crate::dispatch::{Stats, StatsSnapshot};
use crate::reload::{Origin, PluginStatus, PluginVersions, ReloadError};

/// Uploads larger than this are refused (JavaScript and Python components
/// are a few MiB to a few tens of MiB).
const MAX_UPLOAD: usize = 256 * 1024 * 1024;

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

struct AdminState {
    registry: Registry,
    health: Health,
    token: Option<String>,
}

/// Starts the admin server on `listen`; it stops when `stop` fires. Returns
/// the address it is bound to (port 0 picks a free one).
pub async fn serve(
    listen: SocketAddr,
    token: Option<String>,
    registry: Registry,
    health: Health,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let state = Arc::new(AdminState { registry, health, token });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .route("/pipelines", get(list))
        .route("/pipelines/{name}", get(show))
        .route("/pipelines/{name}/reload", post(reload))
        .route("/pipelines/{name}/plugin", put(upload))
        .route("/pipelines/{name}/rollback", post(rollback))
        .route("/pipelines/{name}/pause", post(pause))
        .route("/pipelines/{name}/resume", post(resume))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(err) = served {
            tracing::error!("admin API stopped: {err}");
        }
    });
    Ok(bound)
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
            ReloadError::NoPrevious => Failure(StatusCode::CONFLICT, err.to_string()),
        }
    }
}

type Answer = Result<Response, Failure>;

fn find(state: &AdminState, name: &str) -> Result<Arc<PipelineHandle>, Failure> {
    let registry = state.registry.read().map_err(|_| Failure(StatusCode::INTERNAL_SERVER_ERROR, "registry poisoned".into()))?;
    registry
        .get(name)
        .cloned()
        .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no pipeline named `{name}`")))
}

/// Mutations need the configured bearer token; without one they are off.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), Failure> {
    let Some(expected) = &state.token else {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "changes through the admin API are disabled: set `admin.token` in the config (e.g. token = \"${SLUICE_ADMIN_TOKEN}\")".into(),
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(Failure(StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer <admin.token>` header is required".into()))
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell an attacker how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Answer {
    let body = crate::metrics::render(&state.registry)
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
            (PipelineState::Running | PipelineState::Finished, _) => Vec::new(),
            (PipelineState::Starting, _) => vec!["starting".into()],
            (PipelineState::Failed(reason), _) => vec![reason.clone()],
        };
        ready &= problems.is_empty();
        pipelines.insert(name, json!({ "state": pipeline_state, "ready": problems.is_empty(), "problems": problems }));
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

async fn list(State(state): State<Arc<AdminState>>) -> Answer {
    let registry = state.registry.read().map_err(|_| Failure(StatusCode::INTERNAL_SERVER_ERROR, "registry poisoned".into()))?;
    let views: Vec<PipelineView> = registry.values().map(|p| p.view()).collect();
    Ok(Json(json!({ "pipelines": views })).into_response())
}

async fn show(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Answer {
    Ok(Json(find(&state, &name)?.view()).into_response())
}

async fn reload(State(state): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap) -> Answer {
    authorize(&state, &headers)?;
    let pipeline = find(&state, &name)?;
    let version = pipeline.versions.reload(Origin::Reload).await?;
    Ok(Json(json!({ "current": version })).into_response())
}

#[derive(Deserialize)]
struct UploadQuery {
    sha256: Option<String>,
}

async fn upload(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    authorize(&state, &headers)?;
    let pipeline = find(&state, &name)?;
    let version = pipeline.versions.upload(body.to_vec(), query.sha256).await?;
    Ok(Json(json!({ "current": version })).into_response())
}

async fn rollback(State(state): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap) -> Answer {
    authorize(&state, &headers)?;
    let pipeline = find(&state, &name)?;
    let version = pipeline.versions.rollback().await?;
    Ok(Json(json!({ "current": version })).into_response())
}

async fn pause(State(state): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap) -> Answer {
    authorize(&state, &headers)?;
    let pipeline = find(&state, &name)?;
    pipeline.pause.send_replace(true);
    Ok(Json(pipeline.view()).into_response())
}

async fn resume(State(state): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap) -> Answer {
    authorize(&state, &headers)?;
    let pipeline = find(&state, &name)?;
    pipeline.pause.send_replace(false);
    Ok(Json(pipeline.view()).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret-longer"));
        assert!(!super::constant_time_eq(b"", b"x"));
    }
}
