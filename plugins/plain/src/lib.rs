//! `plain`: a plugin bound straight to world `plugin` of the frozen
//! `sluice:plugin@0.1.0` (`wit/deps/`) with `wit-bindgen`, without the SDK
//! and without the optional `manifest` export: what every plugin built
//! before 0.2.0 looks like. The host's tests load it to check such plugins
//! keep working unchanged and get every event.
//!
//! Handles each event by echoing its payload. Config: none.

wit_bindgen::generate!({
    path: "../../wit/deps/sluice-plugin@0.1.0",
    world: "plugin",
});

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::types::{Event, HandlerError, Output};

struct Plain;

impl Guest for Plain {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn handle(event: Event) -> Result<Vec<Output>, HandlerError> {
        Ok(vec![Output {
            destination: None,
            key: event.key,
            payload: event.payload,
            headers: Vec::new(),
            reply: false,
        }])
    }

    fn handle_batch(events: Vec<Event>) -> Vec<Result<Vec<Output>, HandlerError>> {
        events.into_iter().map(Self::handle).collect()
    }
}

export!(Plain);
