//! Outbound HTTP from plugins (`wasi:http`), against the real binary, the
//! `http_enrich` plugin and a small HTTP server on 127.0.0.1 started by each
//! test, which records every request it gets.

#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use common::*;

const WITHIN: Duration = Duration::from_secs(60);
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// The client's address: one per connection.
    peer: std::net::SocketAddr,
    path: String,
    key: Option<String>,
    traceparent: Option<String>,
}

/// The test's HTTP server, by path:
/// `/ok` 200 echoing what it got (JSON); `/flaky` 503 to the first two
/// requests of each idempotency key, then 200; `/fail` always 503; `/bad`
/// 400; `/big` 200 with 64 KiB; `/slow` 200 after 3 s.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let app = axum::Router::new().fallback(answer).with_state(seen.clone());
        runtime.spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await });
        Ok(Self { port, seen, _runtime: runtime })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn answer(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let this = Seen { peer, path: parts.uri.path().to_owned(), key: header("idempotency-key"), traceparent: header("traceparent") };
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let earlier = record(&seen, &this);
    match this.path.as_str() {
        "/ok" => {
            axum::Json(json!({ "key": this.key, "traceparent": this.traceparent, "body": String::from_utf8_lossy(&body) })).into_response()
        }
        "/flaky" if earlier < 2 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "/flaky" => "recovered".into_response(),
        "/bad" => (StatusCode::BAD_REQUEST, "no such customer").into_response(),
        "/big" => vec![b'x'; 64 * 1024].into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "late".into_response()
        }
        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Keeps `this`; returns how many requests with its path and key came
/// before it.
fn record(seen: &Mutex<Vec<Seen>>, this: &Seen) -> usize {
    match seen.lock() {
        Ok(mut seen) => {
            let earlier = seen.iter().filter(|s| s.key == this.key && s.path == this.path).count();
            seen.push(this.clone());
            earlier
        }
        Err(_) => 0,
    }
}

/// Pipeline `enrich`: `events.jsonl` → `http_enrich` calling `url` →
/// `out.jsonl`, failures to `dlq.jsonl`; `http` is the body of the
/// `plugin.http` table (none: no table), `policy` more policy lines; with
/// `admin`, an admin API on any free port and a followed event file.
fn config(url: &str, http: Option<&str>, policy: &str, admin: bool) -> String {
    let follow = admin;
    let admin = if admin { format!("[admin]\nlisten = \"{ANY_PORT}\"\n") } else { String::new() };
    let http = http.map(|body| format!("[pipelines.enrich.plugin.http]\n{body}\n")).unwrap_or_default();
    format!(
        r#"{runtime}
{admin}
[pipelines.enrich]
source = {{ kind = "file", path = "events.jsonl", follow = {follow} }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}

[pipelines.enrich.plugin]
path = {plugin}

[pipelines.enrich.plugin.config]
url = {url}

{http}
[pipelines.enrich.policy]
backoff = {{ initial = "1ms", max = "2ms" }}
{policy}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("http_enrich")),
        url = toml_str(url),
    )
}

fn allow(server: &Server) -> String {
    format!("allow = [\"http://127.0.0.1:{}\"]", server.port)
}

fn events(ids: &[&str]) -> Vec<Value> {
    ids.iter()
        .map(|id| json!({ "id": id, "payload": format!("{{\"order\":\"{id}\"}}"), "headers": { "traceparent": TRACEPARENT } }))
        .collect()
}

/// The calls a dead letter lists (`sluice-dlq-calls`).
fn calls(record: &Value) -> Result<Vec<Value>> {
    let text = header(record, "sluice-dlq-calls").context("no sluice-dlq-calls header")?;
    Ok(serde_json::from_str::<Vec<Value>>(text)?)
}

#[test]
fn an_allowed_call_puts_the_response_in_the_output_with_key_and_trace_context() -> Result<()> {
    let server = Server::start()?;
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["a", "b"]))?;
    scratch.write("sluice.toml", config(&server.url("/ok"), Some(&allow(&server)), "", false))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;

    let out = scratch.read_jsonl("out.jsonl")?;
    assert_eq!(out.len(), 2, "{out:#?}");
    for (record, id) in out.iter().zip(["a", "b"]) {
        assert_eq!(header(record, "http-status"), Some("200"));
        let echoed: Value = serde_json::from_str(record["payload"].as_str().context("text payload")?)?;
        assert_eq!(echoed["key"], json!(format!("{id}:0")), "one call per event, keyed by its id");
        assert_eq!(echoed["traceparent"], json!(TRACEPARENT), "the event's trace context goes on");
        assert_eq!(echoed["body"], json!(format!("{{\"order\":\"{id}\"}}")));
    }
    assert_eq!(server.seen().len(), 2);
    assert!(scratch.read_jsonl("dlq.jsonl")?.is_empty());
    Ok(())
}

/// 300 events, one call each, go out on kept-alive connections: a few,
/// not one per call (wasmtime's own sender opened one per request).
#[test]
fn calls_reuse_kept_alive_connections() -> Result<()> {
    let server = Server::start()?;
    let scratch = Scratch::new()?;
    let ids: Vec<String> = (0..300).map(|i| format!("e{i}")).collect();
    scratch.write_events("events.jsonl", &events(&ids.iter().map(String::as_str).collect::<Vec<_>>()))?;
    scratch.write("sluice.toml", config(&server.url("/ok"), Some(&allow(&server)), "", false))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
    assert_eq!(scratch.read_jsonl("out.jsonl")?.len(), 300);
    let seen = server.seen();
    assert_eq!(seen.len(), 300, "one call per event");
    let connections: std::collections::HashSet<_> = seen.iter().map(|s| s.peer).collect();
    // At most one per lane in flight at once, well under one per call.
    assert!(connections.len() <= 16, "{} connections for 300 calls", connections.len());
    eprintln!("{} connection(s) for 300 calls", connections.len());
    Ok(())
}

#[test]
fn a_destination_not_allowed_is_refused_named_and_counted() -> Result<()> {
    let server = Server::start()?;
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    // Allowed: the same host on another port, and https on this one.
    let http = format!("allow = [\"http://127.0.0.1:{}\", \"127.0.0.1:{}\"]", server.port + 1, server.port);
    scratch.write("sluice.toml", config(&server.url("/ok"), Some(&http), "", true))?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || http_request(port, "GET", "/healthz", None, b"").is_ok_and(|(s, _)| s == 200))?;
    scratch.append_events("events.jsonl", &events(&["a", "b"]))?;
    let labels = format!(r#"pipeline="enrich",plugin="http_enrich",host="127.0.0.1:{}""#, server.port);
    let denied = format!(r#"sluice_http_errors_total{{{labels},kind="denied"}}"#);
    host.wait_until("both requests denied and counted", WITHIN, || {
        metrics(port).ok().and_then(|m| m.get(&denied).copied()) == Some(2.0) && scratch.count_lines("dlq.jsonl") == 2
    })?;
    let m = metrics(port)?;
    assert_eq!(m.get(&format!(r#"sluice_http_requests_total{{{labels},outcome="failed"}}"#)).copied(), Some(2.0));
    host.terminate()?;

    assert!(server.seen().is_empty(), "nothing reached the server: {:?}", server.seen());
    let dead = scratch.read_jsonl("dlq.jsonl")?;
    for record in &dead {
        assert_eq!(header(record, "sluice-dlq-reason"), Some("rejected"), "denied is not worth retrying");
        let message = header(record, "sluice-dlq-message").unwrap_or_default();
        assert!(message.contains(&format!("127.0.0.1:{}", server.port)) && message.contains("denied"), "{message}");
        let calls = calls(record)?;
        let error = calls.first().and_then(|c| c["error"].as_str()).unwrap_or_default();
        assert!(error.contains(&format!("http://127.0.0.1:{}", server.port)) && error.contains("denied"), "{calls:?}");
    }
    Ok(())
}

/// A POST's body is written after the request is handed over, so a denial
/// can arrive while the guest is still writing. It must still read as the
/// denial (rejected, one attempt), never as a closed body stream
/// (retryable): bodies of 256 KiB, written in 4 KiB chunks, make that race
/// happen on every event if the host drops the body with the refusal.
#[test]
fn a_denied_post_with_a_large_body_is_rejected_after_one_attempt() -> Result<()> {
    let server = Server::start()?;
    let scratch = Scratch::new()?;
    let big = "x".repeat(256 << 10);
    let ids: Vec<String> = (0..8).map(|i| format!("big-{i}")).collect();
    let events: Vec<Value> =
        ids.iter().map(|id| json!({ "id": id, "payload": format!("{{\"order\":\"{id}\",\"pad\":\"{big}\"}}") })).collect();
    scratch.write_events("events.jsonl", &events)?;
    // Allowed: another port only.
    let http = format!("allow = [\"http://127.0.0.1:{}\"]", server.port + 1);
    scratch.write("sluice.toml", config(&server.url("/ok"), Some(&http), "max_attempts = 5", false))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;

    assert!(server.seen().is_empty(), "nothing reached the server");
    let dead = scratch.read_jsonl("dlq.jsonl")?;
    assert_eq!(dead.len(), ids.len(), "every event dead-lettered once");
    for record in &dead {
        assert_eq!(header(record, "sluice-dlq-reason"), Some("rejected"), "{:?}", header(record, "sluice-dlq-message"));
        assert_eq!(header(record, "sluice-dlq-attempts"), Some("1"), "a denial is not retried");
    }
    Ok(())
}

#[test]
fn every_retry_of_an_event_sends_the_same_idempotency_key() -> Result<()> {
    let server = Server::start()?;
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["order-7"]))?;
    scratch.write("sluice.toml", config(&server.url("/flaky"), Some(&allow(&server)), "max_attempts = 5", false))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;

    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), ["recovered"]);
    let seen = server.seen();
    assert_eq!(seen.len(), 3, "503 twice, then 200: {seen:?}");
    let keys: BTreeSet<_> = seen.iter().map(|s| s.key.clone()).collect();
    assert_eq!(keys, BTreeSet::from([Some("order-7:0".to_owned())]), "one key on every attempt");
    Ok(())
}

#[test]
fn a_dead_letter_lists_the_calls_of_every_attempt() -> Result<()> {
    let server = Server::start()?;
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["e1", "e2"]))?;
    scratch.write("sluice.toml", config(&server.url("/fail"), Some(&allow(&server)), "max_attempts = 3", false))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;

    let dead = scratch.read_jsonl("dlq.jsonl")?;
    assert_eq!(dead.len(), 2);
    for (record, id) in dead.iter().zip(["e1", "e2"]) {
        assert_eq!(header(record, "sluice-dlq-reason"), Some("retries-exhausted"));
        let calls = calls(record)?;
        assert_eq!(calls.len(), 3, "{calls:#?}");
        for (n, call) in calls.iter().enumerate() {
            assert_eq!(call["kind"], "http");
            assert_eq!(call["method"], "POST");
            assert_eq!(call["target"], json!(format!("127.0.0.1:{}", server.port)));
            assert_eq!(call["path"], "/fail");
            assert_eq!(call["status"], 503);
            assert_eq!(call["attempt"], json!(n + 1));
            assert_eq!(call["idempotency_key"], json!(format!("{id}:0")));
            assert!(call["duration"].as_f64().is_some_and(|ms| ms >= 0.0));
        }
    }
    assert_eq!(server.seen().len(), 6);
    Ok(())
}

#[test]
fn a_4xx_rejects_the_event_at_once() -> Result<()> {
    let server = Server::start()?;
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["x"]))?;
    scratch.write("sluice.toml", config(&server.url("/bad"), Some(&allow(&server)), "max_attempts = 5", false))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
    let dead = scratch.read_jsonl("dlq.jsonl")?;
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "sluice-dlq-reason"), Some("rejected"));
    assert_eq!(calls(&dead[0])?.len(), 1, "no retry");
    assert_eq!(server.seen().len(), 1);
    Ok(())
}

#[test]
fn a_response_over_the_cap_and_a_slow_one_fail_in_the_guest() -> Result<()> {
    let server = Server::start()?;
    // 64 KiB against a 1 KiB cap: the body read fails, the plugin says
    // retryable, the event is dead-lettered once the attempts run out.
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["big"]))?;
    let http = format!("{}\nmax_response_bytes = \"1KiB\"", allow(&server));
    scratch.write("sluice.toml", config(&server.url("/big"), Some(&http), "max_attempts = 2", false))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
    let dead = scratch.read_jsonl("dlq.jsonl")?;
    assert_eq!(dead.len(), 1);
    let message = header(&dead[0], "sluice-dlq-message").unwrap_or_default();
    assert!(message.contains("over the limit of 1024 bytes"), "{message}");
    assert_eq!(header(&dead[0], "sluice-dlq-reason"), Some("retries-exhausted"));

    // 3 s against a 200 ms timeout (the handler's own is 5 s): an ordinary
    // error for the guest, not a handler timeout.
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["slow"]))?;
    let http = format!("{}\ntimeout = \"200ms\"", allow(&server));
    scratch.write("sluice.toml", config(&server.url("/slow"), Some(&http), "max_attempts = 2", false))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
    let dead = scratch.read_jsonl("dlq.jsonl")?;
    assert_eq!(dead.len(), 1);
    let message = header(&dead[0], "sluice-dlq-message").unwrap_or_default();
    assert!(message.contains("timed out"), "the plugin's own message, not a handler timeout: {message}");
    let calls = calls(&dead[0])?;
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(calls.iter().all(|c| c["error"].as_str().is_some_and(|e| e.contains("timed out"))), "{calls:#?}");
    Ok(())
}

#[test]
fn a_plugin_importing_wasi_http_needs_the_grant() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["a"]))?;
    scratch.write("sluice.toml", config("http://127.0.0.1:9/", None, "", false))?;
    let run = scratch.run(&["run", "sluice.toml"])?;
    run.ensure_failure()?;
    assert!(run.stderr.contains("imports the `http` capability") && run.stderr.contains("plugin.http"), "{}", run.stderr);
    assert!(scratch.read_jsonl("out.jsonl")?.is_empty());
    Ok(())
}

/// A twin of `http_enrich` in another language, built by
/// `scripts/build-lang-plugins.sh`, gets the same treatment: the answer as
/// output with the event's idempotency key and trace context, the same key
/// on every retry, a 4xx rejected; and the SDK's own HTTP errors, in the
/// Rust SDK's words: a destination the pipeline does not allow rejects the
/// event at once with the host named, a timeout is retried. With
/// `body_errors` (an SDK of ours reading the body, not `fetch`'s
/// `arrayBuffer`, whose errors are the engine's), a body over the cap is
/// retried too.
fn a_twin_calls_out(name: &str, body_errors: bool) -> Result<()> {
    let twin = root().join("plugins/target/components").join(format!("{name}.wasm"));
    ensure!(twin.is_file(), "{} is missing: run `bash scripts/build-lang-plugins.sh` first", twin.display());
    let with_twin = |config: String| config.replace(&toml_path(&plugin("http_enrich")), &toml_path(&twin));
    let server = Server::start()?;

    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["a", "b"]))?;
    scratch.write("sluice.toml", with_twin(config(&server.url("/ok"), Some(&allow(&server)), "", false)))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
    let out = scratch.read_jsonl("out.jsonl")?;
    ensure!(out.len() == 2, "{out:#?} / dead letters: {:#?}", scratch.read_jsonl("dlq.jsonl")?);
    for (record, id) in out.iter().zip(["a", "b"]) {
        assert_eq!(header(record, "http-status"), Some("200"));
        let echoed: Value = serde_json::from_str(record["payload"].as_str().context("text payload")?)?;
        assert_eq!(echoed["key"], json!(format!("{id}:0")));
        assert_eq!(echoed["traceparent"], json!(TRACEPARENT));
        assert_eq!(echoed["body"], json!(format!("{{\"order\":\"{id}\"}}")));
    }
    let seen: Vec<_> = server.seen().iter().map(|s| (s.key.clone(), s.traceparent.clone())).collect();
    let sent = |id: &str| (Some(format!("{id}:0")), Some(TRACEPARENT.to_owned()));
    assert_eq!(seen, vec![sent("a"), sent("b")], "what the server received");

    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["order-7"]))?;
    scratch.write("sluice.toml", with_twin(config(&server.url("/flaky"), Some(&allow(&server)), "max_attempts = 5", false)))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), ["recovered"]);
    let keys: Vec<_> = server.seen().iter().filter(|s| s.path == "/flaky").map(|s| s.key.clone()).collect();
    assert_eq!(keys, vec![Some("order-7:0".to_owned()); 3], "503 twice then 200, one key");

    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["c"]))?;
    scratch.write("sluice.toml", with_twin(config(&server.url("/bad"), Some(&allow(&server)), "max_attempts = 3", false)))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
    let dead = scratch.read_jsonl("dlq.jsonl")?;
    ensure!(dead.len() == 1, "{dead:#?}");
    assert_eq!(header(&dead[0], "sluice-dlq-reason"), Some("rejected"));
    assert_eq!(header(&dead[0], "sluice-dlq-attempts"), Some("1"));

    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["d"]))?;
    let other = format!("allow = [\"http://127.0.0.1:{}\"]", server.port + 1);
    scratch.write("sluice.toml", with_twin(config(&server.url("/ok"), Some(&other), "max_attempts = 3", false)))?;
    scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
    let dead = scratch.read_jsonl("dlq.jsonl")?;
    ensure!(dead.len() == 1, "{dead:#?}");
    assert_eq!(header(&dead[0], "sluice-dlq-reason"), Some("rejected"), "denied is not worth retrying");
    let message = header(&dead[0], "sluice-dlq-message").unwrap_or_default();
    let expected = format!("HTTP request to 127.0.0.1:{} denied: not in the pipeline's plugin.http.allow", server.port);
    assert_eq!(message, expected, "the Rust SDK's wording");
    assert!(scratch.read_jsonl("out.jsonl")?.is_empty());
    assert!(!server.seen().iter().any(|s| s.key.as_deref() == Some("d:0")), "nothing reached the server");

    if body_errors {
        // 64 KiB read whole (more than one read of the body).
        let scratch = Scratch::new()?;
        scratch.write_events("events.jsonl", &events(&["big"]))?;
        scratch.write("sluice.toml", with_twin(config(&server.url("/big"), Some(&allow(&server)), "", false)))?;
        scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
        let out = scratch.read_jsonl("out.jsonl")?;
        ensure!(out.len() == 1, "{out:#?} / dead letters: {:#?}", scratch.read_jsonl("dlq.jsonl")?);
        assert_eq!(out[0]["payload"].as_str().map(str::len), Some(64 * 1024));
    }
    // The same against a 1 KiB cap, and 3 s against a 200 ms timeout: the
    // SDK's own errors, retryable, in the Rust SDK's words.
    let timeout = format!("HTTP request to 127.0.0.1:{} timed out", server.port);
    let cases = [
        ("/big", "max_response_bytes = \"1KiB\"", "HTTP response body over the limit of 1024 bytes"),
        ("/slow", "timeout = \"200ms\"", &timeout),
    ];
    for (path, limit, expected) in cases.into_iter().filter(|(path, _, _)| body_errors || *path != "/big") {
        let scratch = Scratch::new()?;
        scratch.write_events("events.jsonl", &events(&["e"]))?;
        let http = format!("{}\n{limit}", allow(&server));
        scratch.write("sluice.toml", with_twin(config(&server.url(path), Some(&http), "max_attempts = 2", false)))?;
        scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
        let dead = scratch.read_jsonl("dlq.jsonl")?;
        ensure!(dead.len() == 1, "{path}: {dead:#?}");
        assert_eq!(header(&dead[0], "sluice-dlq-reason"), Some("retries-exhausted"), "{path}");
        assert_eq!(header(&dead[0], "sluice-dlq-message"), Some(expected), "{path}");
    }
    Ok(())
}

/// TypeScript: the SDK's `fetch` in an async handler (StarlingMonkey with
/// wasi:http; the denial and the timeout worded as in Rust).
#[test]
fn the_typescript_sdk_calls_out_with_fetch() -> Result<()> {
    a_twin_calls_out("http_enrich_ts", false)
}

/// Go: `plugin.HTTP` (a hand-written canonical ABI for wasi:http).
#[test]
fn the_go_sdk_calls_out_with_plugin_http() -> Result<()> {
    a_twin_calls_out("http_enrich_go", true)
}

/// Python: `sluice_plugin.http` (componentize-py's wasi:http bindings).
#[test]
fn the_python_sdk_calls_out_with_sluice_plugin_http() -> Result<()> {
    a_twin_calls_out("http_enrich_py", true)
}

/// C: `sluice_http_request` (wit-bindgen C's wasi:http bindings).
#[test]
fn the_c_sdk_calls_out_with_sluice_http_request() -> Result<()> {
    a_twin_calls_out("http_enrich_c", true)
}

/// A shadowed candidate that calls out (`http_enrich` beside a current
/// `passthrough`): its requests are refused before they leave (the server
/// sees none), the guest is told why, and the report counts them.
#[test]
fn a_shadowed_candidates_requests_are_refused_and_counted() -> Result<()> {
    const TOKEN: &str = "shadow-token";
    let server = Server::start()?;
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    let config = config(&server.url("/ok"), Some(&allow(&server)), "", true)
        .replace(&toml_path(&plugin("http_enrich")), &toml_path(&plugin("passthrough")))
        .replace("[admin]\n", &format!("[admin]\ntoken = \"{TOKEN}\"\n"));
    scratch.write("sluice.toml", config)?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || http_request(port, "GET", "/pipelines/enrich", None, b"").is_ok_and(|(s, _)| s == 200))?;
    let candidate = std::fs::read(plugin("http_enrich"))?;
    let (status, body) = http_request(port, "POST", "/pipelines/enrich/candidate", Some(TOKEN), &candidate)?;
    ensure!(status == 200, "{status} {body}");

    scratch.append_events("events.jsonl", &events(&["a", "b", "c"]))?;
    let mut report = Value::Null;
    host.wait_until("three shadowed events", WITHIN, || {
        let Ok((200, body)) = http_request(port, "GET", "/pipelines/enrich/candidate", None, b"") else { return false };
        report = serde_json::from_str(&body).unwrap_or(Value::Null);
        report["candidate"]["counts"]["handled"] == 3
    })?;
    let counts = &report["candidate"]["counts"];
    ensure!(counts["effects_refused"] == 3 && counts["candidate_failures"] == 3 && counts["different"] == 3, "{counts}");
    let example = &report["candidate"]["examples"][0];
    ensure!(example["candidate"]["failure"] == "rejected", "{example}");
    ensure!(
        example["candidate"]["message"].as_str().is_some_and(|m| m.contains("shadowed candidate")),
        "the guest was told why: {example}"
    );
    ensure!(server.seen().is_empty(), "no request left the host: {:?}", server.seen());
    host.wait_until("the current version's outputs", WITHIN, || scratch.count_lines("out.jsonl") == 3)?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}
