//! `uppercase`: ASCII-uppercases the payload, keeping key and headers; bytes
//! outside ASCII pass through untouched, so any payload is accepted.
//!
//! Config:
//! - `header` (optional): name of a header to add with the value `uppercase`,
//!   marking the events this plugin touched.

use sluice_plugin::{Config, Event, HandlerError, Output, Plugin};

struct Uppercase {
    header: Option<String>,
}

impl Plugin for Uppercase {
    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(&["header"])?;
        Ok(Uppercase {
            header: config.get("header").map(str::to_owned),
        })
    }

    fn handle(&mut self, mut event: Event) -> Result<Vec<Output>, HandlerError> {
        event.payload.make_ascii_uppercase();
        let mut output = Output::from(event);
        if let Some(name) = &self.header {
            output = output.with_header(name.as_str(), "uppercase");
        }
        Ok(vec![output])
    }
}

sluice_plugin::export!(Uppercase);
