//! NestJS interoperability: a real NestJS client app (`tests/nestjs/
//! client.mjs`, @nestjs/microservices from npm, a `ClientProxy` on the NATS
//! transport) calls pipelines with `codec = "nestjs"` whose handler is the
//! `users` WASM plugin, through `examples/nestjs/sluice.toml` as shipped.
//! A plain async-nats client then pins the exact bytes on the wire.
//!
//! Needs `scripts/nestjs-client.sh install` (node and the npm packages;
//! `./dev test` runs it) and `scripts/nats-server.sh install`.

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod fixture;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use common::*;
use fixture::*;

const WITHIN: Duration = Duration::from_secs(60);

/// The subjects the example's pipelines subscribe to (NestJS publishes to
/// the pattern; an object pattern as JSON with sorted keys).
const SUBJECTS: [&str; 3] = ["get-user", r#"{"cmd":"get-user"}"#, "user-created"];

/// The folder `scripts/nestjs-client.sh install` prepared: node_modules and
/// `client.mjs`.
fn nestjs_client() -> Result<PathBuf> {
    let dir = root().join(".cache/nestjs-client");
    if !dir.join("node_modules/.complete").is_file() || !dir.join("client.mjs").is_file() {
        bail!("the NestJS client is not installed at {}: run `bash scripts/nestjs-client.sh install` (npm ci, once)", dir.display());
    }
    // A stale copy of the app would test old code.
    let shipped = std::fs::read(root().join("tests/nestjs/client.mjs"))?;
    if std::fs::read(dir.join("client.mjs"))? != shipped {
        bail!("{} is older than tests/nestjs/client.mjs: run `bash scripts/nestjs-client.sh install`", dir.display());
    }
    Ok(dir)
}

/// `examples/nestjs` copied to a scratch folder (so its output files land
/// there) with the `users` plugin where the example expects it, running
/// against `server`, subscribed to every subject.
fn start_example(server: &NatsServer) -> Result<(Scratch, Running)> {
    let scratch = Scratch::new()?;
    scratch.write("examples/nestjs/sluice.toml", std::fs::read(root().join("examples/nestjs/sluice.toml"))?)?;
    scratch.write("plugins/target/wasm32-wasip2/release/users.wasm", std::fs::read(plugin("users"))?)?;
    let mut command = scratch.sluice(&["run", "examples/nestjs/sluice.toml"]);
    command.env("NATS_URL", server.url());
    let mut host = Running::spawn(command)?;
    host.wait_until("sluice to subscribe to every pattern", WITHIN, || SUBJECTS.iter().all(|s| server.subscribers(s).unwrap_or(0) == 1))?;
    Ok((scratch, host))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nestjs_client_proxy_gets_replies_errors_and_emits_events_unchanged() -> Result<()> {
    let client_dir = nestjs_client()?;
    let server = NatsServer::start()?;
    let (scratch, mut host) = start_example(&server)?;

    let mut node = Command::new("node");
    node.arg("client.mjs").arg(server.url()).current_dir(&client_dir);
    let finished = Running::spawn(node)?.wait(RUN_TIMEOUT)?;
    if !finished.status.success() {
        bail!("the NestJS client failed ({})\n--- stdout\n{}\n--- stderr\n{}", finished.status, finished.stdout, finished.stderr);
    }
    // NestJS logs to stdout too; the results are the last line.
    let last = finished.stdout.lines().last().unwrap_or_default();
    let results: Value = serde_json::from_str(last)
        .with_context(|| format!("the client's output is not JSON:\n{}\n--- stderr\n{}", finished.stdout, finished.stderr))?;
    assert_eq!(results.get("failed"), None, "{results}");
    assert_eq!(results["user"], json!({"id": 42, "name": "Ada Lovelace"}), "send('get-user') resolves with the plugin's reply");
    assert_eq!(results["objectPattern"], json!({"id": 7, "name": "Grace Hopper"}), "an object pattern works too");
    // A rejected call rejects the client's promise with NestJS's error shape.
    let rejected = &results["missing"]["rejected"];
    assert_eq!(rejected["status"], "error", "{results}");
    assert_eq!(rejected["message"], "user 99 not found", "{results}");
    assert_eq!(rejected["reason"], "rejected", "{results}");
    assert_eq!(results["emitted"], true);

    // The emitted event reached the plugin, which saw the packet's data.
    host.wait_until("the emitted event's output", WITHIN, || scratch.count_lines("examples/nestjs/out/user-events.jsonl") == 1)?;
    let outputs = scratch.read_jsonl("examples/nestjs/out/user-events.jsonl")?;
    let payload: Value = serde_json::from_str(outputs[0]["payload"].as_str().context("a text payload")?)?;
    assert_eq!(payload, json!({"event": "user-created", "user": {"id": 43, "name": "Alan Turing"}}));

    // The failed call is dead-lettered as the plugin saw it: the data, with
    // the pattern and the call's id in headers.
    let dead = scratch.read_jsonl("examples/nestjs/out/get-user.dead-letter.jsonl")?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["payload"], r#"{"id":99}"#);
    assert_eq!(header(&dead[0], "nestjs-pattern"), Some("get-user"));
    assert!(header(&dead[0], "nestjs-id").is_some_and(|id| !id.is_empty()), "{}", dead[0]);
    assert_eq!(header(&dead[0], "sluice-dlq-reason"), Some("rejected"));

    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// The exact bytes a NestJS microservice would send, checked from a plain
/// NATS client: a response, an error, an undecodable request and an
/// external (non-NestJS) message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nestjs_wire_format_byte_for_byte() -> Result<()> {
    let server = NatsServer::start()?;
    let (_scratch, host) = start_example(&server)?;
    let client = async_nats::ConnectOptions::new().request_timeout(Some(Duration::from_secs(10))).connect(server.url()).await?;
    let ask = async |payload: &str| -> Result<String> {
        let reply = client.request("get-user", payload.to_owned().into()).await?;
        Ok(String::from_utf8_lossy(&reply.payload).into_owned())
    };

    assert_eq!(
        ask(r#"{"pattern":"get-user","data":{"id":42},"id":"call-1"}"#).await?,
        r#"{"response":{"id":42,"name":"Ada Lovelace"},"isDisposed":true,"id":"call-1"}"#
    );
    let error: Value = serde_json::from_str(&ask(r#"{"pattern":"get-user","data":{"id":5},"id":"call-2"}"#).await?)?;
    assert_eq!(error["id"], "call-2");
    assert_eq!(error["isDisposed"], true);
    assert_eq!(error["err"]["status"], "error");
    assert_eq!(error["err"]["message"], "user 5 not found");
    assert_eq!(error["err"]["code"], 400);
    assert_eq!(error.get("response"), None);

    let undecodable: Value = serde_json::from_str(&ask("not json").await?)?;
    assert_eq!(undecodable["err"]["reason"], "undecodable");
    assert!(undecodable["err"]["message"].as_str().is_some_and(|m| m.contains("not a NestJS packet")), "{undecodable}");

    // A JSON message that is not a packet is all data, the subject its
    // pattern (as a NestJS server reads it); the reply has no id to carry.
    assert_eq!(ask(r#"{"id":7}"#).await?, r#"{"response":{"id":7,"name":"Grace Hopper"},"isDisposed":true}"#);

    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}
