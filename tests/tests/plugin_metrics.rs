//! Plugin metrics (`sluice:plugin/metrics`) against the real binary: what
//! the `counter` plugin records is on `/metrics`, exact, under the
//! pipeline and plugin labels; label sets past the cap fold into `other`
//! and are counted; an invalid name is dropped without failing its event;
//! a failed attempt's values stay; a new plugin version counts on; and
//! `sluice plugin test` prints what a plugin recorded.

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use common::*;

const WITHIN: Duration = Duration::from_secs(180);
const TOKEN: &str = "t";

/// The counter in a following file pipeline with embedded state, one lane
/// (so label sets are met in file order), at most three label sets per
/// metric, and an admin API on any free port.
fn config() -> String {
    // One event per call: a stateful batch that is not kept (here, the one
    // holding `a:retry-once`) is an extra attempt for each of its events,
    // which would make the exact counts below depend on how the file was
    // batched.
    let pipeline = stateful_pipeline(&plugin("counter"), "concurrency = 1\nbatch_size = 1")
        .replace("path = \"events.jsonl\"", "path = \"events.jsonl\", follow = true");
    format!("[admin]\nlisten = \"{ANY_PORT}\"\ntoken = \"{TOKEN}\"\n{pipeline}\n[pipelines.counts.plugin.metrics]\nmax_series = 3\n")
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> Result<f64> {
    m.get(series).copied().with_context(|| format!("no {series} in {m:#?}"))
}

fn counted(key: &str) -> String {
    format!(r#"sluice_plugin_counted_total{{pipeline="counts",plugin="counter",key="{key}"}}"#)
}

const BYTES: &str = r#"sluice_plugin_payload_bytes_count{pipeline="counts",plugin="counter"}"#;
const BYTES_SUM: &str = r#"sluice_plugin_payload_bytes_sum{pipeline="counts",plugin="counter"}"#;
const FOLDED: &str = r#"sluice_plugin_metric_series_folded_total{pipeline="counts",metric="counted"}"#;
const INVALID: &str = r#"sluice_plugin_metric_drops_total{pipeline="counts",reason="invalid_name"}"#;
const ACKED: &str = r#"sluice_events_acked_total{pipeline="counts",plugin="counter"}"#;

#[test]
fn plugin_metrics_are_exact_capped_and_kept_from_failed_attempts() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    scratch.write("sluice.toml", config())?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || http_request(port, "GET", "/healthz", None, b"").is_ok_and(|(s, _)| s == 200))?;

    // `a` twice, once failing its first attempt; `b` recording into an
    // invalid name too; a key that needs escaping; then three more keys,
    // past the cap of three label sets.
    let events: Vec<Value> = vec![
        event("a"),
        event("a:retry-once"),
        event("b:bad-metric"),
        json!({ "key": "q\"\\", "payload": "x" }),
        event("c"),
        event("d"),
        event("e"),
        event("c"),
        event("d"),
        event("e"),
    ];
    let bytes: usize = events.iter().filter_map(|e| e["payload"].as_str()).map(str::len).sum::<usize>() + "a:retry-once".len();
    scratch.append_events("events.jsonl", &events)?;
    host.wait_until("every event settled", WITHIN, || metrics(port).ok().and_then(|m| m.get(ACKED).copied()) == Some(events.len() as f64))?;
    let m = metrics(port)?;
    assert_eq!(get(&m, &counted("a"))?, 3.0, "the failed attempt counted too");
    assert_eq!(get(&m, &counted("b"))?, 1.0);
    assert_eq!(get(&m, &counted(r#"q\"\\"#))?, 1.0, "the label value is escaped");
    assert_eq!(get(&m, &counted("other"))?, 6.0, "c, d and e past the cap, folded");
    assert!(!m.keys().any(|k| k.contains(r#"key="c""#)), "no series of its own past the cap");
    assert_eq!(get(&m, FOLDED)?, 6.0);
    assert_eq!(get(&m, BYTES)?, events.len() as f64 + 1.0, "one observation per attempt");
    assert_eq!(get(&m, BYTES_SUM)?, bytes as f64);
    assert_eq!(get(&m, INVALID)?, 1.0, "the invalid name is dropped and counted");
    assert!(!m.keys().any(|k| k.contains("bad")), "nothing rendered for the invalid name");
    let outputs = scratch.read_jsonl("out.jsonl")?;
    ensure!(payloads(&outputs).contains(&"b=1".to_owned()), "the event with the invalid metric succeeded: {outputs:?}");
    ensure!(scratch.count_lines("dlq.jsonl") == 0, "nothing dead-lettered");

    // A new version of the plugin records into the same metrics.
    let wasm = std::fs::read(plugin("counter"))?;
    let (status, body) = http_request(port, "PUT", "/pipelines/counts/plugin", Some(TOKEN), &wasm)?;
    ensure!(status == 200 && body.contains("\"generation\":2"), "upload: {status} {body}");
    scratch.append_events("events.jsonl", &[event("a"), event("c:bad-metric")])?;
    host.wait_until("two more events settled", WITHIN, || {
        metrics(port).ok().and_then(|m| m.get(ACKED).copied()) == Some(events.len() as f64 + 2.0)
    })?;
    let m = metrics(port)?;
    assert_eq!(get(&m, &counted("a"))?, 4.0, "counts on across the reload");
    assert_eq!(get(&m, &counted("other"))?, 7.0);
    assert_eq!(get(&m, FOLDED)?, 7.0);
    assert_eq!(get(&m, BYTES)?, events.len() as f64 + 3.0);
    assert_eq!(get(&m, INVALID)?, 2.0);

    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    let reports = finished.stderr.matches("plugin metric recording dropped").count()
        + finished.stdout.matches("plugin metric recording dropped").count();
    ensure!(reports == 1, "the invalid name is reported once, not per call: {reports} reports\n{}", finished.stderr);
    Ok(())
}

/// `sluice plugin test` prints what the plugin recorded at the end, on
/// stderr (stdout stays the event lines `--expect` compares): each series
/// as `/metrics` would name it, a failed event's recordings included, and
/// the dropped calls.
#[test]
fn plugin_test_prints_the_metrics_the_plugin_recorded() -> Result<()> {
    let scratch = Scratch::new()?;
    let events: Vec<Value> = ["a", "b", "a:reject", "c:bad-metric"].iter().map(|p| json!({ "id": p, "payload": p })).collect();
    scratch.write_events("events.jsonl", &events)?;
    let plugin = plugin("counter").to_string_lossy().into_owned();
    let cache = compile_cache().to_string_lossy().into_owned();
    let run = scratch.run(&["plugin", "test", &plugin, "--events", "events.jsonl", "--cache-dir", &cache])?;
    ensure!(run.stdout.lines().count() == 4, "one line per event: {}", run.stdout);
    ensure!(!run.stdout.contains("sluice_plugin_"), "metrics stay off stdout: {}", run.stdout);
    let block: Vec<&str> =
        run.stderr.lines().skip_while(|l| *l != "metrics recorded by the plugin:").skip(1).take_while(|l| l.starts_with("  ")).collect();
    assert_eq!(
        block,
        [
            r#"  sluice_plugin_counted_total{key="a"} 2"#,
            r#"  sluice_plugin_counted_total{key="b"} 1"#,
            r#"  sluice_plugin_counted_total{key="c"} 1"#,
            "  sluice_plugin_payload_bytes count=4 sum=22",
            "  1 call(s) dropped: invalid_name (see the log)",
        ],
        "stderr: {}",
        run.stderr
    );
    Ok(())
}
