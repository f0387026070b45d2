//! What an HTTP call from a plugin costs over the same call made natively,
//! in the same run, against the same local server (axum on 127.0.0.1,
//! answering `GET /` with 2 bytes):
//!
//! - `http/plugin`: one event through `http_enrich` (Rust, `method = GET`):
//!   the call into the component, the SDK building the request, the host's
//!   allow-list check, idempotency key and trace context, the concurrency
//!   slot, the version's connection pool (hyper-util, a kept-alive
//!   connection), the capped body read back through `wasi:io` streams, and
//!   the output;
//! - `http/native`: the same GET with hyper-util's pooled client (a
//!   kept-alive connection, as the plugin's), body read whole, in a task
//!   on the 2-worker runtime, as a native service would;
//! - `http/native-plugin-thread`: the same native GET on a plugin thread,
//!   with a client per thread as the host's pools are: the plugin's own
//!   placement, so `plugin` minus this is what the plugin path adds;
//! - `http/plugin-no-call`: the same plugin call without the request
//!   (`passthrough`), to tell the plugin call from the HTTP path.
//!
//! The plugin loops run on a plugin thread (`runtime::executor`), where
//! lanes run with `[runtime] plugin_threads`; `http/plugin-shared` is
//! `http/plugin` in a task on the 2-worker runtime instead, where lanes run
//! by default.
//!
//! The server runs on its own thread with its own runtime, as a server in
//! another process would: every call then waits for another thread to
//! answer, natively too. (`SLUICE_BENCH_HTTP_SERVER=runtime` serves from the
//! bench's 2-worker runtime instead, the placement before 2026-12-07: there
//! the native client and the server share a worker that never sleeps, so a
//! native call pays no wake-up at all, which no real service gets.)
//!
//! After the report, interleaved means of every case with the voluntary
//! context switches and the CPU time (user + system) per call, both of the
//! whole process (`getrusage`), and the added time per call.

#[path = "common/allocator.rs"]
mod allocator;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http_body_util::{BodyExt, Empty};

use sluice::config::{HttpConfig, WasiGrants};
use sluice::event::Event;
use sluice::runtime::{CallLog, Capability, EventScope, LoadedPlugin, PluginSpec, Runtime, RuntimeOptions};

fn plugin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/target/wasm32-wasip2/release/{name}.wasm"))
}

fn spec(name: &str, url: &str, port: u16) -> Result<PluginSpec, Box<dyn std::error::Error>> {
    let http: HttpConfig = toml::from_str(&format!("allow = [\"http://127.0.0.1:{port}\"]\nmax_concurrent = 64"))?;
    let config = match name {
        "http_enrich" => vec![("url".into(), url.to_owned()), ("method".into(), "GET".into())],
        _ => Vec::new(),
    };
    Ok(PluginSpec {
        pipeline: "bench".into(),
        path: plugin(name),
        sha256: None,
        config,
        wasi: WasiGrants::default(),
        timeout: Duration::from_secs(30),
        init_timeout: Duration::from_secs(30),
        memory: 64 << 20,
        instance: sluice::config::InstancePolicy::Reuse,
        grants: vec![Capability::Http],
        http: Some(http),
        http_stubs: None,
        metrics: Default::default(),
    })
}

fn event(i: u64) -> Event {
    Event {
        id: format!("bench:{i}"),
        source: "bench".into(),
        key: None,
        payload: b"{}".to_vec(),
        headers: Vec::new(),
        timestamp_ms: 0,
        attempt: 1,
        reply_to: None,
    }
}

type NativeClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// One GET on the pool's kept-alive connection, body read whole: what the
/// host does for the plugin, natively.
async fn native_get(client: &NativeClient, port: u16) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    let uri: http::Uri = format!("http://127.0.0.1:{port}/").parse()?;
    let response = client.get(uri).await?;
    Ok(response.into_body().collect().await?.to_bytes())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let port = std_listener.local_addr()?.port();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    if std::env::var("SLUICE_BENCH_HTTP_SERVER").as_deref() != Ok("runtime") {
        let server = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let listener = {
            let _in_server = server.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        std::thread::Builder::new()
            .name("http-server".into())
            .spawn(move || server.block_on(async move { axum::serve(listener, app).await }))?;
    } else {
        let listener = rt.block_on(async { tokio::net::TcpListener::from_std(std_listener) })?;
        rt.spawn(async move { axum::serve(listener, app).await });
    }
    let url = format!("http://127.0.0.1:{port}/");

    let client: NativeClient = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let runtime =
        Runtime::new(&RuntimeOptions { plugin_threads: Some(sluice::runtime::executor::default_threads()), ..RuntimeOptions::default() })?;
    let with_call = rt.block_on(LoadedPlugin::load(&runtime, spec("http_enrich", &url, port)?))?;
    let without = rt.block_on(LoadedPlugin::load(&runtime, spec("passthrough", &url, port)?))?;
    let mut calling = rt.block_on(with_call.instantiate())?;
    let plain = rt.block_on(without.instantiate())?;

    // Both paths work before they are timed.
    let first = rt.block_on(async {
        calling.attach(EventScope::new(&event(0), CallLog::default()));
        let result = calling.handle(&[event(0)]).await;
        calling.detach();
        result
    })?;
    assert!(matches!(first.first(), Some(Ok(outputs)) if outputs.first().is_some_and(|o| o.payload == b"ok")), "{first:?}");
    assert_eq!(rt.block_on(native_get(&client, port)).map_err(|e| e.to_string())?, Bytes::from_static(b"ok"));

    // Every timed loop runs inside a task on the runtime, as a lane does:
    // from there, the tasks a call spawns (wasmtime's request task, the
    // pool's connection task) are woken on the runtime's own workers. Timed
    // from `block_on` on the main thread instead, each of those hand-offs
    // would be a cross-thread wake-up of a parked thread, which production
    // does not pay and which the plugin path (more hand-offs) pays more of.
    let calling = std::sync::Arc::new(tokio::sync::Mutex::new(calling));
    let plain = std::sync::Arc::new(tokio::sync::Mutex::new(plain));
    let client = std::sync::Arc::new(client);
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let next = {
        let counter = counter.clone();
        move || event(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    };
    let in_task = |work: std::pin::Pin<Box<dyn std::future::Future<Output = Duration> + Send>>| -> Duration {
        rt.block_on(async { tokio::spawn(work).await.unwrap_or(Duration::MAX) })
    };
    let executor = runtime.executor()?.ok_or("no plugin threads")?;
    let on_plugin_thread = |work: std::pin::Pin<Box<dyn std::future::Future<Output = Duration> + Send>>| -> Duration {
        rt.block_on(async { executor.spawn(work).await.unwrap_or(Duration::MAX) })
    };
    let plugin_calls = |iters: u64| {
        let (calling, next) = (calling.clone(), next.clone());
        Box::pin(async move {
            let mut calling = calling.lock().await;
            let started = Instant::now();
            for _ in 0..iters {
                let event = next();
                calling.attach(EventScope::new(&event, CallLog::default()));
                let result = calling.handle(std::slice::from_ref(&event)).await;
                calling.detach();
                std::hint::black_box(result.is_ok());
            }
            started.elapsed()
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = Duration> + Send>>
    };
    let native_calls = |iters: u64| {
        let client = client.clone();
        Box::pin(async move {
            let started = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(native_get(&client, port).await.is_ok());
            }
            started.elapsed()
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = Duration> + Send>>
    };
    // Natively on a plugin thread, with a client per thread, as the host's
    // pools are: the same placement as the plugin's calls.
    thread_local! {
        static LOCAL: NativeClient =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    }
    let native_local_calls = |iters: u64| {
        Box::pin(async move {
            let client = LOCAL.with(Clone::clone);
            let started = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(native_get(&client, port).await.is_ok());
            }
            started.elapsed()
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = Duration> + Send>>
    };
    let bare_calls = |iters: u64| {
        let (plain, next) = (plain.clone(), next.clone());
        Box::pin(async move {
            let mut plain = plain.lock().await;
            let started = Instant::now();
            for _ in 0..iters {
                let event = next();
                std::hint::black_box(plain.handle(std::slice::from_ref(&event)).await.is_ok());
            }
            started.elapsed()
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = Duration> + Send>>
    };

    let mut criterion = Criterion::default().configure_from_args().sample_size(50).measurement_time(Duration::from_secs(5));
    let mut group = criterion.benchmark_group("http");
    group.bench_function("plugin", |b| b.iter_custom(|iters| on_plugin_thread(plugin_calls(iters))));
    group.bench_function("plugin-shared", |b| b.iter_custom(|iters| in_task(plugin_calls(iters))));
    group.bench_function("native", |b| b.iter_custom(|iters| in_task(native_calls(iters))));
    group.bench_function("native-plugin-thread", |b| b.iter_custom(|iters| on_plugin_thread(native_local_calls(iters))));
    group.bench_function("plugin-no-call", |b| b.iter_custom(|iters| on_plugin_thread(bare_calls(iters))));
    group.finish();

    // A plain mean over many calls for the summary lines, interleaved in
    // rounds of 20 so all see the same machine; the voluntary context
    // switches of the whole process counted around each.
    let rounds = std::env::var("SLUICE_BENCH_HTTP_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(100u32);
    let mut totals = [(Duration::ZERO, 0i64); 5];
    let mut cpu = [Duration::ZERO; 5];
    for round in 0..rounds {
        let mut order = [0, 1, 2, 3, 4];
        if round % 2 == 1 {
            order.reverse();
        }
        for case in order {
            let switches = voluntary_switches();
            let cpu_before = cpu_time();
            let took = match case {
                0 => on_plugin_thread(plugin_calls(20)),
                1 => in_task(plugin_calls(20)),
                2 => in_task(native_calls(20)),
                3 => on_plugin_thread(bare_calls(20)),
                _ => on_plugin_thread(native_local_calls(20)),
            };
            totals[case].0 += took;
            cpu[case] += cpu_time() - cpu_before;
            totals[case].1 += voluntary_switches() - switches;
        }
    }
    let calls = rounds * 20;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(calls);
    let switches = |n: i64| n as f64 / f64::from(calls);
    let [(plugin, plugin_cs), (shared, shared_cs), (native, native_cs), (bare, bare_cs), (native_pt, native_pt_cs)] = totals;
    println!("\nhttp, {calls} calls each, interleaved (mean; voluntary context switches and CPU per call, whole process):");
    println!("  plugin on a plugin thread  {:7.1} µs  {:.2} cs  {:5.1} µs CPU", per(plugin), switches(plugin_cs), per(cpu[0]));
    println!("  plugin on the 2 workers    {:7.1} µs  {:.2} cs  {:5.1} µs CPU", per(shared), switches(shared_cs), per(cpu[1]));
    println!("  native on the 2 workers    {:7.1} µs  {:.2} cs  {:5.1} µs CPU", per(native), switches(native_cs), per(cpu[2]));
    println!("  plugin-no-call (plugin th.){:7.1} µs  {:.2} cs  {:5.1} µs CPU", per(bare), switches(bare_cs), per(cpu[3]));
    println!("  native on a plugin thread  {:7.1} µs  {:.2} cs  {:5.1} µs CPU", per(native_pt), switches(native_pt_cs), per(cpu[4]));
    println!(
        "http: added per call {:.1} µs on a plugin thread (over native there), {:.1} µs on the 2 workers (over native there); \
         CPU added {:.1} / {:.1} µs; the plugin call itself {:.1} µs",
        per(plugin) - per(native_pt),
        per(shared) - per(native),
        per(cpu[0]) - per(cpu[4]),
        per(cpu[1]) - per(cpu[2]),
        per(bare)
    );
    Ok(())
}

/// Voluntary context switches of the whole process so far.
fn voluntary_switches() -> i64 {
    usage().ru_nvcsw
}

/// CPU time (user + system) of the whole process so far.
fn cpu_time() -> Duration {
    let usage = usage();
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The whole process's resource usage so far.
fn usage() -> libc::rusage {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    }
}
