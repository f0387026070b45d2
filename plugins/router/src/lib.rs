//! `router`: picks each event's destination from a field of its JSON-object
//! payload. The payload, key and headers pass through unchanged, plus a
//! `routed-by: router` header. A payload that is not a JSON object is
//! rejected (dead-lettered).
//!
//! Config (any other key refuses the load):
//! - `field` (default `type`): the field to route on. String values match as
//!   they are, numbers and booleans by their JSON text (`42`, `true`).
//! - `route.<value>`: the destination for events whose field equals `<value>`.
//! - `default` (optional): the destination for every other event (a missing
//!   field included); without it they go to the pipeline's default route.
//! - `copy_to` (optional): a destination that also receives a copy of every
//!   event (fan-out), after the routed output.

use std::collections::HashMap;

use serde_json::{Map, Value};
use sluice_plugin::{Config, Event, HandlerError, Output, Plugin};

struct Router {
    field: String,
    routes: HashMap<String, String>,
    default: Option<String>,
    copy_to: Option<String>,
}

impl Plugin for Router {
    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(&["field", "route.*", "default", "copy_to"])?;
        Ok(Router {
            field: config.get("field").unwrap_or("type").to_owned(),
            routes: config
                .with_prefix("route.")
                .map(|(v, d)| (v.to_owned(), d.to_owned()))
                .collect(),
            default: config.get("default").map(str::to_owned),
            copy_to: config.get("copy_to").map(str::to_owned),
        })
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        let object: Map<String, Value> = serde_json::from_slice(&event.payload)
            .map_err(|e| HandlerError::reject(format!("payload is not a JSON object: {e}")))?;
        let value = match object.get(&self.field) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
            _ => None,
        };
        let destination = value
            .and_then(|v| self.routes.get(&v))
            .or(self.default.as_ref())
            .cloned();

        let mut routed = Output::from(event).with_header("routed-by", "router");
        routed.destination = destination;
        let copy = self.copy_to.as_ref().map(|to| Output {
            destination: Some(to.clone()),
            ..routed.clone()
        });
        Ok([Some(routed), copy].into_iter().flatten().collect())
    }
}

sluice_plugin::export!(Router);
