//! `{{name}}`: forwards every event with a header `x-tag` (config `tag`,
//! default `{{name}}`); an empty payload is rejected.

use sluice_plugin::{Config, Event, HandlerError, Output, Plugin};

struct Tagger {
    tag: String,
}

impl Plugin for Tagger {
    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(&["tag"])?;
        let tag = config.get("tag").unwrap_or("{{name}}").to_owned();
        Ok(Tagger { tag })
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        if event.payload.is_empty() {
            return Err(HandlerError::reject("empty payload"));
        }
        Ok(vec![Output::from(event).with_header("x-tag", self.tag.as_str())])
    }
}

sluice_plugin::export!(Tagger);
