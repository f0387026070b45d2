//! Every language, one contract: the JSON enricher written in Rust
//! (`plugins/json_enricher`), JavaScript (`json_enricher_js`), TypeScript
//! (`json_enricher_ts`), Python (`json_enricher_py`), C (`json_enricher_c`)
//! and Go (`json_enricher_go`) must give the same outputs for the same events (JSON payloads compared
//! parsed: each SDK writes JSON with its language's library), fail the
//! same way (retryable, reject, trap), declare the event versions they
//! accept (`manifest`) and run in a real pipeline.
//!
//! Needs `cargo build -p sluice`, `bash scripts/build-plugins.sh` and
//! `bash scripts/build-lang-plugins.sh` first (`./dev test` does all three).

#[allow(dead_code)] // each test binary uses a different part of it
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use common::*;

/// The enricher's twins, by language.
const LANGUAGES: [(&str, &str); 5] = [
    ("js", "json_enricher_js"),
    ("ts", "json_enricher_ts"),
    ("python", "json_enricher_py"),
    ("c", "json_enricher_c"),
    ("go", "json_enricher_go"),
];

/// The config every run uses: every feature of the enricher at once.
const CONFIG: [&str; 6] =
    ["require=user", "drop_if=status=test", "set.env=test", "set.team=core", "event_id_field=event_id", "fail_on=fail"];

/// A component built by `scripts/build-lang-plugins.sh`.
fn lang_plugin(name: &str) -> PathBuf {
    let path = root().join("plugins/target/components").join(format!("{name}.wasm"));
    assert!(path.is_file(), "plugin {name} is missing at {}: run `bash scripts/build-lang-plugins.sh` first", path.display());
    path
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/languages").join(name)
}

/// `sluice plugin test PLUGIN --events EVENTS --config …` and its stdout lines.
fn plugin_test(plugin: &std::path::Path, events: &str, config: &[&str]) -> Result<(Finished, Vec<String>)> {
    let scratch = Scratch::new()?;
    let plugin = plugin.to_string_lossy().into_owned();
    let events = fixture(events).to_string_lossy().into_owned();
    let cache = compile_cache().to_string_lossy().into_owned();
    let mut args = vec!["plugin", "test", plugin.as_str(), "--events", events.as_str(), "--cache-dir", cache.as_str()];
    for entry in config {
        args.extend(["--config", entry]);
    }
    let finished = scratch.run(&args)?;
    let lines = finished.stdout.lines().map(str::to_owned).collect();
    Ok((finished, lines))
}

/// The message of an error line, if it is one.
fn error_message(line: &Value) -> Option<&str> {
    line["error"]["message"].as_str()
}

/// What may differ between languages in a `plugin test` line: the wording
/// of a JSON parser's complaint after "payload is not a JSON object", a
/// trap's message (each runtime words its crash its own way), and how a
/// JSON payload is written: each SDK writes JSON with its language's own
/// library, so a payload is compared parsed ([`parsed_json`]). Everything
/// else (ids, keys, headers, dispositions, messages) must be the same.
fn comparable(line: &str) -> Result<Value> {
    let mut value: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
    if error_message(&value).is_some_and(|m| m.starts_with("payload is not a JSON object")) {
        value["error"]["message"] = Value::from("payload is not a JSON object: …");
    }
    if value.get("trap").is_some() {
        value["trap"] = Value::from("…");
    }
    if let Some(outputs) = value.get_mut("outputs").and_then(Value::as_array_mut) {
        for output in outputs {
            if let Some(parsed) = output["payload"].as_str().and_then(parsed_json) {
                output["payload"] = parsed;
            }
        }
    }
    Ok(value)
}

/// A JSON payload as a value whose numbers are f64s: the same document
/// whether written `2000.0` (serde_json), `2E3` (Go's `json.Number` keeps
/// the input's text) or `2000` (JavaScript), its object fields in any order
/// (`Value`'s equality ignores it; Go's `encoding/json` sorts map keys).
/// Integers beyond 2^53 compare as their nearest f64: the precision
/// JavaScript's `JSON` has (docs/plugins/js.md). `None` if it is no JSON.
fn parsed_json(text: &str) -> Option<Value> {
    fn as_f64(value: Value) -> Value {
        match value {
            Value::Number(n) => n.as_f64().map_or(Value::Null, Value::from),
            Value::Array(items) => Value::Array(items.into_iter().map(as_f64).collect()),
            Value::Object(fields) => Value::Object(fields.into_iter().map(|(k, v)| (k, as_f64(v))).collect()),
            other => other,
        }
    }
    serde_json::from_str(text).ok().map(as_f64)
}

/// Events whose answer depends on a parser's nesting limit: serde_json
/// refuses the 128th level, Go's `encoding/json` takes 10,000, JavaScript
/// engines what their stack allows. A reject or an output are both right
/// for them (a trap is not): `nest-128` and `nest-2000`.
const NESTING_LIMIT_EVENTS: [usize; 2] = [19, 20];

#[test]
fn every_language_gives_the_rust_outputs() -> Result<()> {
    let (rust, expected) = plugin_test(&plugin("json_enricher"), "events.jsonl", &CONFIG)?;
    rust.ensure_success()?;
    ensure!(expected.len() == 21, "one line per event from the Rust plugin, got:\n{}", rust.stdout);
    // The Rust plugin's answers are the reference; check they say what the
    // enricher promises before comparing anything with them.
    let lines: Vec<Value> = expected.iter().map(|l| serde_json::from_str(l)).collect::<Result<_, _>>()?;
    let outputs = |i: usize| lines[i]["outputs"].as_array().map(Vec::len);
    assert_eq!(outputs(0), Some(1), "{}", expected[0]);
    assert_eq!(lines[0]["outputs"][0]["payload"], r#"{"order":1,"user":"alice","total":30,"env":"test","team":"core","event_id":"plain"}"#);
    assert_eq!(
        lines[2]["outputs"][0]["payload"],
        r#"{"user":"n","nums":[1.5,2000.0,-0.0,0,1e+16,1000000000000000.0,0.00001,1.2e-7,123456789.125,18446744073709551615,1.8446744073709552e+19,-9223372036854775808,-9.223372036854776e+18,-12,100.0,5e-324,1.7976931348623157e+308],"env":"test","team":"core","event_id":"numbers"}"#
    );
    assert_eq!(outputs(6), Some(0), "no `user`: dropped");
    assert_eq!(outputs(7), Some(0), "status=test: dropped");
    assert_eq!(outputs(8), Some(1), "status is a number, not the string `test`");
    // 40 fields and repeated keys: a repeated key keeps its first position
    // and takes its last value (the C SDK indexes objects this large).
    let many: String = (0..40)
        .map(|i| match i {
            3 => r#","k3":"again""#.to_owned(),
            39 => r#","k39":{"x":2}"#.to_owned(),
            _ => format!(r#","k{i}":{i}"#),
        })
        .collect();
    assert_eq!(
        lines[17]["outputs"][0]["payload"],
        format!(r#"{{"user":"last"{many},"env":"test","team":"core","event_id":"many-fields"}}"#)
    );
    // serde_json's recursion limit: 127 nested arrays and objects parse, the
    // 128th is refused (and 2,000 must not exhaust any parser's stack).
    assert_eq!(outputs(18), Some(1), "127 levels: {}", expected[18]);
    for (i, id) in [(9, "not-json"), (10, "array"), (11, "string"), (12, "bad-utf8"), (19, "nest-128"), (20, "nest-2000")] {
        assert_eq!(lines[i]["event"], id);
        assert_eq!(lines[i]["error"]["disposition"], "reject", "{}", expected[i]);
    }
    let expected: Vec<Value> = expected.iter().map(|l| comparable(l)).collect::<Result<_>>()?;

    for (language, name) in LANGUAGES {
        let (run, got) = plugin_test(&lang_plugin(name), "events.jsonl", &CONFIG)?;
        run.ensure_success().with_context(|| language.to_string())?;
        let got: Vec<Value> = got.iter().map(|l| comparable(l)).collect::<Result<_>>()?;
        for (i, (want, got)) in expected.iter().zip(&got).enumerate() {
            if NESTING_LIMIT_EVENTS.contains(&i) {
                let answered = got["error"]["disposition"] == "reject" || got["outputs"].as_array().is_some_and(|o| o.len() == 1);
                assert!(answered, "{language}: event {} is rejected or handled, not {got}", i + 1);
                continue;
            }
            assert_eq!(got, want, "{language}: event {} differs from Rust", i + 1);
        }
        assert_eq!(got.len(), expected.len(), "{language}: one line per event\n{}", run.stdout);
    }
    Ok(())
}

#[test]
fn errors_and_traps_are_the_same_in_every_language() -> Result<()> {
    let expected = [
        r#"{"event":"ok-1","outputs":[{"payload":"{\"user\":\"a\",\"env\":\"test\",\"team\":\"core\",\"event_id\":\"ok-1\"}","headers":{"content-type":"application/json"}}]}"#,
        r#"{"event":"retry","error":{"disposition":"retryable","message":"asked to fail (retryable) by field `fail`"}}"#,
        r#"{"event":"reject","error":{"disposition":"reject","message":"asked to fail (reject) by field `fail`"}}"#,
        r#"{"event":"trap","trap":"…"}"#,
        r#"{"event":"after-trap","outputs":[{"payload":"{\"user\":\"e\",\"env\":\"test\",\"team\":\"core\",\"event_id\":\"after-trap\"}","headers":{"content-type":"application/json"}}]}"#,
    ];
    let mut all = vec![("rust", plugin("json_enricher"))];
    all.extend(LANGUAGES.iter().map(|(language, name)| (*language, lang_plugin(name))));
    for (language, path) in all {
        let (run, lines) = plugin_test(&path, "failures.jsonl", &CONFIG)?;
        run.ensure_success().with_context(|| language.to_string())?;
        ensure!(lines.len() == 7, "{language}: one line per event, got:\n{}", run.stdout);
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(comparable(&lines[i])?, comparable(want)?, "{language}: event {}", i + 1);
        }
        // A value that is not one of the three words is no request to fail.
        for line in &lines[5..] {
            let value: Value = serde_json::from_str(line)?;
            assert_eq!(value["outputs"].as_array().map(Vec::len), Some(1), "{language}: {line}");
        }
        // The guest's own words reach the user: `plugin test` grants stderr,
        // where every runtime writes its panic or exception.
        assert!(run.stderr.contains("asked to trap by field `fail`"), "{language}: the guest's panic message is shown:\n{}", run.stderr);
        assert!(run.stderr.contains("3 event(s) failed"), "{language}: {}", run.stderr);
    }
    Ok(())
}

#[test]
fn a_refused_config_reads_the_same_in_every_language() -> Result<()> {
    let cases: [(&[&str], &str); 3] = [
        (&["colour=red"], "unknown config key `colour` (expected one of: require, drop_if, set.*, event_id_field, fail_on, accepts)"),
        (&["drop_if=nothing"], "`drop_if` must be `field=value`, got `nothing`"),
        (&["set.=x"], "`set.` needs a field name, as in `set.team`"),
    ];
    let mut all = vec![("rust", plugin("json_enricher"))];
    all.extend(LANGUAGES.iter().map(|(language, name)| (*language, lang_plugin(name))));
    for (language, path) in &all {
        for (config, message) in cases {
            let (run, _) = plugin_test(path, "failures.jsonl", config)?;
            run.ensure_failure()?;
            let want = format!("plugin {} refused its configuration: {message}", path.display());
            assert!(run.stderr.contains(&want), "{language}: expected `{want}` in:\n{}", run.stderr);
        }
    }
    Ok(())
}

/// Every SDK exports `manifest`: each enricher declares the event versions
/// its `accepts` config lists, `sluice check` shows them, and a file
/// pipeline dead-letters the events they do not cover as `unsupported`
/// (an untyped one included) without calling the plugin, as with Rust.
#[test]
fn every_language_declares_the_versions_it_accepts() -> Result<()> {
    let typed = |id: &str, kind: &str, version: &str| serde_json::json!({"id": id, "payload": {"id": id}, "headers": {"event-type": kind, "event-version": version}});
    let events = [
        typed("t1", "t", "1"),
        typed("t2", "t", "2"),
        typed("u7", "u", "7"),
        serde_json::json!({"id": "untyped", "payload": {"id": "untyped"}}),
    ];
    let mut all = vec![("rust", plugin("json_enricher"))];
    all.extend(LANGUAGES.iter().map(|(language, name)| (*language, lang_plugin(name))));
    for (language, path) in all {
        let scratch = Scratch::new()?;
        let pipeline = one_pipeline("p", "json_enricher", r#"accepts = "t@2, u@*""#, "")
            .replace(&toml_path(&plugin("json_enricher")), &toml_path(&path));
        scratch.write("sluice.toml", pipeline)?;
        scratch.write_events("events.jsonl", &events)?;
        let checked = scratch.run(&["check", "sluice.toml"])?;
        checked.ensure_success().with_context(|| language.to_string())?;
        ensure!(checked.stdout.contains("      accepts: t@2, u@*\n"), "{language}: {}", checked.stdout);
        scratch.run(&["run", "sluice.toml"])?.ensure_success().with_context(|| language.to_string())?;
        let out = scratch.read_jsonl("out.jsonl")?;
        let handled: Vec<Value> = payloads(&out).iter().map(|p| serde_json::from_str(p)).collect::<Result<_, _>>()?;
        ensure!(handled == [serde_json::json!({"id": "t2"}), serde_json::json!({"id": "u7"})], "{language}: {handled:?}");
        let mut dead = Vec::new();
        for record in scratch.read_jsonl("dlq.jsonl")? {
            let h = |name: &str| header(&record, name).unwrap_or_default().to_owned();
            dead.push((h("sluice-dlq-event-id"), h("sluice-dlq-reason"), h("sluice-dlq-message")));
        }
        dead.sort();
        let refused = |id: &str, what: &str| (id.to_owned(), "unsupported".to_owned(), format!("{what}; it accepts: t@2, u@*"));
        ensure!(
            dead == [
                refused("t1", "the plugin does not accept event type t@1"),
                refused("untyped", "the plugin does not accept an event without a `event-type` header"),
            ],
            "{language}: {dead:#?}"
        );
    }
    Ok(())
}

/// One Go instance stays healthy for 10,000 events. Go's heap used to grow
/// over the page the WASI adapter had taken for its state with
/// `memory.grow` (see docs/plugins/go.md), and the instance trapped with
/// `call stack exhausted`: with these events first at the 133rd, then about
/// every 128th (every ~2,900th with small events only). `plugin test`
/// retries nothing, so a single trap fails this test. Payload sizes vary up
/// to ~8 KiB so that Go's heap grows and collects many times; a few events
/// are dropped or rejected on the way. Every answer is checked.
#[test]
fn one_go_instance_handles_ten_thousand_events() -> Result<()> {
    const EVENTS: usize = 10_000;
    let scratch = Scratch::new()?;
    let mut events = String::new();
    let mut expected = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let id = format!("many-{i}");
        let pad = "x".repeat((i % 64) * 128);
        let (payload, want) = if i % 1000 == 999 {
            let payload = format!(r#"{{"n":{i},"user":"u{i}","fail":"reject"}}"#);
            let line =
                serde_json::json!({"event": id, "error": {"disposition": "reject", "message": "asked to fail (reject) by field `fail`"}});
            (payload, line)
        } else if i % 7 == 3 {
            (format!(r#"{{"n":{i},"pad":"{pad}"}}"#), serde_json::json!({"event": id, "outputs": []}))
        } else {
            let payload = format!(r#"{{"n": {i}, "user": "u{i}", "pad": "{pad}"}}"#);
            let out = format!(r#"{{"n":{i},"user":"u{i}","pad":"{pad}","env":"test","team":"core","event_id":"{id}"}}"#);
            let line = serde_json::json!({"event": id, "outputs": [{
                "key": format!("k{i}"),
                "payload": out,
                "headers": {"trace": format!("t{i}"), "content-type": "application/json"},
            }]});
            (payload, line)
        };
        let event = serde_json::json!({"id": id, "key": format!("k{i}"), "payload": payload, "headers": {"trace": format!("t{i}")}});
        events.push_str(&format!("{event}\n"));
        expected.push(want);
    }
    scratch.write("many.jsonl", events)?;
    let plugin = lang_plugin("json_enricher_go").to_string_lossy().into_owned();
    let cache = compile_cache().to_string_lossy().into_owned();
    let mut args = vec!["plugin", "test", plugin.as_str(), "--events", "many.jsonl", "--cache-dir", cache.as_str()];
    for entry in &CONFIG {
        args.extend(["--config", entry]);
    }
    let run = scratch.run(&args)?;
    let lines: Vec<Value> = run.stdout.lines().map(comparable).collect::<Result<_, _>>()?;
    ensure!(lines.len() == EVENTS, "one line per event, got {}:\n{}", lines.len(), run.stderr);
    for (i, (got, want)) in lines.iter().zip(&expected).enumerate() {
        assert_eq!(got, &comparable(&want.to_string())?, "event {} of {EVENTS}", i + 1);
    }
    run.ensure_success()?;
    assert!(run.stderr.contains(&format!("{} event(s) failed", EVENTS / 1000)), "only the rejects fail:\n{}", run.stderr);
    Ok(())
}

/// The quickstart's pipeline shape (file → plugin → file, dead letters to a
/// file) with each language's enricher: the same outputs and the same
/// dead-letter records as with the Rust one.
#[test]
fn every_language_runs_in_a_file_pipeline() -> Result<()> {
    let events = std::fs::read_to_string(fixture("failures.jsonl"))?;
    let config = CONFIG
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            format!("{} = {}", toml_str(k), toml_str(v))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let policy = "max_attempts = 2\nbackoff = { initial = \"1ms\", max = \"1ms\" }";
    let run = |path: PathBuf| -> Result<(Vec<Value>, Vec<Value>)> {
        let scratch = Scratch::new()?;
        let pipeline = one_pipeline("p", "json_enricher", &config, policy).replace(&toml_path(&plugin("json_enricher")), &toml_path(&path));
        scratch.write("sluice.toml", pipeline)?;
        scratch.write("events.jsonl", &events)?;
        scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
        let digest = sha256_hex(&path)?;
        let mut out = scratch.read_jsonl("out.jsonl")?;
        for record in &mut out {
            let headers = record["headers"].as_object_mut().context("output without headers")?;
            let found = headers.remove("sluice-plugin-digest");
            ensure!(found.as_ref().and_then(Value::as_str) == Some(digest.as_str()), "digest header {found:?}");
            if let Some(parsed) = record["payload"].as_str().and_then(parsed_json) {
                record["payload"] = parsed;
            }
        }
        let dlq = scratch
            .read_jsonl("dlq.jsonl")?
            .into_iter()
            .map(|r| {
                let h = |n: &str| header(&r, n).map(str::to_owned);
                serde_json::json!({
                    "payload": r["payload"],
                    "reason": h("sluice-dlq-reason"),
                    "event": h("sluice-dlq-event-id"),
                    "attempts": h("sluice-dlq-attempts"),
                    // A trap's message is the runtime's own; the rest must match.
                    "message": h("sluice-dlq-message").filter(|m| !m.contains("trap")),
                })
            })
            .collect();
        Ok((out, dlq))
    };
    let (out, dlq) = run(plugin("json_enricher"))?;
    ensure!(out.len() == 4, "4 events pass: {out:#?}");
    ensure!(dlq.len() == 3, "retry (exhausted), reject and trap (exhausted) are dead-lettered: {dlq:#?}");
    for (language, name) in LANGUAGES {
        let (got_out, got_dlq) = run(lang_plugin(name))?;
        assert_eq!(got_out, out, "{language}: outputs");
        assert_eq!(got_dlq, dlq, "{language}: dead letters");
    }
    Ok(())
}

/// `sluice plugin new --lang L` makes a project that `sluice plugin build`
/// builds (it detects the language and runs the project's build.sh) and passes `sluice plugin test … --expect expected.jsonl` as
/// generated, in every language.
#[test]
fn plugin_new_makes_a_project_that_builds_and_passes_its_test_in_every_language() -> Result<()> {
    // Building a Rust project cold compiles its dependencies: minutes.
    const BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);
    let cache = compile_cache().to_string_lossy().into_owned();
    for lang in ["rust", "js", "ts", "python", "c", "go"] {
        let scratch = Scratch::new()?;
        let name = format!("demo-{lang}");
        let created = scratch.run(&["plugin", "new", "--lang", lang, &name])?;
        created.ensure_success()?;
        let dir = scratch.path(&name);
        let mut build = std::process::Command::new(sluice_bin());
        build.args(["plugin", "build", &name]).current_dir(scratch.path(""));
        // A target folder of its own: the workspace's is locked by `cargo test`.
        build.env("CARGO_TARGET_DIR", root().join("target/scaffold"));
        let built = Running::spawn(build)?.wait(BUILD_TIMEOUT)?;
        ensure!(built.status.success(), "{lang}: plugin build failed\n{}\n{}", built.stdout, built.stderr);
        // It names the language it detected and prints where the component is.
        let language = match lang {
            "rust" => "Rust",
            "js" => "JavaScript",
            "ts" => "TypeScript",
            "python" => "Python",
            "c" => "C",
            _ => "Go",
        };
        assert!(built.stderr.contains(&format!("building the {language} plugin in {name}")), "{lang}: {}", built.stderr);
        assert_eq!(built.stdout.lines().last(), Some(format!("{name}/{name}.wasm").as_str()), "{lang}: {}", built.stdout);
        let mut test = std::process::Command::new(sluice_bin());
        test.args([
            "plugin",
            "test",
            &format!("{name}.wasm"),
            "--events",
            "events.jsonl",
            "--expect",
            "expected.jsonl",
            "--cache-dir",
            &cache,
        ])
        .current_dir(&dir);
        let tested = Running::spawn(test)?.wait(RUN_TIMEOUT)?;
        ensure!(tested.status.success(), "{lang}: plugin test failed\n{}\n{}", tested.stdout, tested.stderr);
        assert!(tested.stderr.contains("all 2 line(s) match"), "{lang}: {}", tested.stderr);
        // The template takes its config like any plugin, and refuses a typo.
        let mut typo = std::process::Command::new(sluice_bin());
        typo.args(["plugin", "test", &format!("{name}.wasm"), "--events", "events.jsonl", "--config", "tga=x", "--cache-dir", &cache])
            .current_dir(&dir);
        let refused = Running::spawn(typo)?.wait(RUN_TIMEOUT)?;
        refused.ensure_failure()?;
        assert!(refused.stderr.contains("unknown config key `tga` (expected one of: tag)"), "{lang}: {}", refused.stderr);
    }
    Ok(())
}

/// `sluice plugin new --with state,http,client,metrics`, in every language:
/// the project also counts per key in state, POSTs to an API, asks a
/// service and records metrics, and passes its test as generated (one
/// `expected.jsonl` for all: the templates make the same calls in the same
/// order), its calls answered by the `http.json` and `replies.json` it
/// comes with. Fewer features make a project that builds and passes too.
#[test]
fn plugin_new_with_every_feature_builds_and_passes_its_test() -> Result<()> {
    const BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);
    let cache = compile_cache().to_string_lossy().into_owned();
    let all = "state,http,client,metrics";
    let cases = [
        ("rust", all),
        ("ts", all),
        ("js", "state,client,metrics"),
        ("ts", "client"),
        ("python", all),
        ("c", all),
        ("c", "client"),
        ("go", all),
        ("go", "state,client"),
    ];
    for (lang, with) in cases {
        let scratch = Scratch::new()?;
        let name = format!("acts-{lang}");
        let created = scratch.run(&["plugin", "new", "--lang", lang, "--with", with, &name])?;
        created.ensure_success()?;
        let dir = scratch.path(&name);
        let http = with.contains("http");
        ensure!(dir.join("http.json").is_file() == http && dir.join("replies.json").is_file(), "{lang} {with}: the stub files");
        let mut build = std::process::Command::new(sluice_bin());
        build.args(["plugin", "build", &name]).current_dir(scratch.path(""));
        build.env("CARGO_TARGET_DIR", root().join("target/scaffold"));
        let built = Running::spawn(build)?.wait(BUILD_TIMEOUT)?;
        ensure!(built.status.success(), "{lang} {with}: plugin build failed\n{}\n{}", built.stdout, built.stderr);
        // The command the project's README and `plugin new` give.
        let flags = if http { vec!["--http-replies", "http.json", "--replies", "replies.json"] } else { vec!["--replies", "replies.json"] };
        ensure!(created.stdout.contains(&flags.join(" ")), "{lang}: `next:` names the stub files: {}", created.stdout);
        let mut test = std::process::Command::new(sluice_bin());
        test.args([
            "plugin",
            "test",
            &format!("{name}.wasm"),
            "--events",
            "events.jsonl",
            "--expect",
            "expected.jsonl",
            "--cache-dir",
            &cache,
        ])
        .args(&flags)
        .current_dir(&dir);
        // With `fetch`, a cold StarlingMonkey compile: [`SLOW_RUN`].
        let tested = Running::spawn(test)?.wait(SLOW_RUN)?;
        ensure!(tested.status.success(), "{lang} {with}: plugin test failed\n{}\n{}", tested.stdout, tested.stderr);
        assert!(tested.stderr.contains("all 2 line(s) match"), "{lang}: {}", tested.stderr);
        let hello: Value = serde_json::from_str(tested.stdout.lines().next().context("a line for hello")?)?;
        assert_eq!(header(&hello["outputs"][0], "x-answer"), Some("ok"), "{lang} {with}: the service's answer: {hello}");
        if with.contains("state") {
            assert_eq!(header(&hello["outputs"][0], "x-seen"), Some("1"), "{lang}: the count in state");
        }
        if http {
            assert_eq!(header(&hello["outputs"][0], "x-lookup"), Some("gold"), "{lang}: the API's answer");
            assert_eq!(hello["calls"][0]["method"], "POST", "{lang}");
            assert_eq!(hello["calls"][1]["idempotency_key"], "hello:1", "{lang}: keys count the event's calls");
        }
    }
    Ok(())
}

#[test]
fn plugin_new_refuses_a_bad_name_and_an_existing_folder() -> Result<()> {
    let scratch = Scratch::new()?;
    let bad = scratch.run(&["plugin", "new", "--lang", "js", "My Plugin"])?;
    bad.ensure_failure()?;
    assert!(bad.stderr.contains("plugin name `My Plugin`: use lowercase letters"), "{}", bad.stderr);
    scratch.write("taken/file", "x")?;
    let taken = scratch.run(&["plugin", "new", "--lang", "go", "taken"])?;
    taken.ensure_failure()?;
    assert!(taken.stderr.contains("taken already exists and is not empty"), "{}", taken.stderr);
    // Every language takes `--with` (no template refuses it any more).
    for lang in ["python", "c", "go"] {
        let name = format!("with-{lang}");
        scratch.run(&["plugin", "new", "--lang", lang, "--with", "http", &name])?.ensure_success()?;
        assert!(scratch.path(&name).join("http.json").is_file(), "{lang}: http.json");
    }
    let unknown = scratch.run(&["plugin", "new", "--with", "kafka", "other"])?;
    unknown.ensure_failure()?;
    assert!(unknown.stderr.contains("invalid value 'kafka' for '--with"), "{}", unknown.stderr);
    // `plugin build` on a folder that is no plugin project says why.
    let unknown = scratch.run(&["plugin", "build", "taken"])?;
    unknown.ensure_failure()?;
    assert!(unknown.stderr.contains("cannot tell the language of the project in taken"), "{}", unknown.stderr);
    Ok(())
}

/// `[pipelines.<name>.plugin] instance`: `reuse` (the default) keeps one
/// instance per lane, so state carries over between events; `fresh` gives
/// every event a new one. `chaos` answers `calls` with its instance's count.
#[test]
fn instance_policy_reuse_keeps_state_and_fresh_starts_every_event_anew() -> Result<()> {
    for (policy, expected) in [("", ["1", "2", "3"]), ("fresh", ["1", "1", "1"]), ("reuse", ["1", "2", "3"])] {
        let scratch = Scratch::new()?;
        let mut config = one_pipeline("p", "chaos", "", "");
        if !policy.is_empty() {
            let path = format!("path = {}", toml_path(&plugin("chaos")));
            config = config.replace(&path, &format!("{path}\ninstance = \"{policy}\""));
        }
        scratch.write("sluice.toml", config)?;
        scratch.write_events("events.jsonl", &[event("calls"), event("calls"), event("calls")])?;
        scratch.run(&["run", "sluice.toml"])?.ensure_success()?;
        assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), expected, "instance = {policy:?}");
    }
    Ok(())
}

/// The counter's twins (`plugins/counter` in Rust), by language: each
/// counts events per key in the pipeline's state with its SDK's state API.
const COUNTERS: [(&str, &str); 5] =
    [("js", "counter_js"), ("ts", "counter_ts"), ("python", "counter_py"), ("c", "counter_c"), ("go", "counter_go")];

/// How long a run of a counter may take (see the tests below).
const SLOW_RUN: std::time::Duration = std::time::Duration::from_secs(300);

/// The Rust counter and its twins.
fn counters() -> Vec<(&'static str, PathBuf)> {
    let mut all = vec![("rust", plugin("counter"))];
    all.extend(COUNTERS.iter().map(|(language, name)| (*language, lang_plugin(name))));
    all
}

/// `key=value` outputs per key, in file order.
fn counts_per_key(outputs: &[Value]) -> Result<BTreeMap<String, Vec<i64>>> {
    let mut per_key = BTreeMap::<String, Vec<i64>>::new();
    for output in outputs {
        let text = output["payload"].as_str().context("a text payload")?;
        let (key, value) = text.split_once('=').with_context(|| format!("not key=value: {text}"))?;
        ensure!(output["key"].as_str() == Some(key), "the output's key is the counted key: {output}");
        per_key.entry(key.to_owned()).or_default().push(value.parse()?);
    }
    Ok(per_key)
}

/// Every language's counter in a file pipeline with embedded state, four
/// lanes ordered by key: 350 keyed events over 7 keys, one failing once and
/// one rejected. Each key's outputs are exactly 1, 2, … its number of
/// counted events, in order (the retried attempt's increment and the
/// rejected event's are gone); then a probe event per key (keyed by its
/// payload, the counter's other rule), in a second run on the same state,
/// reads count + 1. Runs get [`SLOW_RUN`]: a cold Python or StarlingMonkey
/// compile on a busy machine can outlast the usual timeout.
#[test]
fn every_language_counts_per_key_in_embedded_state() -> Result<()> {
    const KEYS: usize = 7;
    const EVENTS: usize = 350;
    let mut events = Vec::with_capacity(EVENTS);
    let mut expected = BTreeMap::<String, i64>::new();
    for i in 0..EVENTS {
        let key = format!("k{}", i % KEYS);
        let event = match i {
            10 => serde_json::json!({ "key": key, "payload": format!("{key}:retry-once") }),
            20 => serde_json::json!({ "key": key, "payload": format!("{key}:reject") }),
            _ if i % 2 == 0 => serde_json::json!({ "key": key, "payload": key }),
            _ => serde_json::json!({ "key": key, "payload": "keyed" }),
        };
        if i != 20 {
            *expected.entry(key).or_default() += 1;
        }
        events.push(event);
    }
    for (language, path) in counters() {
        let scratch = Scratch::new()?;
        scratch.write_events("events.jsonl", &events)?;
        scratch.write("sluice.toml", stateful_pipeline(&path, "concurrency = 4\nordering = \"key\""))?;
        Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?.wait(SLOW_RUN)?.ensure_success().with_context(|| language.to_string())?;
        let per_key = counts_per_key(&scratch.read_jsonl("out.jsonl")?)?;
        ensure!(per_key.len() == KEYS, "{language}: {} keys in the outputs", per_key.len());
        for (key, values) in &per_key {
            let n = expected.get(key).copied().unwrap_or_default();
            ensure!(values == &(1..=n).collect::<Vec<_>>(), "{language}: {key} counted {values:?}, expected 1..={n}");
        }
        let dead = scratch.read_jsonl("dlq.jsonl")?;
        ensure!(dead.len() == 1, "{language}: only the rejected event is dead-lettered: {dead:?}");
        let message = header(&dead[0], "sluice-dlq-message").unwrap_or_default();
        ensure!(message == format!("rejected after counting k6 to {}", 20 / KEYS + 1), "{language}: {message}");

        // The state itself, read back by a probe event per key.
        let probes: Vec<Value> = expected.keys().map(|key| event(key)).collect();
        scratch.append_events("events.jsonl", &probes)?;
        Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?.wait(SLOW_RUN)?.ensure_success().with_context(|| language.to_string())?;
        let outputs = scratch.read_jsonl("out.jsonl")?;
        let probed = counts_per_key(&outputs[outputs.len() - KEYS..])?;
        for (key, n) in &expected {
            ensure!(probed.get(key) == Some(&vec![n + 1]), "{language}: the probe of {key} read {:?}, expected {}", probed.get(key), n + 1);
        }
    }
    Ok(())
}

/// `sluice plugin test --state seed.json` gives every language's counter
/// an in-memory state seeded from the file: the seeded values are read,
/// and a failed event's write is not kept.
#[test]
fn every_language_reads_a_seeded_state_in_plugin_test() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("seed.json", r#"{"count:a": "41", "count:b": {"base64": "OQ=="}}"#)?;
    scratch.write_events("events.jsonl", &[event("a"), event("a:reject"), event("a"), event("b"), event("c")])?;
    let cache = compile_cache().to_string_lossy().into_owned();
    for (language, path) in counters() {
        let plugin = path.to_string_lossy().into_owned();
        let args = ["plugin", "test", &plugin, "--events", "events.jsonl", "--state", "seed.json", "--cache-dir", &cache];
        let tested = Running::spawn(scratch.sluice(&args))?.wait(SLOW_RUN)?;
        let lines = parse_jsonl(&tested.stdout)?;
        let outputs: Vec<Option<&str>> = lines.iter().map(|l| l["outputs"][0]["payload"].as_str()).collect();
        ensure!(outputs == [Some("a=42"), None, Some("a=43"), Some("b=10"), Some("c=1")], "{language}: {}", tested.stdout);
        ensure!(lines[1]["error"]["message"] == "rejected after counting a to 43", "{language}: {}", tested.stdout);
    }
    Ok(())
}

/// Every language's counter records the same plugin metrics through its
/// SDK (`counted` per key, `payload_bytes`), on every attempt: read from
/// the real binary's `/metrics` after 12 keyed events over 3 keys, one of
/// them failing its first attempt.
#[test]
fn every_language_records_plugin_metrics() -> Result<()> {
    let mut events = Vec::new();
    let mut bytes = 0;
    for i in 0..12 {
        let key = format!("k{}", i % 3);
        let payload = if i == 3 { format!("{key}:retry-once") } else { key.clone() };
        bytes += payload.len() * if i == 3 { 2 } else { 1 };
        events.push(serde_json::json!({ "key": key, "payload": payload }));
    }
    for (language, path) in counters() {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let scratch = Scratch::new()?;
        scratch.write("events.jsonl", "")?;
        // One event per call, so the counts are per attempt whatever the
        // batching (a stateful batch that is not kept counts its events again).
        let pipeline =
            stateful_pipeline(&path, "batch_size = 1").replace("path = \"events.jsonl\"", "path = \"events.jsonl\", follow = true");
        scratch.write("sluice.toml", format!("[admin]\nlisten = \"{ANY_PORT}\"\n{pipeline}"))?;
        let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
        let port = host.admin_port()?;
        host.wait_until("the admin API", SLOW_RUN, || http_request(port, "GET", "/healthz", None, b"").is_ok_and(|(s, _)| s == 200))?;
        scratch.append_events("events.jsonl", &events)?;
        let acked = format!(r#"sluice_events_acked_total{{pipeline="counts",plugin="{name}"}}"#);
        host.wait_until("every event settled", SLOW_RUN, || metrics(port).ok().and_then(|m| m.get(&acked).copied()) == Some(12.0))?;
        let m = metrics(port)?;
        let get = |series: String| m.get(&series).copied().with_context(|| format!("{language}: no {series} in {m:#?}"));
        let labels = format!(r#"pipeline="counts",plugin="{name}""#);
        for (key, n) in [("k0", 5.0), ("k1", 4.0), ("k2", 4.0)] {
            ensure!(
                get(format!(r#"sluice_plugin_counted_total{{{labels},key="{key}"}}"#))? == n,
                "{language}: {key} counted once per attempt, {n}"
            );
        }
        ensure!(get(format!("sluice_plugin_payload_bytes_count{{{labels}}}"))? == 13.0, "{language}: one observation per attempt");
        ensure!(get(format!("sluice_plugin_payload_bytes_sum{{{labels}}}"))? == bytes as f64, "{language}: payload sizes");
        host.terminate()?;
        host.wait(SLOW_RUN)?.ensure_success().with_context(|| language.to_string())?;
    }
    Ok(())
}

/// The Go SDK's canonical ABI is written by hand (docs/plugins/go.md says
/// why), so a test plugin, `abi_go`, sends back every WIT type the other
/// Go plugins do not reach, through the real host: each field of the event
/// record as decoded (absent, text and binary keys and payloads, repeated
/// and binary headers, `timestamp-ms`, `attempt`, `reply-to`), an output's
/// `destination` and `reply` flag, `state`'s `get` before and after a
/// `set`, a `scan` paged one entry at a time, a `delete`, and two
/// `state-error` cases lifted into the event's error.
#[test]
fn go_abi_decodes_and_encodes_every_wit_type() -> Result<()> {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let scratch = Scratch::new()?;
    let events = [
        serde_json::json!({"id": "first", "key": "k1", "payload": "one", "timestamp": 1_700_000_000_123_u64, "reply_to": "inbox.1",
            "headers": [["to", "audit"], ["h", {"base64": "/wA="}], ["h", "2"]]}),
        serde_json::json!({"id": "second", "key_base64": "AAH+", "payload_base64": "/wA=", "timestamp": 5}),
        serde_json::json!({"id": "drop", "payload": ""}),
        serde_json::json!({"id": "long", "payload": "fail:key-too-long"}),
        serde_json::json!({"id": "text", "payload": "fail:not-a-counter"}),
    ];
    scratch.write_events("events.jsonl", &events)?;
    let plugin = lang_plugin("abi_go").to_string_lossy().into_owned();
    let cache = compile_cache().to_string_lossy().into_owned();
    let run = scratch.run(&["plugin", "test", &plugin, "--events", "events.jsonl", "--cache-dir", &cache])?;
    let lines = parse_jsonl(&run.stdout)?;
    ensure!(lines.len() == 5, "one line per event: {}", run.stdout);
    let echo = |i: usize| -> Result<Value> {
        let payload = lines[i]["outputs"][0]["payload"].as_str().with_context(|| format!("event {i}: {}", lines[i]))?;
        Ok(serde_json::from_str(payload)?)
    };
    let state = |i: usize| -> Result<Value> {
        let payload = lines[i]["outputs"][1]["payload"].as_str().with_context(|| format!("event {i}: {}", lines[i]))?;
        Ok(serde_json::from_str(payload)?)
    };

    // The event record, as the SDK decoded it.
    let first = echo(0)?;
    assert_eq!(first["id"], "first");
    assert!(first["source"].as_str().is_some_and(|s| !s.is_empty()), "{first}");
    assert_eq!(first["key"], b64(b"k1"));
    assert_eq!(first["payload"], b64(b"one"));
    assert_eq!(first["headers"], serde_json::json!([["to", b64(b"audit")], ["h", b64(&[0xff, 0])], ["h", b64(b"2")]]));
    assert_eq!(first["timestamp_ms"], 1_700_000_000_123_u64);
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["reply_to"], "inbox.1");
    let second = echo(1)?;
    assert_eq!((&second["key"], &second["payload"]), (&Value::from(b64(&[0, 1, 0xfe])), &Value::from(b64(&[0xff, 0]))));
    assert_eq!((&second["headers"], &second["timestamp_ms"], &second["reply_to"]), (&serde_json::json!([]), &Value::from(5), &Value::Null));
    let dropped = echo(2)?;
    assert_eq!((&dropped["key"], &dropped["payload"]), (&Value::Null, &Value::from("")), "{dropped}");

    // The outputs, as the SDK encoded them: destination, reply flag, key,
    // repeated and binary headers.
    let out = &lines[0]["outputs"][0];
    assert_eq!(out["destination"], "audit", "{out}");
    assert_eq!(out["reply"], true, "{out}");
    assert_eq!(out["key"], "k1", "{out}");
    assert_eq!(out["headers"], serde_json::json!([["to", "audit"], ["h", {"base64": "/wA="}], ["h", "2"]]), "{out}");
    let plain = &lines[1]["outputs"][1];
    assert!(plain.get("destination").is_none_or(Value::is_null) && plain.get("reply").is_none(), "{plain}");
    assert_eq!(lines[1]["outputs"][0]["key_base64"], "AAH+", "{}", lines[1]);

    // State: get (absent, present), set, scan page by page, delete.
    assert_eq!(
        state(0)?,
        serde_json::json!({"before": null, "after": b64(b"one"), "scanned": ["abi:first"], "values": [b64(b"one")], "pages": 2, "deleted": false, "after_delete": null})
    );
    assert_eq!(state(1)?["scanned"], serde_json::json!(["abi:first", "abi:second"]));
    assert_eq!(state(1)?["values"], serde_json::json!([b64(b"one"), b64(&[0xff, 0])]));
    // A full page comes with a cursor (the host cannot know it was the
    // last), so N entries one per page take N + 1 calls.
    assert_eq!(state(1)?["pages"], 3);
    let drop = state(2)?;
    assert_eq!(drop["scanned"], serde_json::json!(["abi:drop", "abi:first", "abi:second"]), "{drop}");
    assert_eq!((&drop["pages"], &drop["deleted"], &drop["after_delete"]), (&Value::from(4), &Value::Bool(true), &Value::Null), "{drop}");

    // state-error cases, lifted into the event's error with the Rust SDK's words.
    assert_eq!(lines[3]["error"]["disposition"], "reject", "{}", lines[3]);
    ensure!(error_message(&lines[3]).is_some_and(|m| m.starts_with("state key longer than the limit of ")), "{}", lines[3]);
    assert_eq!(
        lines[4]["error"],
        serde_json::json!({"disposition": "reject", "message": "state value is not a counter (ASCII decimal text)"})
    );
    Ok(())
}
