//! The JSON enricher in every language, measured in one run: Rust
//! (`json_enricher`), JavaScript/QuickJS, Python, C and Go twins, and the same
//! logic in native Rust (serde_json) as the baseline the ratios are against.
//!
//! Per language: component size; compile (`Component::new` through a cold
//! cache) and load (the precompiled artefact from the cache); instantiate
//! (a new instance and its `init`); one `handle` call on a reused instance
//! for a 100 B and a 10 KiB JSON event; a fresh instance per event (the
//! instance-reuse question); linear memory per instance after one event.
//!
//! `cargo bench -p sluice --bench languages` prints a markdown table and
//! writes it to `target/bench/languages.md`. Needs the plugins built
//! (`bash scripts/build-plugins.sh` and `bash scripts/build-lang-plugins.sh`).
//! Timings are medians of several rounds; one noisy 2-core machine: treat
//! them as ±15%.
//!
//! `SLUICE_BENCH_PLUGINS="label=path,label=path…"` measures those components
//! instead (the first is the one the "×Rust" column compares with): how an
//! SDK change is measured, its build before and after in one run,
//! interleaved (`C before=…,C after=…,C before=…,C after=…`).

#[path = "common/allocator.rs"]
mod allocator;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use sluice::config::WasiGrants;
use sluice::event::Event;
use sluice::runtime::{Instance, LoadedPlugin, PluginSpec, Runtime, RuntimeOptions};

const CONFIG: [(&str, &str); 3] = [("set.env", "bench"), ("set.team", "core"), ("event_id_field", "event_id")];

/// (label, component path relative to the repository), or those named by
/// `SLUICE_BENCH_PLUGINS`.
fn plugins() -> Vec<(String, PathBuf)> {
    if let Ok(list) = std::env::var("SLUICE_BENCH_PLUGINS") {
        return list
            .split(',')
            .filter_map(|entry| entry.split_once('='))
            .map(|(label, path)| (label.trim().to_owned(), PathBuf::from(path.trim())))
            .collect();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let rust = root.join("plugins/target/wasm32-wasip2/release");
    let other = root.join("plugins/target/components");
    [
        ("Rust", rust.join("json_enricher.wasm")),
        ("C", other.join("json_enricher_c.wasm")),
        ("Go", other.join("json_enricher_go.wasm")),
        ("JavaScript (QuickJS)", other.join("json_enricher_js.wasm")),
        ("Python", other.join("json_enricher_py.wasm")),
    ]
    .into_iter()
    .map(|(label, path)| (label.to_owned(), path))
    .collect()
}

/// A JSON object of about `size` bytes: a few named fields and filler fields.
fn payload(size: usize) -> Vec<u8> {
    let mut object = Map::new();
    object.insert("user".into(), Value::from("alice"));
    object.insert("order".into(), Value::from(1234));
    object.insert("total".into(), Value::from(12.5));
    let mut i = 0;
    while serde_json::to_vec(&object).map(|v| v.len()).unwrap_or(size) < size {
        object.insert(format!("f{i}"), Value::from(format!("value-{i}")));
        i += 1;
    }
    serde_json::to_vec(&object).unwrap_or_default()
}

fn event(size: usize) -> Event {
    Event {
        id: "bench:1".into(),
        source: "bench".into(),
        key: Some(b"k".to_vec()),
        payload: payload(size),
        headers: vec![sluice::event::Header { key: "trace".into(), value: b"t-1".to_vec() }],
        timestamp_ms: 1_700_000_000_000,
        attempt: 1,
        reply_to: None,
    }
}

/// A JSON document, parsed (None if it is not JSON): outputs are compared
/// this way, since each SDK writes JSON with its language's library.
fn parsed(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

/// The enricher's logic in native Rust: the baseline.
fn native(event: &Event) -> Vec<u8> {
    let mut object: Map<String, Value> = serde_json::from_slice(&event.payload).unwrap_or_default();
    for (k, v) in CONFIG.iter().take(2) {
        object.insert(k.trim_start_matches("set.").to_owned(), Value::from(*v));
    }
    object.insert("event_id".into(), Value::from(event.id.clone()));
    serde_json::to_vec(&object).unwrap_or_default()
}

/// Median over `rounds` rounds of the mean time per call of `f`, each round
/// running for about `budget`.
/// The median time of `f` over `rounds` rounds of at least `budget` each,
/// all inside one `block_on` (so the runtime's entry is not counted).
fn per_call(rt: &tokio::runtime::Runtime, rounds: usize, budget: Duration, mut f: impl AsyncFnMut()) -> Duration {
    rt.block_on(async {
        f().await; // warm up
        let mut samples = Vec::new();
        for _ in 0..rounds {
            let started = Instant::now();
            let mut n = 0u32;
            while started.elapsed() < budget || n < 3 {
                f().await;
                n += 1;
            }
            samples.push(started.elapsed() / n);
        }
        samples.sort();
        samples[samples.len() / 2]
    })
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 10.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.2} µs")
    }
}

fn spec(path: PathBuf) -> PluginSpec {
    PluginSpec {
        pipeline: "bench".into(),
        path,
        sha256: None,
        config: CONFIG.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        wasi: WasiGrants::default(),
        timeout: Duration::from_secs(30),
        init_timeout: Duration::from_secs(30),
        memory: 256 << 20,
        instance: sluice::config::InstancePolicy::Reuse,
        grants: Vec::new(),
        metrics: Default::default(),
        http: None,
        http_stubs: None,
    }
}

struct Row {
    label: String,
    size: usize,
    compile: Duration,
    load: Duration,
    instantiate: Duration,
    call_small: Duration,
    call_large: Duration,
    fresh_small: Duration,
    memory: u64,
}

fn measure(label: String, path: PathBuf, small: &Event, large: &Event) -> Result<Row, String> {
    let size = std::fs::metadata(&path).map_err(|e| format!("{}: {e} (build the plugins first)", path.display()))?.len() as usize;
    let cache = tempfile::tempdir().map_err(|e| e.to_string())?;
    let runtime = Runtime::new(&RuntimeOptions { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeOptions::default() })
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(|e| e.to_string())?;
    // Compile: a cold cache, so `load` compiles (and writes the artefact).
    let started = Instant::now();
    let cold = rt.block_on(LoadedPlugin::load(&runtime, spec(path.clone()))).map_err(|e| e.to_string())?;
    let compile_and_start = started.elapsed();
    // Load: from the cache, as a restart or a second pipeline would.
    let started = Instant::now();
    let plugin = rt.block_on(LoadedPlugin::load(&runtime, spec(path))).map_err(|e| e.to_string())?;
    let load_and_start = started.elapsed();
    drop(cold);
    let instantiate = per_call(&rt, 5, Duration::from_millis(300), async || {
        std::hint::black_box(plugin.instantiate().await.ok());
    });
    // `load` includes one instantiation + init: take it out of both.
    let compile = compile_and_start.saturating_sub(instantiate);
    let load = load_and_start.saturating_sub(instantiate);
    let mut instance: Instance = rt.block_on(plugin.instantiate()).map_err(|e| e.to_string())?;
    let small_batch = std::slice::from_ref(small);
    let large_batch = std::slice::from_ref(large);
    let check = rt.block_on(instance.handle(small_batch)).map_err(|e| e.to_string())?;
    let expected = parsed(&native(small));
    if !matches!(check.first(), Some(Ok(outputs)) if expected.is_some() && outputs.first().and_then(|o| parsed(&o.payload)) == expected) {
        return Err(format!("{label}: the output differs from the native enricher's"));
    }
    let call_small = per_call(&rt, 5, Duration::from_millis(300), async || {
        std::hint::black_box(instance.handle(small_batch).await.ok());
    });
    let call_large = per_call(&rt, 5, Duration::from_millis(300), async || {
        std::hint::black_box(instance.handle(large_batch).await.ok());
    });
    let memory = instance.memory_bytes();
    let fresh_small = per_call(&rt, 5, Duration::from_millis(300), async || {
        if let Ok(mut fresh) = plugin.instantiate().await {
            std::hint::black_box(fresh.handle(small_batch).await.ok());
        }
    });
    Ok(Row { label, size, compile, load, instantiate, call_small, call_large, fresh_small, memory })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let small = event(100);
    let large = event(10 * 1024);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_time().build() else {
        eprintln!("cannot start a tokio runtime");
        std::process::exit(2);
    };
    let native_small = per_call(&rt, 5, Duration::from_millis(200), async || {
        std::hint::black_box(native(&small));
    });
    let native_large = per_call(&rt, 5, Duration::from_millis(200), async || {
        std::hint::black_box(native(&large));
    });
    let mut rows = Vec::new();
    for (label, path) in plugins() {
        eprintln!("measuring {label}…");
        match measure(label.clone(), path, &small, &large) {
            Ok(row) => rows.push(row),
            Err(err) => {
                eprintln!("{label}: {err}");
                std::process::exit(2);
            }
        }
    }
    let rust_small = rows.first().map(|r| r.call_small).unwrap_or(native_small);
    let ratio = |d: Duration, base: Duration| d.as_secs_f64() / base.as_secs_f64().max(1e-12);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Payloads: a JSON object of {} B and {} B; native Rust (serde_json, same logic): {} and {} per event.\n",
        small.payload.len(),
        large.payload.len(),
        fmt(native_small),
        fmt(native_large)
    );
    let _ = writeln!(out, "| | component | compile | load (cached) | instantiate + init | call, 100 B | call, 10 KiB | fresh instance + call, 100 B | memory per instance |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {:.1} MiB | {} | {} | {} | {} (×{:.0} native, ×{:.1} Rust) | {} (×{:.0} native) | {} (×{:.0} reused) | {:.1} MiB |",
            r.label,
            r.size as f64 / (1024.0 * 1024.0),
            fmt(r.compile),
            fmt(r.load),
            fmt(r.instantiate),
            fmt(r.call_small),
            ratio(r.call_small, native_small),
            ratio(r.call_small, rust_small),
            fmt(r.call_large),
            ratio(r.call_large, native_large),
            fmt(r.fresh_small),
            ratio(r.fresh_small, r.call_small),
            r.memory as f64 / (1024.0 * 1024.0),
        );
    }
    println!("{out}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("languages.md"), &out);
    }
}
