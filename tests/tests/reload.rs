//! Hot reload end to end: the real binary, real plugins, swapped while
//! events flow, through the admin API, the plugin file and SIGHUP.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use common::*;

const WITHIN: Duration = Duration::from_secs(60);
const TOKEN: &str = "s3cret-admin-token";

/// One HTTP/1.1 request to the admin API; returns the status and JSON body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Result<(u16, Value)> {
    let (status, text) = http_request(port, method, path, token, body)?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn config(token: Option<&str>, plugin: &str, extra: &str) -> String {
    let token = token.map(|t| format!("token = \"{t}\"\n")).unwrap_or_default();
    format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"
{token}
[pipelines.tags]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}

[pipelines.tags.plugin]
path = "{plugin}"
{extra}
"#,
        runtime = runtime_table(),
    )
}

/// Starts sluice in `scratch` on `sluice.toml` and waits for its admin API;
/// returns it with the API's port.
fn start(scratch: &Scratch) -> Result<(Running, u16)> {
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || http(port, "GET", "/pipelines/tags", None, b"").is_ok_and(|(s, _)| s == 200))?;
    Ok((host, port))
}

/// A scratch folder with `tag_v1` at `plugin_at`, an empty followed event
/// file and [`config`], and sluice running on it with its admin API up.
fn tagger(plugin_at: &str, extra: &str) -> Result<(Scratch, u16, Running)> {
    let scratch = Scratch::new()?;
    scratch.write(plugin_at, std::fs::read(plugin("tag_v1"))?)?;
    scratch.write("events.jsonl", "")?;
    scratch.write("sluice.toml", config(Some(TOKEN), plugin_at, extra))?;
    let (host, port) = start(&scratch)?;
    Ok((scratch, port, host))
}

fn events(from: usize, to: usize) -> Vec<Value> {
    (from..to).map(|i| event(&format!("e{i}"))).collect()
}

fn status(port: u16) -> Result<Value> {
    let (code, body) = http(port, "GET", "/pipelines/tags", None, b"")?;
    ensure!(code == 200, "GET /pipelines/tags: {code} {body}");
    Ok(body)
}

/// 20,000 events while the plugin is swapped 20 times between two versions
/// that tag their outputs: each event is handled once, by one version, in
/// order, and every output names the version that made it.
#[test]
fn twenty_swaps_under_load_lose_and_duplicate_nothing() -> Result<()> {
    let (scratch, port, mut host) = tagger("plugin.wasm", "")?;
    let v1 = std::fs::read(plugin("tag_v1"))?;
    let v2 = std::fs::read(plugin("tag_v2"))?;
    let (d1, d2) = (sha256_hex(&plugin("tag_v1"))?, sha256_hex(&plugin("tag_v2"))?);

    let (per_round, rounds) = (1_000, 20);
    for round in 0..rounds {
        scratch.append_events("events.jsonl", &events(round * per_round, (round + 1) * per_round))?;
        let next = if round % 2 == 0 { &v2 } else { &v1 };
        let (code, body) = http(port, "PUT", "/pipelines/tags/plugin", Some(TOKEN), next)?;
        ensure!(code == 200, "swap {round}: {code} {body}");
    }
    let total = per_round * rounds;
    host.wait_until("every output", WITHIN, || scratch.count_lines("out.jsonl") >= total)?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    let outputs = scratch.read_jsonl("out.jsonl")?;
    ensure!(outputs.len() == total, "{} outputs for {total} events", outputs.len());
    let mut switches = 0;
    let mut last = "";
    for (i, output) in outputs.iter().enumerate() {
        let payload = output["payload"].as_str().unwrap_or_default();
        let (tag, rest) = payload.split_once(':').context("an output without a tag")?;
        ensure!(rest == format!("e{i}"), "output {i} is {payload:?}: out of order, lost or duplicated");
        let digest = header(output, "sluice-plugin-digest").context("an output without its version")?;
        let expected = if tag == "v1" { &d1 } else { &d2 };
        ensure!(digest == expected, "output {i} says {tag} but carries digest {digest}");
        if tag != last {
            switches += 1;
            last = tag;
        }
    }
    ensure!(switches >= 2, "the versions never alternated ({switches} runs)");
    ensure!(switches <= rounds + 1, "{switches} version runs for {rounds} swaps");
    Ok(())
}

/// A corrupt file, the wrong world, an `init` that refuses the config and a
/// sha256 mismatch are each rejected with a clear error; the old version
/// keeps serving and the admin API shows the rejection.
#[test]
fn bad_versions_are_rejected_and_the_old_one_keeps_serving() -> Result<()> {
    // `chaos` refuses config keys it does not know; `tag_v1` accepts any.
    let (scratch, port, mut host) = tagger("plugin.wasm", "config = { note = \"hi\" }")?;
    let v1_digest = sha256_hex(&plugin("tag_v1"))?;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("corrupt", b"\0asm\x0d\0\x01\0garbage".to_vec(), ""),
        ("wrong world", std::fs::read(plugin("wrong_world"))?, ""),
        ("init refuses", std::fs::read(plugin("chaos"))?, ""),
        ("sha256 mismatch", std::fs::read(plugin("tag_v2"))?, "?sha256=0000000000000000000000000000000000000000000000000000000000000000"),
    ];
    let mut sent = 0;
    for (n, (what, bytes, query)) in cases.iter().enumerate() {
        let (code, body) = http(port, "PUT", &format!("/pipelines/tags/plugin{query}"), Some(TOKEN), bytes)?;
        ensure!(code == 422, "{what}: expected 422, got {code} {body}");
        let error = body["error"].as_str().unwrap_or_default();
        ensure!(!error.is_empty(), "{what}: no error message");
        eprintln!("{what}: {error}");
        // The old version still serves.
        scratch.append_events("events.jsonl", &events(sent, sent + 10))?;
        sent += 10;
        host.wait_until("outputs after a rejection", WITHIN, || scratch.count_lines("out.jsonl") >= sent)?;
        let status = status(port)?;
        ensure!(status["plugin"]["current"]["digest"] == v1_digest.as_str(), "{what}: the version changed: {status}");
        ensure!(status["plugin"]["rejections"] == n as u64 + 1, "{what}: {status}");
    }
    let status = status(port)?;
    let last = status["plugin"]["last_rejection"]["error"].as_str().unwrap_or_default();
    ensure!(last.contains("sha256"), "the last rejection names the mismatch: {last}");
    let outputs = scratch.read_jsonl("out.jsonl")?;
    ensure!(outputs.iter().all(|o| o["payload"].as_str().is_some_and(|p| p.starts_with("v1:"))), "only v1 served");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

#[test]
fn the_admin_api_needs_the_token_for_changes_and_has_none_without_one() -> Result<()> {
    let (scratch, port, host) = tagger("plugin.wasm", "")?;
    for (method, path) in [
        ("POST", "/pipelines/tags/reload"),
        ("POST", "/pipelines/tags/rollback"),
        ("POST", "/pipelines/tags/pause"),
        ("PUT", "/pipelines/tags/plugin"),
    ] {
        let (code, _) = http(port, method, path, None, b"")?;
        ensure!(code == 401, "{method} {path} without a token: {code}");
        let (code, _) = http(port, method, path, Some("wrong"), b"")?;
        ensure!(code == 401, "{method} {path} with a wrong token: {code}");
    }
    let (code, body) = http(port, "GET", "/pipelines", None, b"")?;
    ensure!(code == 200 && body["pipelines"][0]["name"] == "tags", "reads need no token: {code} {body}");
    // Pause holds events in the source; resume lets them through.
    let (code, _) = http(port, "POST", "/pipelines/tags/pause", Some(TOKEN), b"")?;
    ensure!(code == 200);
    ensure!(status(port)?["state"] == "paused");
    let (code, body) = http(port, "POST", "/pipelines/tags/rollback", Some(TOKEN), b"")?;
    ensure!(code == 409, "no previous version yet: {code} {body}");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    // Without a token configured, changes are off altogether.
    scratch.write("sluice.toml", config(None, "plugin.wasm", ""))?;
    let (host, port) = start(&scratch)?;
    let (code, body) = http(port, "POST", "/pipelines/tags/reload", Some(TOKEN), b"")?;
    ensure!(code == 403, "{code} {body}");
    ensure!(body["error"].as_str().is_some_and(|e| e.contains("admin.token")), "{body}");
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    ensure!(finished.stderr.contains(&format!("admin API listening on 127.0.0.1:{port}")), "{}", finished.stderr);
    Ok(())
}

#[test]
fn pause_holds_events_in_the_source_and_resume_lets_them_through() -> Result<()> {
    let (scratch, port, mut host) = tagger("plugin.wasm", "")?;
    scratch.append_events("events.jsonl", &events(0, 5))?;
    host.wait_until("the first outputs", WITHIN, || scratch.count_lines("out.jsonl") == 5)?;
    let mark = host.log_mark();
    let (code, _) = http(port, "POST", "/pipelines/tags/pause", Some(TOKEN), b"")?;
    ensure!(code == 200);
    // The dispatcher logs this as it parks: from then on it takes nothing
    // until resumed, so events appended now must stay in the file.
    host.wait_for_log("paused: no events are taken from the source", mark, WITHIN)?;
    let received = status(port)?["stats"]["received"].as_u64();
    scratch.append_events("events.jsonl", &events(5, 10))?;
    ensure!(status(port)?["stats"]["received"].as_u64() == received, "a paused pipeline took events");
    ensure!(scratch.count_lines("out.jsonl") == 5);
    let (code, _) = http(port, "POST", "/pipelines/tags/resume", Some(TOKEN), b"")?;
    ensure!(code == 200);
    host.wait_until("the held events", WITHIN, || scratch.count_lines("out.jsonl") == 10)?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// Replacing the plugin file (an atomic rename, then an in-place write)
/// loads the new version; a corrupt write is rejected and the old one stays.
#[test]
fn a_changed_plugin_file_is_loaded_and_a_broken_one_is_not() -> Result<()> {
    let (scratch, port, mut host) = tagger("plugins/tagger.wasm", "")?;
    let (d1, d2) = (sha256_hex(&plugin("tag_v1"))?, sha256_hex(&plugin("tag_v2"))?);
    let current = |port| status(port).map(|s| s["plugin"]["current"]["digest"].as_str().unwrap_or_default().to_owned());

    // A deployment's usual move: write elsewhere, rename over.
    scratch.write("plugins/tagger.wasm.new", std::fs::read(plugin("tag_v2"))?)?;
    std::fs::rename(scratch.path("plugins/tagger.wasm.new"), scratch.path("plugins/tagger.wasm"))?;
    host.wait_until("v2 after the rename", WITHIN, || current(port).is_ok_and(|d| d == d2))?;
    // In place, as `cp` does.
    std::fs::write(scratch.path("plugins/tagger.wasm"), std::fs::read(plugin("tag_v1"))?)?;
    host.wait_until("v1 after the in-place write", WITHIN, || current(port).is_ok_and(|d| d == d1))?;
    // Broken: rejected, v1 stays.
    std::fs::write(scratch.path("plugins/tagger.wasm"), b"not a component")?;
    host.wait_until("the rejection", WITHIN, || status(port).is_ok_and(|s| s["plugin"]["rejections"] == 1))?;
    ensure!(current(port)? == d1);
    let origin = status(port)?["plugin"]["last_rejection"]["origin"].clone();
    ensure!(origin == "file-watch", "{origin}");
    scratch.append_events("events.jsonl", &events(0, 3))?;
    host.wait_until("outputs from v1", WITHIN, || scratch.count_lines("out.jsonl") == 3)?;
    ensure!(scratch.read_jsonl("out.jsonl")?.iter().all(|o| o["payload"].as_str().is_some_and(|p| p.starts_with("v1:"))));
    // And a rollback through the API goes back to the version before.
    let (code, body) = http(port, "POST", "/pipelines/tags/rollback", Some(TOKEN), b"")?;
    ensure!(code == 200 && body["current"]["digest"] == d2.as_str(), "{code} {body}");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

fn pipelines_config(pipelines: &[(&str, &str)]) -> String {
    let mut text = format!("{}\n[admin]\nlisten = \"{ANY_PORT}\"\n", runtime_table());
    for (name, sink) in pipelines {
        text.push_str(&format!(
            "\n[pipelines.{name}]\nsource = {{ kind = \"file\", path = \"{name}.in.jsonl\", follow = true }}\nsink = {{ kind = \"file\", path = \"{sink}\" }}\ndead_letter = {{ kind = \"file\", path = \"{name}.dlq.jsonl\" }}\nplugin = {{ path = {} }}\n",
            toml_path(&plugin("tag_v1"))
        ));
    }
    text
}

fn sighup(host: &Running) -> Result<()> {
    let status = std::process::Command::new("kill").args(["-HUP", &host.pid().to_string()]).status()?;
    if !status.success() {
        bail!("kill -HUP failed");
    }
    Ok(())
}

/// SIGHUP applies a changed config: a pipeline added, one removed (drained),
/// one changed (restarted), one untouched; a broken config changes nothing.
#[test]
fn sighup_adds_removes_and_changes_pipelines_without_touching_the_others() -> Result<()> {
    let scratch = Scratch::new()?;
    for name in ["keep", "gone", "changed", "added"] {
        scratch.write(&format!("{name}.in.jsonl"), "")?;
    }
    scratch.write(
        "sluice.toml",
        pipelines_config(&[("keep", "keep.out.jsonl"), ("gone", "gone.out.jsonl"), ("changed", "changed.out.jsonl")]),
    )?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    let list = |port| -> Result<Value> { Ok(http(port, "GET", "/pipelines", None, b"")?.1) };
    let started = |body: &Value, name: &str| -> Option<String> {
        body["pipelines"].as_array()?.iter().find(|p| p["name"] == name).map(|p| p["started_at"].to_string())
    };
    host.wait_until("three pipelines", WITHIN, || list(port).is_ok_and(|b| b["pipelines"].as_array().is_some_and(|p| p.len() == 3)))?;
    for name in ["keep", "gone", "changed"] {
        scratch.append_events(&format!("{name}.in.jsonl"), &events(0, 5))?;
    }
    host.wait_until("first outputs", WITHIN, || {
        ["keep", "gone", "changed"].iter().all(|n| scratch.count_lines(&format!("{n}.out.jsonl")) == 5)
    })?;
    let before = list(port)?;

    // A config that does not load changes nothing.
    scratch.write("sluice.toml", "[pipelines.keep]\nsource = 7\n")?;
    let mark = host.log_mark();
    sighup(&host)?;
    // The refusal's log line says the reload is over: only then does an
    // unchanged list prove that it changed nothing.
    host.wait_for_log("config reload refused", mark, WITHIN)?;
    let after_bad = list(port)?;
    ensure!(after_bad["pipelines"].as_array().map(Vec::len) == Some(3), "a broken config changed the pipelines: {after_bad}");

    scratch.write(
        "sluice.toml",
        pipelines_config(&[("keep", "keep.out.jsonl"), ("changed", "changed.v2.out.jsonl"), ("added", "added.out.jsonl")]),
    )?;
    sighup(&host)?;
    host.wait_until("the new set of pipelines", WITHIN, || {
        list(port).is_ok_and(|b| {
            let names: Vec<&str> =
                b["pipelines"].as_array().map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect()).unwrap_or_default();
            names == ["added", "changed", "keep"] && started(&b, "changed") != started(&before, "changed")
        })
    })?;
    let after = list(port)?;
    ensure!(started(&after, "keep") == started(&before, "keep"), "`keep` was restarted");
    for name in ["keep", "gone", "changed", "added"] {
        scratch.append_events(&format!("{name}.in.jsonl"), &events(5, 10))?;
    }
    host.wait_until("outputs after the reload", WITHIN, || {
        scratch.count_lines("keep.out.jsonl") == 10
            && scratch.count_lines("changed.v2.out.jsonl") == 10
            && scratch.count_lines("added.out.jsonl") == 5
    })?;
    ensure!(scratch.count_lines("gone.out.jsonl") == 5, "a removed pipeline kept running");
    ensure!(scratch.count_lines("changed.out.jsonl") == 5, "the changed pipeline's old sink got new outputs");
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    ensure!(finished.stderr.contains("config reload refused"), "{}", finished.stderr);
    Ok(())
}
