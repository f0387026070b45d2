//! End-to-end tests: the real `sluice` binary, the example plugins built for
//! wasm32-wasip2, and files for sources and sinks. Each test drives one
//! feature from its input data and asserts what a user would see: output
//! files, dead-letter records and their headers, exit codes, messages.
//!
//! Needs `cargo build -p sluice` and `bash scripts/build-plugins.sh` first
//! (`./dev test` does both). `SLUICE_BIN` picks another binary;
//! `SLUICE_KEEP_TMP=1` keeps each test's scratch folder for a look.

#[allow(dead_code)] // each test binary uses a different part of it
mod common;

use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use common::*;

/// Writes `events` and a one-pipeline config for `plugin_name`, runs it to
/// the end, and checks it exited cleanly.
fn run_one(plugin_name: &str, plugin_config: &str, policy: &str, events: &[Value]) -> Result<(Scratch, Finished)> {
    let scratch = Scratch::new()?;
    scratch.write("sluice.toml", one_pipeline("p", plugin_name, plugin_config, policy))?;
    scratch.write_events("events.jsonl", events)?;
    let finished = scratch.run(&["run", "sluice.toml"])?;
    finished.ensure_success()?;
    Ok((scratch, finished))
}

/// The one dead-letter record of a run, or an error showing them all.
fn only_dead_letter(scratch: &Scratch) -> Result<Value> {
    let dlq = scratch.read_jsonl("dlq.jsonl")?;
    ensure!(dlq.len() == 1, "expected exactly one dead-letter record, got {dlq:#?}");
    Ok(dlq.into_iter().next().unwrap_or_default())
}

fn dlq_header<'a>(record: &'a Value, name: &str) -> Result<&'a str> {
    header(record, name).with_context(|| format!("dead-letter record has no `{name}` header: {record}"))
}

// 1 ----------------------------------------------------------------------

/// The quickstart as shipped: same config, same events, same relative layout
/// (copied to a scratch folder so its dead-letter file lands there), run
/// from the repository root as `./dev quickstart` does. Its stdout is checked
/// in as `examples/quickstart/expected-output.jsonl`; `SLUICE_BLESS=1`
/// rewrites that file from the run (read the diff before committing it).
#[test]
fn quickstart_prints_the_expected_output() -> Result<()> {
    let example = root().join("examples/quickstart");
    let expected_file = example.join("expected-output.jsonl");
    let scratch = Scratch::new()?;
    for entry in std::fs::read_dir(&example)? {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.path() != expected_file {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            scratch.write(&format!("examples/quickstart/{name}"), std::fs::read(entry.path())?)?;
        }
    }
    scratch.write("plugins/target/wasm32-wasip2/release/json_enricher.wasm", std::fs::read(plugin("json_enricher"))?)?;

    let finished = scratch.run(&["run", "examples/quickstart/sluice.toml"])?;
    finished.ensure_success()?;

    // What the example promises, independently of the checked-in file.
    let outputs = parse_jsonl(&finished.stdout)?;
    let orders: Vec<Value> = outputs
        .iter()
        .map(|o| serde_json::from_str::<Value>(o["payload"].as_str().unwrap_or("")).map(|p| p["order"].clone()))
        .collect::<Result<_, _>>()?;
    assert_eq!(orders, [json!(1), json!(2), json!(5)], "no `user` (3) and status=test (4) are dropped, the non-JSON one dead-lettered");
    for output in &outputs {
        assert_eq!(header(output, "content-type"), Some("application/json"), "{output}");
        assert!(output["payload"].as_str().unwrap_or("").contains(r#""env":"quickstart""#), "{output}");
    }

    // Each output names the plugin build that made it; the digest depends
    // on where the plugin was built, so the checked-in file leaves it out.
    let outputs = strip_digest(outputs, "json_enricher")?;
    if std::env::var_os("SLUICE_BLESS").is_some() {
        let lines: String = outputs.iter().map(|o| format!("{o}\n")).collect();
        std::fs::write(&expected_file, lines)?;
    }
    let expected = std::fs::read_to_string(&expected_file)
        .with_context(|| format!("reading {} (SLUICE_BLESS=1 writes it from a run)", expected_file.display()))?;
    assert_eq!(outputs, parse_jsonl(&expected)?, "stdout differs from {}", expected_file.display());

    let dlq = read_jsonl(&scratch.path("target/quickstart/dead-letter.jsonl"))?;
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    assert_eq!(dlq[0]["payload"], "this is not JSON");
    assert_eq!(dlq_header(&dlq[0], "sluice-dlq-reason")?, "rejected");
    assert_eq!(dlq_header(&dlq[0], "sluice-dlq-event-id")?, "events.jsonl:5");
    assert!(dlq_header(&dlq[0], "sluice-dlq-message")?.starts_with("payload is not a JSON object"));
    Ok(())
}

// 2, 3, 4: retries and rejections -------------------------------------------

#[test]
fn retryable_failures_are_retried_until_success() -> Result<()> {
    let (scratch, _) = run_one(
        "chaos",
        "",
        r#"max_attempts = 5
backoff = { initial = "1ms", max = "5ms" }"#,
        &[event("retry:2")],
    )?;
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), ["recovered after 2 failures"]);
    assert_eq!(scratch.read("dlq.jsonl")?, "", "nothing is dead-lettered");
    Ok(())
}

#[test]
fn exhausted_retries_dead_letter_the_original_event_with_its_history() -> Result<()> {
    let original = json!({
        "id": "evt-1",
        "key": "k-1",
        "payload": "retry:10",
        "headers": { "trace": "t-1", "tenant": "acme" },
    });
    let (scratch, _) = run_one(
        "chaos",
        "",
        r#"max_attempts = 3
backoff = { initial = "20ms", max = "20ms", multiplier = 1.0, jitter = 0.0 }"#,
        &[original],
    )?;
    assert_eq!(scratch.read("out.jsonl")?, "", "no output for an event that never succeeded");

    let record = only_dead_letter(&scratch)?;
    assert_eq!(record["payload"], "retry:10", "payload untouched");
    assert_eq!(record["key"], "k-1", "key untouched");
    assert!(record.get("destination").is_none(), "{record}");
    assert_eq!(header(&record, "trace"), Some("t-1"), "original headers kept");
    assert_eq!(header(&record, "tenant"), Some("acme"), "original headers kept");
    let h = |name| dlq_header(&record, name);
    assert_eq!(h("sluice-dlq-reason")?, "retries-exhausted");
    assert_eq!(h("sluice-dlq-attempts")?, "3");
    assert_eq!(h("sluice-dlq-message")?, "transient failure (attempt 3 of 10)", "the last failure's message");
    assert_eq!(h("sluice-dlq-pipeline")?, "p");
    assert_eq!(h("sluice-dlq-plugin")?, "chaos");
    assert_eq!(h("sluice-dlq-plugin-digest")?, sha256_hex(&plugin("chaos"))?);
    assert_eq!(h("sluice-dlq-event-id")?, "evt-1");
    assert_eq!(h("sluice-dlq-source")?, "events.jsonl");

    let first = humantime::parse_rfc3339(h("sluice-dlq-first-failure")?)?;
    let last = humantime::parse_rfc3339(h("sluice-dlq-last-failure")?)?;
    let waited = last.duration_since(first).context("last failure is before the first")?;
    assert!(waited >= Duration::from_millis(40), "two 20ms backoffs lie between first and last failure, got {waited:?}");
    let age = SystemTime::now().duration_since(first).unwrap_or_default();
    assert!(age < Duration::from_secs(120), "first failure {first:?} is not from this run");
    Ok(())
}

#[test]
fn rejected_events_are_dead_lettered_at_once() -> Result<()> {
    let (scratch, _) = run_one(
        "chaos",
        "",
        r#"max_attempts = 5
backoff = { initial = "1s", max = "1s" }"#,
        &[event("reject:bad input"), event("ok:next")],
    )?;
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), ["next"]);
    let record = only_dead_letter(&scratch)?;
    assert_eq!(record["payload"], "reject:bad input");
    assert_eq!(dlq_header(&record, "sluice-dlq-reason")?, "rejected");
    assert_eq!(dlq_header(&record, "sluice-dlq-attempts")?, "1", "a rejection is never retried");
    assert_eq!(dlq_header(&record, "sluice-dlq-message")?, "bad input");
    assert_eq!(dlq_header(&record, "sluice-dlq-first-failure")?, dlq_header(&record, "sluice-dlq-last-failure")?);
    Ok(())
}

// 5, 6, 7: guests that misbehave ---------------------------------------------

/// Runs `culprit` then `ok:after` through chaos with one attempt each; returns
/// the culprit's dead-letter record after checking `after` came out.
fn culprit_then_ok(culprit: &str, policy: &str, reason: &str) -> Result<Value> {
    let (scratch, _) = run_one("chaos", "", &format!("max_attempts = 1\n{policy}"), &[event(culprit), event("ok:after")])?;
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), ["after"], "the event after `{culprit}` runs on a fresh instance");
    let record = only_dead_letter(&scratch)?;
    assert_eq!(record["payload"], culprit);
    assert_eq!(dlq_header(&record, "sluice-dlq-reason")?, reason);
    assert_eq!(dlq_header(&record, "sluice-dlq-attempts")?, "1");
    Ok(record)
}

#[test]
fn an_infinite_loop_is_interrupted_by_the_timeout() -> Result<()> {
    let record = culprit_then_ok("loop", r#"timeout = "200ms""#, "timeout")?;
    let message = dlq_header(&record, "sluice-dlq-message")?;
    assert!(message.contains("timed out"), "{message}");
    assert!(message.contains("200ms"), "names the per-event timeout: {message}");
    Ok(())
}

/// A guest blocked in a host call (a 60 s sleep) is a pending future: at the
/// deadline the call is dropped, the event is dead-lettered as a timeout,
/// and the next event is handled by a fresh instance. The run must end long
/// before the sleep would.
#[test]
fn a_guest_sleeping_in_a_host_call_is_cut_at_its_deadline() -> Result<()> {
    let started = std::time::Instant::now();
    let record = culprit_then_ok("sleep:60000", r#"timeout = "200ms""#, "timeout")?;
    let message = dlq_header(&record, "sluice-dlq-message")?;
    assert!(message.contains("timed out"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(30), "the run waited for the sleep: {:?}", started.elapsed());
    Ok(())
}

#[test]
fn a_memory_hog_hits_the_memory_cap() -> Result<()> {
    let record = culprit_then_ok("oom", r#"memory = "16MiB""#, "retries-exhausted")?;
    let message = dlq_header(&record, "sluice-dlq-message")?;
    assert!(message.contains("memory cap"), "{message}");
    assert!(message.contains(&(16u64 << 20).to_string()), "names the cap: {message}");
    Ok(())
}

#[test]
fn a_trap_reports_the_guest_panic_message() -> Result<()> {
    let record = culprit_then_ok("trap", "", "retries-exhausted")?;
    let message = dlq_header(&record, "sluice-dlq-message")?;
    assert!(message.contains("chaos: trap requested"), "guest stderr tail in the message: {message}");
    Ok(())
}

/// A guest's stack lives in its linear memory, so endless recursion traps
/// as an out-of-bounds access; the dead letter must say what happened.
#[test]
fn a_stack_overflow_is_named_as_such() -> Result<()> {
    let record = culprit_then_ok("recurse", "", "retries-exhausted")?;
    let message = dlq_header(&record, "sluice-dlq-message")?;
    assert!(message.contains("stack overflow"), "names the cause: {message}");
    assert!(message.contains("recursion"), "says what to look for: {message}");
    Ok(())
}

// 8: input the source cannot decode -------------------------------------------

#[test]
fn an_undecodable_line_is_dead_lettered_as_is() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("sluice.toml", one_pipeline("p", "chaos", "", ""))?;
    scratch.write("events.jsonl", "{\"payload\":\"ok:a\"}\nthis is not json\n{\"payload\":\"ok:b\"}\n")?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;

    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), ["a", "b"]);
    let record = only_dead_letter(&scratch)?;
    assert_eq!(record["payload"], "this is not json", "the raw line");
    assert_eq!(dlq_header(&record, "sluice-dlq-reason")?, "undecodable");
    assert_eq!(dlq_header(&record, "sluice-dlq-attempts")?, "0", "the plugin never saw it");
    assert_eq!(dlq_header(&record, "sluice-dlq-event-id")?, "events.jsonl:2");
    let message = dlq_header(&record, "sluice-dlq-message")?;
    assert!(message.starts_with("line 2: not a valid event"), "{message}");
    Ok(())
}

// 9: ordering across lanes ----------------------------------------------------

const ORDER_EVENTS: usize = 2_000;

fn keyed_events() -> Vec<Value> {
    (0..ORDER_EVENTS).map(|i| json!({ "key": format!("k{}", i % 8), "payload": format!("event-{i}") })).collect()
}

#[test]
fn partition_ordering_keeps_input_order_across_lanes() -> Result<()> {
    let (scratch, _) = run_one("uppercase", "", "concurrency = 4\nordering = \"partition\"", &keyed_events())?;
    let outputs = scratch.read_jsonl("out.jsonl")?;
    let expected: Vec<String> = (0..ORDER_EVENTS).map(|i| format!("EVENT-{i}")).collect();
    assert_eq!(payloads(&outputs), expected, "one partition: output order is input order");
    assert_eq!(scratch.read("dlq.jsonl")?, "");
    Ok(())
}

#[test]
fn key_ordering_keeps_order_per_key_and_loses_nothing() -> Result<()> {
    let (scratch, _) = run_one("uppercase", "", "concurrency = 4\nordering = \"key\"", &keyed_events())?;
    let outputs = scratch.read_jsonl("out.jsonl")?;
    assert_eq!(outputs.len(), ORDER_EVENTS, "every event exactly once");
    let mut seen = vec![false; ORDER_EVENTS];
    let mut last_per_key = std::collections::HashMap::new();
    for output in &outputs {
        let key = output["key"].as_str().context("output without key")?;
        let payload = output["payload"].as_str().context("output without payload")?;
        let i: usize =
            payload.strip_prefix("EVENT-").and_then(|n| n.parse().ok()).with_context(|| format!("unexpected payload {payload}"))?;
        ensure!(i < ORDER_EVENTS && !seen[i], "event {i} is unknown or appears twice");
        seen[i] = true;
        assert_eq!(key, format!("k{}", i % 8), "key kept with its event");
        if let Some(previous) = last_per_key.insert(key.to_owned(), i) {
            assert!(previous < i, "key {key}: event {i} came out after event {previous}");
        }
    }
    assert!(seen.iter().all(|&s| s), "every event present");
    Ok(())
}

// 10: one bad event in a batch ------------------------------------------------

#[test]
fn a_trap_inside_a_batch_only_fails_its_culprit() -> Result<()> {
    let events: Vec<Value> = (0..200).map(|i| if i == 100 { event("trap") } else { event(&format!("ok:{i}")) }).collect();
    let (scratch, finished) = run_one("chaos", "", "batch_size = 64\nmax_attempts = 1", &events)?;
    let expected: Vec<String> = (0..200).filter(|&i| i != 100).map(|i| i.to_string()).collect();
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), expected, "the 199 others, in order");
    let record = only_dead_letter(&scratch)?;
    assert_eq!(record["payload"], "trap");
    assert_eq!(dlq_header(&record, "sluice-dlq-event-id")?, "events.jsonl:101");
    assert!(
        finished.stderr.contains("handling its events one by one"),
        "the trap hit a batch (not a single event), which was then split:\n{}",
        finished.stderr
    );
    Ok(())
}

// 11: routing and fan-out -----------------------------------------------------

#[test]
fn outputs_go_to_named_routes_or_the_default_sink_with_their_destination() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write(
        "sluice.toml",
        format!(
            r#"{runtime}
[pipelines.orders]
source = {{ kind = "file", path = "events.jsonl" }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}

[pipelines.orders.routes.audit]
kind = "file"
path = "audit.jsonl"

[pipelines.orders.routes.archive]
kind = "file"
path = "archive.jsonl"

[pipelines.orders.plugin]
path = {router}

[pipelines.orders.plugin.config]
field = "type"
route.a = "audit"     # a route: its own file
route.b = "billing"   # no such route: default sink, destination recorded
copy_to = "archive"   # fan-out: a copy of every event
"#,
            runtime = runtime_table(),
            router = toml_path(&plugin("router")),
        ),
    )?;
    scratch.write_events(
        "events.jsonl",
        &[
            json!({ "key": "k1", "payload": { "type": "a", "n": 1 }, "headers": { "trace": "t1" } }),
            json!({ "payload": { "type": "b", "n": 2 } }),
            json!({ "payload": { "type": "c", "n": 3 } }),
            json!({ "payload": { "n": 4 } }),
            json!({ "payload": "not an object" }),
        ],
    )?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;

    let payload = |n: u32, kind: Option<&str>| match kind {
        Some(kind) => json!({ "type": kind, "n": n }).to_string(),
        None => json!({ "n": n }).to_string(),
    };
    let routed = json!({ "routed-by": "router" });
    assert_eq!(
        strip_digest(scratch.read_jsonl("audit.jsonl")?, "router")?,
        [json!({ "key": "k1", "payload": payload(1, Some("a")), "headers": { "trace": "t1", "routed-by": "router" } })],
        "route `a` goes to the audit route's file, without a destination"
    );
    assert_eq!(
        strip_digest(scratch.read_jsonl("out.jsonl")?, "router")?,
        [
            json!({ "destination": "billing", "payload": payload(2, Some("b")), "headers": routed }),
            json!({ "payload": payload(3, Some("c")), "headers": routed }),
            json!({ "payload": payload(4, None), "headers": routed }),
        ],
        "a destination that names no route is kept on the default sink; no destination, none"
    );
    let archive = scratch.read_jsonl("archive.jsonl")?;
    assert_eq!(
        payloads(&archive),
        [payload(1, Some("a")), payload(2, Some("b")), payload(3, Some("c")), payload(4, None)],
        "every event fanned out to the archive route"
    );
    assert!(archive.iter().all(|r| r.get("destination").is_none()), "{archive:#?}");
    let record = only_dead_letter(&scratch)?;
    assert_eq!(record["payload"], "not an object");
    assert_eq!(dlq_header(&record, "sluice-dlq-reason")?, "rejected");
    Ok(())
}

// 12: `sluice check` ----------------------------------------------------------

/// A pipeline table for `check`: only the plugin matters.
fn check_pipeline(name: &str, plugin_lines: &str) -> String {
    format!(
        r#"
[pipelines.{name}]
source = {{ kind = "file", path = "events.jsonl" }}
sink = {{ kind = "stdout" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}

[pipelines.{name}.plugin]
{plugin_lines}
"#
    )
}

#[test]
fn check_refuses_bad_plugins_with_a_clear_message() -> Result<()> {
    let scratch = Scratch::new()?;
    // Bytes that are no WebAssembly at all (a fixed xorshift sequence).
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    scratch.write("corrupt.wasm", noise)?;
    scratch.write("core.wasm", b"\0asm\x01\0\0\0")?;
    let chaos = toml_path(&plugin("chaos"));
    let chaos_digest = sha256_hex(&plugin("chaos"))?;
    let cases = [
        (
            "wrong_world",
            format!("path = {}", toml_path(&plugin("wrong_world"))),
            vec!["does not implement the world sluice:plugin/plugin@0.2.0", "handler"],
        ),
        ("corrupt", r#"path = "corrupt.wasm""#.to_owned(), vec!["is not a WebAssembly file"]),
        ("core", r#"path = "core.wasm""#.to_owned(), vec!["is a core WebAssembly module, not a component"]),
        ("pinned", format!("path = {chaos}\nsha256 = \"{}\"", "0".repeat(64)), vec!["but the config pins 0000", chaos_digest.as_str()]),
        ("init_error", format!("path = {chaos}\nconfig = {{ init_error = \"nope\" }}"), vec!["refused its configuration: nope"]),
    ];
    let mut everything = runtime_table();
    for (name, plugin_lines, expected) in &cases {
        let config = check_pipeline(name, plugin_lines);
        everything.push_str(&config);
        let file = format!("{name}.toml");
        scratch.write(&file, format!("{}{config}", runtime_table()))?;
        let finished = scratch.run(&["check", &file])?;
        finished.ensure_failure()?;
        let line = finished
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("error pipeline `{name}`: ")))
            .with_context(|| format!("no error line for `{name}` in:\n{}\n{}", finished.stdout, finished.stderr))?;
        for text in expected {
            assert!(line.contains(text), "`{name}`: expected {text:?} in {line:?}");
        }
    }

    // One config with all of them and a good one: every problem is
    // reported, not only the first, and the good one still checks out.
    everything.push_str(&check_pipeline("good", &format!("path = {chaos}")));
    scratch.write("all.toml", everything)?;
    let finished = scratch.run(&["check", "all.toml"])?;
    finished.ensure_failure()?;
    for (name, _, _) in &cases {
        assert!(finished.stdout.contains(&format!("error pipeline `{name}`: ")), "{name} missing:\n{}", finished.stdout);
    }
    assert!(finished.stdout.contains("ok    pipeline `good`: plugin chaos"), "{}", finished.stdout);
    Ok(())
}

#[test]
fn check_accepts_the_quickstart() -> Result<()> {
    let scratch = Scratch::new()?;
    let config = root().join("examples/quickstart/sluice.toml");
    let finished = scratch.run(&["check", &config.to_string_lossy()])?;
    finished.ensure_success()?;
    let digest = sha256_hex(&plugin("json_enricher"))?;
    assert!(
        finished.stdout.contains("ok    pipeline `orders`: plugin json_enricher") && finished.stdout.contains(&digest),
        "{}",
        finished.stdout
    );
    Ok(())
}

// 13: pipelines are isolated ---------------------------------------------------

fn broken_and_good_config() -> String {
    format!(
        r#"{runtime}
[pipelines.broken]
source = {{ kind = "file", path = "events.jsonl" }}
sink = {{ kind = "file", path = "broken-out.jsonl" }}
dead_letter = {{ kind = "file", path = "broken-dlq.jsonl" }}
plugin = {{ path = "missing.wasm" }}

[pipelines.good]
source = {{ kind = "file", path = "events.jsonl" }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {uppercase} }}
"#,
        runtime = runtime_table(),
        uppercase = toml_path(&plugin("uppercase")),
    )
}

fn numbered_events(range: std::ops::Range<usize>) -> Vec<Value> {
    range.map(|i| event(&format!("event-{i}"))).collect()
}

fn numbered_outputs(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("EVENT-{i}")).collect()
}

#[test]
fn a_pipeline_that_cannot_start_does_not_stop_the_others() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("sluice.toml", broken_and_good_config())?;
    scratch.write_events("events.jsonl", &numbered_events(0..50))?;
    let finished = scratch.run(&["run", "sluice.toml"])?;
    assert_eq!(finished.code(), Some(1), "exit status 1 when a pipeline failed:\n{}", finished.stderr);
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), numbered_outputs(0..50), "the good pipeline finished its work");
    let failure = finished
        .stderr
        .lines()
        .find(|l| l.starts_with("pipeline `broken` failed: "))
        .with_context(|| format!("stderr names the failed pipeline:\n{}", finished.stderr))?;
    assert!(failure.contains("cannot read plugin") && failure.contains("missing.wasm"), "{failure}");
    assert!(!finished.stderr.contains("pipeline `good` failed"), "{}", finished.stderr);
    Ok(())
}

/// The same through the library API: one report per pipeline, with stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_reports_each_pipeline_with_its_stats() -> Result<()> {
    let scratch = Scratch::new()?;
    let config_path = scratch.write("sluice.toml", broken_and_good_config())?;
    scratch.write_events("events.jsonl", &numbered_events(0..50))?;
    let config = sluice::config::parse(&broken_and_good_config(), &config_path, |_| None)?;
    let reports = sluice::supervisor::run(config, tokio_util::sync::CancellationToken::new()).await?;

    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["broken", "good"]);
    let error = reports[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("cannot read plugin"), "{error}");
    assert_eq!(reports[1].error, None);
    let stats = reports[1].stats;
    assert_eq!(
        (stats.received, stats.outputs, stats.acked, stats.dead_lettered, stats.failures, stats.abandoned),
        (50, 50, 50, 0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), numbered_outputs(0..50));
    Ok(())
}

// 14: graceful shutdown and resume -------------------------------------------

#[test]
fn sigterm_drains_and_a_restart_resumes_from_the_checkpoint() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write(
        "sluice.toml",
        format!(
            r#"{runtime}
[pipelines.tail]
source = {{ kind = "file", path = "events.jsonl", follow = true, checkpoint = "events.checkpoint" }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {uppercase} }}
"#,
            runtime = runtime_table(),
            uppercase = toml_path(&plugin("uppercase")),
        ),
    )?;
    let within = Duration::from_secs(60);

    // First run: 100 events, stopped by SIGTERM once they are all out.
    scratch.write_events("events.jsonl", &numbered_events(0..100))?;
    let mut running = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    running.wait_until("100 outputs", within, || scratch.count_lines("out.jsonl") >= 100)?;
    running.terminate()?;
    let finished = running.wait(Duration::from_secs(20))?;
    finished.ensure_success()?;
    assert_eq!(scratch.read("events.checkpoint")?.trim(), "100", "every line done is recorded");
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), numbered_outputs(0..100));

    // Second run: 50 more written while stopped, 25 while running.
    scratch.append_events("events.jsonl", &numbered_events(100..150))?;
    let mut running = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    running.wait_until("150 outputs", within, || scratch.count_lines("out.jsonl") >= 150)?;
    scratch.append_events("events.jsonl", &numbered_events(150..175))?;
    running.wait_until("175 outputs (the followed file grew)", within, || scratch.count_lines("out.jsonl") >= 175)?;
    // The checkpoint moves while running too, so a crash would not replay
    // everything since the start.
    wait_for("the checkpoint to reach 175 while running", within, || {
        scratch.read("events.checkpoint").is_ok_and(|text| text.trim() == "175")
    })?;
    running.terminate()?;
    running.wait(Duration::from_secs(20))?.ensure_success()?;

    assert_eq!(
        payloads(&scratch.read_jsonl("out.jsonl")?),
        numbered_outputs(0..175),
        "the restart appended exactly the new events: nothing re-emitted, nothing lost"
    );
    assert_eq!(scratch.read("events.checkpoint")?.trim(), "175");
    assert_eq!(scratch.read("dlq.jsonl")?, "");
    Ok(())
}

// 15: `sluice plugin test` ----------------------------------------------------

#[test]
fn plugin_test_prints_one_result_line_per_event() -> Result<()> {
    let scratch = Scratch::new()?;
    let mut lines: Vec<String> = ["ok:a", "retry:1", "reject:bad", "trap", "loop", "oom", "fanout:2", "reply:r", "fanout:1001"]
        .iter()
        .map(|p| event(p).to_string())
        .collect();
    lines.push(json!({ "key": "k", "payload": "keep", "headers": { "h": "v" } }).to_string());
    lines.push("not json".into());
    scratch.write("events.jsonl", lines.join("\n") + "\n")?;
    let chaos = plugin("chaos");
    let args = ["plugin", "test", &chaos.to_string_lossy(), "--events", "events.jsonl", "--timeout", "300ms", "--memory", "16MiB"];
    let finished = scratch.run(&args)?;
    finished.ensure_success()?;

    let results = parse_jsonl(&finished.stdout)?;
    ensure!(results.len() == 11, "one line per event:\n{}", finished.stdout);
    let id = |n: usize| format!("events.jsonl:{n}");
    assert_eq!(results[0], json!({ "event": id(1), "outputs": [{ "payload": "a" }] }));
    assert_eq!(
        results[1],
        json!({ "event": id(2), "error": { "disposition": "retryable", "message": "transient failure (attempt 1 of 1)" } })
    );
    assert_eq!(results[2], json!({ "event": id(3), "error": { "disposition": "reject", "message": "bad" } }));
    let trap = |i: usize| results[i]["trap"].as_str().unwrap_or_default().to_owned();
    assert_eq!(results[3]["event"], id(4));
    assert!(trap(3).starts_with("plugin trapped"), "{}", results[3]);
    assert_eq!(results[4], json!({ "event": id(5), "trap": "handler timed out after 300ms" }));
    assert_eq!(results[5], json!({ "event": id(6), "trap": format!("plugin exceeded its memory cap of {} bytes", 16u64 << 20) }));
    assert_eq!(results[6], json!({ "event": id(7), "outputs": [{ "payload": "0" }, { "payload": "1" }] }));
    assert_eq!(results[7], json!({ "event": id(8), "outputs": [{ "payload": "r", "reply": true }] }));
    // Over a pipeline's default policy.max_outputs (1,000): rejected, as a
    // pipeline would.
    assert_eq!(
        results[8],
        json!({ "event": id(9), "error": { "disposition": "reject", "message": "the plugin returned 1001 outputs for one event, over policy.max_outputs (1000)" } })
    );
    assert_eq!(results[9], json!({ "event": id(10), "outputs": [{ "key": "k", "payload": "keep", "headers": { "h": "v" } }] }));
    assert_eq!(results[10]["event"], id(11));
    let undecodable = results[10]["undecodable"].as_str().unwrap_or_default();
    assert!(undecodable.starts_with("line 11: not a valid event"), "{}", results[10]);

    assert!(finished.stderr.contains("chaos: trap requested"), "the guest's stderr is shown:\n{}", finished.stderr);
    assert!(finished.stderr.contains("7 event(s) failed"), "{}", finished.stderr);

    // A plugin that refuses its config fails the command.
    let refused = scratch.run(&["plugin", "test", &chaos.to_string_lossy(), "--events", "events.jsonl", "--config", "init_error=nope"])?;
    refused.ensure_failure()?;
    assert!(refused.stderr.contains("refused its configuration: nope"), "{}", refused.stderr);
    assert_eq!(refused.stdout, "");
    Ok(())
}

// 16: request/reply -----------------------------------------------------------

#[test]
fn replies_go_to_reply_to_and_are_dropped_without_one() -> Result<()> {
    let (scratch, _) = run_one(
        "chaos",
        "",
        "",
        &[json!({ "payload": "reply:pong", "reply_to": "inbox.1" }), event("reply:nobody listens"), event("ok:done")],
    )?;
    assert_eq!(
        strip_digest(scratch.read_jsonl("out.jsonl")?, "chaos")?,
        [json!({ "destination": "inbox.1", "payload": "pong" }), json!({ "payload": "done" })]
    );
    assert_eq!(scratch.read("dlq.jsonl")?, "", "a reply nobody waits for is not a failure");
    Ok(())
}

// stdin and stdout ------------------------------------------------------------

/// Raw lines on stdin → uppercase → payload lines on stdout; the pipeline
/// (and the process) ends at end of input, every line handled.
#[test]
fn stdin_to_stdout_with_raw_lines() -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;

    let scratch = Scratch::new()?;
    scratch.write(
        "sluice.toml",
        format!(
            r#"{runtime}
[pipelines.shout]
source = {{ kind = "stdin", format = "lines" }}
sink = {{ kind = "stdout", format = "payload" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {plugin} }}
"#,
            runtime = runtime_table(),
            plugin = toml_path(&plugin("uppercase")),
        ),
    )?;
    let mut command = scratch.sluice(&["run", "sluice.toml"]);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().context("starting sluice")?;
    let input: String = (0..500).map(|i| format!("line {i}\n")).collect();
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    while child.try_wait()?.is_none() {
        ensure!(std::time::Instant::now() < deadline, "sluice did not end at end of input");
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "exit {:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    let expected: String = (0..500).map(|i| format!("LINE {i}\n")).collect();
    assert_eq!(String::from_utf8(output.stdout)?, expected);
    assert_eq!(scratch.read("dlq.jsonl")?, "");
    Ok(())
}

/// `plugin test --expect` is a plugin's regression test: the same run passes,
/// a changed expectation fails and says which line.
#[test]
fn plugin_test_expect_compares_with_a_kept_run() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("ok:a"), event("reject:no"), event("fanout:2")])?;
    let wasm = plugin("chaos");
    let wasm = wasm.to_string_lossy();
    let first = scratch.run(&["plugin", "test", &wasm, "--events", "events.jsonl"])?;
    first.ensure_success()?;
    scratch.write("expected.jsonl", &first.stdout)?;

    let same = scratch.run(&["plugin", "test", &wasm, "--events", "events.jsonl", "--expect", "expected.jsonl"])?;
    same.ensure_success()?;
    assert!(same.stderr.contains("all 3 line(s) match"), "{}", same.stderr);

    scratch.write("expected.jsonl", first.stdout.replace("\"a\"", "\"b\""))?;
    let differs = scratch.run(&["plugin", "test", &wasm, "--events", "events.jsonl", "--expect", "expected.jsonl"])?;
    differs.ensure_failure()?;
    assert!(differs.stderr.contains("line 1:"), "{}", differs.stderr);
    assert!(differs.stderr.contains("1 line(s) differ"), "{}", differs.stderr);
    Ok(())
}

/// Guest logs reach the host's log with the plugin's name, and a chatty
/// guest is rate-limited (burst 200, then 100/s), with the drop reported.
#[test]
fn guest_logs_are_forwarded_and_rate_limited() -> Result<()> {
    let events: Vec<Value> = (0..1000).map(|i| event(&format!("log:line {i}"))).collect();
    let (scratch, finished) = run_one("chaos", "", "", &events)?;
    assert_eq!(scratch.read_jsonl("out.jsonl")?.len(), 1000, "logging never costs an event");
    assert!(finished.stderr.contains("line 0"), "first lines are forwarded:\n{}", finished.stderr);
    assert!(finished.stderr.contains("plugin=chaos"), "tagged with the plugin:\n{}", finished.stderr);
    let forwarded = finished.stderr.lines().filter(|l| l.contains("sluice::guest") && l.contains(" line ")).count();
    assert!((200..1000).contains(&forwarded), "burst of 200 then limited, got {forwarded}");
    assert!(finished.stderr.contains("dropped by the rate limit"), "{}", finished.stderr);
    Ok(())
}

#[test]
fn outputs_name_their_plugin_version_unless_told_not_to() -> Result<()> {
    let (scratch, _) = run_one("chaos", "", "", &[event("ok:one")])?;
    let outputs = scratch.read_jsonl("out.jsonl")?;
    ensure!(header(&outputs[0], "sluice-plugin-digest") == Some(sha256_hex(&plugin("chaos"))?.as_str()), "{outputs:?}");
    let (scratch, _) = run_one("chaos", "", "version_header = false", &[event("ok:two")])?;
    let outputs = scratch.read_jsonl("out.jsonl")?;
    ensure!(outputs == [json!({ "payload": "two" })], "{outputs:?}");
    Ok(())
}
