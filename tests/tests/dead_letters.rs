//! The admin API's dead letters (`GET /pipelines/{name}/dead-letters`,
//! `POST …/dead-letters/replay`) against a real host: dead letters written
//! by a pipeline to a file and to a JetStream stream are listed newest
//! first with their reasons, previews and redacted credentials, filtered
//! and limited; a dry run changes nothing; a replay after a fixed plugin is
//! uploaded sends them to the pipeline's source and they come out.

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod fixture;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use common::*;
use fixture::*;

const WITHIN: Duration = Duration::from_secs(60);
const TOKEN: &str = "dlq-admin-token";

/// Where the test pipeline's dead letters go.
#[derive(Clone, Copy)]
enum Dlq {
    File,
    JetStream,
}

fn config(url: &str, dlq: Dlq) -> String {
    let dead_letter = match dlq {
        Dlq::File => r#"{ kind = "file", path = "dlq.jsonl" }"#.to_owned(),
        Dlq::JetStream => format!(r#"{{ kind = "jetstream", url = "{url}", subject = "dlq.orders" }}"#),
    };
    format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"
token = "{TOKEN}"

[pipelines.orders]
source = {{ kind = "jetstream", url = "{url}", stream = "IN", consumer = "sluice" }}
sink = {{ kind = "jetstream", url = "{url}", subject = "out.orders" }}
dead_letter = {dead_letter}
plugin = {{ path = {plugin} }}
policy = {{ max_attempts = 2, backoff = {{ initial = "10ms" }} }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("chaos")),
    )
}

fn get_json(port: u16, path: &str) -> Result<Value> {
    let (status, body) = http_request(port, "GET", path, None, b"")?;
    ensure!(status == 200, "GET {path} answered {status}: {body}");
    serde_json::from_str(&body).with_context(|| format!("GET {path}: {body}"))
}

fn replay(port: u16, body: &Value) -> Result<Value> {
    let (status, text) = http_request(port, "POST", "/pipelines/orders/dead-letters/replay", Some(TOKEN), body.to_string().as_bytes())?;
    ensure!(status == 200, "replay answered {status}: {text}");
    Ok(serde_json::from_str(&text)?)
}

fn field<'v>(value: &'v Value, name: &str) -> Vec<&'v str> {
    value.as_array().into_iter().flatten().filter_map(|v| v[name].as_str()).collect()
}

fn header_text<'v>(record: &'v Value, name: &str) -> Option<&'v str> {
    record["headers"].as_array()?.iter().find(|h| h[0] == name).and_then(|h| h[1]["text"].as_str())
}

async fn scenario(dlq: Dlq) -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    create_stream(&client, "IN", &["in.orders"]).await?;
    create_stream(&client, "OUT", &["out.orders"]).await?;
    if let Dlq::JetStream = dlq {
        create_stream(&client, "DLQ", &["dlq.orders"]).await?;
    }
    scratch.write("sluice.toml", config(&server.url(), dlq))?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    let js = async_nats::jetstream::new(client.clone());
    let long = format!("reject:{}", "x".repeat(2000));
    for payload in ["ok:a", "reject:r1", "retry:9", long.as_str(), "reject:r2"] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("trace", format!("t-{}", &payload[..payload.len().min(9)]).as_str());
        headers.insert("Authorization", "Bearer hunter2");
        js.publish_with_headers("in.orders", headers, payload.to_owned().into()).await?.await?;
    }
    let listed = wait_async("four dead letters listed", WITHIN, async || {
        // 404 until the pipeline has started.
        let (status, body) = http_request(port, "GET", "/pipelines/orders/dead-letters", None, b"")?;
        let listed: Value = if status == 200 { serde_json::from_str(&body)? } else { Value::Null };
        Ok((listed["dead_letters"].as_array().map(Vec::len) == Some(4)).then_some(listed))
    })
    .await?;
    let records = &listed["dead_letters"];
    // Newest first, with their reasons, messages and attempts.
    assert_eq!(field(records, "reason"), ["rejected", "rejected", "retries-exhausted", "rejected"], "{listed:#}");
    assert_eq!(field(records, "event_id").len(), 4);
    assert_eq!(records[0]["message"], "r2");
    assert_eq!(records[3]["message"], "r1");
    assert_eq!(records[2]["attempts"], 2);
    assert_eq!(records[0]["plugin_digest"], sha256_hex(&plugin("chaos"))?);
    assert_eq!(records[0]["payload"], json!({ "text": "reject:r2", "bytes": 9 }));
    // A long payload: cut at 1 KiB, with its full size.
    assert_eq!(records[1]["payload"]["bytes"], 2007);
    assert_eq!(records[1]["payload"]["truncated"], true);
    assert_eq!(records[1]["payload"]["text"].as_str().map(str::len), Some(1024));
    // Headers: the event's own, the credential redacted.
    assert_eq!(header_text(&records[0], "trace"), Some("t-reject:r2"));
    assert_eq!(header_text(&records[0], "Authorization"), Some("<redacted>"));
    let raw = http_request(port, "GET", "/pipelines/orders/dead-letters", None, b"")?.1;
    ensure!(!raw.contains("hunter2"), "a credential shown: {raw}");
    ensure!(!raw.contains("sluice-dlq-"), "dead-letter headers are fields, not headers: {raw}");

    // Limit and filters.
    let two = get_json(port, "/pipelines/orders/dead-letters?limit=2")?;
    assert_eq!(field(&two["dead_letters"], "message"), ["r2", records[1]["message"].as_str().unwrap_or_default()]);
    assert_eq!(two["more"], true);
    let retried = get_json(port, "/pipelines/orders/dead-letters?reason=retries-exhausted")?;
    assert_eq!(field(&retried["dead_letters"], "reason"), ["retries-exhausted"]);
    let future = get_json(port, "/pipelines/orders/dead-letters?since=2999-01-01T00:00:00Z")?;
    assert_eq!(future["dead_letters"], json!([]));
    let past = get_json(port, "/pipelines/orders/dead-letters?since=1h&reason=rejected,retries-exhausted")?;
    assert_eq!(past["dead_letters"].as_array().map(Vec::len), Some(4));
    for bad in ["?limit=0", "?limit=1001", "?since=yesterday"] {
        let (status, body) = http_request(port, "GET", &format!("/pipelines/orders/dead-letters{bad}"), None, b"")?;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = http_request(port, "GET", "/pipelines/nope/dead-letters", None, b"")?;
    assert_eq!(status, 404);

    // Replay needs the token.
    let r1 = records[3]["id"].as_str().context("an id")?.to_owned();
    let r2 = records[0]["id"].as_str().context("an id")?.to_owned();
    let body = json!({ "ids": [r1, r2], "dry_run": true });
    let (status, _) = http_request(port, "POST", "/pipelines/orders/dead-letters/replay", None, body.to_string().as_bytes())?;
    assert_eq!(status, 401);

    let (status, text) =
        http_request(port, "POST", "/pipelines/orders/dead-letters/replay", Some(TOKEN), br#"{"ids":["x:y"],"dry_run":true}"#)?;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("is not a record id"), "{text}");

    // A dry run says what would go where, and sends nothing.
    let before = stream_len(&client, "IN").await?;
    let dry = replay(port, &body)?;
    assert_eq!(field(&dry["records"], "status"), ["would-replay", "would-replay"], "{dry:#}");
    assert_eq!(field(&dry["records"], "to"), ["jetstream:in.orders", "jetstream:in.orders"]);
    assert_eq!(dry["records"][0]["payload"]["text"], "reject:r1");
    assert_eq!(stream_len(&client, "IN").await?, before, "a dry run publishes nothing");
    let again = get_json(port, "/pipelines/orders/dead-letters")?;
    assert_eq!(again["dead_letters"].as_array().map(Vec::len), Some(4), "the dead letters stay");
    // By filter, too.
    let by_filter = replay(port, &json!({ "filter": { "reason": "rejected" }, "dry_run": true }))?;
    assert_eq!(by_filter["would_replay"], 3, "{by_filter:#}");

    // Fixed plugin, then the replay: the two come out.
    let fixed = std::fs::read(plugin("passthrough"))?;
    let (status, text) = http_request(port, "PUT", "/pipelines/orders/plugin", Some(TOKEN), &fixed)?;
    ensure!(status == 200, "upload answered {status}: {text}");
    let done = replay(port, &json!({ "ids": [r1, r2], "dry_run": false }))?;
    assert_eq!(field(&done["records"], "status"), ["replayed", "replayed"], "{done:#}");
    assert_eq!(done["replayed"], 2);
    let out = wait_async("the replayed events handled", WITHIN, async || {
        let out = read_stream(&client, "OUT").await?;
        Ok((out.len() >= 3).then_some(out))
    })
    .await?;
    let payloads: Vec<&str> = out.iter().map(|m| m.payload.as_str()).collect();
    assert_eq!(payloads, ["a", "reject:r1", "reject:r2"]);
    assert_eq!(out[1].header("trace"), Some("t-reject:r1"), "the event's own headers restored");
    assert_eq!(stream_len(&client, "IN").await?, before + 2);
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_dead_letters_are_listed_and_replayed_through_the_admin_api() -> Result<()> {
    scenario(Dlq::File).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_dead_letters_are_listed_and_replayed_through_the_admin_api() -> Result<()> {
    scenario(Dlq::JetStream).await
}

#[test]
fn a_destination_that_keeps_nothing_is_said_so() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("ok:a")])?;
    let config = format!(
        "{}\n[admin]\nlisten = \"{ANY_PORT}\"\n\n[pipelines.orders]\nsource = {{ kind = \"file\", path = \"events.jsonl\", follow = true }}\nsink = {{ kind = \"file\", path = \"out.jsonl\" }}\ndead_letter = {{ kind = \"stdout\" }}\nplugin = {{ path = {} }}\n",
        runtime_table(),
        toml_path(&plugin("chaos"))
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let port = host.admin_port()?;
    let (status, body) = poll_until("the pipeline registered", WITHIN, || {
        let (status, body) = http_request(port, "GET", "/pipelines/orders/dead-letters", None, b"")?;
        Ok((status != 404).then_some((status, body)))
    })?;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("dead letters go to stdout: they cannot be read back"), "{body}");
    let (status, body) = http_request(port, "POST", "/pipelines/orders/dead-letters/replay", None, b"{\"ids\":[\"0\"]}")?;
    assert_eq!(status, 403, "no token configured: replay is off: {body}");
    host.terminate()?;
    Ok(())
}
