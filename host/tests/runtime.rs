//! The wasm runtime against real components: the sandbox's defaults and
//! grants, the compiled-component cache, the pooling allocator, and instance
//! replacement after a trap. Needs the plugins built (`./dev plugins`).

use std::path::PathBuf;
use std::time::Duration;

use sluice::config::{Allocator, WasiGrants};
use sluice::event::{Disposition, Event, Header};
use sluice::runtime::{LoadedPlugin, PluginSpec, Runtime, RuntimeOptions, Target};

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
        init_timeout: Duration::from_secs(10),
        memory: 32 << 20,
        instance: sluice::config::InstancePolicy::Reuse,
        grants: Vec::new(),
        metrics: Default::default(),
        http: None,
        http_stubs: None,
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
async fn run_one(plugin: &LoadedPlugin, payload: &str) -> Result<String> {
    let mut instance = plugin.instantiate().await?;
    let mut results = instance.handle(&[event(payload)]).await?;
    let outputs = results.pop().ok_or("no result")?.map_err(|e| e.message)?;
    let first = outputs.into_iter().next().ok_or("no output")?;
    Ok(String::from_utf8(first.payload)?)
}

#[tokio::test]
async fn wasi_is_denied_by_default() -> Result {
    std::env::set_var("SLUICE_TEST_SECRET", "hunter2");
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let chaos = LoadedPlugin::load(&runtime, spec("chaos", WasiGrants::default())).await?;
    assert_eq!(run_one(&chaos, "env:SLUICE_TEST_SECRET").await?, "unset");
    assert!(run_one(&chaos, "read:/etc/hostname").await?.starts_with("denied:"));
    Ok(())
}

#[tokio::test]
async fn granted_capabilities_are_visible_and_nothing_more() -> Result {
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
    let chaos = LoadedPlugin::load(&runtime, spec("chaos", wasi)).await?;
    assert_eq!(run_one(&chaos, "env:SLUICE_TEST_GRANTED").await?, "yes");
    assert_eq!(run_one(&chaos, "env:SLUICE_TEST_NOT_GRANTED").await?, "unset");
    assert_eq!(run_one(&chaos, "read:/data/data.txt").await?, "from the host");
    assert!(run_one(&chaos, "read:/etc/hostname").await?.starts_with("denied:"));
    Ok(())
}

#[tokio::test]
async fn second_load_comes_from_the_compiled_cache() -> Result {
    let cache = tempfile::tempdir()?;
    let options = RuntimeOptions { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeOptions::default() };
    let runtime = Runtime::new(&options)?;
    let first = LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default())).await?;
    assert!(!first.cache_hit());
    let entries = std::fs::read_dir(cache.path())?.count();
    assert_eq!(entries, 1, "one artifact written");
    let second = LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default())).await?;
    assert!(second.cache_hit());
    assert_eq!(run_one(&second, "hello").await?, "HELLO");
    Ok(())
}

#[tokio::test]
async fn a_corrupt_cache_entry_is_ignored_and_rewritten() -> Result {
    let cache = tempfile::tempdir()?;
    let options = RuntimeOptions { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeOptions::default() };
    let runtime = Runtime::new(&options)?;
    LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default())).await?;
    for entry in std::fs::read_dir(cache.path())? {
        std::fs::write(entry?.path(), b"garbage")?;
    }
    let reloaded = LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default())).await?;
    assert!(!reloaded.cache_hit());
    assert_eq!(run_one(&reloaded, "ok").await?, "OK");
    Ok(())
}

#[tokio::test]
async fn pooling_allocator_runs_plugins() -> Result {
    let options = RuntimeOptions { allocator: Allocator::Pooling, max_memory: 32 << 20, ..RuntimeOptions::default() };
    let runtime = Runtime::new(&options)?;
    let upper = LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default())).await?;
    for _ in 0..50 {
        assert_eq!(run_one(&upper, "pool").await?, "POOL");
    }
    Ok(())
}

#[tokio::test]
async fn a_trap_spends_the_instance_and_a_fresh_one_works() -> Result {
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let chaos = LoadedPlugin::load(&runtime, spec("chaos", WasiGrants::default())).await?;
    let mut instance = chaos.instantiate().await?;
    let err = instance.handle(&[event("trap")]).await.err().ok_or("trap expected")?;
    assert!(err.to_string().contains("chaos: trap requested"), "{err}");
    assert_eq!(run_one(&chaos, "ok:again").await?, "again");
    Ok(())
}

#[tokio::test]
async fn the_memory_cap_applies_from_instantiation() -> Result {
    // Rust components start with 17 pages (1.06 MiB) of linear memory.
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let spec = PluginSpec { memory: 1 << 20, ..spec("uppercase", WasiGrants::default()) };
    let err = LoadedPlugin::load(&runtime, spec).await.err().ok_or("a 1 MiB cap must refuse a 1.06 MiB start")?;
    assert!(err.to_string().contains("exceeds memory limits"), "{err}");
    Ok(())
}

/// `manifest.accepts`: read once per loaded version, after `init` (so it can
/// come from the config); a plugin without the export loads as before.
#[tokio::test]
async fn declared_event_versions_are_read_at_load_and_plugins_without_them_load_unchanged() -> Result {
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let with = |accepts: &str| {
        let mut spec = spec("json_enricher", WasiGrants::default());
        spec.config = vec![("accepts".into(), accepts.into())];
        LoadedPlugin::load(&runtime, spec)
    };
    let declared = with("order-created@1, refund@*").await?;
    assert_eq!(declared.accepts().map(ToString::to_string).as_deref(), Some("order-created@1, refund@*"));

    // The SDK's default is `*`.
    let default = LoadedPlugin::load(&runtime, spec("json_enricher", WasiGrants::default())).await?;
    assert_eq!(default.accepts().map(ToString::to_string).as_deref(), Some("*"));

    // A bad selector refuses the load, naming the export and the selector.
    let err = with("order-created").await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("exports `sluice:plugin/manifest@0.2.0` but: `accepts` returned a bad list: \"order-created\" is not a selector"),
        "{err}"
    );

    // Built for world `plugin` without the SDK: no manifest, every event.
    let plain = LoadedPlugin::load(&runtime, spec("plain", WasiGrants::default())).await?;
    assert!(plain.accepts().is_none());
    assert_eq!(run_one(&plain, "as before").await?, "as before");
    Ok(())
}

/// A plugin built against the frozen `sluice:plugin@0.1.0` (`plain`) loads
/// and runs beside 0.2.0 ones, and says which it targets.
#[tokio::test]
async fn plugins_built_against_the_frozen_0_1_0_contract_run_unchanged() -> Result {
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let plain = LoadedPlugin::load(&runtime, spec("plain", WasiGrants::default())).await?;
    assert_eq!(plain.target(), Target::V0_1);
    assert_eq!(run_one(&plain, "old contract").await?, "old contract");
    let current = LoadedPlugin::load(&runtime, spec("uppercase", WasiGrants::default())).await?;
    assert_eq!(current.target(), Target::V0_2);
    assert!(current.capabilities().is_empty(), "a plugin that does not use state does not import it");
    Ok(())
}

/// The Rust SDK exports `handle-packed`, and the host prefers it: a batch
/// covering every field and every kind of answer comes back exactly as
/// through `handle-batch`. A plugin without it (0.1.0 here) keeps
/// `handle-batch`.
#[tokio::test]
async fn a_packed_batch_gives_what_handle_batch_gives() -> Result {
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let chaos = LoadedPlugin::load(&runtime, spec("chaos", WasiGrants::default())).await?;
    let header = |key: &str, value: &[u8]| Header { key: key.into(), value: value.to_vec() };
    let full = Event {
        id: "orders/3/17".into(),
        source: "orders".into(),
        key: Some(vec![0, 255]),
        payload: b"describe".to_vec(),
        headers: vec![header("a", b"1"), header("a", &[0xff]), header("traceparent", b"00-4bf9-00f0-01")],
        timestamp_ms: 1_700_000_000_123,
        attempt: 3,
        reply_to: Some("_INBOX.x".into()),
    };
    let rules = ["describe", "ok:x", "retry:5", "reject:nope", "fanout:3", "reply:r", "", "ok:\u{e9}t\u{e9}"];
    let mut batch = vec![full];
    batch.extend(rules.iter().map(|rule| event(rule)));

    let mut packed = chaos.instantiate().await?;
    assert!(packed.packed(), "the Rust SDK exports handle-packed and the host uses it");
    let mut canonical = chaos.instantiate().await?;
    canonical.unpack();
    assert!(!canonical.packed());
    let through_packed = packed.handle(&batch).await?;
    assert_eq!(through_packed, canonical.handle(&batch).await?);

    let described = through_packed[0].as_ref().map_err(|e| e.message.clone())?;
    assert_eq!(described[0].destination.as_deref(), Some("described"));
    assert_eq!((described[0].key.as_deref(), described[0].reply), (Some(&[0, 255][..]), true));
    assert_eq!(described[0].headers, batch[0].headers);
    let text = String::from_utf8(described[0].payload.clone())?;
    for field in ["\"orders/3/17\"", "source: \"orders\"", "1700000000123", "attempt: 3", "Some(\"_INBOX.x\")", "[255]"] {
        assert!(text.contains(field), "{field} missing from {text}");
    }
    let failure = |i: usize| through_packed[i].as_ref().err().map(|e| (e.disposition, e.message.as_str()));
    assert_eq!(failure(3), Some((Disposition::Retryable, "transient failure (attempt 1 of 5)")));
    assert_eq!(failure(4), Some((Disposition::Reject, "nope")));
    assert_eq!(through_packed[5].as_ref().map(Vec::len), Ok(3));
    assert_eq!(through_packed[6].as_ref().map(|o| o[0].reply), Ok(true));

    let plain = LoadedPlugin::load(&runtime, spec("plain", WasiGrants::default())).await?;
    let mut old = plain.instantiate().await?;
    assert!(!old.packed(), "a 0.1.0 plugin has no handle-packed");
    assert_eq!(old.handle(&[event("a"), event("b")]).await?.len(), 2);
    Ok(())
}

/// `init` is timed: a plugin that waits in a host call or spins while it
/// starts is refused within `init_timeout`, naming the limit.
#[tokio::test]
async fn a_plugin_that_blocks_or_loops_in_init_is_refused_within_init_timeout() -> Result {
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    for config in [("init_sleep_ms", "600000"), ("init_loop", "1")] {
        let mut spec = spec("chaos", WasiGrants::default());
        spec.config = vec![(config.0.into(), config.1.into())];
        spec.init_timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let err = LoadedPlugin::load(&runtime, spec).await.err().ok_or("init must be refused")?;
        let took = started.elapsed();
        assert!(err.to_string().contains("within policy.init_timeout (300ms)"), "{config:?}: {err}");
        // Refused at the deadline (generously bounded: a debug build on a
        // busy machine), not after the ten-minute sleep.
        assert!(took < Duration::from_secs(20), "{config:?}: refused after {took:?}");
    }
    Ok(())
}

/// The instance a load validated the plugin with (its `init` run) is the
/// first one handed out, so a start pays `init` once: with an `init` that
/// sleeps 1 s, the first `instantiate` after the load does not sleep and
/// the second does, and both instances handle events.
#[tokio::test]
async fn the_first_instance_is_the_one_the_load_started() -> Result {
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let mut spec = spec("chaos", WasiGrants::default());
    let sleep = Duration::from_secs(1);
    spec.config = vec![("init_sleep_ms".into(), sleep.as_millis().to_string())];
    let plugin = LoadedPlugin::load(&runtime, spec).await?;
    let started = std::time::Instant::now();
    let mut first = plugin.instantiate().await?;
    let first_took = started.elapsed();
    let started = std::time::Instant::now();
    let mut second = plugin.instantiate().await?;
    let second_took = started.elapsed();
    assert!(first_took < sleep, "the first instance ran init again ({first_took:?})");
    assert!(second_took >= sleep, "the second instance skipped init ({second_took:?})");
    for instance in [&mut first, &mut second] {
        let results = instance.handle(&[event("{}")]).await?;
        assert!(matches!(results.first(), Some(Ok(_))), "{results:?}");
    }
    Ok(())
}

/// A guest waiting in a host call holds no thread: 200 instances sleeping
/// at once on a two-thread runtime all time out at their deadline, and the
/// process's thread count does not grow with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_guests_hold_no_thread_and_time_out_at_their_deadline() -> Result {
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let mut spec = spec("chaos", WasiGrants::default());
    spec.timeout = Duration::from_millis(200);
    let chaos = LoadedPlugin::load(&runtime, spec).await?;
    let before = threads()?;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let chaos = chaos.clone();
        calls.spawn(async move {
            let mut instance = chaos.instantiate().await.map_err(|e| e.to_string())?;
            instance
                .handle(&[event("sleep:600000")])
                .await
                .err()
                .map(|e| e.to_string())
                .ok_or_else(|| "a ten-minute sleep cannot succeed".to_owned())
        });
    }
    let mut peak = before;
    let started = std::time::Instant::now();
    let mut timeouts = 0;
    while let Some(joined) = calls.join_next().await {
        peak = peak.max(threads()?);
        let message = joined??;
        assert!(message.contains("timed out after 200ms"), "{message}");
        timeouts += 1;
    }
    assert_eq!(timeouts, 200);
    assert!(started.elapsed() < Duration::from_secs(30), "the sleeps were not cut at their deadline: {:?}", started.elapsed());
    // The blocking pool would have taken a thread per sleeping guest.
    assert!(peak <= before + 8, "threads grew from {before} to {peak} with 200 sleeping guests");
    Ok(())
}

/// The process's thread count (`Threads:` in /proc/self/status).
fn threads() -> Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("Threads:")).ok_or("no Threads: line")?;
    Ok(line.trim_start_matches("Threads:").trim().parse()?)
}
