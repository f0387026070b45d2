//! The restart policy (`[pipelines.<name>.restart]`), against the real
//! binary and a real nats-server: a pipeline whose JetStream sink fails
//! starts again with backoff, through a broker outage, and loses nothing;
//! one that keeps failing stops at its limit; a shutdown cuts a backoff
//! short.
//!
//! The sink fails the way a full stream makes it fail: a stream with
//! `max_msgs` and `discard = new` refuses a publish ("maximum messages
//! exceeded"), which the JetStream sink does not retry, so the pipeline
//! stops on a sink error as it would on any broker refusal.

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod fixture;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use async_nats::jetstream::{self, stream};
use serde_json::{json, Value};

use common::*;
use fixture::{read_stream, stream_len, NatsServer};

const WITHIN: Duration = Duration::from_secs(90);
const TOKEN: &str = "restart-test-token";

/// A stream capturing `subject` that refuses messages past `max`.
async fn bounded_stream(client: &async_nats::Client, name: &str, subject: &str, max: i64) -> Result<()> {
    jetstream::new(client.clone())
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            max_messages: max,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating stream {name}"))?;
    Ok(())
}

/// `GET /pipelines/{name}`.
fn pipeline(port: u16, name: &str) -> Result<Value> {
    let (status, body) = http_request(port, "GET", &format!("/pipelines/{name}"), None, b"")?;
    ensure!(status == 200, "GET /pipelines/{name}: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

fn restarts(port: u16, name: &str) -> f64 {
    metrics(port).ok().and_then(|m| m.get(&format!(r#"sluice_pipeline_restarts_total{{pipeline="{name}"}}"#)).copied()).unwrap_or(-1.0)
}

/// A JetStream sink fails (its stream is full) while a file→file pipeline
/// runs beside it. The failed pipeline restarts with backoff (`/pipelines`
/// shows it restarting, with its attempt and last error; `/readyz` names
/// it), keeps restarting while the nats-server is down, and once the server
/// is back and the stream has room it runs again and publishes every event
/// exactly once (the stream's copies are asserted), with the plugin
/// version uploaded before the failure, not the file it started with. The
/// file pipeline delivers everything meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sink_restarts_with_backoff_through_an_outage_and_loses_nothing() -> Result<()> {
    let mut server = NatsServer::start()?;
    let client = server.client().await?;
    bounded_stream(&client, "OUT", "out", 5).await?;
    let scratch = Scratch::new()?;
    scratch.write("tagger.wasm", std::fs::read(plugin("tag_v1"))?)?;
    scratch.write_events("events.jsonl", &(0..3).map(|i| event(&format!("e{i}"))).collect::<Vec<_>>())?;
    scratch.write("files-in.jsonl", "")?;
    let config = format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"
token = "{TOKEN}"

[pipelines.js]
source = {{ kind = "file", path = "events.jsonl", follow = true, checkpoint = "events.checkpoint" }}
sink = {{ kind = "jetstream", url = "{url}", subject = "out" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = "tagger.wasm" }}
restart = {{ initial_backoff = "100ms", max_backoff = "400ms" }}

[pipelines.files]
source = {{ kind = "file", path = "files-in.jsonl", follow = true }}
sink = {{ kind = "file", path = "files-out.jsonl" }}
dead_letter = {{ kind = "file", path = "files-dlq.jsonl" }}
plugin = {{ path = {passthrough} }}
"#,
        runtime = runtime_table(),
        url = server.url(),
        passthrough = toml_path(&plugin("passthrough")),
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let port = host.admin_port()?;
    wait_async("the first three outputs", WITHIN, async || Ok((stream_len(&client, "OUT").await? == 3).then_some(()))).await?;
    assert_eq!(pipeline(port, "js")?["state"], "running");

    // A new version through the admin API; the file stays at v1.
    let v2 = std::fs::read(plugin("tag_v2"))?;
    let v2_digest = sha256_hex(&plugin("tag_v2"))?;
    let (status, body) = http_request(port, "PUT", "/pipelines/js/plugin", Some(TOKEN), &v2)?;
    ensure!(status == 200, "upload: {status} {body}");

    // Four more: two fit, the third is refused and the pipeline fails.
    scratch.append_events("events.jsonl", &(3..7).map(|i| event(&format!("e{i}"))).collect::<Vec<_>>())?;
    // Polled: between backoffs the pipeline is briefly starting or running.
    let restarting = poll_until("js to restart, attempt 2 or later", WITHIN, || {
        Ok(pipeline(port, "js").ok().filter(|p| p["state"] == "restarting" && p["restart"]["attempt"].as_u64() >= Some(2)))
    })?;
    let last_error = restarting["restart"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("sink failed") && last_error.contains("maximum messages"), "{restarting}");
    assert!(restarting["restart"]["next_try"].as_str().is_some_and(|t| t.ends_with('Z')), "{restarting}");
    let ready = poll_until("/readyz to name the restart", WITHIN, || {
        let (status, body) = http_request(port, "GET", "/readyz", None, b"")?;
        let body: Value = serde_json::from_str(&body)?;
        let restarting = body["pipelines"]["js"]["problems"][0].as_str().is_some_and(|p| p.starts_with("restarting (attempt "));
        Ok((status == 503 && restarting).then_some(body))
    })?;
    let problem = ready["pipelines"]["js"]["problems"][0].as_str().unwrap_or_default();
    assert!(problem.contains("after: sink failed") && problem.contains("maximum messages"), "{ready}");
    assert_eq!(ready["pipelines"]["files"]["ready"], true, "{ready}");
    assert!(restarts(port, "js") >= 1.0, "the restart metric counts");

    // The other pipeline keeps flowing.
    scratch.append_events("files-in.jsonl", &(0..10).map(|i| event(&format!("f{i}"))).collect::<Vec<_>>())?;
    host.wait_until("the file pipeline's ten outputs", WITHIN, || scratch.count_lines("files-out.jsonl") == 10)?;

    // The broker goes away. Depending on where the kill lands, the pipeline
    // waits in its backoff, in a start (for the connection), or in a run
    // (its publish waits for the connection): never ready meanwhile.
    server.kill()?;
    host.wait_until("js not ready while NATS is down", WITHIN, || {
        http_request(port, "GET", "/readyz", None, b"").is_ok_and(|(status, body)| {
            status == 503 && serde_json::from_str::<Value>(&body).is_ok_and(|b| b["pipelines"]["js"]["ready"] == false)
        })
    })?;
    scratch.append_events("files-in.jsonl", &(10..15).map(|i| event(&format!("f{i}"))).collect::<Vec<_>>())?;
    host.wait_until("the file pipeline's next five outputs", WITHIN, || scratch.count_lines("files-out.jsonl") == 15)?;

    // Back, with room in the stream: the pipeline runs again.
    server.restart()?;
    let client = server.client().await?;
    let js = jetstream::new(client.clone());
    let mut config = js.get_stream("OUT").await?.info().await?.config.clone();
    config.max_messages = -1;
    js.update_stream(config).await?;
    wait_async("all seven outputs", WITHIN, async || Ok((stream_len(&client, "OUT").await? >= 7).then_some(()))).await?;
    host.wait_until("js to run again", WITHIN, || pipeline(port, "js").is_ok_and(|p| p["state"] == "running"))?;
    host.wait_until("ready again", WITHIN, || http_request(port, "GET", "/readyz", None, b"").is_ok_and(|(s, _)| s == 200))?;

    let stored = read_stream(&client, "OUT").await?;
    let published: Vec<&str> = stored.iter().map(|m| m.payload.as_str()).collect();
    assert_eq!(published, ["v1:e0", "v1:e1", "v1:e2", "v2:e3", "v2:e4", "v2:e5", "v2:e6"], "every event once, in order");
    for message in &stored[3..] {
        assert_eq!(message.header("sluice-plugin-digest"), Some(v2_digest.as_str()), "made by the uploaded version: {message:?}");
    }
    let view = pipeline(port, "js")?;
    assert_eq!(view["plugin"]["current"]["digest"], v2_digest.as_str(), "{view}");
    assert!(view["restarts"].as_u64() >= Some(2), "{view}");
    let m = metrics(port)?;
    assert_eq!(m.get(r#"sluice_pipeline_state{pipeline="js",state="running"}"#), Some(&1.0), "{m:#?}");
    assert_eq!(m.get(r#"sluice_pipeline_state{pipeline="js",state="restarting"}"#), Some(&0.0));
    assert_eq!(m.get(r#"sluice_pipeline_restarts_total{pipeline="files"}"#), Some(&0.0));
    assert_eq!(scratch.count_lines("dlq.jsonl"), 0, "nothing dead-lettered");
    let files = scratch.read_jsonl("files-out.jsonl")?;
    assert_eq!(payloads(&files), (0..15).map(|i| format!("f{i}")).collect::<Vec<_>>());

    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    assert!(finished.stderr.contains("restarting with the current plugin version"), "{}", finished.stderr);
    Ok(())
}

/// A pipeline that fails at every run restarts `max_restarts` times, then
/// stays failed: the log says so, `/readyz` and `/pipelines` name it with
/// the limit and the last error, the metrics count its restarts and show
/// it failed, and `sluice status` prints it. Another pipeline waits an hour
/// to restart: SIGTERM ends the host at once all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_keeps_failing_stops_at_its_limit_and_sigterm_cuts_a_backoff_short() -> Result<()> {
    let server = NatsServer::start()?;
    let client = server.client().await?;
    bounded_stream(&client, "FULL", "full", 1).await?;
    jetstream::new(client.clone()).publish("full", "filler".into()).await?.await?;
    let scratch = Scratch::new()?;
    scratch.write_events("doomed.jsonl", &[event("d")])?;
    scratch.write_events("patient.jsonl", &[event("p")])?;
    let pipeline_table = |name: &str, restart: &str| {
        format!(
            r#"
[pipelines.{name}]
source = {{ kind = "file", path = "{name}.jsonl", follow = true }}
sink = {{ kind = "jetstream", url = "{url}", subject = "full" }}
dead_letter = {{ kind = "file", path = "{name}-dlq.jsonl" }}
plugin = {{ path = {plugin} }}
restart = {restart}
"#,
            url = server.url(),
            plugin = toml_path(&plugin("passthrough")),
        )
    };
    let config = format!(
        "{runtime}\n[admin]\nlisten = \"{ANY_PORT}\"\n{doomed}{patient}",
        runtime = runtime_table(),
        doomed = pipeline_table("doomed", r#"{ initial_backoff = "50ms", max_backoff = "100ms", max_restarts = 2, window = "1h" }"#),
        patient = pipeline_table("patient", r#"{ initial_backoff = "1h", max_backoff = "1h" }"#),
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let port = host.admin_port()?;
    host.wait_until("doomed to fail for good and patient to wait", WITHIN, || {
        pipeline(port, "doomed").is_ok_and(|p| p["state"] == "failed")
            && pipeline(port, "patient").is_ok_and(|p| p["state"] == "restarting")
    })?;

    let doomed = pipeline(port, "doomed")?;
    assert_eq!(doomed["restarts"], 2, "{doomed}");
    let error = doomed["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("failed after 2 restart(s) within 1h (restart.max_restarts)") && error.contains("maximum messages"),
        "{doomed}"
    );
    let patient = pipeline(port, "patient")?;
    assert_eq!((patient["restart"]["attempt"].as_u64(), patient["restarts"].as_u64()), (Some(1), Some(0)), "{patient}");

    let (status, ready) = http_request(port, "GET", "/readyz", None, b"")?;
    assert_eq!(status, 503, "{ready}");
    let ready: Value = serde_json::from_str(&ready)?;
    assert_eq!(ready["pipelines"]["doomed"]["state"], "failed", "{ready}");
    assert_eq!(ready["pipelines"]["doomed"]["problems"], json!([error]), "{ready}");

    let m = metrics(port)?;
    assert_eq!(m.get(r#"sluice_pipeline_restarts_total{pipeline="doomed"}"#), Some(&2.0), "{m:#?}");
    assert_eq!(m.get(r#"sluice_pipeline_state{pipeline="doomed",state="failed"}"#), Some(&1.0));
    assert_eq!(m.get(r#"sluice_pipeline_state{pipeline="patient",state="restarting"}"#), Some(&1.0));
    assert_eq!(m.get(r#"sluice_pipeline_state{pipeline="patient",state="running"}"#), Some(&0.0));

    let status = scratch.run(&["status", "--admin", &format!("127.0.0.1:{port}"), "--interval", "10ms"])?;
    status.ensure_success()?;
    let row =
        |name: &str| status.stdout.lines().find(|l| l.starts_with(&format!("{name} "))).map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(row("doomed").and_then(|r| r.get(1).map(|s| s.to_string())).as_deref(), Some("failed"), "{}", status.stdout);
    assert_eq!(row("patient").and_then(|r| r.get(1).map(|s| s.to_string())).as_deref(), Some("restarting:attempt-1"), "{}", status.stdout);
    assert!(status.stdout.contains("doomed: failed after 2 restart(s)"), "{}", status.stdout);

    // An hour of backoff left: SIGTERM ends the host promptly.
    let stopping = Instant::now();
    host.terminate()?;
    let finished = host.wait(Duration::from_secs(30))?;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "exited after {took:?}: {}", finished.stderr);
    assert_eq!(finished.code(), Some(1), "pipelines failed: {}", finished.stderr);
    assert!(finished.stderr.contains("restart limit reached, the pipeline stays failed"), "{}", finished.stderr);
    assert_eq!(stream_len(&client, "FULL").await?, 1, "nothing got in");
    Ok(())
}

/// A stateful pipeline (the `counter` plugin, embedded state) whose sink
/// fails mid-batch: the increments of the events it did not finish are not
/// committed, the restarted run opens the same state database again and
/// counts on from what was committed. The stream ends with every count
/// once: no increment lost, none applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_stateful_pipeline_reopens_its_state_and_counts_each_event_once() -> Result<()> {
    let server = NatsServer::start()?;
    let client = server.client().await?;
    bounded_stream(&client, "COUNTS", "counts", 3).await?;
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &(0..6).map(|_| event("a")).collect::<Vec<_>>())?;
    let config = format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"

[pipelines.counts]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "jetstream", url = "{url}", subject = "counts" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
state = {{ backend = "embedded", path = "state.redb" }}
plugin = {{ path = {plugin} }}
restart = {{ initial_backoff = "50ms", max_backoff = "200ms" }}
"#,
        runtime = runtime_table(),
        url = server.url(),
        plugin = toml_path(&plugin("counter")),
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let port = host.admin_port()?;
    host.wait_until("counts to fail and restart", WITHIN, || restarts(port, "counts") >= 2.0)?;
    assert_eq!(stream_len(&client, "COUNTS").await?, 3, "the stream took three");

    let js = jetstream::new(client.clone());
    let mut config = js.get_stream("COUNTS").await?.info().await?.config.clone();
    config.max_messages = -1;
    js.update_stream(config).await?;
    wait_async("six counts", WITHIN, async || Ok((stream_len(&client, "COUNTS").await? >= 6).then_some(()))).await?;
    host.wait_until("counts to run again", WITHIN, || pipeline(port, "counts").is_ok_and(|p| p["state"] == "running"))?;
    // State commits follow the outputs; the count gets there, and stays.
    let count = || {
        http_request(port, "GET", "/pipelines/counts/state/count:a", None, b"")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .map(|body| body["value"].clone())
    };
    host.wait_until("the committed count to be 6", WITHIN, || count() == Some(json!("6")))?;

    let stored = read_stream(&client, "COUNTS").await?;
    let counts: Vec<&str> = stored.iter().map(|m| m.payload.as_str()).collect();
    assert_eq!(counts, ["a=1", "a=2", "a=3", "a=4", "a=5", "a=6"]);
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// A file sink whose writes fail (its path leads to `/dev/full`: "No space
/// left on device") stops the pipeline; the restarts open the file anew
/// rather than reuse the failed writer, so once there is room again (the
/// path leads to a real file) the pipeline delivers every event, once.
#[test]
fn a_full_disk_is_survived_by_a_restart_that_reopens_the_file() -> Result<()> {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full on this system");
        return Ok(());
    }
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &(0..5).map(|i| event(&format!("e{i}"))).collect::<Vec<_>>())?;
    std::os::unix::fs::symlink("/dev/full", scratch.path("out.jsonl"))?;
    let config = format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"

[pipelines.disk]
source = {{ kind = "file", path = "events.jsonl", follow = true, checkpoint = "events.checkpoint" }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {plugin} }}
restart = {{ initial_backoff = "50ms", max_backoff = "200ms" }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("passthrough")),
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let port = host.admin_port()?;
    let restarting = poll_until("disk to restart after a full disk", WITHIN, || {
        Ok(pipeline(port, "disk").ok().filter(|p| p["state"] == "restarting" && p["restarts"].as_u64() >= Some(1)))
    })?;
    let error = restarting["restart"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left on device"), "the OS error is shown: {restarting}");

    // Room again: the path is a file.
    std::fs::remove_file(scratch.path("out.jsonl"))?;
    host.wait_until("five outputs", WITHIN, || scratch.count_lines("out.jsonl") >= 5)?;
    host.wait_until("disk to run again", WITHIN, || pipeline(port, "disk").is_ok_and(|p| p["state"] == "running"))?;
    scratch.append_events("events.jsonl", &[event("e5")])?;
    host.wait_until("six outputs", WITHIN, || scratch.count_lines("out.jsonl") >= 6)?;
    let outputs = scratch.read_jsonl("out.jsonl")?;
    assert_eq!(payloads(&outputs), (0..6).map(|i| format!("e{i}")).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!(scratch.count_lines("dlq.jsonl"), 0);
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}
