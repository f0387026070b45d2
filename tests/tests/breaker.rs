//! The circuit breaker against a real broker: while it is open, events stay
//! in JetStream (not taken, not dead-lettered); a failed probe opens it
//! again; a good probe closes it and everything is delivered, in order.
//! The breaker's logic and timing are tested with paused time in
//! `host/src/dispatch/{breaker,tests}.rs`.

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod fixture;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use common::*;
use fixture::*;

const WITHIN: Duration = Duration::from_secs(60);
const LABELS: &str = r#"pipeline="orders",plugin="chaos""#;

fn breaker_view(port: u16) -> Result<Value> {
    let (status, body) = http_request(port, "GET", "/pipelines/orders", None, b"")?;
    ensure!(status == 200, "GET /pipelines/orders answered {status}: {body}");
    let view: Value = serde_json::from_str(&body)?;
    Ok(view["breaker"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_leaves_events_in_jetstream_until_a_probe_succeeds() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    for (stream, subject) in [("IN", "in.orders"), ("OUT", "out.orders"), ("DLQ", "dlq.orders")] {
        create_stream(&client, stream, &[subject]).await?;
    }
    let url = server.url();
    let config = format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"

[pipelines.orders]
source = {{ kind = "jetstream", url = "{url}", stream = "IN", consumer = "sluice" }}
sink = {{ kind = "jetstream", url = "{url}", subject = "out.orders" }}
dead_letter = {{ kind = "jetstream", url = "{url}", subject = "dlq.orders" }}
plugin = {{ path = {plugin} }}

[pipelines.orders.policy]
max_attempts = 10
batch_size = 1
backoff = {{ initial = "10ms", max = "10ms", jitter = 0.0 }}

[pipelines.orders.breaker]
failures = 3
window = "1m"
reset = "3s"
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("chaos")),
    );
    scratch.write("sluice.toml", config)?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || breaker_view(port).is_ok_and(|b| b["state"] == "closed"))?;

    // Attempts 1-3 of the first event fail: the breaker opens. Attempt 4
    // (the first probe) fails too; attempt 5 (the second) succeeds.
    let mut events = vec!["retry:4".to_owned()];
    events.extend((0..20).map(|i| format!("ok:{i}")));
    publish_all(&client, "in.orders", events).await?;

    host.wait_until("the breaker to open", WITHIN, || breaker_view(port).is_ok_and(|b| b["state"] == "open"))?;
    let m = metrics(port)?;
    assert_eq!(m.get(&format!("sluice_breaker_state{{{LABELS}}}")), Some(&1.0), "{m:#?}");
    let (pending, unacked) = consumer_backlog(&client, "IN", "sluice").await?.context("no consumer")?;
    ensure!(pending >= 15, "intake stopped: the events stay in the stream ({pending} pending, {unacked} delivered and held)");
    assert_eq!(stream_len(&client, "OUT").await?, 0);
    assert_eq!(stream_len(&client, "DLQ").await?, 0, "nothing is dead-lettered because the breaker is open");

    let deadline = Instant::now() + WITHIN;
    while stream_len(&client, "OUT").await? < 21 {
        ensure!(Instant::now() < deadline, "timed out waiting for the outputs; breaker {}", breaker_view(port)?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out: Vec<String> = read_stream(&client, "OUT").await?.into_iter().map(|m| m.payload).collect();
    let mut expected = vec!["recovered after 4 failures".to_owned()];
    expected.extend((0..20).map(|i| i.to_string()));
    assert_eq!(out, expected, "all delivered, in order, after the breaker closed");
    assert_eq!(stream_len(&client, "DLQ").await?, 0);

    let breaker = breaker_view(port)?;
    assert_eq!((breaker["state"].as_str(), breaker["opened"].as_i64()), (Some("closed"), Some(2)), "{breaker}");
    let m = metrics(port)?;
    assert_eq!(m.get(&format!("sluice_breaker_state{{{LABELS}}}")), Some(&0.0));
    assert_eq!(m.get(&format!("sluice_breaker_opened_total{{{LABELS}}}")), Some(&2.0));
    assert_eq!(consumer_backlog(&client, "IN", "sluice").await?, Some((0, 0)), "everything acknowledged");

    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    for line in [
        "circuit breaker open: the plugin failed 3 times",
        "circuit breaker open again: the probe failed",
        "circuit breaker closed: the probe succeeded",
    ] {
        ensure!(finished.stderr.contains(line), "the log says {line:?}:\n{}", finished.stderr);
    }
    Ok(())
}

/// `examples/breaker/sluice.toml` as shipped: opens, fails a probe, closes,
/// and prints every event once, in order, with nothing dead-lettered.
#[test]
fn the_breaker_example_runs_as_documented() -> Result<()> {
    let scratch = Scratch::new()?;
    for file in ["sluice.toml", "events.jsonl"] {
        scratch.write(&format!("examples/breaker/{file}"), std::fs::read(root().join("examples/breaker").join(file))?)?;
    }
    scratch.write("plugins/target/wasm32-wasip2/release/chaos.wasm", std::fs::read(plugin("chaos"))?)?;
    let finished = scratch.run(&["run", "examples/breaker/sluice.toml"])?;
    finished.ensure_success()?;
    assert_eq!(payloads(&parse_jsonl(&finished.stdout)?), ["recovered after 4 failures", "order 1", "order 2", "order 3"]);
    let opened = finished.stderr.matches("circuit breaker open").count();
    ensure!(opened == 2, "opened, then again after a failed probe ({opened} times):\n{}", finished.stderr);
    ensure!(finished.stderr.contains("circuit breaker closed: the probe succeeded"), "{}", finished.stderr);
    // The end-of-run summary names only the counters that moved.
    ensure!(finished.stderr.contains("pipeline finished") && !finished.stderr.contains("dead lettered"), "{}", finished.stderr);
    ensure!(
        !scratch.path("target/breaker-example/dead-letter.jsonl").exists()
            || scratch.count_lines("target/breaker-example/dead-letter.jsonl") == 0
    );
    Ok(())
}
