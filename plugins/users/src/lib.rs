//! `users`: a tiny user service, the handler behind the NestJS
//! interoperability example and test (`codec = "nestjs"`). It dispatches on
//! the message pattern, as a NestJS controller's `@MessagePattern` and
//! `@EventPattern` handlers do: the `nestjs-pattern` header the codec sets,
//! or the subject (the event's source) without the codec.
//!
//! | pattern | payload (the packet's `data`) | result |
//! |---|---|---|
//! | `get-user` or `{"cmd":"get-user"}` | `{"id": <n>}` | a reply: the user, e.g. `{"id":42,"name":"Ada Lovelace"}`; an unknown id is rejected with `user <n> not found` |
//! | `user-created` | any JSON value | one output (not a reply): `{"event":"user-created","user":<data>}` |
//! | anything else | | rejected: `no handler for pattern <pattern>` |
//!
//! Users: 42 Ada Lovelace, 7 Grace Hopper.

use serde_json::{json, Value};
use sluice_plugin::{Config, Event, HandlerError, Output, Plugin};

struct Users;

impl Plugin for Users {
    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(&[])?;
        Ok(Users)
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        let pattern = event
            .header_str("nestjs-pattern")
            .map(str::to_owned)
            .unwrap_or_else(|| event.source.clone());
        match pattern.as_str() {
            "get-user" | r#"{"cmd":"get-user"}"# => {
                let query: Value = event.json()?;
                let id = query["id"]
                    .as_u64()
                    .ok_or_else(|| HandlerError::reject("get-user needs {\"id\": <number>}"))?;
                let name = match id {
                    42 => "Ada Lovelace",
                    7 => "Grace Hopper",
                    _ => return Err(HandlerError::reject(format!("user {id} not found"))),
                };
                let mut reply = Output::json(&json!({ "id": id, "name": name }))?;
                reply.reply = true;
                Ok(vec![reply])
            }
            "user-created" => {
                let user: Value = event.json()?;
                Ok(vec![Output::json(&json!({ "event": "user-created", "user": user }))?])
            }
            other => Err(HandlerError::reject(format!("no handler for pattern {other}"))),
        }
    }
}

sluice_plugin::export!(Users);
