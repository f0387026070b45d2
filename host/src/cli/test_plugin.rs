use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use sluice::client::StubReplies;
use sluice::client::{ClientScope, Clients};
use sluice::codec::encode_record;
use sluice::config::{LineFormat, WasiGrants};
use sluice::event::Disposition;
use sluice::runtime::HttpStubs;
use sluice::runtime::{CallKind, CallLog, CallRecord, EventScope, LoadedPlugin, PluginSpec, Runtime, RuntimeOptions};
use sluice::sink::Record;
use sluice::source::LineSource;
use sluice::source::{Settlement, Source};
use sluice::state::memory::MemoryBackend;
use sluice::state::{EventState, Limits, Store};

use super::InputFormat;

/// `sluice plugin test` settings besides the plugin and the events.
pub struct Options {
    pub config: Vec<String>,
    pub format: InputFormat,
    pub timeout: Duration,
    pub memory: bytesize::ByteSize,
    pub expect: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    /// Seed file of the in-memory state.
    pub state: Option<PathBuf>,
    /// Service replies by rule, instead of a broker.
    pub replies: Option<PathBuf>,
    /// `--allow-http` entries: outbound HTTP is granted with these allowed.
    pub allow_http: Vec<String>,
    /// HTTP responses by rule, instead of the network.
    pub http_replies: Option<PathBuf>,
}

/// Runs each event through the plugin once (no retries) and prints one JSON
/// line per event: its outputs, its error, or the trap. With `expect`, the
/// lines must equal that file's.
pub fn test(plugin: &Path, events: &Path, options: &Options) -> anyhow::Result<ExitCode> {
    let Options { config, format, timeout, memory, expect, cache_dir, state, replies, allow_http, http_replies } = options;
    let clients = match replies {
        Some(path) => Some(Clients::stubbed(&StubReplies::from_file(path)?)?),
        None => None,
    };
    let http_stubs = match http_replies {
        Some(path) => Some(Arc::new(HttpStubs::from_file(path)?)),
        None => None,
    };
    // HTTP is always granted (so any plugin loads), to the listed
    // destinations only (or to the stubs), with the pipeline defaults
    // otherwise.
    let allow = allow_http
        .iter()
        .map(|entry| sluice::config::AllowEntry::try_from(entry.clone()).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("--allow-http")?;
    let http: sluice::config::HttpConfig = toml::from_str("allow = []").context("default [plugin.http]")?;
    let http = sluice::config::HttpConfig { allow, ..http };
    let backend = match state {
        Some(path) => MemoryBackend::from_seed_file(path).with_context(|| format!("--state {}", path.display()))?,
        None => MemoryBackend::new(),
    };
    let store = Store::new(Arc::new(backend), Limits::default());
    let (format, timeout, memory) = (*format, *timeout, *memory);
    let config = config
        .iter()
        .map(|kv| {
            kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).with_context(|| format!("--config `{kv}`: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Printed at the end: what a pipeline would show on `/metrics`.
    let metrics = sluice::runtime::PluginMetrics::new(sluice::runtime::MetricsLimits::default());
    let runtime = Runtime::new(&RuntimeOptions { cache_dir: cache_dir.clone(), ..RuntimeOptions::default() })?;
    let spec = PluginSpec {
        pipeline: "plugin-test".into(),
        path: plugin.to_path_buf(),
        sha256: None,
        config,
        wasi: WasiGrants { stderr: true, ..WasiGrants::default() },
        timeout,
        init_timeout: sluice::config::PolicyConfig::default().init_timeout,
        memory: memory.as_u64(),
        instance: sluice::config::InstancePolicy::Reuse,
        // Without --replies, client calls fail as unavailable (no
        // destinations are open); HTTP goes to the --allow-http
        // destinations only, or is answered by --http-replies.
        grants: vec![sluice::runtime::Capability::State, sluice::runtime::Capability::Client, sluice::runtime::Capability::Http],
        // The pipeline defaults, so a plugin's recordings are kept (an
        // empty registry would drop them with a warning).
        metrics: metrics.clone(),
        http: Some(http),
        http_stubs,
    };
    let format = match format {
        InputFormat::Json => LineFormat::Json,
        InputFormat::Lines => LineFormat::Lines,
    };
    // A pipeline's default caps on one event's outputs: a plugin passes
    // here only if a pipeline would take what it returns.
    let policy = sluice::config::PolicyConfig::default();
    let caps =
        |outputs: &[sluice::event::Output]| sluice::dispatch::check_outputs(outputs, policy.max_outputs, policy.max_output_bytes.as_u64());
    let rt = super::tokio_runtime()?;
    rt.block_on(async {
        let loaded = LoadedPlugin::load(&runtime, spec).await?;
        let mut source = open(events, format).await?;
        let mut instance = loaded.instantiate().await?;
        let mut failures = 0;
        let mut printed = Vec::new();
        while let Some(delivery) = source.next().await? {
            let event = delivery.event;
            let calls = CallLog::default();
            let line = if let Some(defect) = delivery.defect {
                failures += 1;
                json!({ "event": event.id, "undecodable": defect })
            } else {
                // The event's state is kept only if it succeeds, as in a
                // pipeline.
                let mut scope = EventScope::new(&event, calls.clone());
                scope.state = Some(Box::new(store.begin(event.id.clone())));
                scope.client = clients.clone().map(|clients| ClientScope::new(clients, None, tokio::time::Instant::now() + timeout));
                instance.attach(scope);
                let handled = instance.handle(std::slice::from_ref(&event)).await;
                let scope = instance.detach();
                let emitted = scope.as_ref().map(|scope| scope.emits.clone()).unwrap_or_default();
                let attempt = scope.and_then(|scope| scope.state).and_then(|s| s.into_any().downcast::<EventState>().ok());
                match handled {
                    Ok(mut results) => match results.pop() {
                        Some(Ok(returned)) => match caps(&returned) {
                            Err(message) => {
                                failures += 1;
                                json!({ "event": event.id, "error": { "disposition": "reject", "message": message } })
                            }
                            Ok(()) => {
                                let outputs = emitted.into_iter().chain(returned);
                                if let Some(attempt) = attempt {
                                    let ticket = store.conclude(*attempt).map_err(|e| anyhow::anyhow!("{e}"))?;
                                    store.ready(ticket).await?;
                                }
                                json!({ "event": event.id, "outputs": outputs.into_iter().map(output_json).collect::<Vec<_>>() })
                            }
                        },
                        Some(Err(err)) => {
                            failures += 1;
                            let disposition = match err.disposition {
                                Disposition::Retryable => "retryable",
                                Disposition::Reject => "reject",
                            };
                            json!({ "event": event.id, "error": { "disposition": disposition, "message": err.message } })
                        }
                        None => json!({ "event": event.id, "trap": "no result" }),
                    },
                    Err(err) => {
                        failures += 1;
                        instance = loaded.instantiate().await?;
                        json!({ "event": event.id, "trap": err.to_string() })
                    }
                }
            };
            let made = calls.take();
            let line = match line {
                Value::Object(mut fields) if !made.is_empty() => {
                    fields.insert("calls".into(), json!(made.iter().map(call_json).collect::<Vec<_>>()));
                    Value::Object(fields)
                }
                line => line,
            };
            delivery.ack.settle(Settlement::Done);
            println!("{line}");
            printed.push(line.to_string());
        }
        print_metrics(&metrics);
        eprintln!("{failures} event(s) failed");
        match expect {
            None => Ok(ExitCode::SUCCESS),
            Some(path) => compare(path, &printed),
        }
    })
}

/// The plugin's own metrics, on stderr (stdout is the event lines, which
/// `--expect` compares): what `/metrics` would show for a pipeline that
/// ran these events, attempts that failed included. Nothing when the
/// plugin recorded none.
fn print_metrics(metrics: &sluice::runtime::PluginMetrics) {
    let lines = metrics.summary();
    if lines.is_empty() {
        return;
    }
    eprintln!("metrics recorded by the plugin:");
    for line in lines {
        eprintln!("  {line}");
    }
}

/// A call as `plugin test` prints it: what was asked and how it ended,
/// without its duration (so `--expect` files stay stable). An HTTP call
/// has its method; a service call's is its transport, left out.
fn call_json(call: &CallRecord) -> Value {
    let mut line = json!({ "target": call.target, "path": call.path, "idempotency_key": call.idempotency_key });
    if call.kind == CallKind::Http {
        line["method"] = json!(call.method);
    }
    if let Some(status) = call.status {
        line["status"] = json!(status);
    }
    if let Some(error) = &call.error {
        line["error"] = json!(error);
    }
    line
}

/// Compares printed lines with an expectation file, JSON value by value (so
/// key order and spacing in the file do not matter).
fn compare(path: &Path, printed: &[String]) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --expect file {}", path.display()))?;
    let expected: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut differences = 0;
    for i in 0..expected.len().max(printed.len()) {
        let want = expected.get(i).map(|l| serde_json::from_str::<Value>(l).map_err(|e| (l, e)));
        let got = printed.get(i).and_then(|l| serde_json::from_str::<Value>(l).ok());
        let same = matches!((&want, &got), (Some(Ok(w)), Some(g)) if w == g);
        if !same {
            differences += 1;
            let want = match want {
                Some(Ok(w)) => w.to_string(),
                Some(Err((line, e))) => format!("{line} (not JSON: {e})"),
                None => "(nothing)".into(),
            };
            let got = printed.get(i).map_or("(nothing)", String::as_str);
            eprintln!("line {}:\n  expected {want}\n  got      {got}", i + 1);
        }
    }
    if differences == 0 {
        eprintln!("all {} line(s) match {}", printed.len(), path.display());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{differences} line(s) differ from {}", path.display());
        Ok(ExitCode::FAILURE)
    }
}

async fn open(path: &Path, format: LineFormat) -> anyhow::Result<LineSource> {
    if path == Path::new("-") {
        return Ok(LineSource::stdin(format));
    }
    Ok(LineSource::file(path.display().to_string(), path.to_path_buf(), format, false, None).await?)
}

fn output_json(output: sluice::event::Output) -> Value {
    let reply = output.reply;
    let emit = output.destination.as_deref().and_then(sluice::client::emitted_to).map(str::to_owned);
    let destination = if emit.is_some() { None } else { output.destination };
    let record =
        Record { destination, key: output.key, payload: output.payload, headers: output.headers, id: None, partition: None, version: None };
    let mut value: Value = serde_json::from_slice(&encode_record(&record)).unwrap_or(Value::Null);
    if reply {
        value["reply"] = Value::Bool(true);
    }
    if let Some(emit) = emit {
        value["emit"] = Value::String(emit);
    }
    value
}
