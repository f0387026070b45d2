//! The lanes' side of a rollout (see [`crate::rollout`]): each lane keeps
//! its own instance of the candidate version and calls it one event at a
//! time, with the candidate's own deadline, so a slow or trapping
//! candidate costs its own call and report, never the current version's
//! result.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::Handler;
use crate::event::{Event, Output};
use crate::rollout::compare::{FailureKind, Observed};
use crate::rollout::Candidate;
use crate::runtime::instance::HandleResult;
use crate::runtime::{CallError, EventScope};

/// A lane's instance of the candidate.
#[derive(Default)]
pub(super) struct CandidateCalls {
    /// The candidate `handler` belongs to.
    id: u64,
    handler: Option<Box<dyn Handler>>,
}

/// One call of the candidate.
pub(super) struct Called {
    pub result: Result<Vec<Output>, (FailureKind, String)>,
    pub took: Duration,
    pub scope: Option<EventScope>,
}

impl Called {
    pub fn observed(&self) -> Observed {
        match &self.result {
            Ok(outputs) => Observed::Outputs(outputs.clone()),
            Err((kind, message)) => Observed::Failed { kind: *kind, message: message.clone() },
        }
    }
}

/// A whole call's failure: how, and why.
type CallFailed = (FailureKind, String);

impl CandidateCalls {
    /// Frees the instance of a candidate no longer tried (off the async
    /// workers: freeing an instance can take a millisecond).
    pub fn release(&mut self) {
        if let Some(handler) = self.handler.take() {
            tokio::task::spawn_blocking(move || drop(handler));
        }
    }

    /// Calls `candidate` with `event`, lending it `scope`.
    pub async fn call(&mut self, candidate: &Candidate, event: &Event, scope: Option<EventScope>) -> Called {
        let (result, took, scope) = self.call_many(candidate, std::slice::from_ref(event), scope, candidate.timeout).await;
        let result = result.and_then(|mut results| match results.pop() {
            Some(Ok(outputs)) => Ok(outputs),
            Some(Err(error)) => Err((FailureKind::of_handler(&error), error.message)),
            None => Err((FailureKind::Trap, "no result for the event".into())),
        });
        Called { result, took, scope }
    }

    /// Calls `candidate` with `events` in one call, within `deadline`: a
    /// result per event, or the failure of the whole call.
    pub async fn call_many(
        &mut self,
        candidate: &Candidate,
        events: &[Event],
        scope: Option<EventScope>,
        deadline: Duration,
    ) -> (Result<Vec<HandleResult>, CallFailed>, Duration, Option<EventScope>) {
        if self.id != candidate.id {
            self.id = candidate.id;
            if let Some(old) = self.handler.take() {
                tokio::task::spawn_blocking(move || drop(old));
            }
        }
        let started = Instant::now();
        let mut handler = match self.handler.take() {
            Some(handler) => handler,
            None => match candidate.factory.create().await {
                Ok(handler) => handler,
                Err(err) => return (Err((FailureKind::Trap, format!("the candidate cannot start: {err}"))), started.elapsed(), None),
            },
        };
        if let Some(scope) = scope {
            handler.attach(scope);
        }
        let call = AssertUnwindSafe(handler.handle(events)).catch_unwind();
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(Ok(results))) if results.len() == events.len() => Ok(results),
            Ok(Ok(Ok(results))) => Err((FailureKind::Trap, format!("{} results for {} events", results.len(), events.len()))),
            Ok(Ok(Err(error))) => Err((FailureKind::of_call(&error), error.to_string())),
            Ok(Err(_)) => Err((FailureKind::Trap, "the host panicked while calling the candidate".into())),
            Err(_) => Err((FailureKind::of_call(&CallError::Timeout(deadline)), format!("timed out after {deadline:?}"))),
        };
        let took = started.elapsed();
        let scope = handler.detach();
        // An instance whose call failed as a whole is not reused.
        if result.is_ok() {
            self.handler = Some(handler);
        } else {
            tokio::task::spawn_blocking(move || drop(handler));
        }
        (result, took, scope)
    }
}
