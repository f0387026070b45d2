//! The wasm runtime against real components: the sandbox's defaults and
//! grants, the compiled-component cache, the pooling allocator, and instance
//! replacement after a trap. Needs the plugins built (`./dev plugins`).

use std::path::PathBuf;
use std::time::Duration;

use sluice::config::{Allocator, WasiGrants};
use sluice::event::Event;
use sluice::runtime::{LoadedPlugin, PluginSpec, Runtime, RuntimeOptions};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn plugin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/target/wasm32-wasip2/release/{name}.wasm"))
}

fn spec(name: &str, wasi: WasiGrants) -> PluginSpec {
    PluginSpec {
        pipeline: "runtime-test".into(),
        path: plugin(name),
        sha256: None,
        config: Vec::new(),
        wasi,
        timeout: Duration::from_secs(5),
        memory: 32 << 20,
        instance: sluice::config::InstancePolicy::Reuse,
    }
}

fn event(payload: &str) -> Event {
    Event {
        id: "e".into(),
        source: "test".into(),
        key: None,
        payload: payload.as_bytes().to_vec(),
        headers: Vec::new(),
        timestamp_ms: 0,
        attempt: 1,
        reply_to: None,
    }
}

/// Runs one event through a fresh instance; returns the first output's payload.
fn run_one(plugin: &LoadedPlugin, payload: &str) -> Result<String> {
    let mut instance = plugin.instantiate()?;
    let mut results = instance.handle(&[event(payload)])?;
    let outputs = results.pop().ok_or("no result")?.map_err(|e| e.message)?;
    let first = outputs.into_iter().next().ok_or("no output")?;
    Ok(String::from_utf8(first.payload)?)
}

#[test]
fn wasi_is_denied_by_default() -> Result {
    std::env::set_var("SLUICE_TEST_SECRET", "hunter2");
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let chaos = LoadedPlugin::load(&runtime, spec("chaos", WasiGrants::default()))?;
    assert_eq!(run_one(&chaos, "env:SLUICE_TEST_SECRET")?, "unset");
    assert!(run_one(&chaos, "read:/etc/hostname")?.starts_with("denied:"));
    Ok(())
}

#[test]
fn granted_capabilities_are_visible_and_nothing_more() -> Result {
    std::env::set_var("SLUICE_TEST_GRANTED", "yes");
    std::env::set_var("SLUICE_TEST_NOT_GRANTED", "no");
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("data.txt"), "from the host")?;
    let wasi = WasiGrants {
        env: vec!["SLUICE_TEST_GRANTED".into()],
        read_dirs: [("/data".to_owned(), dir.path().to_path_buf())].into(),
        ..WasiGrants::default()
    };
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let chaos = LoadedPlugin::load(&runtime, spec("chaos", wasi))?;
    assert_eq!(run_one(&chaos, "env:SLUICE_TEST_GRANTED")?, "yes");
    assert_eq!(run_one(&chaos, "env:SLUICE_TEST_NOT_GRANTED")?, "unset");
    assert_eq!(run_one(&chaos, "read:/data/data.txt")?, "from the host");
    assert!(run_one(&chaos, "read:/etc/hostname")?.starts_with("denied:"));
    Ok(())
}

#[test]
fn second_load_comes_from_the_compiled_cache() -> Result {
    let cache = tempfile::tempdir()?;
    let options = RuntimeOptions { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeOptions::default() };
    let runtime = Runtime::new(&options)?;
    let first = LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default()))?;
    assert!(!first.cache_hit());
    let entries = std::fs::read_dir(cache.path())?.count();
    assert_eq!(entries, 1, "one artifact written");
    let second = LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default()))?;
    assert!(second.cache_hit());
    assert_eq!(run_one(&second, "hello")?, "HELLO");
    Ok(())
}

#[test]
fn a_corrupt_cache_entry_is_ignored_and_rewritten() -> Result {
    let cache = tempfile::tempdir()?;
    let options = RuntimeOptions { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeOptions::default() };
    let runtime = Runtime::new(&options)?;
    LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default()))?;
    for entry in std::fs::read_dir(cache.path())? {
        std::fs::write(entry?.path(), b"garbage")?;
    }
    let reloaded = LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default()))?;
    assert!(!reloaded.cache_hit());
    assert_eq!(run_one(&reloaded, "ok")?, "OK");
    Ok(())
}

#[test]
fn pooling_allocator_runs_plugins() -> Result {
    let options = RuntimeOptions { allocator: Allocator::Pooling, max_memory: 32 << 20, ..RuntimeOptions::default() };
    let runtime = Runtime::new(&options)?;
    let upper = LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default()))?;
    for _ in 0..50 {
        assert_eq!(run_one(&upper, "pool")?, "POOL");
    }
    Ok(())
}

#[test]
fn a_trap_spends_the_instance_and_a_fresh_one_works() -> Result {
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let chaos = LoadedPlugin::load(&runtime, spec("chaos", WasiGrants::default()))?;
    let mut instance = chaos.instantiate()?;
    let err = instance.handle(&[event("trap")]).err().ok_or("trap expected")?;
    assert!(err.to_string().contains("chaos: trap requested"), "{err}");
    assert_eq!(run_one(&chaos, "ok:again")?, "again");
    Ok(())
}

#[test]
fn the_memory_cap_applies_from_instantiation() -> Result {
    // Rust components start with 17 pages (1.06 MiB) of linear memory.
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let spec = PluginSpec { memory: 1 << 20, ..spec("uppercase", WasiGrants::default()) };
    let err = LoadedPlugin::load(&runtime, spec).err().ok_or("a 1 MiB cap must refuse a 1.06 MiB start")?;
    assert!(err.to_string().contains("exceeds memory limits"), "{err}");
    Ok(())
}

/// `manifest.accepts`: read once per loaded version, after `init` (so it can
/// come from the config); a plugin without the export loads as before.
#[test]
fn declared_event_versions_are_read_at_load_and_plugins_without_them_load_unchanged() -> Result {
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let with = |accepts: &str| {
        let mut spec = spec("json_enricher", WasiGrants::default());
        spec.config = vec![("accepts".into(), accepts.into())];
        LoadedPlugin::load(&runtime, spec)
    };
    let declared = with("order-created@1, refund@*")?;
    assert_eq!(declared.accepts().map(ToString::to_string).as_deref(), Some("order-created@1, refund@*"));

    // The SDK's default is `*`.
    let default = LoadedPlugin::load(&runtime, spec("json_enricher", WasiGrants::default()))?;
    assert_eq!(default.accepts().map(ToString::to_string).as_deref(), Some("*"));

    // A bad selector refuses the load, naming the export and the selector.
    let err = with("order-created").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("exports `sluice:plugin/manifest@0.1.0` but: `accepts` returned a bad list: \"order-created\" is not a selector"), "{err}");

    // Built for world `plugin` without the SDK: no manifest, every event.
    let plain = LoadedPlugin::load(&runtime, spec("plain", WasiGrants::default()))?;
    assert!(plain.accepts().is_none());
    assert_eq!(run_one(&plain, "as before")?, "as before");
    Ok(())
}
