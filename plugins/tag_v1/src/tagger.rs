// The handler shared by `tag_v1` and `tag_v2`: each output is the event
// with its payload prefixed by the version's tag (`v1:` or `v2:`), so a test
// can tell which version handled which event. Any config is accepted.

use sluice_plugin::{Config, Event, HandlerError, Output, Plugin};

struct Tagger;

impl Plugin for Tagger {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Tagger)
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        let mut payload = format!("{TAG}:").into_bytes();
        payload.extend_from_slice(&event.payload);
        let mut output = Output::from(event);
        output.payload = payload;
        Ok(vec![output])
    }
}

sluice_plugin::export!(Tagger);
