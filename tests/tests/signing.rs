//! Signed plugins end to end: keys and signatures made with the real
//! `sluice plugin keygen` / `sign`, a host with `[plugins] trusted_keys`
//! refusing unsigned, tampered and stranger-signed versions everywhere a
//! version comes in (config, `sluice check`, upload, file watch), and
//! serving the signed ones.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::Value;

use common::*;

const WITHIN: Duration = Duration::from_secs(60);
const TOKEN: &str = "s3cret-admin-token";

fn config(plugin: &str) -> String {
    format!(
        r#"{runtime}
[plugins]
trusted_keys = ["keys/release.pub"]

[admin]
listen = "{ANY_PORT}"
token = "{TOKEN}"

[pipelines.tags]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}

[pipelines.tags.plugin]
path = "{plugin}"
"#,
        runtime = runtime_table(),
    )
}

/// A scratch folder with two key pairs (`release`, trusted, and
/// `stranger`), `tag_v1` and `tag_v2` copied in, and the config.
fn keyed_scratch(plugin_at: &str) -> Result<Scratch> {
    let scratch = Scratch::new()?;
    std::fs::create_dir_all(scratch.path("keys"))?;
    for name in ["keys/release", "keys/stranger"] {
        let made = scratch.run(&["plugin", "keygen", name])?;
        made.ensure_success()?;
        ensure!(made.stdout.contains("key id:"), "keygen says the key id: {}", made.stdout);
    }
    scratch.write("v1.wasm", std::fs::read(plugin("tag_v1"))?)?;
    scratch.write("v2.wasm", std::fs::read(plugin("tag_v2"))?)?;
    scratch.write("events.jsonl", "")?;
    scratch.write("sluice.toml", config(plugin_at))?;
    Ok(scratch)
}

fn sign(scratch: &Scratch, file: &str, key: &str) -> Result<String> {
    scratch.run(&["plugin", "sign", file, "--key", key])?.ensure_success()?;
    Ok(scratch.read(&format!("{file}.sig"))?.trim().to_owned())
}

/// What a finished command printed, stdout and stderr.
fn said(finished: &Finished) -> String {
    format!("{}{}", finished.stdout, finished.stderr)
}

fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<(u16, Value)> {
    let (status, text) = http_request_with(port, method, path, Some(TOKEN), headers, body)?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn current_digest(port: u16) -> Result<String> {
    let (code, body) = http(port, "GET", "/pipelines/tags", &[], b"")?;
    ensure!(code == 200, "GET /pipelines/tags: {code} {body}");
    Ok(body["plugin"]["current"]["digest"].as_str().unwrap_or_default().to_owned())
}

/// `sluice check` and `sluice run` refuse a component that is unsigned,
/// changed after signing, or signed by a key not in `trusted_keys`, each
/// with its own reason, and accept the one the trusted key signed.
#[test]
fn check_and_start_refuse_what_the_trusted_key_did_not_sign() -> Result<()> {
    let scratch = keyed_scratch("plugin.wasm")?;
    let v1 = std::fs::read(plugin("tag_v1"))?;

    // Unsigned.
    scratch.write("plugin.wasm", &v1)?;
    let checked = scratch.run(&["check", "sluice.toml"])?;
    checked.ensure_failure()?;
    ensure!(said(&checked).contains("plugin.wasm is refused: it is not signed"), "unsigned: {}", said(&checked));
    let ran = scratch.run(&["run", "sluice.toml"])?;
    ran.ensure_failure()?;
    ensure!(said(&ran).contains("it is not signed"), "run refuses too: {}", said(&ran));

    // Signed by a stranger.
    sign(&scratch, "plugin.wasm", "keys/stranger.key")?;
    let checked = scratch.run(&["check", "sluice.toml"])?;
    checked.ensure_failure()?;
    ensure!(said(&checked).contains("which is not among `[plugins] trusted_keys`"), "stranger: {}", said(&checked));

    // Signed by the trusted key, then changed (one byte of a custom
    // section's worth appended: still a file the compiler would take).
    let line = sign(&scratch, "plugin.wasm", "keys/release.key")?;
    scratch.run(&["check", "sluice.toml"])?.ensure_success()?;
    let key_id = line.split_whitespace().nth(2).unwrap_or_default().to_owned();
    let inspected = scratch.run(&["plugin", "inspect", "plugin.wasm"])?;
    ensure!(inspected.stdout.contains(&format!("signed:  by key {key_id}")), "inspect shows the signer: {}", inspected.stdout);
    let mut tampered = v1.clone();
    tampered.extend_from_slice(b"\0\x05\x04evil");
    scratch.write("plugin.wasm", &tampered)?;
    let checked = scratch.run(&["check", "sluice.toml"])?;
    checked.ensure_failure()?;
    ensure!(said(&checked).contains("it changed after it was signed"), "tampered: {}", said(&checked));
    let inspected = scratch.run(&["plugin", "inspect", "plugin.wasm"])?;
    ensure!(inspected.stdout.contains("signed:  NO: "), "inspect shows the signature is another version's: {}", inspected.stdout);

    // A key file that is not a key stops the start, naming the file.
    scratch.write("plugin.wasm", &v1)?;
    scratch.write("keys/release.pub", "not a key")?;
    let checked = scratch.run(&["check", "sluice.toml"])?;
    checked.ensure_failure()?;
    ensure!(said(&checked).contains("release.pub is not an Ed25519 public key"), "bad key file: {}", said(&checked));
    Ok(())
}

/// A running host takes a signed upload and refuses an unsigned one, one
/// with a stranger's signature and one whose signature is for another
/// version; a new file beside which the signature lands later is refused,
/// then loaded when its signature arrives. The signed version serves.
#[test]
fn uploads_and_file_changes_need_a_trusted_signature() -> Result<()> {
    let scratch = keyed_scratch("plugin.wasm")?;
    scratch.write("plugin.wasm", std::fs::read(plugin("tag_v1"))?)?;
    sign(&scratch, "plugin.wasm", "keys/release.key")?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || current_digest(port).is_ok_and(|d| !d.is_empty()))?;
    let (d1, d2) = (sha256_hex(&plugin("tag_v1"))?, sha256_hex(&plugin("tag_v2"))?);
    ensure!(current_digest(port)? == d1);

    let v2 = std::fs::read(plugin("tag_v2"))?;
    let v1_signature = scratch.read("plugin.wasm.sig")?.trim().to_owned();
    let by_release = sign(&scratch, "v2.wasm", "keys/release.key")?;
    let by_stranger = {
        scratch.run(&["plugin", "sign", "v2.wasm", "--key", "keys/stranger.key", "--out", "v2.stranger.sig"])?.ensure_success()?;
        scratch.read("v2.stranger.sig")?.trim().to_owned()
    };
    for (what, headers, reason) in [
        ("unsigned", vec![], "it is not signed"),
        ("a stranger's signature", vec![("Sluice-Signature", by_stranger.as_str())], "not among `[plugins] trusted_keys`"),
        ("v1's signature", vec![("Sluice-Signature", v1_signature.as_str())], "it changed after it was signed"),
        ("a garbled signature", vec![("Sluice-Signature", "sluice-signature-v1 ed25519 x")], "cannot be read"),
    ] {
        let (code, body) = http(port, "PUT", "/pipelines/tags/plugin", &headers, &v2)?;
        ensure!(code == 422, "{what}: expected 422, got {code} {body}");
        let error = body["error"].as_str().unwrap_or_default();
        ensure!(error.contains(reason), "{what}: {error}");
        ensure!(current_digest(port)? == d1, "{what}: the version changed");
        // A candidate (shadow or canary) is held to the same signature.
        let (code, body) = http(port, "POST", "/pipelines/tags/candidate", &headers, &v2)?;
        ensure!(code == 422 && body["error"].as_str().is_some_and(|e| e.contains(reason)), "{what} as a candidate: {code} {body}");
    }
    let (code, body) = http(port, "POST", "/pipelines/tags/candidate", &[("Sluice-Signature", &by_release)], &v2)?;
    ensure!(code == 200 && body["candidate"]["digest"] == d2.as_str(), "the signed candidate: {code} {body}");
    let (code, body) = http(port, "DELETE", "/pipelines/tags/candidate", &[], b"")?;
    ensure!(code == 200, "abort: {code} {body}");
    let (code, body) = http(port, "PUT", "/pipelines/tags/plugin", &[("Sluice-Signature", &by_release)], &v2)?;
    ensure!(code == 200, "the signed upload: {code} {body}");
    ensure!(current_digest(port)? == d2);
    scratch.append_events("events.jsonl", &[event("a")])?;
    host.wait_until("the output of the signed upload", WITHIN, || scratch.count_lines("out.jsonl") >= 1)?;
    let outputs = scratch.read_jsonl("out.jsonl")?;
    ensure!(outputs[0]["payload"] == "v2:a", "v2 serves: {outputs:?}");

    // The file changes to a third version (tag_v1 with a custom section),
    // whose signature lands after it.
    let mut v3 = std::fs::read(plugin("tag_v1"))?;
    v3.extend_from_slice(b"\0\x05\x04note");
    scratch.write("v3.wasm", &v3)?;
    let v3_signature = sign(&scratch, "v3.wasm", "keys/release.key")?;
    let mark = host.log_mark();
    scratch.write("plugin.wasm", &v3)?;
    host.wait_for_log("it changed after it was signed", mark, WITHIN)?;
    let (_, status) = http(port, "GET", "/pipelines/tags", &[], b"")?;
    let last = status["plugin"]["last_rejection"]["error"].as_str().unwrap_or_default();
    ensure!(last.contains("it changed after it was signed"), "the rejection is recorded: {status}");
    ensure!(current_digest(port)? == d2, "v2 keeps serving");
    scratch.write("plugin.wasm.sig", format!("{v3_signature}\n"))?;
    let d3 = sha256_hex(&scratch.path("v3.wasm"))?;
    host.wait_until("the file's version once its signature landed", WITHIN, || current_digest(port).is_ok_and(|d| d == d3))?;
    scratch.append_events("events.jsonl", &[event("b")])?;
    host.wait_until("the output of the signed file", WITHIN, || scratch.count_lines("out.jsonl") >= 2)?;
    let outputs = scratch.read_jsonl("out.jsonl")?;
    ensure!(outputs[1]["payload"] == "v1:b", "the file's version serves: {outputs:?}");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}
