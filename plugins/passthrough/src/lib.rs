//! `passthrough`: publishes every event unchanged (key, payload, headers) to
//! the default route. The baseline for benchmarks, so it does nothing else:
//! the event's buffers are moved into the output, never copied.
//!
//! Config: none; any keys are ignored so benchmark configs can vary freely.

use sluice_plugin::{Config, Event, HandlerError, Output, Plugin};

struct Passthrough;

impl Plugin for Passthrough {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        Ok(vec![Output::from(event)])
    }
}

sluice_plugin::export!(Passthrough);
