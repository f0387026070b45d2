//! `GET /pipelines/{name}/tap`: a pipeline's live events as server-sent
//! events, for `sluice tap` and the console.
//!
//! Each event is `event: input|output|dead-letter` with the captured event
//! as JSON ([`crate::tap::Seen`]); `event: dropped` says how many this
//! watcher missed because it read too slowly; `event: end` says why the
//! stream ended (the pipeline stopped or restarted, the host shuts down).
//! Query: `inputs`, `outputs`, `dead_letters` (`true` to choose; none
//! chosen: all three), `sample=N` (every Nth of those captured), `rate=R`
//! (at most R a second).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{find, AdminState, Answer, Failure};
use crate::tap::{Point, Watcher};

/// What a watcher asked for.
#[derive(Debug, Default, Deserialize)]
pub(super) struct TapQuery {
    #[serde(default)]
    inputs: bool,
    #[serde(default)]
    outputs: bool,
    #[serde(default)]
    dead_letters: bool,
    sample: Option<u64>,
    rate: Option<f64>,
}

/// A watcher's filter: which points, every how many, how many a second.
struct Filter {
    points: [bool; 3],
    every: u64,
    seen: u64,
    /// Tokens of a bucket refilled at `rate` a second, holding one second's worth.
    rate: Option<(f64, f64, Instant)>,
}

impl Filter {
    fn of(query: &TapQuery) -> Result<Self, String> {
        let all = !(query.inputs || query.outputs || query.dead_letters);
        let every = query.sample.unwrap_or(1);
        if every == 0 {
            return Err("sample must be 1 or more (every Nth event)".into());
        }
        let rate = match query.rate {
            Some(rate) if !(rate > 0.0 && rate.is_finite()) => return Err("rate must be a positive number of events a second".into()),
            Some(rate) => Some((rate, rate.max(1.0), Instant::now())),
            None => None,
        };
        Ok(Filter { points: [all || query.inputs, all || query.outputs, all || query.dead_letters], every, seen: 0, rate })
    }

    fn pass(&mut self, point: Point) -> bool {
        if !self.points[point as usize] {
            return false;
        }
        self.seen += 1;
        if !(self.seen - 1).is_multiple_of(self.every) {
            return false;
        }
        match &mut self.rate {
            None => true,
            Some((rate, tokens, last)) => {
                let now = Instant::now();
                *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * *rate).min(rate.max(1.0));
                *last = now;
                let pass = *tokens >= 1.0;
                if pass {
                    *tokens -= 1.0;
                }
                pass
            }
        }
    }
}

pub(super) async fn tap(State(state): State<Arc<AdminState>>, Path(name): Path<String>, Query(query): Query<TapQuery>) -> Answer {
    let filter = Filter::of(&query).map_err(|why| Failure(StatusCode::BAD_REQUEST, why))?;
    let handle = find(&state, &name)?;
    let watcher = handle.tap.watch().map_err(|e| Failure(StatusCode::TOO_MANY_REQUESTS, e.to_string()))?;
    let events = watch(watcher, filter, state.stop.clone());
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// The watcher's entries as SSE events, until the pipeline's tap closes or
/// the server stops.
fn watch(watcher: Watcher, filter: Filter, stop: CancellationToken) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(Some((watcher, filter, stop)), |state| async move {
        let (mut watcher, mut filter, stop) = state?;
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return Some((Ok(end("the host is shutting down")), None)),
                received = watcher.receiver.recv() => received,
            };
            match received {
                Ok(seen) if filter.pass(seen.point) => {
                    let event = SseEvent::default()
                        .event(seen.point.name())
                        .json_data(&*seen)
                        .unwrap_or_else(|_| SseEvent::default().event("error"));
                    return Some((Ok(event), Some((watcher, filter, stop))));
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    let event = SseEvent::default().event("dropped").data(format!("{{\"dropped\":{missed}}}"));
                    return Some((Ok(event), Some((watcher, filter, stop))));
                }
                Err(RecvError::Closed) => return Some((Ok(end("the pipeline stopped (or restarted): tap it again")), None)),
            }
        }
    })
    .boxed()
}

fn end(reason: &str) -> SseEvent {
    SseEvent::default().event("end").data(serde_json::json!({ "reason": reason }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_keeps_the_points_asked_for_every_nth() -> Result<(), String> {
        let mut filter = Filter::of(&TapQuery { outputs: true, sample: Some(3), ..TapQuery::default() })?;
        assert!(!filter.pass(Point::Input), "inputs were not asked for");
        let passed: Vec<bool> = (0..6).map(|_| filter.pass(Point::Output)).collect();
        assert_eq!(passed, [true, false, false, true, false, false]);
        let mut all = Filter::of(&TapQuery::default())?;
        assert!(all.pass(Point::Input) && all.pass(Point::Output) && all.pass(Point::DeadLetter), "none chosen: all three");
        assert!(Filter::of(&TapQuery { sample: Some(0), ..TapQuery::default() }).is_err());
        assert!(Filter::of(&TapQuery { rate: Some(-1.0), ..TapQuery::default() }).is_err());
        Ok(())
    }

    #[test]
    fn a_rate_lets_a_burst_of_one_second_through() -> Result<(), String> {
        let mut filter = Filter::of(&TapQuery { rate: Some(5.0), ..TapQuery::default() })?;
        let passed = (0..100).filter(|_| filter.pass(Point::Input)).count();
        assert_eq!(passed, 5, "a second's worth, then nothing until the bucket refills");
        Ok(())
    }
}
