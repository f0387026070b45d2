//! What a version did with one event, and whether two versions did the
//! same. A pure function of the two results, so every case is testable.
//!
//! Outputs are compared field by field, in order: destination, key,
//! payload, headers (minus the version header the host adds, which differs
//! by design) and the reply flag. Failures are compared by disposition
//! (retryable, rejected, a failed call), not by message.

use serde::Serialize;

use crate::dispatch::VERSION_HEADER;
use crate::event::{Disposition, HandlerError, Output};
use crate::runtime::CallError;

/// How a failure ended, as far as comparing versions goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The handler returned a retryable error.
    Retryable,
    /// The handler rejected the event (or its outputs could not be sent).
    Rejected,
    /// The call itself failed: a trap, the memory cap, a start failure.
    Trap,
    /// The call ran past its deadline.
    Timeout,
}

impl FailureKind {
    pub fn of_handler(error: &HandlerError) -> Self {
        match error.disposition {
            Disposition::Retryable => FailureKind::Retryable,
            Disposition::Reject => FailureKind::Rejected,
        }
    }

    pub fn of_call(error: &CallError) -> Self {
        match error {
            CallError::Timeout(_) => FailureKind::Timeout,
            _ => FailureKind::Trap,
        }
    }
}

/// One version's result for one event.
#[derive(Debug, Clone)]
pub enum Observed {
    Outputs(Vec<Output>),
    Failed { kind: FailureKind, message: String },
}

impl Observed {
    pub fn from_handler(result: &Result<Vec<Output>, HandlerError>) -> Self {
        match result {
            Ok(outputs) => Observed::Outputs(outputs.clone()),
            Err(error) => Observed::Failed { kind: FailureKind::of_handler(error), message: error.message.clone() },
        }
    }

    pub fn from_call(error: &CallError) -> Self {
        Observed::Failed { kind: FailureKind::of_call(error), message: error.to_string() }
    }

    pub fn failed(&self) -> bool {
        matches!(self, Observed::Failed { .. })
    }

    /// As the report shows it: outputs with their payloads as text (lossy
    /// for binary), or the failure.
    pub fn view(&self) -> ObservedView {
        match self {
            Observed::Outputs(outputs) => ObservedView::Outputs { outputs: outputs.iter().map(OutputView::of).collect() },
            Observed::Failed { kind, message } => ObservedView::Failed { failure: *kind, message: message.clone() },
        }
    }
}

/// The first difference between the current version's result (`current`)
/// and the candidate's, in words; `None` when they did the same.
pub fn compare(current: &Observed, candidate: &Observed) -> Option<String> {
    match (current, candidate) {
        (Observed::Outputs(a), Observed::Outputs(b)) => {
            if a.len() != b.len() {
                return Some(format!("{} outputs, the candidate {}", a.len(), b.len()));
            }
            a.iter().zip(b).enumerate().find_map(|(i, (a, b))| differs(a, b).map(|what| format!("output {}: {what}", i + 1)))
        }
        (Observed::Failed { kind: a, .. }, Observed::Failed { kind: b, .. }) if a == b => None,
        (Observed::Failed { kind: a, .. }, Observed::Failed { kind: b, .. }) => {
            Some(format!("failed {}, the candidate {}", label(*a), label(*b)))
        }
        (Observed::Outputs(_), Observed::Failed { kind, .. }) => Some(format!("the candidate failed ({})", label(*kind))),
        (Observed::Failed { kind, .. }, Observed::Outputs(_)) => {
            Some(format!("the current version failed ({}), the candidate did not", label(*kind)))
        }
    }
}

fn label(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Retryable => "retryably",
        FailureKind::Rejected => "with a rejection",
        FailureKind::Trap => "with a trap",
        FailureKind::Timeout => "with a timeout",
    }
}

/// Which field of two outputs differs first.
fn differs(a: &Output, b: &Output) -> Option<&'static str> {
    if a.destination != b.destination {
        return Some("destination");
    }
    if a.key != b.key {
        return Some("key");
    }
    if a.payload != b.payload {
        return Some("payload");
    }
    if a.reply != b.reply {
        return Some("reply");
    }
    let headers =
        |o: &'_ Output| o.headers.iter().filter(|h| h.key != VERSION_HEADER).map(|h| (h.key.clone(), h.value.clone())).collect::<Vec<_>>();
    (headers(a) != headers(b)).then_some("headers")
}

/// A result as the report shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ObservedView {
    Outputs { outputs: Vec<OutputView> },
    Failed { failure: FailureKind, message: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub payload: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reply: bool,
}

impl OutputView {
    fn of(output: &Output) -> Self {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        Self {
            destination: output.destination.clone(),
            key: output.key.as_deref().map(text),
            payload: text(&output.payload),
            headers: output.headers.iter().filter(|h| h.key != VERSION_HEADER).map(|h| (h.key.clone(), text(&h.value))).collect(),
            reply: output.reply,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::text_header;

    fn out(payload: &str) -> Output {
        Output { destination: None, key: None, payload: payload.into(), headers: Vec::new(), reply: false }
    }

    fn failed(kind: FailureKind) -> Observed {
        Observed::Failed { kind, message: "m".into() }
    }

    #[test]
    fn the_same_outputs_are_the_same_whatever_the_version_header() {
        let mut a = out("x");
        a.headers.push(text_header(VERSION_HEADER, "aaa"));
        let mut b = out("x");
        b.headers.push(text_header(VERSION_HEADER, "bbb"));
        assert_eq!(compare(&Observed::Outputs(vec![a]), &Observed::Outputs(vec![b])), None);
    }

    #[test]
    fn each_field_is_named_when_it_differs() {
        let base = out("x");
        let cases: Vec<(Output, &str)> = vec![
            (Output { destination: Some("d".into()), ..base.clone() }, "output 1: destination"),
            (Output { key: Some(b"k".to_vec()), ..base.clone() }, "output 1: key"),
            (Output { payload: b"y".to_vec(), ..base.clone() }, "output 1: payload"),
            (Output { reply: true, ..base.clone() }, "output 1: reply"),
            (Output { headers: vec![text_header("a", "1")], ..base.clone() }, "output 1: headers"),
        ];
        for (other, expected) in cases {
            assert_eq!(compare(&Observed::Outputs(vec![base.clone()]), &Observed::Outputs(vec![other])).as_deref(), Some(expected));
        }
        let two = Observed::Outputs(vec![out("x"), out("y")]);
        assert_eq!(compare(&two, &Observed::Outputs(vec![out("x")])).as_deref(), Some("2 outputs, the candidate 1"));
        assert_eq!(compare(&two, &Observed::Outputs(vec![out("x"), out("z")])).as_deref(), Some("output 2: payload"));
    }

    #[test]
    fn failures_compare_by_disposition_not_message() {
        let a = Observed::Failed { kind: FailureKind::Retryable, message: "one".into() };
        let b = Observed::Failed { kind: FailureKind::Retryable, message: "two".into() };
        assert_eq!(compare(&a, &b), None);
        assert!(compare(&failed(FailureKind::Retryable), &failed(FailureKind::Rejected)).is_some());
        assert!(compare(&Observed::Outputs(vec![]), &failed(FailureKind::Trap)).is_some_and(|d| d.contains("candidate failed")));
        assert!(compare(&failed(FailureKind::Timeout), &Observed::Outputs(vec![])).is_some());
    }
}
