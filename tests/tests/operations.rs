//! Operating sluice: `/metrics`, `/healthz`, `/readyz`, `sluice status`,
//! output caps and secrets, against the real binary.

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod fixture;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use common::*;

const WITHIN: Duration = Duration::from_secs(60);

fn ops_config(extra_pipelines: &str) -> String {
    format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"

[pipelines.ops]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}

[pipelines.ops.plugin]
path = {plugin}

[pipelines.ops.policy]
max_attempts = 2
backoff = {{ initial = "1ms", max = "2ms" }}
max_outputs = 5
{extra_pipelines}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("chaos")),
    )
}

#[test]
fn metrics_count_what_happened_by_pipeline_and_kind() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    scratch.write("sluice.toml", ops_config(""))?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || http_request(port, "GET", "/healthz", None, b"").is_ok_and(|(s, _)| s == 200))?;
    // ok, a reject, one retry then success, a trap twice (dead letter), a
    // fan-out over max_outputs (rejected).
    let inputs = ["ok:a", "reject:no", "retry:1", "trap", "fanout:3", "fanout:6"];
    scratch.append_events("events.jsonl", &inputs.iter().map(|p| event(p)).collect::<Vec<_>>())?;
    host.wait_until("every event settled", WITHIN, || {
        metrics(port).ok().and_then(|m| m.get(r#"sluice_events_acked_total{pipeline="ops",plugin="chaos"}"#).copied()) == Some(6.0)
    })?;
    let m = metrics(port)?;
    let get = |series: &str| m.get(series).copied().with_context(|| format!("no {series} in {m:#?}"));
    let labels = r#"pipeline="ops",plugin="chaos""#;
    assert_eq!(get(&format!("sluice_events_received_total{{{labels}}}"))?, 6.0);
    assert_eq!(get(&format!("sluice_outputs_total{{{labels}}}"))?, 1.0 + 1.0 + 3.0, "ok, the recovered retry, fanout:3");
    assert_eq!(get(&format!("sluice_events_dead_lettered_total{{{labels}}}"))?, 3.0, "reject, trap, fanout:6");
    assert_eq!(get(&format!("sluice_retries_total{{{labels}}}"))?, 2.0, "retry:1 once, trap once");
    assert_eq!(get(&format!(r#"sluice_handler_errors_total{{{labels},kind="rejected"}}"#))?, 2.0, "reject and the capped fan-out");
    assert_eq!(get(&format!(r#"sluice_handler_errors_total{{{labels},kind="retryable"}}"#))?, 1.0);
    assert_eq!(get(&format!(r#"sluice_handler_errors_total{{{labels},kind="trap"}}"#))?, 2.0);
    assert_eq!(get(&format!(r#"sluice_handler_errors_total{{{labels},kind="timeout"}}"#))?, 0.0);
    assert_eq!(get(&format!("sluice_events_in_flight{{{labels}}}"))?, 0.0);
    assert!(get(&format!("sluice_plugin_memory_bytes{{{labels}}}"))? > 0.0, "a live instance holds memory");
    assert!(get(&format!("sluice_plugin_memory_peak_bytes{{{labels}}}"))? >= get(&format!("sluice_plugin_memory_bytes{{{labels}}}"))?);
    assert!(get(&format!("sluice_plugin_call_duration_seconds_count{{{labels}}}"))? >= 4.0);
    assert!(get(&format!("sluice_publish_duration_seconds_count{{{labels}}}"))? >= 1.0);
    assert_eq!(get(&format!("sluice_pipeline_paused{{{labels}}}"))?, 0.0);
    assert!(m.keys().any(|k| k.starts_with("sluice_build_info{")), "build info");
    // A file source has no lag to report: the series is left out.
    assert!(!m.keys().any(|k| k.starts_with("sluice_source_lag")), "no lag for a file");

    let dead = scratch.read_jsonl("dlq.jsonl")?;
    let capped = dead.iter().find(|d| d["payload"] == "fanout:6").context("the capped fan-out is dead-lettered")?;
    assert!(
        header(capped, "sluice-dlq-message").is_some_and(|m| m.contains("returned 6 outputs for one event, over policy.max_outputs (5)")),
        "{capped}"
    );
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

#[test]
fn readyz_names_the_pipeline_that_failed_and_status_prints_the_table() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    let broken = r#"
[pipelines.broken]
source = { kind = "file", path = "events.jsonl", follow = true }
sink = { kind = "stdout" }
dead_letter = { kind = "file", path = "dlq-broken.jsonl" }
plugin = { path = "missing.wasm" }
"#;
    scratch.write("sluice.toml", ops_config(broken))?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("readyz to settle", WITHIN, || {
        http_request(port, "GET", "/readyz", None, b"").is_ok_and(|(_, body)| body.contains("\"failed\"") && body.contains("\"running\""))
    })?;
    let (status, body) = http_request(port, "GET", "/readyz", None, b"")?;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body)?;
    assert_eq!(body["ready"], false);
    assert_eq!(body["pipelines"]["ops"]["ready"], true);
    assert_eq!(body["pipelines"]["broken"]["state"], "failed");
    let problem = body["pipelines"]["broken"]["problems"][0].as_str().unwrap_or_default();
    assert!(problem.contains("missing.wasm"), "the reason names the plugin file: {problem}");
    let (status, body) = http_request(port, "GET", "/healthz", None, b"")?;
    assert_eq!((status, body.trim()), (200, "ok"));

    scratch.append_events("events.jsonl", &[event("ok:x"), event("ok:y")])?;
    host.wait_until("two outputs", WITHIN, || scratch.count_lines("out.jsonl") == 2)?;
    let status = scratch.run(&["status", "--admin", &format!("127.0.0.1:{port}"), "--interval", "100ms"])?;
    status.ensure_success()?;
    let lines: Vec<&str> = status.stdout.lines().collect();
    assert!(lines[0].starts_with("PIPELINE"), "{}", status.stdout);
    let row: Vec<&str> = lines.iter().find(|l| l.starts_with("ops ")).context("a row for ops")?.split_whitespace().collect();
    assert_eq!(&row[..3], ["ops", "running", "chaos"], "{}", status.stdout);
    assert_eq!(row[4], "2", "received: {}", status.stdout);

    let unreachable = scratch.run(&["status", "--admin", &format!("127.0.0.1:{}", free_port()?)])?;
    unreachable.ensure_failure()?;
    assert!(unreachable.stderr.contains("cannot reach the admin API"), "{}", unreachable.stderr);
    host.terminate()?;
    host.wait(WITHIN)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_nats_connection_and_lag_follows_jetstream() -> Result<()> {
    let mut server = fixture::NatsServer::start()?;
    let scratch = Scratch::new()?;
    let url = server.url();
    let config = format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"
token = "t"

[pipelines.js]
source = {{ kind = "jetstream", url = "{url}", stream = "IN", subjects = ["in.>"], consumer = "sluice" }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {plugin} }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("passthrough")),
    );
    scratch.write("sluice.toml", config)?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    let ready = || http_request(port, "GET", "/readyz", None, b"").unwrap_or((0, String::new()));
    host.wait_until("ready", WITHIN, || ready().0 == 200)?;

    // Paused, published messages stay in the stream: the lag shows them.
    let (status, _) = http_request(port, "POST", "/pipelines/js/pause", Some("t"), b"")?;
    assert_eq!(status, 200);
    let client = server.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    for i in 0..50 {
        js.publish(format!("in.{i}"), "x".into()).await?.await?;
    }
    host.wait_until("the lag to show 50 pending", WITHIN, || {
        metrics(port)
            .ok()
            .and_then(|m| m.get(r#"sluice_source_lag{pipeline="js",plugin="passthrough"}"#).copied())
            .is_some_and(|l| l >= 50.0)
    })?;
    http_request(port, "POST", "/pipelines/js/resume", Some("t"), b"")?;
    host.wait_until("the lag to drain", WITHIN, || {
        metrics(port).ok().and_then(|m| m.get(r#"sluice_source_lag{pipeline="js",plugin="passthrough"}"#).copied()) == Some(0.0)
    })?;

    server.kill()?;
    host.wait_until("not ready while NATS is down", WITHIN, || {
        let (status, body) = ready();
        status == 503 && body.contains(&format!("NATS connection to {url}"))
    })?;
    server.restart()?;
    host.wait_until("ready again", WITHIN, || ready().0 == 200)?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

#[test]
fn secrets_stay_out_of_logs_the_admin_api_and_metrics() -> Result<()> {
    let scratch = Scratch::new()?;
    let secret = "hunter2-very-secret";
    scratch.write("events.jsonl", "")?;
    let config = format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"
token = "${{ADMIN_TOKEN}}"

[pipelines.secretive]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}

[pipelines.secretive.plugin]
path = {plugin}
config = {{ api_token = "${{ADMIN_TOKEN}}" }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("passthrough")),
    );
    scratch.write("sluice.toml", config)?;
    let mut command = scratch.sluice(&["run", "sluice.toml"]);
    command.env("ADMIN_TOKEN", secret).env("SLUICE_LOG", "debug");
    let mut host = Running::spawn(command)?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || http_request(port, "GET", "/pipelines", None, b"").is_ok_and(|(s, _)| s == 200))?;
    scratch.append_events("events.jsonl", &[json!({"payload": "p"})])?;
    host.wait_until("one output", WITHIN, || scratch.count_lines("out.jsonl") == 1)?;
    for path in ["/pipelines", "/pipelines/secretive", "/metrics", "/readyz"] {
        let (_, body) = http_request(port, "GET", path, None, b"")?;
        assert!(!body.contains(secret), "{path} leaks the secret: {body}");
    }
    // The secret works as the token, so it was read.
    let (status, _) = http_request(port, "POST", "/pipelines/secretive/pause", Some(secret), b"")?;
    assert_eq!(status, 200);
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    assert!(!finished.stderr.contains(secret), "the logs leak the secret");
    assert!(!finished.stdout.contains(secret));

    // A config error about an interpolated value does not echo it either.
    scratch.write("bad.toml", "[admin]\nlisten = \"${ADMIN_TOKEN}\"\n")?;
    let mut command = scratch.sluice(&["check", "bad.toml"]);
    command.env("ADMIN_TOKEN", secret);
    let output = command.output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success());
    assert!(said.contains("${ADMIN_TOKEN}"), "the error names the variable: {said}");
    assert!(!said.contains(secret), "a config error leaks the secret: {said}");
    Ok(())
}

#[test]
fn json_logs_carry_pipeline_version_and_event_and_guest_logs_are_rate_limited() -> Result<()> {
    let scratch = Scratch::new()?;
    let mut events: Vec<Value> = vec![event("reject:bad")];
    events.extend((0..600).map(|i| json!({ "id": format!("e{i}"), "payload": format!("log:line {i}") })));
    scratch.write_events("events.jsonl", &events)?;
    scratch.write("sluice.toml", one_pipeline("chatty", "chaos", "", ""))?;
    let finished = scratch.run(&["--log-format", "json", "run", "sluice.toml"])?;
    finished.ensure_success()?;
    let lines: Vec<Value> = finished.stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "JSON log lines: {}", finished.stderr);
    let digest = sha256_hex(&plugin("chaos"))?;
    let dead = lines
        .iter()
        .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("dead-lettering event")))
        .context("a dead-letter log line")?;
    assert_eq!(dead["fields"]["pipeline"], "chatty");
    assert_eq!(dead["fields"]["version"], &digest[..12]);
    assert!(dead["fields"]["event"].as_str().is_some_and(|e| e.ends_with(":1")), "{dead}");
    let guest: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "sluice::guest" && l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("line ")))
        .collect();
    let first = guest.first().context("guest log lines")?;
    assert_eq!(first["fields"]["plugin"], "chaos");
    assert_eq!(first["fields"]["version"], &digest[..12]);
    // A batch is one call: its log lines carry the batch's range of ids, and
    // the chaos plugin adds the exact one as its own field.
    let range = first["fields"]["event"].as_str().context("event field")?;
    assert!(range.starts_with("events.jsonl:1..") || range == "e0", "{first}");
    assert!(first["fields"]["fields"].as_str().is_some_and(|f| f.contains("event=\"e0\"")), "{first}");
    // 600 lines in well under a second: the burst (200) gets through, the
    // rest is dropped and reported.
    assert!(guest.len() < 600 && guest.len() >= 200, "{} guest lines", guest.len());
    let dropped: u64 = lines
        .iter()
        .filter(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("plugin log lines dropped")))
        .filter_map(|l| l["fields"]["dropped"].as_u64())
        .sum();
    assert_eq!(dropped as usize + guest.len(), 600, "every line is either logged or counted as dropped");
    Ok(())
}

/// SIGTERM while the NATS server a sink publishes to is down: the host
/// exits within `shutdown_timeout` (plus a second for closing), handing the
/// unfinished events back, instead of waiting for the server (8+ minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_nats_is_down_exits_within_the_shutdown_timeout() -> Result<()> {
    let mut server = fixture::NatsServer::start()?;
    let scratch = Scratch::new()?;
    let url = server.url();
    scratch.write_events("events.jsonl", &[json!({ "payload": "first" })])?;
    let config = format!(
        r#"{runtime}
shutdown_timeout = "2s"

[pipelines.out]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "nats", url = "{url}", subject = "out" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {plugin} }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("passthrough")),
    );
    scratch.write("sluice.toml", config)?;
    let client = server.client().await?;
    let mut outputs = client.subscribe("out").await?;
    client.flush().await?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    // Running and publishing: the first output arrives.
    let first = tokio::time::timeout(WITHIN, futures::StreamExt::next(&mut outputs)).await;
    assert!(matches!(first, Ok(Some(_))), "no output from the running host");
    let mark = host.log_mark();
    server.kill()?;
    scratch.append_events("events.jsonl", &(0..20).map(|i| json!({ "payload": format!("e{i}") })).collect::<Vec<_>>())?;
    // The host noticed the server is gone (and keeps running).
    host.wait_for_log("NATS connection lost; reconnecting", mark, WITHIN)?;
    assert!(host.is_running()?, "the host stopped on its own");
    let stopping = std::time::Instant::now();
    host.terminate()?;
    let finished = host.wait(Duration::from_secs(20))?;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(6), "exited after {took:?} (shutdown_timeout 2s): {}", finished.stderr);
    Ok(())
}

/// The hardening report's stall: one input with 200,000 headers (a 3 MB
/// line) beside a healthy pipeline. The big event is dead-lettered at
/// intake (over `policy.max_headers`); the healthy pipeline keeps handling
/// events and the admin API keeps answering within a second throughout.
#[test]
fn an_event_with_200k_headers_stalls_nothing() -> Result<()> {
    let scratch = Scratch::new()?;
    let headers: serde_json::Map<String, Value> = (0..200_000).map(|i| (format!("h{i}"), json!("v"))).collect();
    scratch.write_events("big.jsonl", &[json!({ "id": "big", "payload": "x", "headers": headers })])?;
    scratch.write_events("events.jsonl", &[json!({ "payload": "first" })])?;
    let config = format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"

[pipelines.healthy]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {plugin} }}

[pipelines.big]
source = {{ kind = "file", path = "big.jsonl", follow = true }}
sink = {{ kind = "file", path = "big-out.jsonl" }}
dead_letter = {{ kind = "file", path = "big-dlq.jsonl" }}
plugin = {{ path = {plugin} }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("passthrough")),
    );
    scratch.write("sluice.toml", config)?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the healthy pipeline's first output", WITHIN, || scratch.count_lines("out.jsonl") >= 1)?;
    let mut slowest = Duration::ZERO;
    let mut sent = 1;
    host.wait_until("the big event dead-lettered", WITHIN, || {
        let asked = std::time::Instant::now();
        let answered = http_request(port, "GET", "/healthz", None, b"").map(|(status, _)| status == 200).unwrap_or(false);
        slowest = slowest.max(if answered { asked.elapsed() } else { Duration::MAX });
        if scratch.append_events("events.jsonl", &[json!({ "payload": format!("e{sent}") })]).is_ok() {
            sent += 1;
        }
        scratch.count_lines("big-dlq.jsonl") >= 1
    })?;
    assert!(slowest < Duration::from_secs(1), "the admin API took {slowest:?} to answer");
    host.wait_until("the healthy pipeline caught up", Duration::from_secs(10), || scratch.count_lines("out.jsonl") >= sent)?;
    let dead = scratch.read_jsonl("big-dlq.jsonl")?;
    let message = dead[0]["headers"]["sluice-dlq-message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("200000 headers, over policy.max_headers (10000)"), "{message}");
    assert_eq!(scratch.count_lines("big-out.jsonl"), 0);
    host.terminate()?;
    host.wait(WITHIN)?;
    Ok(())
}

/// `sluice tap` streams a running pipeline's inputs, outputs and dead
/// letters from the admin API's tap, filtered per watcher, with credentials
/// redacted, and ends on its own when the host stops.
#[test]
fn sluice_tap_shows_live_inputs_outputs_and_dead_letters() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    scratch.write("sluice.toml", ops_config(""))?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || {
        http_request(port, "GET", "/pipelines/ops", None, b"").is_ok_and(|(status, _)| status == 200)
    })?;
    // Through a shell, so each tap's stdout goes to a file the test reads
    // while it runs.
    let tap = |args: &str, out: &str| -> Result<Running> {
        let mut command = std::process::Command::new("bash");
        command
            .args(["-c", &format!("exec \"$0\" tap ops --admin 127.0.0.1:{port} {args} > {out}.out 2> {out}.err")])
            .arg(sluice_bin())
            .current_dir(scratch.dir());
        Running::spawn(command)
    };
    let mut all = tap("", "all")?;
    let mut dead = tap("--dead-letters --format pretty", "dead")?;
    for name in ["all", "dead"] {
        let err = format!("{name}.err");
        all.wait_until(&format!("tap {name} to connect"), WITHIN, || scratch.read(&err).is_ok_and(|e| e.contains("tapping `ops`")))?;
    }
    let secret = json!({ "payload": "ok:a", "headers": { "Authorization": "Bearer hunter2" } });
    scratch.append_events("events.jsonl", &[secret, event("reject:no user"), event("plain")])?;
    host.wait_until("three events handled", WITHIN, || scratch.count_lines("out.jsonl") == 2 && scratch.count_lines("dlq.jsonl") == 1)?;
    let seen = poll_until("the tap to show 6 events", WITHIN, || {
        let lines = parse_jsonl(&scratch.read("all.out")?)?;
        Ok((lines.len() >= 6).then_some(lines))
    })?;
    let points: Vec<(&str, &str)> = seen.iter().map(|s| (s["point"].as_str().unwrap_or("?"), s["event"].as_str().unwrap_or("?"))).collect();
    for expected in [
        ("input", "events.jsonl:1"),
        ("output", "events.jsonl:1"),
        ("input", "events.jsonl:2"),
        ("dead-letter", "events.jsonl:2"),
        ("output", "events.jsonl:3"),
    ] {
        assert!(points.contains(&expected), "{expected:?} in {points:?}");
    }
    let first_output = seen.iter().find(|s| s["point"] == "output" && s["event"] == "events.jsonl:1").context("the first output")?;
    assert_eq!(first_output["payload"]["text"], "a");
    assert_eq!(first_output["version"].as_str().map(str::len), Some(12), "names the version: {first_output}");
    let first_input = seen.iter().find(|s| s["point"] == "input" && s["event"] == "events.jsonl:1").context("the first input")?;
    assert_eq!(first_input["headers"][0], json!(["Authorization", { "text": "<redacted>", "bytes": 14 }]));
    assert!(!scratch.read("all.out")?.contains("hunter2"), "a credential header is never shown");
    let dead_line = poll_until("the dead-letter tap's line", WITHIN, || Ok(scratch.read("dead.out")?.lines().next().map(str::to_owned)))?;
    assert!(
        dead_line.contains("dead-letter events.jsonl:2") && dead_line.contains("[rejected after 1 attempt(s): no user]"),
        "{dead_line}"
    );
    assert_eq!(scratch.read("dead.out")?.lines().count(), 1, "only dead letters: {}", scratch.read("dead.out")?);

    // SIGTERM: the host drains and stops; each tap is told and exits.
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    for (name, tap) in [("all", &mut all), ("dead", &mut dead)] {
        tap.wait_until(&format!("tap {name} to exit"), WITHIN, || {
            scratch.read(&format!("{name}.err")).is_ok_and(|e| e.contains("tap ended"))
        })?;
    }
    Ok(())
}

/// An admin address that cannot be bound (here: another listener holds it)
/// fails the start: `sluice run` exits non-zero at once, naming the address,
/// instead of running pipelines nobody can see or health-check.
#[test]
fn a_taken_admin_address_fails_the_start() -> Result<()> {
    let scratch = Scratch::new()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = taken.local_addr()?;
    scratch.write("events.jsonl", "")?;
    scratch.write("sluice.toml", ops_config("").replace(ANY_PORT, &address.to_string()))?;
    let finished = scratch.run(&["run", "sluice.toml"])?;
    finished.ensure_failure()?;
    ensure!(finished.stderr.contains(&format!("cannot start the admin API on {address} (`[admin] listen`)")), "{}", finished.stderr);
    ensure!(!scratch.path("out.jsonl").exists(), "a pipeline ran without its admin API");
    drop(taken);
    Ok(())
}

/// `--admin-addr-file` (`SLUICE_ADMIN_ADDR_FILE`): with `listen` on port 0
/// the host writes the address it bound, and the API answers there.
#[test]
fn the_admin_address_file_names_the_bound_port() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    scratch.write("sluice.toml", ops_config(""))?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml", "--admin-addr-file", "bound.addr"]))?;
    host.wait_until("the address file", WITHIN, || scratch.read("bound.addr").is_ok_and(|t| t.ends_with('\n')))?;
    let address: std::net::SocketAddr = scratch.read("bound.addr")?.trim().parse()?;
    ensure!(address.ip().is_loopback() && address.port() != 0, "{address}");
    let (status, _) = http_request(address.port(), "GET", "/healthz", None, b"")?;
    ensure!(status == 200, "/healthz answered {status}");
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    ensure!(finished.stderr.contains(&format!("admin API listening on {address}")), "{}", finished.stderr);
    Ok(())
}

/// Every rule a config breaks is reported at once: `sluice check` prints
/// one line each (and still loads the plugins of the pipelines that are
/// fine), `sluice run` refuses with all of them.
#[test]
fn check_and_run_report_every_violation_at_once() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    let broken = format!(
        r#"
[pipelines.broken]
source = {{ kind = "file", path = "events.jsonl" }}
sink = {{ kind = "file", path = "broken.jsonl" }}
dead_letter = {{ kind = "file", path = "broken-dlq.jsonl" }}
plugin = {{ path = {plugin} }}
breaker = {{ failures = 0 }}
restart = {{ window = "0s" }}
policy = {{ max_attempts = 0 }}
"#,
        plugin = toml_path(&plugin("chaos")),
    );
    scratch.write("sluice.toml", ops_config(&broken))?;
    let keys = ["breaker.failures", "policy.max_attempts", "restart.window"];

    let checked = scratch.run(&["check", "sluice.toml"])?;
    checked.ensure_failure()?;
    for key in keys {
        ensure!(checked.stdout.contains(&format!("error pipeline `broken`, key `{key}`: ")), "{key} missing:\n{}", checked.stdout);
    }
    ensure!(checked.stdout.contains("ok    pipeline `ops`: plugin chaos"), "{}", checked.stdout);
    ensure!(!checked.stdout.contains("ok    pipeline `broken`"), "a pipeline that breaks its rules is not loaded:\n{}", checked.stdout);

    let ran = scratch.run(&["run", "sluice.toml"])?;
    ran.ensure_failure()?;
    ensure!(ran.stderr.contains("sluice.toml: 3 problems:"), "{}", ran.stderr);
    for key in keys {
        ensure!(ran.stderr.contains(&format!("pipeline `broken`, key `{key}`: ")), "{key} missing:\n{}", ran.stderr);
    }
    ensure!(!scratch.path("out.jsonl").exists(), "a pipeline ran from an invalid config");
    Ok(())
}
