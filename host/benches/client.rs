//! What a service request from a plugin costs over a native one:
//! `client.request` over core NATS from the `ask` plugin (one wasm call per
//! event, the request made by the host on the plugin's behalf, with the
//! headers the host adds) against the same request made natively with
//! async-nats, both to an echo responder on a local `nats-server`.
//!
//!   bash scripts/build-plugins.sh && cargo bench -p sluice --bench client
//!
//! Needs `nats-server` on the PATH (scripts/nats-server.sh install). Prints
//! p50/p99/mean in microseconds; figures in docs/benchmarks.md.

#[path = "common/allocator.rs"]
mod allocator;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use sluice::client::{ClientScope, Clients};
use sluice::config::{InstancePolicy, PolicyConfig, WasiGrants};
use sluice::event::{text_header, Event};
use sluice::runtime::{CallLog, Capability, EventScope, LoadedPlugin, PluginSpec, Runtime, RuntimeOptions};

const WARMUP: usize = 500;
const REQUESTS: usize = 5_000;
const PAYLOAD: &[u8] = br#"{"sku":"bench-0001","quantity":1}"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian installs it outside a normal user's PATH.
fn nats_server() -> &'static str {
    if std::path::Path::new("/usr/sbin/nats-server").is_file() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e6;
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e6;
    println!("{name:<28} p50 {:>8.1} µs   p99 {:>8.1} µs   mean {:>8.1} µs   ({} requests)", at(0.5), at(0.99), mean, samples.len());
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugin = root.join("plugins/target/wasm32-wasip2/release/ask.wasm");
    anyhow::ensure!(plugin.is_file(), "{} is missing: run scripts/build-plugins.sh", plugin.display());
    let port = free_port()?;
    let _server = Server(
        Command::new(nats_server())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let url = format!("nats://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        // The responder: echoes every request, on its own connection.
        let responder = loop {
            match async_nats::connect(&url).await {
                Ok(client) => break client,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let mut requests = responder.subscribe("bench.echo").await?;
        responder.flush().await?;
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    let _ = responder.publish(reply, request.payload).await;
                }
            }
        });

        // Native: async-nats request with the same headers the host adds.
        let native = async_nats::connect(&url).await?;
        let mut samples = Vec::with_capacity(REQUESTS);
        for i in 0..WARMUP + REQUESTS {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Idempotency-Key", format!("bench/0/{i}:0").as_str());
            headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            let started = Instant::now();
            let request = async_nats::Request::new().payload(PAYLOAD.into()).headers(headers).timeout(Some(Duration::from_secs(5)));
            native.send_request("bench.echo", request).await?;
            if i >= WARMUP {
                samples.push(started.elapsed());
            }
        }
        percentiles("native async-nats request", samples);

        // From the plugin: one `handle` per event, its request made by the host.
        let text = format!(
            r#"[pipelines.bench]
source = {{ kind = "stdin" }}
sink = {{ kind = "stdout" }}
dead_letter = {{ kind = "stdout" }}
plugin = {{ path = "ask.wasm" }}
[pipelines.bench.clients.echo]
transport = "nats"
url = "{url}"
subject = "bench.echo"
"#
        );
        let config = sluice::config::parse(&text, &root.join("bench.toml"), |_| None)?;
        let pipeline = config.pipelines.get("bench").ok_or_else(|| anyhow::anyhow!("no pipeline"))?;
        let connections = sluice::nats::Connections::default();
        let producers = sluice::sink::Producers::default();
        let clients = Clients::open("bench", pipeline, &connections, &producers, Arc::default())
            .await?
            .ok_or_else(|| anyhow::anyhow!("no clients"))?;
        let runtime = Runtime::new(&RuntimeOptions::default())?;
        let policy = PolicyConfig::default();
        let spec = PluginSpec {
            pipeline: "bench".into(),
            path: plugin,
            sha256: None,
            config: vec![("request".into(), "echo".into())],
            wasi: WasiGrants::default(),
            timeout: policy.timeout,
            init_timeout: policy.init_timeout,
            memory: policy.memory.as_u64(),
            instance: InstancePolicy::Reuse,
            grants: vec![Capability::Client],
            http: None,
            http_stubs: None,
            metrics: Default::default(),
        };
        let loaded = LoadedPlugin::load(&runtime, spec).await?;
        let mut instance = loaded.instantiate().await?;
        let mut samples = Vec::with_capacity(REQUESTS);
        for i in 0..WARMUP + REQUESTS {
            let event = Event {
                id: format!("bench/0/{i}"),
                source: "bench".into(),
                key: None,
                payload: PAYLOAD.to_vec(),
                headers: vec![text_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
                timestamp_ms: 0,
                attempt: 1,
                reply_to: None,
            };
            let mut scope = EventScope::new(&event, CallLog::default());
            scope.client = Some(ClientScope::new(clients.clone(), None, tokio::time::Instant::now() + policy.timeout));
            let started = Instant::now();
            instance.attach(scope);
            let results = instance.handle(std::slice::from_ref(&event)).await?;
            let _ = instance.detach();
            if i >= WARMUP {
                samples.push(started.elapsed());
            }
            anyhow::ensure!(
                matches!(results.first(), Some(Ok(outputs)) if outputs.first().is_some_and(|o| o.payload == PAYLOAD)),
                "the echo came back"
            );
        }
        percentiles("plugin client.request", samples);
        anyhow::Ok(())
    })
}
