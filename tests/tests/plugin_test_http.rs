//! `sluice plugin test --http-replies`: a plugin's outbound HTTP answered
//! from a file of rules, offline, behind the same `wasi:http` the plugin
//! sees in a pipeline, so the Rust SDK's client, `fetch` in TypeScript and
//! the Python, C and Go SDKs all work against it unchanged. The URLs are
//! `https://` to a host that is never contacted: nothing here touches the
//! network.

#[allow(dead_code)]
mod common;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use common::*;

const RULES: &str = r#"[
    { "method": "POST", "url": "https://api.example.com/enrich", "when": "\"order\":\"slow\"", "error": "timeout" },
    { "method": "POST", "url": "https://api.example.com/enrich", "when": "\"order\":\"gone\"", "status": 404, "body": "no such customer" },
    { "method": "POST", "url_prefix": "https://api.example.com/", "body_json": { "tier": "gold" }, "headers": { "x-stub": "1" } }
]"#;

fn events(ids: &[&str]) -> Vec<Value> {
    ids.iter().map(|id| json!({ "id": id, "payload": format!("{{\"order\":\"{id}\"}}") })).collect()
}

/// Runs `plugin test` on `plugin` with the rules, posting to `url`; the
/// printed line of each event.
fn plugin_test(plugin: &std::path::Path, url: &str, ids: &[&str]) -> Result<Vec<Value>> {
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(ids))?;
    scratch.write("http.json", RULES)?;
    let url_config = format!("url={url}");
    let cache = compile_cache();
    let args = [
        "plugin",
        "test",
        &plugin.to_string_lossy(),
        "--events",
        "events.jsonl",
        "--http-replies",
        "http.json",
        "--config",
        &url_config,
        "--cache-dir",
        &cache.to_string_lossy(),
    ];
    let run = scratch.run(&args)?;
    let lines = parse_jsonl(&run.stdout)?;
    ensure!(lines.len() == ids.len(), "one line per event; stdout {} stderr {}", run.stdout, run.stderr);
    Ok(lines)
}

/// The one call an event's line lists.
fn call(line: &Value) -> Result<&Value> {
    let calls = line["calls"].as_array().with_context(|| format!("no calls in {line}"))?;
    ensure!(calls.len() == 1, "one call: {line}");
    Ok(&calls[0])
}

/// What both plugins must show: the stubbed answer as the output, the
/// calls printed with method, target, path, status and idempotency key, a
/// stubbed 404 rejected, and a request no rule matches denied with the
/// request and the file named in its call.
fn check(plugin: &std::path::Path, lang: &str, timeout_disposition: &str) -> Result<()> {
    let lines = plugin_test(plugin, "https://api.example.com/enrich", &["a", "gone", "slow"])?;

    let output = &lines[0]["outputs"][0];
    assert_eq!(output["payload"], json!(r#"{"tier":"gold"}"#), "{lang}: the stubbed body is the output: {}", lines[0]);
    assert_eq!(header(output, "http-status"), Some("200"), "{lang}");
    assert_eq!(
        call(&lines[0])?,
        &json!({ "method": "POST", "target": "api.example.com:443", "path": "/enrich", "status": 200, "idempotency_key": "a:0" }),
        "{lang}"
    );

    assert_eq!(lines[1]["error"]["disposition"], "reject", "{lang}: a stubbed 404: {}", lines[1]);
    assert_eq!(call(&lines[1])?["status"], 404, "{lang}");
    assert_eq!(call(&lines[1])?["idempotency_key"], "gone:0", "{lang}");

    assert_eq!(lines[2]["error"]["disposition"], timeout_disposition, "{lang}: a stubbed timeout: {}", lines[2]);
    assert_eq!(call(&lines[2])?["error"], "timed out (stubbed)", "{lang}");
    assert!(call(&lines[2])?.get("status").is_none(), "{lang}");

    // No rule for this path: denied, the call naming the request and file.
    let lines = plugin_test(plugin, "https://elsewhere.example/enrich", &["b"])?;
    ensure!(lines[0].get("error").is_some(), "{lang}: an unmatched request fails: {}", lines[0]);
    assert_eq!(call(&lines[0])?["error"], "denied: no rule in http.json matches POST https://elsewhere.example/enrich", "{lang}");
    // Every SDK tells the handler the same reason, not the pipeline's allow
    // list (which `plugin test` does not read), and rejects as a denial
    // (the JS SDK's `fetch` asks the host, the engine's drops the code).
    assert_eq!(lines[0]["error"]["disposition"], "reject", "{lang}: {}", lines[0]);
    assert_eq!(
        lines[0]["error"]["message"],
        "HTTP request to elsewhere.example denied: no rule in http.json matches POST https://elsewhere.example/enrich",
        "{lang}"
    );
    Ok(())
}

#[test]
fn the_rust_sdk_client_is_answered_from_the_file() -> Result<()> {
    // The Rust SDK: a timeout is retryable, a denied request rejected.
    check(&plugin("http_enrich"), "rust", "retryable")
}

#[test]
fn typescript_fetch_is_answered_from_the_file() -> Result<()> {
    let twin = root().join("plugins/target/components/http_enrich_ts.wasm");
    ensure!(twin.is_file(), "{} is missing: run `bash scripts/build-lang-plugins.sh ts` first", twin.display());
    check(&twin, "typescript", "retryable")
}

/// The Python, C and Go twins of `http_enrich`: the same answers, and a
/// request no rule matches denied with the same reason.
#[test]
fn python_c_and_go_clients_are_answered_from_the_file() -> Result<()> {
    for (lang, twin) in [("python", "http_enrich_py"), ("c", "http_enrich_c"), ("go", "http_enrich_go")] {
        let twin = root().join("plugins/target/components").join(format!("{twin}.wasm"));
        ensure!(twin.is_file(), "{} is missing: run `bash scripts/build-lang-plugins.sh {lang}` first", twin.display());
        check(&twin, lang, "retryable")?;
    }
    Ok(())
}

/// A rules file with a mistake is refused before any event, by place.
#[test]
fn a_bad_rules_file_is_refused_by_place() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &events(&["a"]))?;
    scratch.write("http.json", r#"[{"url": "https://api.example.com/x", "status": 200, "error": "timeout"}]"#)?;
    let wasm = plugin("http_enrich");
    let run = scratch.run(&[
        "plugin",
        "test",
        &wasm.to_string_lossy(),
        "--events",
        "events.jsonl",
        "--http-replies",
        "http.json",
        "--config",
        "url=https://api.example.com/x",
    ])?;
    run.ensure_failure()?;
    ensure!(run.stderr.contains("http.json: rule 0: give either `error` or a response"), "the rule is named: {}", run.stderr);
    Ok(())
}
