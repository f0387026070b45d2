//! Idempotency end to end: real duplicates through the real binary, from a
//! file and from JetStream. A repeat must be acknowledged without a plugin
//! call and without outputs; what did not finish must not be remembered.

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod fixture;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};

use common::*;
use fixture::*;

const WITHIN: Duration = Duration::from_secs(60);

/// A chaos event whose `Idempotency-Key` header (named `header`) is `key`.
fn keyed(payload: &str, header: &str, key: &str) -> Value {
    json!({ "payload": payload, "headers": { header: key } })
}

#[test]
fn file_repeats_are_skipped_and_dead_letters_are_not_remembered() -> Result<()> {
    let scratch = Scratch::new()?;
    let mut config = one_pipeline("orders", "chaos", "", "batch_size = 1\nmax_attempts = 1");
    config.push_str("\n[pipelines.orders.idempotency]\nkey = \"header:Idempotency-Key\"\nwindow = \"1h\"\ncapacity = 100\n");
    scratch.write("sluice.toml", config)?;
    scratch.write_events(
        "events.jsonl",
        &[
            keyed("ok:a1", "Idempotency-Key", "a"),
            keyed("ok:b1", "Idempotency-Key", "b"),
            keyed("ok:a2", "Idempotency-Key", "a"),        // repeat of a
            keyed("reject:bad d", "Idempotency-Key", "d"), // dead-lettered: not remembered
            keyed("ok:d2", "Idempotency-Key", "d"),        // so handled
            event("ok:n1"),                                // no key: handled
            event("ok:n2"),
            keyed("ok:B", "Idempotency-Key", "B"),  // keys are case-sensitive
            keyed("ok:b2", "idempotency-key", "b"), // header names are not: repeat
        ],
    )?;
    let finished = scratch.run(&["run", "sluice.toml"])?;
    finished.ensure_success()?;
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), ["a1", "b1", "d2", "n1", "n2", "B"]);
    let dead = scratch.read_jsonl("dlq.jsonl")?;
    assert_eq!(payloads(&dead), ["reject:bad d"]);
    ensure!(finished.stderr.contains("2 duplicates"), "two repeats counted:\n{}", finished.stderr);
    // Every line, repeats included, was acknowledged: a checkpointed rerun
    // would start after them (the run ended cleanly with all 9 acked).
    ensure!(finished.stderr.contains("9 acked"), "{}", finished.stderr);
    Ok(())
}

#[test]
fn repeats_in_one_batch_and_json_keys() -> Result<()> {
    let scratch = Scratch::new()?;
    let mut config = one_pipeline("orders", "chaos", "", "");
    config.push_str("\n[pipelines.orders.idempotency]\nkey = \"json:/order/id\"\n");
    scratch.write("sluice.toml", config)?;
    // chaos passes a payload it has no rule for through unchanged.
    let order = |id: Value, n: u32| json!({ "payload": { "order": { "id": id }, "n": n } });
    let events: Vec<Value> = vec![
        order(json!(1), 1),
        order(json!(1), 2),
        order(json!("1"), 3),
        order(json!(2), 4),
        order(json!(null), 5),
        order(json!(null), 6),
    ];
    scratch.write_events("events.jsonl", &events)?;
    let finished = scratch.run(&["run", "sluice.toml"])?;
    finished.ensure_success()?;
    let ns: Vec<u64> = scratch
        .read_jsonl("out.jsonl")?
        .iter()
        .map(|r| serde_json::from_str::<Value>(r["payload"].as_str().unwrap_or("{}")).map(|p| p["n"].as_u64().unwrap_or(0)))
        .collect::<Result<_, _>>()?;
    assert_eq!(ns, [1, 4, 5, 6], "1 and \"1\" are one key; null is no key");
    ensure!(finished.stderr.contains("2 duplicates"), "{}", finished.stderr);
    Ok(())
}

/// `examples/idempotency/sluice.toml` as shipped prints each order once.
#[test]
fn the_idempotency_example_runs_as_documented() -> Result<()> {
    let scratch = Scratch::new()?;
    for file in ["sluice.toml", "events.jsonl"] {
        scratch.write(&format!("examples/idempotency/{file}"), std::fs::read(root().join("examples/idempotency").join(file))?)?;
    }
    scratch.write("plugins/target/wasm32-wasip2/release/json_enricher.wasm", std::fs::read(plugin("json_enricher"))?)?;
    let finished = scratch.run(&["run", "examples/idempotency/sluice.toml"])?;
    finished.ensure_success()?;
    let orders: Vec<Value> = parse_jsonl(&finished.stdout)?
        .iter()
        .map(|o| {
            serde_json::from_str::<Value>(o["payload"].as_str().unwrap_or("")).map(|p| json!([p["order"]["id"], p["total"], p["checked"]]))
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(orders, [json!([1, 30, "yes"]), json!([2, 12.5, "yes"]), json!([3, 7, "yes"])], "each order once, the first copy");
    ensure!(finished.stderr.contains("3 duplicates"), "{}", finished.stderr);
    Ok(())
}

/// JetStream: a message published again after the first was handled and
/// acknowledged is acknowledged too, with no plugin call and no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_repeats_are_acknowledged_without_outputs() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    create_stream(&client, "IN", &["in.orders"]).await?;
    create_stream(&client, "OUT", &["out.orders"]).await?;
    let url = server.url();
    let config = format!(
        r#"{runtime}
[pipelines.orders]
source = {{ kind = "jetstream", url = "{url}", stream = "IN", consumer = "sluice" }}
sink = {{ kind = "jetstream", url = "{url}", subject = "out.orders" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {plugin} }}
idempotency = {{ key = "header:Idempotency-Key" }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("chaos")),
    );
    scratch.write("sluice.toml", config)?;
    let host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let js = async_nats::jetstream::new(client.clone());
    let publish = async |payload: &str, key: &str| -> Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Idempotency-Key", key);
        js.publish_with_headers("in.orders", headers, payload.to_owned().into()).await?.await?;
        Ok(())
    };
    let wait = async |what: &str, outputs: u64| -> Result<()> {
        let deadline = Instant::now() + WITHIN;
        loop {
            let backlog = consumer_backlog(&client, "IN", "sluice").await?;
            if backlog == Some((0, 0)) && stream_len(&client, "OUT").await? == outputs {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "timed out waiting for {what} (backlog {backlog:?})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    publish("ok:first", "order-1").await?;
    publish("ok:other", "order-2").await?;
    wait("the first two to be handled", 2).await?;
    // The client retries after a lost acknowledgement: the same key again.
    publish("ok:first, again", "order-1").await?;
    publish("ok:first, once more", "order-1").await?;
    publish("ok:third", "order-3").await?;
    wait("the repeats to be acknowledged and the third handled", 3).await?;
    let out: Vec<String> = read_stream(&client, "OUT").await?.into_iter().map(|m| m.payload).collect();
    assert_eq!(out, ["first", "other", "third"]);
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    ensure!(finished.stderr.contains("2 duplicates"), "{}", finished.stderr);
    ensure!(finished.stderr.contains("5 received") && finished.stderr.contains("3 outputs"), "{}", finished.stderr);
    Ok(())
}
