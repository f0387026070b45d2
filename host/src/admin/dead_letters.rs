//! `GET /pipelines/{name}/dead-letters` and `POST …/dead-letters/replay`:
//! a pipeline's recent dead letters, read back from its own dead-letter
//! destination, and their replay to its source, through the readers and
//! sinks of `sluice dlq replay` ([`crate::replay`]).
//!
//! Reading is bounded: at most [`MAX_LIMIT`] records are returned and
//! [`read::MAX_SCAN`] examined, newest first, and only a payload's first
//! [`PREVIEW_BYTES`] are kept. Header values that look like credentials are
//! shown as the tap shows them: `<redacted>`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{find, AdminState, Answer, Failure};
use crate::config::{PipelineConfig, SinkConfig, SourceConfig};
use crate::replay::read::{self, Found, MAX_SCAN};
use crate::replay::{Connection, DeadLetter, Filter, Kind, Origin, ReplayError, Sinks, To};
use crate::sink::kafka::KafkaSinkConfig;
use crate::tap::{shown_header, Preview, PREVIEW_BYTES};

/// Dead letters listed when the request names no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Dead letters listed, or replayed by one request, at most.
pub const MAX_LIMIT: usize = 1000;
/// A read or a replay must be done within this time, or it fails (504).
const WITHIN: Duration = Duration::from_secs(60);

/// A pipeline's dead letters: where they are read from and where a replay
/// sends them, or why it cannot.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    origin: Result<(Origin, Connection), String>,
    replay_to: Result<(To, Connection), String>,
}

impl DeadLetters {
    /// From the pipeline's config: its `dead_letter` sink is read, its
    /// `source` is where replays go.
    pub fn of(config: &PipelineConfig) -> Self {
        Self { origin: origin_of(config.dead_letter.as_ref()), replay_to: replay_to(&config.source) }
    }
}

fn origin_of(sink: Option<&SinkConfig>) -> Result<(Origin, Connection), String> {
    let nats = |sink: &SinkConfig| Connection { nats: sink.nats_server().unwrap_or_default(), ..Default::default() };
    match sink {
        None => Err("the pipeline has no dead_letter destination".into()),
        Some(SinkConfig::File(file)) if file.format == crate::config::RecordFormat::Json => {
            Ok((Origin::File(file.path.clone()), Connection::default()))
        }
        Some(SinkConfig::File(_)) => {
            Err("the dead-letter file is written with format = \"payload\": the records' reasons and headers are not kept, so there is nothing to list".into())
        }
        Some(sink @ SinkConfig::Jetstream(jetstream)) => {
            Ok((Origin::JetStream { stream: jetstream.stream.clone(), subject: jetstream.subject.clone() }, nats(sink)))
        }
        Some(SinkConfig::Kafka(kafka @ KafkaSinkConfig { topic: Some(topic), .. })) => Ok((
            Origin::Kafka(topic.clone()),
            Connection {
                brokers: kafka.brokers.clone(),
                kafka_options: kafka.connection_options(),
                ..Default::default()
            },
        )),
        Some(SinkConfig::Kafka(KafkaSinkConfig { topic: None, .. })) => Err("the dead-letter Kafka sink names no topic to read back".into()),
        Some(SinkConfig::Stdout(_)) => Err("dead letters go to stdout: they cannot be read back".into()),
        Some(SinkConfig::Nats(_)) => {
            Err("dead letters go to core NATS, which keeps nothing: use a jetstream dead_letter to list and replay them".into())
        }
    }
}

fn replay_to(source: &SourceConfig) -> Result<(To, Connection), String> {
    let nats = |kind| (To { kind, name: None }, Connection { nats: source.nats_server().unwrap_or_default(), ..Default::default() });
    match source {
        SourceConfig::File(file) => {
            Ok((To { kind: Kind::File, name: Some(file.path.to_string_lossy().into_owned()) }, Connection::default()))
        }
        SourceConfig::Nats(_) => Ok(nats(Kind::Nats)),
        SourceConfig::Jetstream(_) => Ok(nats(Kind::JetStream)),
        SourceConfig::Kafka(kafka) => Ok((
            To { kind: Kind::Kafka, name: None },
            Connection { brokers: kafka.brokers.clone(), kafka_options: kafka.connection_options(), ..Default::default() },
        )),
        SourceConfig::Stdin(_) => Err("the pipeline reads stdin: replayed events cannot be sent to it".into()),
    }
}

fn dead_letters_of(state: &AdminState, name: &str) -> Result<Arc<DeadLetters>, Failure> {
    Ok(find(state, name)?.dead_letters.clone())
}

fn unreadable(err: &str) -> Failure {
    Failure(StatusCode::CONFLICT, err.to_owned())
}

fn read_failed(err: ReplayError) -> Failure {
    let status = match err {
        ReplayError::Id(_) => StatusCode::BAD_REQUEST,
        ReplayError::Read(_) | ReplayError::Send(_) => StatusCode::BAD_GATEWAY,
    };
    Failure(status, err.to_string())
}

fn late() -> Failure {
    Failure(
        StatusCode::GATEWAY_TIMEOUT,
        format!("the dead-letter destination did not answer within {}", humantime::format_duration(WITHIN)),
    )
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    limit: Option<usize>,
    /// One reason, or several separated by commas.
    reason: Option<String>,
    /// RFC 3339, or a duration ago (`2h`).
    since: Option<String>,
    until: Option<String>,
}

/// The filter a list or replay request describes, for the dead letters of
/// pipeline `name` only: a destination may be shared by several.
fn filter_of(name: &str, reason: Option<&str>, since: Option<&str>, until: Option<&str>) -> Result<Filter, Failure> {
    let now = SystemTime::now();
    let time = |name: &str, text: Option<&str>| {
        text.filter(|t| !t.is_empty())
            .map(|t| crate::replay::parse_time(t, now).map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("{name}: {e}"))))
            .transpose()
    };
    Ok(Filter {
        pipeline: Some(name.to_owned()),
        reasons: reason.unwrap_or_default().split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect(),
        since: time("since", since)?,
        until: time("until", until)?,
    })
}

/// One dead letter as the API shows it.
#[derive(Debug, Serialize)]
struct Shown {
    /// What the replay route selects it by (a file's byte offset, a
    /// stream's sequence, a topic's `partition:offset`).
    id: String,
    reason: String,
    message: String,
    attempts: Option<u32>,
    plugin: String,
    plugin_digest: String,
    /// When it was dead-lettered, RFC 3339.
    time: Option<String>,
    pipeline: String,
    event_id: String,
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<Preview>,
    headers: Vec<(String, Preview)>,
    payload: Preview,
}

fn shown(found: Found) -> Shown {
    let Found { id, record, payload_bytes } = found;
    let payload = Preview::of_prefix(&record.payload, payload_bytes);
    Shown {
        id,
        reason: record.reason,
        message: record.message,
        attempts: record.attempts,
        plugin: record.plugin,
        plugin_digest: record.plugin_digest,
        time: record.dead_lettered_at.map(crate::time::rfc3339),
        pipeline: record.pipeline,
        event_id: record.event_id,
        source: record.source,
        key: record.key.as_deref().map(Preview::of),
        headers: record.headers.iter().map(|h| (h.key.clone(), shown_header(&h.key, &h.value))).collect(),
        payload,
    }
}

/// The newest dead letters that match the query, newest first.
pub(super) async fn list(State(state): State<Arc<AdminState>>, Path(name): Path<String>, Query(query): Query<ListQuery>) -> Answer {
    let dead_letters = dead_letters_of(&state, &name)?;
    let (origin, connection) = dead_letters.origin.as_ref().map_err(|e| unreadable(e))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Failure(StatusCode::BAD_REQUEST, format!("limit must be 1 to {MAX_LIMIT}")));
    }
    let filter = filter_of(&name, query.reason.as_deref(), query.since.as_deref(), query.until.as_deref())?;
    let recent = tokio::time::timeout(WITHIN, read::recent(origin, connection, &filter, limit, PREVIEW_BYTES))
        .await
        .map_err(|_| late())?
        .map_err(read_failed)?;
    let shown: Vec<Shown> = recent.found.into_iter().map(shown).collect();
    Ok(Json(json!({
        "destination": origin.to_string(),
        "replay_unavailable": dead_letters.replay_to.as_ref().err(),
        "dead_letters": shown,
        "scanned": recent.scanned,
        "max_scan": MAX_SCAN,
        "more": recent.more,
        "limit": limit,
    }))
    .into_response())
}

fn to_text(to: &To) -> String {
    match &to.name {
        Some(name) => format!("{}:{name}", to.kind),
        None => format!("{} (each record's own source)", to.kind),
    }
}

/// What to replay: ids, or the newest that match a filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayRequest {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<ReplayFilter>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayFilter {
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

/// Where a record's replay got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Status {
    /// A dry run: it would be sent.
    WouldReplay,
    /// Sent, and durably accepted by the sink.
    Replayed,
    /// Not sent, or not accepted: `error` says why.
    Failed,
}

/// What happened to one record.
#[derive(Debug, Serialize)]
struct Outcome {
    id: String,
    event_id: String,
    reason: String,
    /// `kind:name` it goes (or would go) to.
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    payload: Preview,
}

/// The records a replay request names, oldest first, this pipeline's only.
async fn select(name: &str, dead_letters: &DeadLetters, request: &ReplayRequest) -> Result<Vec<(String, DeadLetter)>, Failure> {
    let (origin, connection) = dead_letters.origin.as_ref().map_err(|e| unreadable(e))?;
    Ok(match (&request.ids, &request.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_LIMIT {
                return Err(Failure(StatusCode::BAD_REQUEST, format!("ids: give 1 to {MAX_LIMIT}")));
            }
            let read =
                tokio::time::timeout(WITHIN, read::by_ids(origin, connection, ids)).await.map_err(|_| late())?.map_err(read_failed)?;
            // Another pipeline's dead letters (a shared destination) are
            // not this one's to replay: left out, like ids not found.
            read.into_iter().filter_map(read::Positioned::dead_letter).filter(|(_, record)| record.pipeline == name).collect()
        }
        (None, Some(filter)) => {
            let limit = filter.limit.unwrap_or(MAX_LIMIT);
            if limit == 0 || limit > MAX_LIMIT {
                return Err(Failure(StatusCode::BAD_REQUEST, format!("filter.limit must be 1 to {MAX_LIMIT}")));
            }
            let filter = filter_of(name, filter.reason.as_deref(), filter.since.as_deref(), filter.until.as_deref())?;
            let recent = tokio::time::timeout(WITHIN, read::recent(origin, connection, &filter, limit, usize::MAX))
                .await
                .map_err(|_| late())?
                .map_err(read_failed)?;
            // Oldest first: the order they failed in.
            recent.found.into_iter().rev().map(|found| (found.id, found.record)).collect()
        }
        _ => return Err(Failure(StatusCode::BAD_REQUEST, "give either `ids` or `filter`".into())),
    })
}

/// Sends each record to `to` (unless `dry_run`), then waits until each is
/// durably accepted; what happened to each.
async fn send(name: &str, records: Vec<(String, DeadLetter)>, to: &To, through: &Connection, dry_run: bool) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(records.len());
    let mut sinks = Sinks::new(through.clone());
    let mut receipts = Vec::new();
    for (id, record) in records {
        let mut outcome = Outcome {
            id,
            event_id: record.event_id.clone(),
            reason: record.reason.clone(),
            to: None,
            status: Status::WouldReplay,
            error: None,
            payload: Preview::of(&record.payload),
        };
        match to.destination(&record) {
            Err(err) => {
                outcome.status = Status::Failed;
                outcome.error = Some(err.to_string());
            }
            Ok(destination) => {
                outcome.to = Some(format!("{}:{destination}", to.kind));
                if !dry_run {
                    match tokio::time::timeout(WITHIN, sinks.send(to.kind, &destination, record)).await {
                        Ok(Ok(receipt)) => receipts.push((outcomes.len(), receipt)),
                        Ok(Err(err)) => {
                            outcome.status = Status::Failed;
                            outcome.error = Some(err.to_string());
                        }
                        Err(_) => {
                            outcome.status = Status::Failed;
                            outcome.error = Some(late().1);
                        }
                    }
                }
            }
        }
        outcomes.push(outcome);
    }
    for (index, receipt) in receipts {
        let (status, error) = match tokio::time::timeout(WITHIN, receipt.wait()).await {
            Ok(Ok(())) => (Status::Replayed, None),
            Ok(Err(err)) => (Status::Failed, Some(format!("not accepted: {err}"))),
            Err(_) => (Status::Failed, Some(late().1)),
        };
        if let Some(outcome) = outcomes.get_mut(index) {
            outcome.status = status;
            outcome.error = error;
        }
    }
    if let Err(err) = sinks.close().await {
        tracing::warn!(pipeline = %name, "dead-letter replay: {err}");
    }
    outcomes
}

/// Replays the records selected (oldest first), or with `dry_run` says
/// what it would send where and sends nothing.
pub(super) async fn replay(State(state): State<Arc<AdminState>>, Path(name): Path<String>, body: axum::body::Bytes) -> Answer {
    // Read whatever the content type says: `curl -d` sends a form type.
    let request: ReplayRequest =
        serde_json::from_slice(&body).map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("the body is not a replay request: {e}")))?;
    let dead_letters = dead_letters_of(&state, &name)?;
    let (to, send_through) = dead_letters.replay_to.as_ref().map_err(|e| unreadable(e))?;
    let records = select(&name, &dead_letters, &request).await?;
    let outcomes = send(&name, records, to, send_through, request.dry_run).await;
    let count = |status: Status| outcomes.iter().filter(|o| o.status == status).count();
    let (replayed, would, failed) = (count(Status::Replayed), count(Status::WouldReplay), count(Status::Failed));
    if !request.dry_run {
        tracing::info!(pipeline = %name, replayed, failed, "dead letters replayed through the admin API");
    }
    Ok(Json(json!({
        "dry_run": request.dry_run,
        "to": to_text(to),
        "replayed": replayed,
        "would_replay": would,
        "failed": failed,
        "records": outcomes,
    }))
    .into_response())
}
