//! `ask`: asks another service about each event (`sluice:plugin/client`)
//! and outputs its answer. The example of a plugin that calls a service,
//! and what the service-call tests drive.
//!
//! For each event, the payload is sent as a request to the `request`
//! destination (when configured) and the answer's payload becomes the one
//! output; with `emit` configured, the payload is also emitted there (an
//! output of the event: published only if the event succeeds). Without
//! `request`, the event's payload is the output.
//!
//! Errors: a service error rejects the event with the service's message
//! (it will answer the same again); a timeout, no responders or an
//! unreachable broker is retryable.
//!
//! Payload rules, to test what failed attempts do (each applies after the
//! calls were made):
//! - `...:retry-once`: a retryable error on the first attempt;
//! - `...:reject`: rejected (dead-lettered).
//!
//! Config: `request` (optional): the destination to ask; `emit`
//! (optional): the destination to emit to; `timeout_ms` (optional): how
//! long to wait for an answer (default: the destination's `timeout`).

use std::time::Duration;

use sluice_plugin::client::{self, CallError};
use sluice_plugin::{Config, Event, HandlerError, Output, Plugin};

struct Ask {
    request: Option<String>,
    emit: Option<String>,
    timeout: Option<Duration>,
}

impl Plugin for Ask {
    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(&["request", "emit", "timeout_ms"])?;
        let timeout = match config.get("timeout_ms") {
            Some(ms) => Some(Duration::from_millis(ms.parse().map_err(|e| format!("timeout_ms: {e}"))?)),
            None => None,
        };
        Ok(Ask { request: config.get("request").map(str::to_owned), emit: config.get("emit").map(str::to_owned), timeout })
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        if let Some(destination) = &self.emit {
            client::emit(destination, &event.payload)?;
        }
        let payload = match &self.request {
            Some(destination) => {
                let mut request = client::request(destination, &event.payload);
                if let Some(timeout) = self.timeout {
                    request = request.timeout(timeout);
                }
                match request.send() {
                    Ok(reply) => reply.payload,
                    Err(err @ CallError::Service(_)) => return Err(HandlerError::reject(client::describe(&err))),
                    Err(err) => return Err(err.into()),
                }
            }
            None => event.payload.clone(),
        };
        let text = String::from_utf8_lossy(&event.payload);
        if text.ends_with(":retry-once") && event.attempt == 1 {
            return Err(HandlerError::retryable("first attempt fails after its calls"));
        }
        if text.ends_with(":reject") {
            return Err(HandlerError::reject("rejected after its calls"));
        }
        Ok(vec![Output::new(payload)])
    }
}

sluice_plugin::export!(Ask);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin::client::Reply;

    fn event(payload: &str, attempt: u32) -> Event {
        Event { id: "e".into(), source: "test".into(), key: None, payload: payload.as_bytes().to_vec(), headers: vec![], timestamp_ms: 0, attempt, reply_to: None }
    }

    #[test]
    fn outputs_the_answer_and_emits() -> Result<(), HandlerError> {
        client::respond_with(|destination, payload| Ok(Reply { payload: [destination.as_bytes(), b":", payload].concat(), headers: vec![] }));
        let config = Config::from(vec![("request".into(), "inventory".into()), ("emit".into(), "audit".into())]);
        let mut ask = Ask::init(config).map_err(HandlerError::reject)?;
        let out = ask.handle(event("sku-1", 1))?;
        assert_eq!(out[0].payload, b"inventory:sku-1");
        assert_eq!(client::take_emitted(), vec![("audit".to_owned(), b"sku-1".to_vec())]);
        Ok(())
    }
}
