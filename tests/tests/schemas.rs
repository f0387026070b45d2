//! Event schemas and versions end to end: the `sluice` binary runs
//! `examples/schemas` (a file source, JSON Schemas for inputs and outputs,
//! the JSON enricher declaring the versions it accepts) and the test reads
//! what a user would: the output file and the dead-letter records.
//!
//! Needs `cargo build -p sluice` and `bash scripts/build-plugins.sh` first.

#[allow(dead_code)] // each test binary uses a different part of it
mod common;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use common::*;

/// Copies `examples/schemas` into a scratch folder with the same relative
/// layout (so its `../../target/schemas/*` files land in the scratch) and runs it.
fn run_example() -> Result<Scratch> {
    let example = root().join("examples/schemas");
    let scratch = Scratch::new()?;
    for relative in [
        "sluice.toml",
        "events.jsonl",
        "schemas/order-created-v1.json",
        "schemas/order-created-v2.json",
        "schemas/order-created-any.json",
        "schemas/order-enriched.json",
    ] {
        scratch.write(&format!("examples/schemas/{relative}"), std::fs::read(example.join(relative))?)?;
    }
    scratch.write("plugins/target/wasm32-wasip2/release/json_enricher.wasm", std::fs::read(plugin("json_enricher"))?)?;
    scratch.run(&["run", "examples/schemas/sluice.toml"])?.ensure_success()?;
    Ok(scratch)
}

fn dlq_header<'a>(record: &'a Value, name: &str) -> Result<&'a str> {
    header(record, name).with_context(|| format!("dead-letter record has no `{name}` header: {record}"))
}

#[test]
fn invalid_unsupported_and_badly_answered_events_are_dead_lettered_with_why() -> Result<()> {
    let scratch = run_example()?;

    let out = scratch.read_jsonl("target/schemas/out.jsonl")?;
    let outputs: Vec<Value> = payloads(&out).iter().map(|p| serde_json::from_str(p)).collect::<Result<_, _>>()?;
    assert_eq!(
        outputs,
        [
            json!({"id": "o-1", "total": 30, "enriched_by": "sluice"}),
            json!({"id": "o-2", "amount": 12.5, "currency": "EUR", "enriched_by": "sluice"}),
        ],
        "only the valid, accepted events whose outputs are valid"
    );
    assert_eq!(header(&out[1], "event-version"), Some("2"), "outputs keep the event's type headers");

    let dlq = scratch.read_jsonl("target/schemas/dead-letter.jsonl")?;
    let mut seen = Vec::new();
    for record in &dlq {
        let id = dlq_header(record, "sluice-dlq-event-id")?;
        let reason = dlq_header(record, "sluice-dlq-reason")?;
        let message = dlq_header(record, "sluice-dlq-message")?;
        seen.push((id.to_owned(), reason.to_owned(), message.to_owned()));
    }
    // Events refused before the call are concluded before the batch's
    // called events (as undecodable lines are), so compare by id.
    seen.sort();
    let expected: [(&str, &str, &str); 7] = [
        ("o-3", "invalid", r#"the event does not match the schema for order-created@1: /total: value is not of type "number""#),
        ("o-4", "invalid", r#"the event does not match the schema for order-created@2: /currency: value does not match "^[A-Z]{3}$""#),
        (
            "o-5",
            "invalid",
            "the event does not match the schema for order-created@1: the payload is not JSON: expected ident at line 1 column 2",
        ),
        ("o-6", "unsupported", "the plugin does not accept event type order-created@3; it accepts: order-created@1, order-created@2"),
        (
            "o-7",
            "rejected",
            r#"output 1 of 1: the output does not match the schema for order-created@1: /note: value is not of type "string""#,
        ),
        ("o-8", "invalid", r#"no schema for the event's type refund-issued@1, and schemas.unknown is "reject""#),
        ("o-9", "invalid", r#"the event has no `event-type` header, and schemas.missing is "reject""#),
    ];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned())).collect();
    assert_eq!(seen, expected);

    // The original event, untouched, as for every dead letter.
    assert_eq!(dlq[0]["payload"], r#"{"id":"o-3","total":"thirty"}"#);
    assert_eq!(header(&dlq[0], "event-type"), Some("order-created"));
    assert_eq!(dlq_header(&dlq[0], "sluice-dlq-attempts")?, "0", "the plugin never saw it");
    let o7 = dlq.iter().find(|r| header(r, "sluice-dlq-event-id") == Some("o-7")).context("no o-7")?;
    assert_eq!(dlq_header(o7, "sluice-dlq-attempts")?, "1", "the plugin handled it once");
    Ok(())
}

#[test]
fn a_broken_schema_file_stops_the_config_from_loading() -> Result<()> {
    let scratch = Scratch::new()?;
    let config = format!(
        "{}\n[pipelines.p.schemas]\ninput = [{{ type = \"t\", version = \"1\", path = \"broken.json\" }}]\n",
        one_pipeline("p", "json_enricher", "", "")
    );
    scratch.write("sluice.toml", config)?;
    scratch.write("broken.json", r#"{"type": "object", "required": "id"}"#)?;
    let finished = scratch.run(&["check", "sluice.toml"])?;
    assert!(!finished.status.success(), "check must fail");
    let text = format!("{}{}", finished.stdout, finished.stderr);
    assert!(
        text.contains("pipeline `p`, key `schemas.input[0].path`: ") && text.contains("broken.json is not a valid JSON Schema: "),
        "{text}"
    );
    Ok(())
}

/// SIGHUP with an edited schema file (the config text unchanged) restarts
/// the pipeline with the new schema; an edit that no longer compiles is
/// refused and the running schema stays.
#[test]
fn a_config_reload_applies_an_edited_schema_file() -> Result<()> {
    use std::time::Duration;
    const WITHIN: Duration = Duration::from_secs(60);
    let scratch = Scratch::new()?;
    let config = format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"

[pipelines.p]
source = {{ kind = "file", path = "events.jsonl", follow = true, checkpoint = "events.checkpoint" }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {plugin} }}

[pipelines.p.schemas]
input = [{{ type = "t", version = "1", path = "t.json" }}]
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("passthrough")),
    );
    let needs = |field: &str| json!({"type": "object", "required": [field]}).to_string();
    let typed = |payload: &str| json!({"payload": payload, "headers": {"event-type": "t", "event-version": "1"}});
    scratch.write("t.json", needs("a"))?;
    scratch.write("events.jsonl", "")?;
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let port = host.admin_port()?;
    let started_at = || -> Option<String> {
        let (code, text) = http_request(port, "GET", "/pipelines", None, b"").ok()?;
        let body: Value = serde_json::from_str(&text).ok()?;
        (code == 200).then(|| body["pipelines"][0]["started_at"].to_string()).filter(|s| s != "null")
    };
    host.wait_until("the pipeline", WITHIN, || started_at().is_some())?;
    let first = started_at();

    scratch.append_events("events.jsonl", &[typed(r#"{"b":1}"#), typed(r#"{"a":1}"#)])?;
    host.wait_until("two events done", WITHIN, || scratch.count_lines("out.jsonl") + scratch.count_lines("dlq.jsonl") == 2)?;

    // Not a schema any more: refused, the pipeline keeps running as it was.
    scratch.write("t.json", r#"{"type": "objekt"}"#)?;
    let mark = host.log_mark();
    sighup(&host)?;
    // The refusal's log line says the reload is over: only then does an
    // unchanged start time prove that it did not restart the pipeline.
    host.wait_for_log("config reload refused", mark, WITHIN)?;
    ensure!(started_at() == first, "a refused reload restarted the pipeline");

    scratch.write("t.json", needs("b"))?;
    sighup(&host)?;
    host.wait_until("the pipeline restarted", WITHIN, || started_at().is_some_and(|s| Some(s) != first))?;
    scratch.append_events("events.jsonl", &[typed(r#"{"b":2}"#), typed(r#"{"a":2}"#)])?;
    host.wait_until("four events done", WITHIN, || scratch.count_lines("out.jsonl") + scratch.count_lines("dlq.jsonl") == 4)?;

    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), [r#"{"a":1}"#, r#"{"b":2}"#]);
    assert_eq!(payloads(&scratch.read_jsonl("dlq.jsonl")?), [r#"{"b":1}"#, r#"{"a":2}"#]);

    // The restarted run's counters: one invalid input of its two.
    let (code, metrics) = http_request(port, "GET", "/metrics", None, b"")?;
    ensure!(code == 200, "/metrics answered {code}");
    for line in [
        r#"sluice_events_invalid_total{pipeline="p",plugin="passthrough"} 1"#,
        r#"sluice_outputs_invalid_total{pipeline="p",plugin="passthrough"} 0"#,
        r#"sluice_events_unsupported_total{pipeline="p",plugin="passthrough"} 0"#,
    ] {
        ensure!(metrics.lines().any(|l| l == line), "no `{line}` in:\n{metrics}");
    }
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    ensure!(finished.stderr.contains("config reload refused"), "{}", finished.stderr);
    ensure!(finished.stderr.contains("t.json is not a valid JSON Schema"), "{}", finished.stderr);
    Ok(())
}

/// The accept list belongs to the plugin version: a config reload that
/// only changes the plugin's config (here json_enricher's `accepts`) swaps
/// in a new version with its own list, and the next events follow it.
#[test]
fn a_new_plugin_version_brings_its_own_accept_list() -> Result<()> {
    use std::time::Duration;
    const WITHIN: Duration = Duration::from_secs(60);
    let scratch = Scratch::new()?;
    let config = |accepts: &str| {
        format!(
            r#"{runtime}
[admin]
listen = "{ANY_PORT}"

[pipelines.p]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {plugin}, config = {{ accepts = "{accepts}" }} }}
"#,
            runtime = runtime_table(),
            plugin = toml_path(&plugin("json_enricher")),
        )
    };
    let typed =
        |id: &str, version: &str| json!({"id": id, "payload": {"id": id}, "headers": {"event-type": "t", "event-version": version}});
    scratch.write("events.jsonl", "")?;
    let mut host = start(&scratch, &config("t@1"), "sluice.toml")?;
    let port = host.admin_port()?;
    let generation = || -> Option<u64> {
        let (code, text) = http_request(port, "GET", "/pipelines/p", None, b"").ok()?;
        let body: Value = serde_json::from_str(&text).ok()?;
        (code == 200).then(|| body["plugin"]["current"]["generation"].as_u64()).flatten()
    };
    host.wait_until("the pipeline", WITHIN, || generation().is_some())?;
    let first = generation();
    scratch.append_events("events.jsonl", &[typed("a1", "1"), typed("a2", "2")])?;
    host.wait_until("two events done", WITHIN, || scratch.count_lines("out.jsonl") + scratch.count_lines("dlq.jsonl") == 2)?;

    scratch.write("sluice.toml", config("t@2"))?;
    sighup(&host)?;
    host.wait_until("the new plugin version", WITHIN, || generation().is_some_and(|g| Some(g) != first))?;
    let (_, status) = http_request(port, "GET", "/pipelines/p", None, b"")?;
    let status: Value = serde_json::from_str(&status)?;
    assert_eq!(status["plugin"]["current"]["accepts"], json!(["t@2"]), "{status}");
    assert_eq!(status["plugin"]["previous"]["accepts"], json!(["t@1"]), "{status}");
    scratch.append_events("events.jsonl", &[typed("b1", "1"), typed("b2", "2")])?;
    host.wait_until("four events done", WITHIN, || scratch.count_lines("out.jsonl") + scratch.count_lines("dlq.jsonl") == 4)?;

    let ids = |file: &str| -> Result<Vec<String>> {
        Ok(payloads(&scratch.read_jsonl(file)?)
            .iter()
            .filter_map(|p| serde_json::from_str::<Value>(p).ok()?["id"].as_str().map(str::to_owned))
            .collect())
    };
    assert_eq!(ids("out.jsonl")?, ["a1", "b2"]);
    assert_eq!(ids("dlq.jsonl")?, ["a2", "b1"]);
    let dlq = scratch.read_jsonl("dlq.jsonl")?;
    assert_eq!(dlq_header(&dlq[1], "sluice-dlq-message")?, "the plugin does not accept event type t@1; it accepts: t@2");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

fn sighup(host: &Running) -> Result<()> {
    let status = std::process::Command::new("kill").args(["-HUP", &host.pid().to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    Ok(())
}

#[test]
fn check_shows_the_versions_the_plugin_accepts() -> Result<()> {
    let scratch = Scratch::new()?;
    let config = root().join("examples/schemas/sluice.toml");
    let finished = scratch.run(&["check", &config.to_string_lossy()])?;
    finished.ensure_success()?;
    assert!(finished.stdout.contains("ok    pipeline `orders`: plugin json_enricher"), "{}", finished.stdout);
    assert!(finished.stdout.contains("      accepts: order-created@1, order-created@2\n"), "{}", finished.stdout);
    let inspect = scratch.run(&["plugin", "inspect", &plugin("json_enricher").to_string_lossy()])?;
    assert!(inspect.stdout.contains("sluice:plugin/manifest@0.2.0 (instance)"), "{}", inspect.stdout);
    // The Rust SDK's plugins take their batches packed; a 0.1.0 one cannot.
    assert!(inspect.stdout.contains("batches: packed (exports sluice:plugin/packed-handler@0.2.0;"), "{}", inspect.stdout);
    let plain = scratch.run(&["plugin", "inspect", &plugin("plain").to_string_lossy()])?;
    assert!(plain.stdout.contains("targets: sluice:plugin@0.1.0") && !plain.stdout.contains("manifest"), "{}", plain.stdout);
    assert!(!plain.stdout.contains("batches: packed"), "{}", plain.stdout);
    Ok(())
}
