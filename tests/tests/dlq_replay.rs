//! `sluice dlq replay` end to end: dead letters written by a real pipeline
//! (a file, a JetStream stream) are sent back to their source, filtered,
//! dry-run, and handled again by a fixed pipeline. (Kafka topic → topic is
//! in `kafka.rs`, beside its broker.)

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod fixture;

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::{json, Value};

use common::*;
use fixture::*;

const WITHIN: Duration = Duration::from_secs(60);

/// `events.jsonl` → `plugin` → `out.jsonl`, dead letters to `dlq.jsonl`,
/// with a checkpoint so a second run handles only appended lines.
fn file_pipeline(plugin_name: &str) -> String {
    format!(
        r#"{runtime}
[pipelines.orders]
source = {{ kind = "file", path = "events.jsonl", checkpoint = "orders.checkpoint" }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {plugin} }}
policy = {{ max_attempts = 2, backoff = {{ initial = "10ms" }} }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin(plugin_name)),
    )
}

#[test]
fn file_dead_letters_go_back_to_their_file_filtered_and_dry_run_first() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("broken.toml", file_pipeline("chaos"))?;
    scratch.write("fixed.toml", file_pipeline("passthrough"))?;
    scratch.write_events(
        "events.jsonl",
        &[
            event("ok:a"),
            json!({ "key": "k1", "payload": "reject:r1", "headers": { "trace": "t-1" } }),
            event("retry:9"),
            event("ok:b"),
            event("reject:r2"),
        ],
    )?;
    scratch.run(&["run", "broken.toml"])?.ensure_success()?;
    ensure!(scratch.read_jsonl("dlq.jsonl")?.len() == 3, "three dead letters: {:?}", scratch.read("dlq.jsonl")?);
    let events_before = scratch.read("events.jsonl")?;

    // A dry run says what it would do and changes nothing.
    let dry = scratch.run(&["dlq", "replay", "--from", "file:dlq.jsonl", "--dry-run"])?;
    dry.ensure_success()?;
    assert!(
        dry.stdout.contains("would replay events.jsonl:2 (pipeline orders, rejected at ")
            && dry.stdout.contains(": r1) to file:events.jsonl"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("would replay events.jsonl:3 (pipeline orders, retries-exhausted"), "{}", dry.stdout);
    assert!(dry.stdout.contains("would replay 3 of 3 records (0 filtered out, 0 not dead-letter records)"), "{}", dry.stdout);
    assert_eq!(scratch.read("events.jsonl")?, events_before, "a dry run writes nothing");

    // Filters.
    let count = |args: &[&str]| -> Result<String> {
        let mut all = vec!["dlq", "replay", "--from", "file:dlq.jsonl", "--dry-run"];
        all.extend_from_slice(args);
        let finished = scratch.run(&all)?;
        finished.ensure_success()?;
        Ok(finished.stdout.lines().last().unwrap_or_default().to_owned())
    };
    assert_eq!(count(&["--reason", "rejected"])?, "would replay 2 of 3 records (1 filtered out, 0 not dead-letter records)");
    assert_eq!(
        count(&["--reason", "rejected", "--reason", "retries-exhausted"])?,
        "would replay 3 of 3 records (0 filtered out, 0 not dead-letter records)"
    );
    assert_eq!(count(&["--pipeline", "payments"])?, "would replay 0 of 3 records (3 filtered out, 0 not dead-letter records)");
    assert_eq!(count(&["--since", "1h"])?, "would replay 3 of 3 records (0 filtered out, 0 not dead-letter records)");
    assert_eq!(count(&["--until", "2000-01-01T00:00:00Z"])?, "would replay 0 of 3 records (3 filtered out, 0 not dead-letter records)");
    let bad = scratch.run(&["dlq", "replay", "--from", "file:dlq.jsonl", "--since", "yesterday"])?;
    bad.ensure_failure()?;
    assert!(bad.stderr.contains("neither a time"), "{}", bad.stderr);

    // The rejected ones go back to their file: the original key, payload and
    // headers, without the sluice-dlq-* headers.
    let replayed = scratch.run(&["dlq", "replay", "--from", "file:dlq.jsonl", "--reason", "rejected"])?;
    replayed.ensure_success()?;
    assert!(replayed.stdout.contains("replayed 2 of 3 records (1 filtered out"), "{}", replayed.stdout);
    let events = scratch.read_jsonl("events.jsonl")?;
    assert_eq!(events.len(), 7);
    assert_eq!(events[5], json!({ "key": "k1", "payload": "reject:r1", "headers": { "trace": "t-1" } }));
    assert_eq!(events[6], json!({ "payload": "reject:r2" }));

    // And one elsewhere, with --to.
    scratch
        .run(&["dlq", "replay", "--from", "file:dlq.jsonl", "--reason", "retries-exhausted", "--to", "file:retry.jsonl"])?
        .ensure_success()?;
    assert_eq!(scratch.read_jsonl("retry.jsonl")?, [json!({ "payload": "retry:9" })]);

    // The fixed pipeline (same source and checkpoint) handles only the
    // replayed lines.
    scratch.run(&["run", "fixed.toml"])?.ensure_success()?;
    let out = scratch.read_jsonl("out.jsonl")?;
    let fixed: Vec<&Value> = out.iter().skip(2).collect();
    assert_eq!(payloads(&out[..2]), ["a", "b"], "the broken run's outputs");
    assert_eq!(fixed.len(), 2, "{out:?}");
    assert_eq!(
        (fixed[0]["key"].as_str(), fixed[0]["payload"].as_str(), header(fixed[0], "trace")),
        (Some("k1"), Some("reject:r1"), Some("t-1"))
    );
    assert_eq!(fixed[1]["payload"], "reject:r2");
    Ok(())
}

#[test]
fn a_missing_file_or_a_bad_source_is_a_clear_error() -> Result<()> {
    let scratch = Scratch::new()?;
    let missing = scratch.run(&["dlq", "replay", "--from", "file:nope.jsonl"])?;
    missing.ensure_failure()?;
    assert!(missing.stderr.contains("cannot open dead-letter file nope.jsonl"), "{}", missing.stderr);
    // A record from a NATS subject, kept in a file: no file of that name
    // is created by default.
    scratch.write_events("dlq.jsonl", &[json!({ "payload": "x", "headers": { "sluice-dlq-reason": "rejected", "sluice-dlq-source": "orders.new", "sluice-dlq-event-id": "nats:1" } })])?;
    let subject = scratch.run(&["dlq", "replay", "--from", "file:dlq.jsonl"])?;
    subject.ensure_failure()?;
    assert!(subject.stderr.contains("comes from `orders.new`, which is not a file here"), "{}", subject.stderr);
    assert!(!scratch.path("orders.new").exists());
    let bad = scratch.run(&["dlq", "replay", "--from", "s3:bucket"])?;
    bad.ensure_failure()?;
    assert!(bad.stderr.contains("write file:PATH, jetstream:STREAM"), "{}", bad.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_dead_letters_go_back_to_their_subject_once() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    create_stream(&client, "IN", &["in.orders"]).await?;
    create_stream(&client, "OUT", &["out.orders"]).await?;
    create_stream(&client, "DLQ", &["dlq.orders"]).await?;
    let url = server.url();
    let config = format!(
        r#"{runtime}
[pipelines.orders]
source = {{ kind = "jetstream", url = "{url}", stream = "IN", consumer = "sluice" }}
sink = {{ kind = "jetstream", url = "{url}", subject = "out.orders" }}
dead_letter = {{ kind = "jetstream", url = "{url}", subject = "dlq.orders" }}
plugin = {{ path = {plugin} }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("chaos")),
    );
    scratch.write("sluice.toml", config)?;
    let host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let js = async_nats::jetstream::new(client.clone());
    for payload in ["ok:a", "reject:r1", "ok:b", "reject:r2"] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("trace", format!("t-{payload}").as_str());
        js.publish_with_headers("in.orders", headers, payload.into()).await?.await?;
    }
    let deadline = std::time::Instant::now() + WITHIN;
    while !(stream_len(&client, "DLQ").await? == 2 && consumer_backlog(&client, "IN", "sluice").await? == Some((0, 0))) {
        ensure!(std::time::Instant::now() < deadline, "timed out waiting for the dead letters");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    let replay = |extra: &[&str]| -> Result<Finished> {
        let mut args = vec!["dlq", "replay", "--from", "jetstream:DLQ", "--nats-url", url.as_str()];
        args.extend_from_slice(extra);
        let finished = scratch.run(&args)?;
        finished.ensure_success()?;
        Ok(finished)
    };
    let dry = replay(&["--dry-run"])?;
    assert!(dry.stdout.contains(": r1) to jetstream:in.orders"), "{}", dry.stdout);
    assert!(dry.stdout.contains("would replay 2 of 2 records"), "{}", dry.stdout);
    assert_eq!(stream_len(&client, "IN").await?, 4, "a dry run publishes nothing");
    assert_eq!(stream_len(&client, "DLQ").await?, 2, "reading the dead letters leaves them");

    let first = replay(&[])?;
    assert!(first.stdout.contains("replayed 2 of 2 records"), "{}", first.stdout);
    let input = read_stream(&client, "IN").await?;
    assert_eq!(input.len(), 6);
    for (message, original) in input[4..].iter().zip(["reject:r1", "reject:r2"]) {
        assert_eq!(message.payload, original);
        assert_eq!(message.header("trace"), Some(format!("t-{original}").as_str()), "original headers restored");
        assert!(message.headers.keys().all(|k| !k.starts_with("sluice-dlq-")), "{:?}", message.headers);
        assert!(message.header("Nats-Msg-Id").is_some_and(|id| id.starts_with("replay:IN:")), "{:?}", message.headers);
    }
    // The same replay again within the duplicate window stores nothing new.
    replay(&[])?;
    assert_eq!(stream_len(&client, "IN").await?, 6);
    Ok(())
}

/// `examples/dlq-replay/sluice.toml` as shipped, then the replay commands
/// its comment gives.
#[test]
fn the_dlq_replay_example_runs_as_documented() -> Result<()> {
    let scratch = Scratch::new()?;
    for file in ["sluice.toml", "events.jsonl"] {
        scratch.write(&format!("examples/dlq-replay/{file}"), std::fs::read(root().join("examples/dlq-replay").join(file))?)?;
    }
    scratch.write("plugins/target/wasm32-wasip2/release/chaos.wasm", std::fs::read(plugin("chaos"))?)?;
    let finished = scratch.run(&["run", "examples/dlq-replay/sluice.toml"])?;
    finished.ensure_success()?;
    assert_eq!(payloads(&parse_jsonl(&finished.stdout)?), ["order 1", "order 3"]);
    let dead = scratch.read_jsonl("target/dlq-replay-example/dead-letter.jsonl")?;
    let reasons: Vec<Option<&str>> = dead.iter().map(|r| header(r, "sluice-dlq-reason")).collect();
    assert_eq!(reasons, [Some("rejected"), Some("retries-exhausted")]);

    let from = "file:target/dlq-replay-example/dead-letter.jsonl";
    let to = "file:target/dlq-replay-example/replayed.jsonl";
    scratch.run(&["dlq", "replay", "--dry-run", "--from", from, "--to", to])?.ensure_success()?;
    ensure!(!scratch.path("target/dlq-replay-example/replayed.jsonl").exists(), "a dry run sends nothing");
    scratch.run(&["dlq", "replay", "--reason", "retries-exhausted", "--from", from, "--to", to])?.ensure_success()?;
    let replayed = scratch.read_jsonl("target/dlq-replay-example/replayed.jsonl")?;
    assert_eq!(payloads(&replayed), ["retry:5"], "only the event that ran out of attempts");
    assert_eq!(replayed[0]["key"], "o-4");
    assert_eq!(header(&replayed[0], "x-correlation-id"), Some("c-4"), "its own headers restored");
    ensure!(header(&replayed[0], "sluice-dlq-reason").is_none(), "the dead-letter headers stripped: {}", replayed[0]);
    Ok(())
}
