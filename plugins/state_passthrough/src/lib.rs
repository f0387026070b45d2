//! `state_passthrough`: the passthrough with one state `get` and one `set`
//! per event: it reads the event key's value, then stores the event's
//! payload under the key, and publishes the event unchanged. What the state
//! benchmarks run (`host/benches/state.rs`, against `passthrough` in the
//! same run), so it does nothing else.
//!
//! Needs the `state` capability. Config: none; any keys are ignored.

use sluice_plugin::{state, Config, Event, HandlerError, Output, Plugin};

struct StatePassthrough;

impl Plugin for StatePassthrough {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(StatePassthrough)
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        let key = String::from_utf8_lossy(event.key.as_deref().unwrap_or_default()).into_owned();
        std::hint::black_box(state::get(&key)?);
        state::set(&key, &event.payload)?;
        Ok(vec![Output::from(event)])
    }
}

sluice_plugin::export!(StatePassthrough);
