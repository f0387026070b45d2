//! `json_enricher`: filters and enriches JSON-object events. The object keeps
//! its field order; the output has the event's key and headers, with
//! `content-type: application/json` replacing any incoming `content-type`.
//! A payload that is not a JSON object is rejected (dead-lettered).
//!
//! Config (all optional; any other key refuses the load):
//! - `require`: a field name; events without that field are dropped.
//! - `drop_if`: `field=value`; events whose `field` is the string `value` are
//!   dropped.
//! - `set.<field>`: adds `<field>` with this string value, or overwrites it.
//! - `event_id_field`: a field name that receives the event's id.
//! - `fail_on`: a field name; an event whose field is the string `retryable`,
//!   `reject` or `trap` fails that way (for testing error handling; the
//!   same in every language's twin, `json_enricher_{js,py,c,go}`).
//! - `accepts`: comma-separated event versions the plugin declares it
//!   handles (`order-created@1,order-created@2`, `refund@*`); the host
//!   dead-letters the rest as `unsupported`. Default `*`. The twins in
//!   the other languages take it too.
//!
//! Filters look at the incoming object, before any field is set.

use serde_json::{Map, Value};
use sluice_plugin::{Config, Event, HandlerError, Output, Plugin};

struct JsonEnricher {
    require: Option<String>,
    drop_if: Option<(String, String)>,
    set: Vec<(String, String)>,
    event_id_field: Option<String>,
    fail_on: Option<String>,
    accepts: Vec<String>,
}

impl Plugin for JsonEnricher {
    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(&["require", "drop_if", "set.*", "event_id_field", "fail_on", "accepts"])?;
        let drop_if = match config.get("drop_if") {
            None => None,
            Some(rule) => match rule.split_once('=') {
                Some((field, value)) if !field.is_empty() => {
                    Some((field.to_owned(), value.to_owned()))
                }
                _ => return Err(format!("`drop_if` must be `field=value`, got `{rule}`")),
            },
        };
        let set = config
            .with_prefix("set.")
            .map(|(field, value)| match field {
                "" => Err("`set.` needs a field name, as in `set.team`".to_owned()),
                _ => Ok((field.to_owned(), value.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(JsonEnricher {
            require: config.get("require").map(str::to_owned),
            drop_if,
            set,
            event_id_field: config.get("event_id_field").map(str::to_owned),
            fail_on: config.get("fail_on").map(str::to_owned),
            accepts: config
                .get("accepts")
                .unwrap_or("*")
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        })
    }

    fn accepts(&self) -> Vec<String> {
        self.accepts.clone()
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        let mut object: Map<String, Value> = serde_json::from_slice(&event.payload)
            .map_err(|e| HandlerError::reject(format!("payload is not a JSON object: {e}")))?;

        if let Some(field) = &self.fail_on {
            match object.get(field).and_then(Value::as_str) {
                Some("retryable") => {
                    return Err(HandlerError::retryable(format!(
                        "asked to fail (retryable) by field `{field}`"
                    )))
                }
                Some("reject") => {
                    return Err(HandlerError::reject(format!(
                        "asked to fail (reject) by field `{field}`"
                    )))
                }
                Some("trap") => panic!("asked to trap by field `{field}`"),
                _ => {}
            }
        }
        if self
            .require
            .as_ref()
            .is_some_and(|field| !object.contains_key(field))
        {
            return Ok(vec![]);
        }
        if let Some((field, value)) = &self.drop_if {
            if object.get(field).and_then(Value::as_str) == Some(value.as_str()) {
                return Ok(vec![]);
            }
        }
        for (field, value) in &self.set {
            object.insert(field.clone(), Value::String(value.clone()));
        }
        if let Some(field) = &self.event_id_field {
            object.insert(field.clone(), Value::String(event.id.clone()));
        }

        let mut output = Output::json(&object)?;
        output.key = event.key;
        output.headers = event
            .headers
            .into_iter()
            .filter(|h| h.key != "content-type")
            .collect();
        Ok(vec![output.with_header("content-type", "application/json")])
    }
}

sluice_plugin::export!(JsonEnricher);
