//! The lanes' two schema checkpoints (see [`crate::schema`]): an input
//! before the plugin call, which may dead-letter it (`invalid` or
//! `unsupported`) without calling the plugin, and each output after it,
//! where a failure is a plugin bug that rejects the event. Both count into
//! the pipeline's stats.

use std::time::SystemTime;

use super::dead_letter::{Failure, Reason};
use super::{Dispatcher, Stats, Version};
use crate::event::{Event, Output};
use crate::schema::Refusal;

/// The dead-letter failure for an input refused before the plugin call, or
/// `None` to hand it to the plugin. `version` is the plugin version the
/// lane will call: its declared `accepts` list applies.
pub(super) fn refuse_input(d: &Dispatcher, version: &Version, event: &Event) -> Option<Failure> {
    let refusal = d.schemas.check_input(&event.headers, &event.payload, version.factory.accepts()).err()?;
    let (reason, message) = match refusal {
        Refusal::Invalid(message) => {
            Stats::add(&d.stats.invalid_inputs, 1);
            (Reason::Invalid, message)
        }
        Refusal::Unsupported(message) => {
            Stats::add(&d.stats.unsupported, 1);
            (Reason::Unsupported, message)
        }
    };
    let now = SystemTime::now();
    Some(Failure { reason, message, attempts: 0, first: now, last: now, calls: Vec::new() })
}

/// Checks an event's outputs against their schemas. Any failure rejects
/// the event; the message says which output failed first and why, and how
/// many others failed too. Every failing output is counted.
pub(super) fn check_outputs(d: &Dispatcher, event: &Event, outputs: &[Output]) -> Result<(), String> {
    if !d.schemas.checks_outputs() {
        return Ok(());
    }
    let input = d.schemas.kind(&event.headers);
    let mut first = None;
    let mut others = 0u64;
    for (i, output) in outputs.iter().enumerate() {
        if let Err(why) = d.schemas.check_output(input.as_ref(), &output.headers, &output.payload) {
            match first {
                None => first = Some(format!("output {} of {}: {why}", i + 1, outputs.len())),
                Some(_) => others += 1,
            }
        }
    }
    let Some(mut message) = first else { return Ok(()) };
    Stats::add(&d.stats.invalid_outputs, others + 1);
    if others > 0 {
        message = crate::schema::cap(format!("{message} (and {others} more outputs fail)"));
    }
    Err(message)
}
