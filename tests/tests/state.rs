//! Plugin state against the real binary: a counter whose state must equal
//! the number of its input events exactly, through kill -9 at random
//! points, hot reload, retries and dead letters.

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use common::*;

const WITHIN: Duration = Duration::from_secs(180);

/// `events.jsonl` → `counter` → `out.jsonl`, state in `state.redb`.
fn counter_config(policy: &str) -> String {
    stateful_pipeline(&plugin("counter"), policy)
}

/// `key=value` outputs per key, in file order.
fn counts(outputs: &[Value]) -> Result<BTreeMap<String, Vec<u64>>> {
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for output in outputs {
        let text = output["payload"].as_str().context("a text payload")?;
        let (key, value) = text.split_once('=').with_context(|| format!("not key=value: {text}"))?;
        per_key.entry(key.to_owned()).or_default().push(value.parse()?);
    }
    Ok(per_key)
}

/// 50,000 events over 64 keys through four keyed lanes, the host killed
/// (SIGKILL) at three random points and restarted each time: afterwards
/// every key's count equals its number of events exactly (read back with
/// one probe event per key), and the outputs carry every value from 1 to
/// the count, none missing (a value may repeat: an event whose outputs were
/// written but whose state was not yet committed runs again, from the same
/// state).
#[test]
fn counts_are_exact_through_kill_9_at_random_points() -> Result<()> {
    let scratch = Scratch::new()?;
    let keys = 64;
    let total = 50_000;
    let events: Vec<Value> = (0..total).map(|i| event(&format!("k{:02}", i % keys))).collect();
    scratch.write_events("events.jsonl", &events)?;
    scratch.write("sluice.toml", counter_config("concurrency = 4\nordering = \"key\""))?;
    let mut kills = 0;
    for fraction in [0.15, 0.4, 0.65] {
        // A random point within a tenth past `fraction`.
        let jitter = f64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos() % 1000) / 10_000.0;
        let at = ((fraction + jitter) * total as f64) as usize;
        let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
        host.wait_until(&format!("{at} outputs"), WITHIN, || scratch.count_lines("out.jsonl") >= at)?;
        host.kill()?;
        kills += 1;
    }
    let finished = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?.wait(WITHIN)?;
    finished.ensure_success()?;
    ensure!(kills == 3);

    let outputs = scratch.read_jsonl("out.jsonl")?;
    let per_key = counts(&outputs)?;
    ensure!(per_key.len() == keys, "{} keys in the outputs", per_key.len());
    let expected = |k: usize| (total / keys + usize::from(k < total % keys)) as u64;
    for (k, (key, values)) in per_key.iter().enumerate() {
        let mut distinct = values.clone();
        distinct.sort_unstable();
        distinct.dedup();
        ensure!(
            distinct == (1..=expected(k)).collect::<Vec<_>>(),
            "{key}: values {:?}…{:?} ({} distinct)",
            distinct.first(),
            distinct.last(),
            distinct.len()
        );
    }
    ensure!(scratch.count_lines("dlq.jsonl") == 0, "nothing dead-lettered");

    // The state itself: one more event per key reads count + 1.
    let probes: Vec<Value> = (0..keys).map(|k| event(&format!("k{k:02}"))).collect();
    scratch.append_events("events.jsonl", &probes)?;
    Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?.wait(WITHIN)?.ensure_success()?;
    let outputs = scratch.read_jsonl("out.jsonl")?;
    let last = counts(&outputs[outputs.len() - keys..])?;
    for (k, (key, values)) in last.iter().enumerate() {
        ensure!(values == &vec![expected(k) + 1], "{key}: the probe read {values:?}, expected {}", expected(k) + 1);
    }
    Ok(())
}

/// A failed attempt's writes are not seen by its retry; a dead-lettered
/// event's writes are discarded; a hot reload (a new plugin version) keeps
/// the state, which belongs to the pipeline.
#[test]
fn failed_attempts_leave_no_trace_and_reload_keeps_state() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    let config = counter_config("").replace("path = \"events.jsonl\"", "path = \"events.jsonl\", follow = true");
    scratch.write("sluice.toml", format!("[admin]\nlisten = \"{ANY_PORT}\"\ntoken = \"t\"\n{config}"))?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || http_request(port, "GET", "/healthz", None, b"").is_ok_and(|(s, _)| s == 200))?;
    let send = |payloads: &[&str]| scratch.append_events("events.jsonl", &payloads.iter().map(|p| event(p)).collect::<Vec<_>>());
    send(&["a", "a:retry-once", "b:reject", "b"])?;
    host.wait_until("three outputs and a dead letter", WITHIN, || {
        scratch.count_lines("out.jsonl") == 3 && scratch.count_lines("dlq.jsonl") == 1
    })?;
    let outputs = scratch.read_jsonl("out.jsonl")?;
    ensure!(payloads(&outputs) == ["a=1", "a=2", "b=1"], "the retried attempt's and the rejected event's increments are gone: {outputs:?}");
    let dead = scratch.read_jsonl("dlq.jsonl")?;
    ensure!(header(&dead[0], "sluice-dlq-message").is_some_and(|m| m.contains("rejected after counting b to 1")), "{dead:?}");

    // A new version of the plugin (uploaded through the admin API) counts on.
    let wasm = std::fs::read(plugin("counter"))?;
    let (status, body) = http_request(port, "PUT", "/pipelines/counts/plugin", Some("t"), &wasm)?;
    ensure!(status == 200 && body.contains("\"generation\":2"), "upload: {status} {body}");
    send(&["a", "b"])?;
    host.wait_until("two more outputs", WITHIN, || scratch.count_lines("out.jsonl") == 5)?;
    ensure!(payloads(&scratch.read_jsonl("out.jsonl")?)[3..] == ["a=3", "b=2"]);
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// A plugin that imports `state` into a pipeline that does not grant it is
/// refused at load, naming the capability and how to grant it.
#[test]
fn a_plugin_importing_state_needs_the_pipeline_to_grant_it() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    scratch.write("sluice.toml", one_pipeline("counts", "counter", "", ""))?;
    let checked = scratch.run(&["check", "sluice.toml"])?;
    checked.ensure_failure()?;
    // Granted, it loads, and check says what it targets and uses.
    scratch.write("granted.toml", counter_config(""))?;
    let granted = scratch.run(&["check", "granted.toml"])?;
    granted.ensure_success()?;
    ensure!(granted.stdout.contains("targets sluice:plugin@0.2.0; capabilities: state"), "{}", granted.stdout);
    ensure!(
        checked
            .stdout
            .contains("imports the `state` capability, which pipeline `counts` does not grant: add a `[pipelines.<name>.state]` table"),
        "{}",
        checked.stdout
    );
    Ok(())
}

/// `sluice plugin test` gives a stateful plugin an in-memory state, seeded
/// from a file, kept across the file's events when they succeed.
#[test]
fn plugin_test_runs_stateful_plugins_on_a_seeded_memory_state() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("seed.json", r#"{"count:a": "41", "count:b": {"base64": "OQ=="}}"#)?;
    scratch.write_events("events.jsonl", &[event("a"), event("a:reject"), event("a"), event("b")])?;
    let counter = plugin("counter");
    let tested = scratch.run(&["plugin", "test", &counter.to_string_lossy(), "--events", "events.jsonl", "--state", "seed.json"])?;
    let lines = parse_jsonl(&tested.stdout)?;
    let outputs: Vec<Option<&str>> = lines.iter().map(|l| l["outputs"][0]["payload"].as_str()).collect();
    ensure!(outputs == [Some("a=42"), None, Some("a=43"), Some("b=10")], "{}", tested.stdout);
    Ok(())
}

/// Operators read, list and delete state keys through the admin API, and
/// `/metrics` counts state reads, writes and commits.
#[test]
fn the_admin_api_reads_lists_and_deletes_state_keys() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("a"), event("a"), event("b")])?;
    let config = counter_config("").replace("path = \"events.jsonl\"", "path = \"events.jsonl\", follow = true");
    scratch.write("sluice.toml", format!("[admin]\nlisten = \"{ANY_PORT}\"\ntoken = \"t\"\n{config}"))?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("three outputs", WITHIN, || scratch.count_lines("out.jsonl") == 3)?;
    host.wait_until("the commits", WITHIN, || {
        metrics(port).ok().and_then(|m| m.get(r#"sluice_state_committed_events_total{pipeline="counts",plugin="counter"}"#).copied())
            == Some(3.0)
    })?;
    let (status, body) = http_request(port, "GET", "/pipelines/counts/state/count:a", None, b"")?;
    ensure!(status == 200 && body.contains(r#""value":"2""#), "{status} {body}");
    let (status, body) = http_request(port, "GET", "/pipelines/counts/state?prefix=count:&limit=1", None, b"")?;
    ensure!(status == 200 && body.contains(r#""count:a":"2""#) && body.contains(r#""next":"count:a""#), "{status} {body}");
    let (status, _) = http_request(port, "DELETE", "/pipelines/counts/state/count:a", None, b"")?;
    ensure!(status == 401, "deleting needs the token");
    let (status, body) = http_request(port, "DELETE", "/pipelines/counts/state/count:a", Some("t"), b"")?;
    ensure!(status == 200, "{status} {body}");
    let (status, _) = http_request(port, "GET", "/pipelines/counts/state/count:a", None, b"")?;
    ensure!(status == 404, "deleted");
    scratch.append_events("events.jsonl", &[event("a")])?;
    host.wait_until("the count to start again", WITHIN, || {
        scratch.read_jsonl("out.jsonl").is_ok_and(|o| payloads(&o).last().map(String::as_str) == Some("a=1"))
    })?;
    let labels = r#"{pipeline="counts",plugin="counter"}"#;
    // The output is written before the event's state commit ends (the ack
    // waits for both): wait for the commit, not only the output.
    let committed = format!("sluice_state_committed_events_total{labels}");
    host.wait_until("the last event's commit", WITHIN, || metrics(port).ok().and_then(|m| m.get(&committed).copied()) == Some(5.0))?;
    let m = metrics(port)?;
    // Four increments and the operator's delete; four reads (increment reads).
    ensure!(m.get(&format!("sluice_state_writes_total{labels}")) == Some(&5.0), "{m:#?}");
    ensure!(m.get(&format!("sluice_state_reads_total{labels}")) == Some(&4.0), "{m:#?}");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// A shadowed candidate reads the pipeline's state but its writes are
/// discarded: beside the current `counter`, its C twin computes the same
/// counts (no difference) and counts nothing itself; promoted by hand
/// (`sluice plugin promote`), it counts on from the current state.
#[test]
fn a_shadowed_candidates_state_writes_are_discarded() -> Result<()> {
    let twin = root().join("plugins/target/components/counter_c.wasm");
    ensure!(twin.is_file(), "{} is missing: run `bash scripts/build-lang-plugins.sh c` first", twin.display());
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    let config = counter_config("").replace("path = \"events.jsonl\"", "path = \"events.jsonl\", follow = true");
    scratch.write("sluice.toml", format!("[admin]\nlisten = \"{ANY_PORT}\"\ntoken = \"t\"\n{config}"))?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || http_request(port, "GET", "/pipelines/counts", None, b"").is_ok_and(|(s, _)| s == 200))?;
    let admin = format!("127.0.0.1:{port}");
    let tried = scratch
        .sluice(&["plugin", "candidate", "counts", &twin.to_string_lossy(), "--admin", &admin])
        .env("SLUICE_ADMIN_TOKEN", "t")
        .output()?;
    ensure!(tried.status.success(), "{}", String::from_utf8_lossy(&tried.stderr));
    ensure!(String::from_utf8_lossy(&tried.stdout).contains("in shadow mode"), "{}", String::from_utf8_lossy(&tried.stdout));

    let send = |payloads: &[&str]| scratch.append_events("events.jsonl", &payloads.iter().map(|p| event(p)).collect::<Vec<_>>());
    send(&["a", "a", "b", "a"])?;
    host.wait_until("four outputs", WITHIN, || scratch.count_lines("out.jsonl") == 4)?;
    ensure!(payloads(&scratch.read_jsonl("out.jsonl")?) == ["a=1", "a=2", "b=1", "a=3"], "the candidate's increments are not kept");
    let (_, body) = http_request(port, "GET", "/pipelines/counts/candidate", None, b"")?;
    let report: Value = serde_json::from_str(&body)?;
    let counts = &report["candidate"]["counts"];
    ensure!(counts["handled"] == 4 && counts["same"] == 4, "the candidate read the same state and counted alike: {report}");

    let promoted = scratch.sluice(&["plugin", "promote", "counts", "--admin", &admin]).env("SLUICE_ADMIN_TOKEN", "t").output()?;
    ensure!(promoted.status.success(), "{}", String::from_utf8_lossy(&promoted.stderr));
    send(&["a", "b"])?;
    host.wait_until("two more outputs", WITHIN, || scratch.count_lines("out.jsonl") == 6)?;
    let outputs = scratch.read_jsonl("out.jsonl")?;
    ensure!(payloads(&outputs)[4..] == ["a=4", "b=2"], "the promoted version counts on: {outputs:?}");
    ensure!(header(&outputs[5], "sluice-plugin-digest") == Some(sha256_hex(&twin)?.as_str()), "made by the promoted twin");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}
