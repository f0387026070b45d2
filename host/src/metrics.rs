//! Prometheus metrics, rendered on each scrape of the admin server's
//! `/metrics` from the running pipelines' own counters ([`Stats`]), so there
//! is one source of truth and a removed pipeline's series disappear with it.
//!
//! The names and labels are an interface (documented in
//! docs/operations.md). Labels are `pipeline` and `plugin` (and `kind` for
//! errors): their number is bounded by the config, never by event data.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry as PromRegistry;

use crate::admin::{AdminCounters, Health, PipelineHandle, PipelineState, Registry};
use crate::dispatch::stats::ErrorKind;
use crate::dispatch::{Stats, StatsSnapshot};

/// The content type of [`render`]'s output (OpenMetrics text, which
/// Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition of every running pipeline, of every pipeline's state and
/// restarts, and of the admin server.
pub fn render(pipelines: &Registry, health: &Health, admin: &Arc<AdminCounters>) -> Result<String, std::fmt::Error> {
    let mut registry = PromRegistry::default();
    registry.register_collector(Box::new(Pipelines(pipelines.clone())));
    registry.register_collector(Box::new(Lifecycles(health.clone())));
    registry.register_collector(Box::new(Admin(admin.clone())));
    registry.register_collector(Box::new(PluginRecorded(pipelines.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

struct Pipelines(Registry);

/// What the running pipelines' plugins record (`sluice_plugin_<name>`,
/// see [`crate::runtime::metrics`]).
struct PluginRecorded(Registry);

impl std::fmt::Debug for PluginRecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginRecorded")
    }
}

impl Collector for PluginRecorded {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let handles: Vec<Arc<PipelineHandle>> = match self.0.read() {
            Ok(registry) => registry.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let rows: Vec<(String, String, crate::runtime::PluginMetrics)> = handles
            .iter()
            .map(|h| (h.name.clone(), h.versions.status().map(|s| s.name).unwrap_or_default(), h.versions.metrics()))
            .collect();
        let sources: Vec<crate::runtime::metrics::Source<'_>> =
            rows.iter().map(|(pipeline, plugin, metrics)| crate::runtime::metrics::Source { pipeline, plugin, metrics }).collect();
        crate::runtime::metrics::encode(&mut encoder, &sources)
    }
}

/// Every pipeline's state and restarts, running or not: labelled by
/// `pipeline` only (a pipeline waiting to restart has no plugin loaded).
struct Lifecycles(Health);

impl std::fmt::Debug for Lifecycles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lifecycles")
    }
}

impl Collector for Lifecycles {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let lifecycles = self.0.lifecycles();
        let mut restarts = encoder.encode_descriptor(
            "sluice_pipeline_restarts",
            "Times the pipeline was started again by its restart policy after it failed.",
            None,
            MetricType::Counter,
        )?;
        for (name, lifecycle) in &lifecycles {
            ConstCounter::new(lifecycle.restarts).encode(restarts.encode_family(&[("pipeline", name.as_str())])?)?;
        }
        let mut state = encoder.encode_descriptor(
            "sluice_pipeline_state",
            "1 for the state the pipeline is in (starting, running, finished, restarting, failed), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for (name, lifecycle) in &lifecycles {
            for label in PipelineState::LABELS {
                let value = i64::from(lifecycle.state.label() == label);
                ConstGauge::new(value).encode(state.encode_family(&[("pipeline", name.as_str()), ("state", label)])?)?;
            }
        }
        Ok(())
    }
}

/// The admin server's own counters.
struct Admin(Arc<AdminCounters>);

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

impl Collector for Admin {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 2] = [
            ("sluice_admin_auth_failures", "Admin API requests refused for a missing or wrong bearer token.", &self.0.auth_failures),
            (
                "sluice_admin_connections_refused",
                "Admin API connections closed at once because `admin.max_connections` were open.",
                &self.0.connections_refused,
            ),
        ];
        for (name, help, value) in counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value.load(std::sync::atomic::Ordering::Relaxed)).encode(metric)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Pipelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipelines")
    }
}

/// One pipeline at the time of the scrape.
struct Row {
    labels: [(&'static str, String); 2],
    handle: Arc<PipelineHandle>,
    counts: StatsSnapshot,
    reloads: u64,
    rejections: u64,
}

impl Row {
    fn stats(&self) -> &Stats {
        &self.handle.stats
    }
}

type Counts = fn(&Row) -> u64;
/// A gauge's value, or `None` to leave the series out (not known).
type Level = fn(&Row) -> Option<i64>;
type Timing = fn(&Stats) -> &Histogram;
type StateCount = fn(&crate::state::metrics::MetricsSnapshot) -> u64;

/// Counters: name (without `_total`), help, value.
const COUNTERS: [(&str, &str, Counts); 26] = [
    ("sluice_events_received", "Events taken from the source.", |r| r.counts.received),
    ("sluice_plugin_calls", "Calls into the plugin (one per batch).", |r| r.counts.calls),
    ("sluice_outputs", "Outputs sent to sinks, replies included.", |r| r.counts.outputs),
    ("sluice_events_filtered", "Events the plugin returned no output for.", |r| r.counts.filtered),
    ("sluice_retries", "Attempts made again in place after a failure.", |r| r.counts.retries),
    ("sluice_events_redelivered", "Failed events handed back to the broker to be delivered again later.", |r| r.counts.redelivered),
    ("sluice_events_dead_lettered", "Events sent to the dead letter.", |r| r.counts.dead_lettered),
    ("sluice_events_acked", "Events settled at the source (outputs or dead letter durable).", |r| r.counts.acked),
    ("sluice_events_abandoned", "Events handed back unfinished (shutdown, sink failure).", |r| r.counts.abandoned),
    ("sluice_replies_dropped", "Reply outputs of events that were not requests.", |r| r.counts.replies_dropped),
    (
        "sluice_reply_partition_fallbacks",
        "Replies sent to partition 0 because their request's kafka_replyPartition was unreadable or beyond the reply topic.",
        |r| r.counts.reply_partition_fallbacks,
    ),
    ("sluice_events_duplicate", "Repeats within the idempotency window, acknowledged without a plugin call.", |r| r.counts.duplicates),
    ("sluice_sink_failures", "Records a sink failed to deliver (each stops the pipeline).", |r| r.counts.sink_failures),
    ("sluice_breaker_opened", "Times the circuit breaker opened (from closed, or after a failed probe).", |r| {
        r.stats().gauges.breaker.opened.load(std::sync::atomic::Ordering::Relaxed) as u64
    }),
    ("sluice_plugin_reloads", "Plugin versions swapped in (reload, upload, rollback).", |r| r.reloads),
    ("sluice_plugin_reload_rejections", "New plugin versions refused (the current one kept serving).", |r| r.rejections),
    ("sluice_events_invalid", "Events dead-lettered for failing their JSON Schema (reason invalid).", |r| r.counts.invalid_inputs),
    ("sluice_outputs_invalid", "Plugin outputs that failed their JSON Schema (their event is rejected).", |r| r.counts.invalid_outputs),
    ("sluice_events_unsupported", "Events dead-lettered because the plugin does not accept their type or version.", |r| {
        r.counts.unsupported
    }),
    ("sluice_rollout_promotions", "Candidate versions promoted (by their rollout rules or by hand).", |r| rollout(r, |t| &t.promotions)),
    ("sluice_rollout_rollbacks", "Candidate versions rolled back by their rollout rules.", |r| rollout(r, |t| &t.rollbacks)),
    ("sluice_rollout_aborts", "Candidate versions aborted by hand (or replaced by another).", |r| rollout(r, |t| &t.aborts)),
    ("sluice_rollout_shadowed", "Events a shadowed candidate handled beside the current version (compared).", |r| {
        rollout(r, |t| &t.shadowed)
    }),
    ("sluice_rollout_differences", "Shadowed events whose candidate result differed from the current version's.", |r| {
        rollout(r, |t| &t.differences)
    }),
    ("sluice_rollout_canary_events", "Events a canary candidate handled for real.", |r| rollout(r, |t| &t.canary_events)),
    ("sluice_rollout_canary_fallbacks", "Events a canary failed, handled by the current version instead.", |r| {
        rollout(r, |t| &t.fallbacks)
    }),
];

/// One of the pipeline's rollout totals.
fn rollout(row: &Row, counter: fn(&crate::rollout::Totals) -> &std::sync::atomic::AtomicU64) -> u64 {
    crate::rollout::Totals::get(counter(&row.handle.versions.rollout().totals))
}

/// Plugin state counters (pipelines with `[state]`).
const STATE_COUNTERS: [(&str, &str, StateCount); 7] = [
    ("sluice_state_reads", "State reads by the plugin (get and scan).", |s| s.reads),
    ("sluice_state_writes", "State writes by the plugin (set, delete, increment).", |s| s.writes),
    ("sluice_state_written_bytes", "Key and value bytes of those writes.", |s| s.bytes_written),
    ("sluice_state_commits", "Backend transactions committing state (each holds many events).", |s| s.commits),
    ("sluice_state_committed_events", "Events whose state those transactions made durable.", |s| s.committed_events),
    ("sluice_state_conflicts", "Attempts run again because another event changed state they read.", |s| s.conflicts),
    ("sluice_state_restores", "Restores of state from its backend (kafka-changelog: one per partition assignment).", |s| s.restores),
];

const GAUGES: [(&str, &str, Level); 6] = [
    ("sluice_events_in_flight", "Events taken from the source and not yet settled.", |r| {
        Some(r.counts.received.saturating_sub(r.counts.acked + r.counts.abandoned + r.counts.redelivered) as i64)
    }),
    ("sluice_plugin_memory_bytes", "Linear memory of the pipeline's live plugin instances.", |r| {
        Some(r.stats().gauges.memory_bytes.load(std::sync::atomic::Ordering::Relaxed) as i64)
    }),
    ("sluice_plugin_memory_peak_bytes", "The most linear memory the pipeline's plugin instances held at once.", |r| {
        Some(r.stats().gauges.memory_peak_bytes.load(std::sync::atomic::Ordering::Relaxed) as i64)
    }),
    ("sluice_source_lag", "Messages the broker holds that the pipeline has not finished (Kafka consumer lag from the committed offset; JetStream pending plus unacknowledged).", |r| {
        Some(r.stats().gauges.source_lag.load(std::sync::atomic::Ordering::Relaxed)).filter(|lag| *lag >= 0)
    }),
    ("sluice_pipeline_paused", "1 while intake is paused through the admin API.", |r| Some(i64::from(*r.handle.pause.borrow()))),
    ("sluice_breaker_state", "The circuit breaker: 0 closed, 1 open (no calls, no intake), 2 half-open (probing); absent without a breaker.", |r| {
        Some(r.stats().gauges.breaker.state.load(std::sync::atomic::Ordering::Relaxed)).filter(|s| *s >= 0)
    }),
];

impl Collector for Pipelines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let handles: Vec<Arc<PipelineHandle>> = match self.0.read() {
            Ok(registry) => registry.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let rows: Vec<Row> = handles
            .into_iter()
            .map(|handle| {
                let status = handle.versions.status();
                let plugin = status.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                Row {
                    labels: [("pipeline", handle.name.clone()), ("plugin", plugin)],
                    counts: handle.stats.snapshot(),
                    reloads: status.as_ref().map_or(0, |s| s.reloads),
                    rejections: status.as_ref().map_or(0, |s| s.rejections),
                    handle,
                }
            })
            .collect();

        let info = ConstGauge::new(1i64);
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        info.encode(
            encoder
                .encode_descriptor("sluice_build_info", "The running sluice version.", None, MetricType::Gauge)?
                .encode_family(&version)?,
        )?;

        for (name, help, value) in COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for row in &rows {
                ConstCounter::new(value(row)).encode(metric.encode_family(&row.labels)?)?;
            }
        }
        let mut errors = encoder.encode_descriptor(
            "sluice_handler_errors",
            "Failed attempts, by kind: retryable, rejected, trap, timeout, memory, contract, start.",
            None,
            MetricType::Counter,
        )?;
        for row in &rows {
            for kind in ErrorKind::ALL {
                let labels = [row.labels[0].clone(), row.labels[1].clone(), ("kind", kind.label().to_owned())];
                ConstCounter::new(row.stats().errors.get(kind)).encode(errors.encode_family(&labels)?)?;
            }
        }
        for (name, help, value) in GAUGES {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for row in &rows {
                if let Some(v) = value(row) {
                    ConstGauge::new(v).encode(metric.encode_family(&row.labels)?)?;
                }
            }
        }
        // Plugin state, for pipelines that have it.
        let state_rows: Vec<(&Row, crate::state::metrics::MetricsSnapshot)> =
            rows.iter().filter_map(|row| row.handle.state.as_ref().map(|store| (row, store.metrics_snapshot()))).collect();
        for (name, help, value) in STATE_COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (row, snapshot) in &state_rows {
                ConstCounter::new(value(snapshot)).encode(metric.encode_family(&row.labels)?)?;
            }
        }
        let mut commit_time = encoder.encode_descriptor(
            "sluice_state_commit_seconds",
            "Time spent committing plugin state to its backend.",
            None,
            MetricType::Counter,
        )?;
        for (row, snapshot) in &state_rows {
            ConstCounter::new(snapshot.commit_time.as_secs_f64()).encode(commit_time.encode_family(&row.labels)?)?;
        }
        let mut restore_time = encoder.encode_descriptor(
            "sluice_state_restore_seconds",
            "Time spent restoring plugin state from its backend (kafka-changelog, on partition assignment).",
            None,
            MetricType::Counter,
        )?;
        for (row, snapshot) in &state_rows {
            ConstCounter::new(snapshot.restore_time.as_secs_f64()).encode(restore_time.encode_family(&row.labels)?)?;
        }
        // Service calls (`sluice:plugin/client`), per destination.
        let mut requests = encoder.encode_descriptor(
            "sluice_client_requests",
            "Service requests made by the plugin, by destination and outcome (ok, timeout, no-responders, service-error, unavailable, too-many-calls, too-large, not-allowed).",
            None,
            MetricType::Counter,
        )?;
        for row in &rows {
            for ((destination, outcome), count) in row.stats().clients.requests() {
                let labels = [row.labels[0].clone(), row.labels[1].clone(), ("destination", destination), ("outcome", outcome.to_owned())];
                ConstCounter::new(count).encode(requests.encode_family(&labels)?)?;
            }
        }
        let mut latency = encoder.encode_descriptor(
            "sluice_client_request_duration_seconds",
            "From sending a service request to its answer (or its failure), by destination.",
            None,
            MetricType::Histogram,
        )?;
        for row in &rows {
            for (destination, histogram) in row.stats().clients.latency() {
                let labels = [row.labels[0].clone(), row.labels[1].clone(), ("destination", destination)];
                histogram.encode(latency.encode_family(&labels)?)?;
            }
        }
        encode_http(&mut encoder, &rows)?;
        let histograms: [(&str, &str, Timing); 2] = [
            ("sluice_plugin_call_duration_seconds", "Duration of one plugin call (a batch of events).", |s| &s.timings.call),
            ("sluice_publish_duration_seconds", "From sending a batch's records to all of them being durable.", |s| &s.timings.publish),
        ];
        for (name, help, histogram) in histograms {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for row in &rows {
                histogram(row.stats()).encode(metric.encode_family(&row.labels)?)?;
            }
        }
        Ok(())
    }
}

/// Plugin HTTP requests per destination (pipelines whose plugin made any;
/// see [`crate::runtime::http::metrics`]).
fn encode_http(encoder: &mut DescriptorEncoder, rows: &[Row]) -> Result<(), std::fmt::Error> {
    use crate::runtime::http::metrics::{of_pipeline, HostMetrics};
    type Hosts = Vec<(String, Arc<HostMetrics>)>;
    type Values = fn(&HostMetrics) -> Vec<(&'static str, u64)>;
    let pipelines: Vec<(&Row, Hosts)> = rows.iter().filter_map(|row| of_pipeline(&row.handle.name).map(|m| (row, m.snapshot()))).collect();
    let labels = |row: &Row, host: &str| [row.labels[0].clone(), row.labels[1].clone(), ("host", host.to_owned())];
    let counters: [(&str, &str, &str, Values); 2] = [
        ("sluice_http_requests", "Plugin HTTP requests by destination and outcome: the status class (2xx...) or failed (no response).", "outcome", |m| m.requests().collect()),
        ("sluice_http_errors", "Plugin HTTP requests that failed, by kind: denied (not in plugin.http.allow), timeout, transport, too-large (response body over the cap).", "kind", |m| m.errors().collect()),
    ];
    for (name, help, label, values) in counters {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (row, hosts) in &pipelines {
            for (host, m) in hosts {
                for (value, count) in values(m) {
                    let [pipeline, plugin, host] = labels(row, host);
                    let set = [pipeline, plugin, host, (label, value.to_owned())];
                    ConstCounter::new(count).encode(metric.encode_family(&set)?)?;
                }
            }
        }
    }
    let mut duration = encoder.encode_descriptor(
        "sluice_http_request_duration_seconds",
        "Plugin HTTP requests, from sending to the response head (or the failure).",
        None,
        MetricType::Histogram,
    )?;
    for (row, hosts) in &pipelines {
        for (host, m) in hosts {
            m.duration.encode(duration.encode_family(&labels(row, host))?)?;
        }
    }
    Ok(())
}
