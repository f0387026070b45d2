//! Cross-field rules that serde cannot check while parsing.

use std::collections::BTreeMap;

use super::model::{AdminConfig, Config, KafkaSasl, KafkaTls, PipelineConfig, Secret, SinkConfig, SourceConfig, TracingConfig};
use crate::nats::{publishable_subject, subscribable_subject, valid_name};
use crate::sink::kafka::KafkaSinkConfig;
use crate::sink::nats::{JetStreamSinkConfig, NatsSinkConfig};
use crate::source::jetstream::JetStreamSourceConfig;
use crate::source::kafka::KafkaSourceConfig;
use crate::source::nats::NatsSourceConfig;

/// A rule broken, with where.
pub use super::error::Problem as Violation;

/// Rules broken at keys relative to the table being checked: `(key,
/// message)`, in the order they were found.
type Found = Vec<(&'static str, String)>;

/// Every rule the pipelines break, not just the first (as Vector's config
/// compiler collects its errors), so one run of `sluice check` shows all
/// there is to fix. One violation per key: the first found, since a later
/// rule on the same key (`check_server` reading a `url` that
/// `validate_url` already refused) would only say it again.
pub fn validate(config: &Config) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut violation = |pipeline: &str, key: String, message: String| {
        found.push(Violation::in_pipeline(pipeline, key, message));
    };
    let stdin_users: Vec<&String> =
        config.pipelines.iter().filter(|(_, p)| matches!(p.source, SourceConfig::Stdin(_))).map(|(name, _)| name).collect();
    if let [first, rest @ ..] = stdin_users.as_slice() {
        for other in rest {
            violation(
                other,
                "source.kind".into(),
                format!(
                    "stdin is already the source of pipeline `{first}`; only one pipeline can read it, so give `{other}` another source"
                ),
            );
        }
    }
    for (name, pipeline) in &config.pipelines {
        let mut out = Found::new();
        validate_pipeline(name, pipeline, &mut out);
        for (key, message) in out {
            violation(name, key.into(), message);
        }
        if let Some(server) = pipeline.source.nats_server() {
            if let Err((key, message)) = crate::nats::check_server(&server) {
                violation(name, format!("source.{key}"), message);
            }
            // `state.url` is used with the source's login and TLS keys.
            if let Some(url) = pipeline.state.as_ref().and_then(|state| state.url.clone()) {
                if let Err((_, message)) = crate::nats::check_server(&crate::config::NatsServer { url, ..server }) {
                    violation(name, "state.url".into(), message);
                }
            }
        }
        for (destination, client) in &pipeline.clients {
            let server = match client.transport {
                crate::config::Transport::Nats => crate::nats::check_server(&client.nats_server()),
                crate::config::Transport::Kafka => Ok(()),
            };
            // A client's own rules depend on each other (its address is
            // judged by its transport): the first of them, then its server's.
            for (field, message) in [client.validate(), server].into_iter().filter_map(Result::err) {
                violation(name, format!("clients.{}.{field}", table_key(destination)), message);
            }
        }
        let sinks = std::iter::once(("sink".to_owned(), &pipeline.sink))
            .chain(pipeline.routes.iter().map(|(route, sink)| (format!("routes.{route}"), sink)))
            .chain(pipeline.dead_letter.iter().map(|sink| ("dead_letter".to_owned(), sink)));
        for (key, sink) in sinks {
            let mut out = Found::new();
            validate_nats_sink(sink, &mut out);
            if let Some(Err(e)) = sink.nats_server().map(|server| crate::nats::check_server(&server)) {
                out.push(e);
            }
            validate_kafka_sink(sink, &mut out);
            for (field, message) in out {
                violation(name, format!("{key}.{field}"), message);
            }
        }
    }
    first_per_key(found)
}

/// `found` without a second violation of a key already reported.
fn first_per_key(found: Vec<Violation>) -> Vec<Violation> {
    let mut seen = std::collections::HashSet::new();
    found.into_iter().filter(|v| seen.insert((v.scope.clone(), v.key.clone()))).collect()
}

/// `[admin]`: TLS certificate and key together, readable, and usable as a
/// pair (what the server would load at start).
pub fn admin(config: &AdminConfig) -> Found {
    let broken = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => crate::admin::tls::server_config(cert, key).err(),
        (Some(_), None) => Some(("tls_key", "missing: `tls_cert` needs the private key of the certificate".into())),
        (None, Some(_)) => Some(("tls_cert", "missing: `tls_key` needs the certificate it belongs to".into())),
        (None, None) => None,
    };
    broken.into_iter().collect()
}

/// `[tracing]`: an endpoint the exporter can reach and a ratio.
pub fn tracing(config: &TracingConfig) -> Found {
    let mut out = Found::new();
    let endpoint = &config.otlp_endpoint;
    let host = endpoint.strip_prefix("http://").unwrap_or_default();
    if endpoint.starts_with("https://") {
        out.push((
            "otlp_endpoint",
            format!("{endpoint:?}: this build exports over plain HTTP only; send spans to a collector or agent on this host or network (e.g. \"http://127.0.0.1:4318\") and let it forward them over TLS"),
        ));
    } else if host.is_empty() || host.starts_with('/') {
        out.push(("otlp_endpoint", format!("{endpoint:?} is not an http:// URL of an OTLP collector, e.g. \"http://127.0.0.1:4318\"")));
    }
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        out.push(("sample_ratio", format!("must be between 0.0 and 1.0, got {}", config.sample_ratio)));
    }
    out
}

fn validate_pipeline(name: &str, p: &PipelineConfig, out: &mut Found) {
    let policy = &p.policy;
    if p.dead_letter.is_none() {
        out.push((
            "dead_letter",
            format!(
                "missing: events that are rejected or run out of attempts need somewhere to go; add one under [pipelines.{}], e.g. `dead_letter = {{ kind = \"file\", path = \"dead-letter.jsonl\" }}`",
                table_key(name)
            ),
        ));
    }
    if let Some(state) = &p.state {
        state.validate(&p.source, out);
    }
    if let Some(rollout) = &p.rollout {
        rollout.validate(out);
    }
    if let Some(idempotency) = &p.idempotency {
        if idempotency.capacity == 0 || idempotency.capacity > 10_000_000 {
            out.push(("idempotency.capacity", format!("must be between 1 and 10000000 keys, got {}", idempotency.capacity)));
        }
        if idempotency.window.is_zero() {
            out.push(("idempotency.window", "must be greater than zero, e.g. \"10m\"".into()));
        }
    }
    if let Some(breaker) = &p.breaker {
        if breaker.failures == 0 {
            out.push(("breaker.failures", "must be at least 1, got 0".into()));
        }
        if breaker.window.is_zero() {
            out.push(("breaker.window", "must be greater than zero, e.g. \"1m\"".into()));
        }
        if breaker.reset.is_zero() {
            out.push(("breaker.reset", "must be greater than zero, e.g. \"30s\"".into()));
        }
    }
    let restart = &p.restart;
    if restart.initial_backoff.is_zero() {
        out.push((
            "restart.initial_backoff",
            "must be greater than zero, e.g. \"1s\" (a restart without a wait would spin while a broker is down)".into(),
        ));
    }
    if restart.initial_backoff > restart.max_backoff {
        out.push((
            "restart.initial_backoff",
            format!(
                "{} is longer than restart.max_backoff ({}): the first wait cannot exceed the longest; lower `initial_backoff` or raise `max_backoff`",
                humantime::format_duration(restart.initial_backoff),
                humantime::format_duration(restart.max_backoff)
            ),
        ));
    }
    if restart.max_restarts == Some(0) {
        out.push(("restart.max_restarts", "must be at least 1, got 0 (to never restart, set `enabled = false`)".into()));
    }
    if restart.window.is_zero() {
        out.push(("restart.window", "must be greater than zero, e.g. \"10m\"".into()));
    }
    if let Some(correlation) = &p.correlation {
        let header = &correlation.header;
        if header.is_empty() || header.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':') {
            out.push(("correlation.header", format!("{header:?} is not a header name (empty, or has spaces, control characters or `:`)")));
        }
    }
    if policy.max_attempts == 0 {
        out.push(("policy.max_attempts", "must be at least 1, got 0 (the first attempt counts: 1 means no retries)".into()));
    }
    if policy.concurrency == 0 || policy.concurrency > 1024 {
        out.push(("policy.concurrency", format!("must be between 1 and 1024, got {}", policy.concurrency)));
    }
    if policy.batch_size == 0 || policy.batch_size > 4096 {
        out.push(("policy.batch_size", format!("must be between 1 and 4096, got {}", policy.batch_size)));
    }
    if policy.max_outputs == 0 {
        out.push((
            "policy.max_outputs",
            "must be at least 1 (a plugin that returns nothing filters the event; that needs no outputs)".into(),
        ));
    }
    if policy.max_output_bytes.as_u64() == 0 {
        out.push(("policy.max_output_bytes", "must be more than 0 bytes, e.g. \"16MiB\"".into()));
    }
    if policy.max_headers == 0 {
        out.push(("policy.max_headers", "must be at least 1, e.g. 10000 (the default)".into()));
    }
    if policy.max_header_bytes.as_u64() == 0 {
        out.push(("policy.max_header_bytes", "must be more than 0 bytes, e.g. \"1MiB\"".into()));
    }
    if policy.timeout.is_zero() {
        out.push(("policy.timeout", "must be greater than zero, e.g. \"5s\" or \"250ms\"".into()));
    }
    if policy.init_timeout.is_zero() {
        out.push(("policy.init_timeout", "must be greater than zero, e.g. \"10s\"".into()));
    }
    if policy.stuck_after.is_zero() {
        out.push(("policy.stuck_after", "must be greater than zero, e.g. \"2m\"".into()));
    }
    if policy.memory.as_u64() < 1024 * 1024 {
        out.push(("policy.memory", format!("must be at least 1 MiB, got {}", policy.memory)));
    }
    let backoff = &policy.backoff;
    if !(backoff.multiplier >= 1.0 && backoff.multiplier.is_finite()) {
        out.push(("policy.backoff.multiplier", format!("must be a number ≥ 1 (1 keeps every delay the same), got {}", backoff.multiplier)));
    }
    if !(0.0..=1.0).contains(&backoff.jitter) {
        out.push((
            "policy.backoff.jitter",
            format!("must be a fraction between 0 and 1 (0.2 spreads each delay by ±20%), got {}", backoff.jitter),
        ));
    }
    if backoff.initial > backoff.max {
        out.push((
            "policy.backoff.initial",
            format!(
                "{} is longer than policy.backoff.max ({}): the first delay cannot exceed the longest; lower `initial` or raise `max`",
                humantime::format_duration(backoff.initial),
                humantime::format_duration(backoff.max)
            ),
        ));
    }
    validate_nats_source(&p.source, out);
    validate_kafka_source(p, out);
    if let Some(pin) = &p.plugin.sha256 {
        if pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()) {
            // The pin is not echoed: it may come from an environment variable.
            let got = match pin.chars().count() {
                _ if pin.starts_with("sha256:") => "drop the `sha256:` prefix".to_owned(),
                64 => "it has characters other than 0-9 and a-f".to_owned(),
                n => format!("got {n} characters"),
            };
            out.push((
                "plugin.sha256",
                format!("must be 64 hexadecimal characters, as printed by `sha256sum` or `sluice plugin inspect`; {got}"),
            ));
        }
    }
    if let Err(m) = p.plugin.init_config() {
        out.push(("plugin.config", format!("{m}: join the items into one string (e.g. \"a,b\") and split it in the plugin")));
    }
    let metrics = &p.plugin.metrics;
    if !(1..=10_000).contains(&metrics.max_series) {
        out.push((
            "plugin.metrics.max_series",
            format!("must be between 1 and 10000 label sets per metric (default 100), got {}", metrics.max_series),
        ));
    }
    if !(1..=1_000).contains(&metrics.max_metrics) {
        out.push((
            "plugin.metrics.max_metrics",
            format!("must be between 1 and 1000 metrics per pipeline (default 50), got {}", metrics.max_metrics),
        ));
    }
}

fn validate_nats_source(source: &SourceConfig, out: &mut Found) {
    match source {
        SourceConfig::Nats(NatsSourceConfig { subject, queue_group, url, .. }) => {
            if let Err(m) = validate_url(url) {
                out.push(("source.url", m));
            }
            if !subscribable_subject(subject) {
                out.push(("source.subject", format!("{subject:?} is not a valid NATS subject: dot-separated tokens without spaces; `*` matches one token, a final `>` the rest")));
            }
            if let Some(group) = queue_group {
                if group.is_empty() || group.contains(char::is_whitespace) {
                    out.push(("source.queue_group", format!("{group:?} is not a valid queue group name: non-empty, no spaces")));
                }
            }
        }
        SourceConfig::Jetstream(JetStreamSourceConfig {
            url,
            stream,
            subjects,
            consumer,
            filter_subjects,
            ack_wait,
            max_ack_pending,
            ..
        }) => {
            if let Err(m) = validate_url(url) {
                out.push(("source.url", m));
            }
            if !valid_name(stream) {
                out.push(("source.stream", format!("{stream:?} is not a valid stream name: no spaces, dots, `*`, `>` or slashes")));
            }
            if !valid_name(consumer) {
                out.push(("source.consumer", format!("{consumer:?} is not a valid consumer name: no spaces, dots, `*`, `>` or slashes")));
            }
            if let Some(bad) = subjects.iter().chain(filter_subjects).find(|s| !subscribable_subject(s)) {
                out.push(("source.subjects", format!("{bad:?} is not a valid NATS subject")));
            }
            if *ack_wait < std::time::Duration::from_secs(1) {
                out.push(("source.ack_wait", format!("must be at least 1s, got {}", humantime::format_duration(*ack_wait))));
            }
            if *max_ack_pending == 0 || *max_ack_pending > 1_000_000 {
                out.push(("source.max_ack_pending", format!("must be between 1 and 1000000, got {max_ack_pending}")));
            }
        }
        SourceConfig::File(_) | SourceConfig::Stdin(_) | SourceConfig::Kafka(_) => {}
    }
}

/// librdkafka properties sluice sets itself because its guarantees depend on
/// them; `options` may not override them.
const KAFKA_SOURCE_OWNED: [&str; 6] =
    ["bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store", "isolation.level", "auto.offset.reset"];
const KAFKA_SINK_OWNED: [&str; 5] = ["bootstrap.servers", "enable.idempotence", "acks", "transactional.id", "partitioner"];

fn validate_kafka_source(p: &PipelineConfig, out: &mut Found) {
    let SourceConfig::Kafka(KafkaSourceConfig {
        brokers,
        group,
        topics,
        pattern,
        commit_interval,
        exactly_once,
        transactional_id,
        tls,
        sasl,
        options,
        consumer_options,
        producer_options,
        ..
    }) = &p.source
    else {
        return;
    };
    if let Err(m) = validate_brokers(brokers) {
        out.push(("source.brokers", m));
    }
    if group.trim().is_empty() {
        out.push(("source.group", "must not be empty: hosts with the same group share the partitions".into()));
    }
    match (topics.is_empty(), pattern) {
        (true, None) => out.push(("source.topics", "give the topics to read (`topics = [\"orders\"]`) or a `pattern`".into())),
        (false, Some(_)) => out.push(("source.pattern", "give `topics` or `pattern`, not both".into())),
        (true, Some(pattern)) if pattern.is_empty() => out.push(("source.pattern", "must not be empty".into())),
        _ => {}
    }
    if let Some(bad) = topics.iter().find(|t| !valid_topic(t)) {
        out.push((
            "source.topics",
            format!("{bad:?} is not a valid Kafka topic name: 1 to 249 characters of a-z, A-Z, 0-9, `.`, `_` and `-`"),
        ));
    }
    if *commit_interval < std::time::Duration::from_millis(10) {
        out.push(("source.commit_interval", format!("must be at least 10ms, got {}", humantime::format_duration(*commit_interval))));
    }
    for (key, table) in [("source.options", options), ("source.consumer_options", consumer_options)] {
        if let Some(owned) = table.keys().find(|k| KAFKA_SOURCE_OWNED.contains(&k.as_str())) {
            out.push((
                key,
                format!("`{owned}` is set by sluice (from the source's own keys and its delivery guarantees) and cannot be overridden"),
            ));
        }
    }
    if let Some(owned) = producer_options.keys().find(|k| KAFKA_SINK_OWNED.contains(&k.as_str())) {
        out.push((
            "source.producer_options",
            format!(
                "`{owned}` is set by sluice (transactional, idempotent, acks=all, Java-compatible partitioning) and cannot be overridden"
            ),
        ));
    }
    if !producer_options.is_empty() && !*exactly_once {
        out.push((
            "source.producer_options",
            "only used with `exactly_once = true` (the source has no producer otherwise; a sink's `options` set its producer's)".into(),
        ));
    }
    let mut security = Found::new();
    validate_kafka_security(
        tls.as_ref(),
        sasl.as_ref(),
        [("options", options), ("consumer_options", consumer_options), ("producer_options", producer_options)],
        &mut security,
    );
    out.extend(security.into_iter().map(|(key, m)| (source_key(key), m)));
    if let Some(id) = transactional_id {
        if !*exactly_once {
            out.push(("source.transactional_id", "only used with `exactly_once = true`".into()));
        }
        if id.trim().is_empty() {
            out.push(("source.transactional_id", "must not be empty".into()));
        }
    }
    if *exactly_once {
        let timeout_ms = producer_options
            .get("transaction.timeout.ms")
            .or_else(|| options.get("transaction.timeout.ms"))
            .and_then(|v| v.0.parse::<u64>().ok())
            .unwrap_or_else(|| crate::kafka::transaction::default_timeout(*commit_interval).as_millis() as u64);
        if commit_interval.as_millis() as u64 * 2 > timeout_ms {
            out.push((
                "source.commit_interval",
                format!(
                    "{} is more than half the transaction timeout ({timeout_ms} ms, `transaction.timeout.ms`): the broker would abort transactions before they commit; lower commit_interval",
                    humantime::format_duration(*commit_interval)
                ),
            ));
        }
        let sinks = std::iter::once(("sink".to_owned(), &p.sink))
            .chain(p.routes.iter().map(|(route, sink)| (format!("routes.{route}"), sink)))
            .chain(p.dead_letter.iter().map(|sink| ("dead_letter".to_owned(), sink)));
        for (key, sink) in sinks {
            match sink {
                SinkConfig::Kafka(KafkaSinkConfig { brokers: sink_brokers, .. }) if sink_brokers == brokers => {}
                SinkConfig::Kafka(KafkaSinkConfig { brokers: sink_brokers, .. }) => {
                    out.push((
                        "source.exactly_once",
                        format!("`{key}` writes to brokers {sink_brokers:?}, the source reads {brokers:?}: a transaction spans one cluster, so with exactly_once every sink must use the source's `brokers`"),
                    ))
                }
                _ => {
                    out.push((
                        "source.exactly_once",
                        format!("`{key}` is not a kafka sink: with exactly_once, outputs and dead letters must be written in the same Kafka transaction as the input offsets"),
                    ))
                }
            }
        }
    }
}

fn validate_kafka_sink(sink: &SinkConfig, out: &mut Found) {
    let SinkConfig::Kafka(KafkaSinkConfig { brokers, topic, tls, sasl, options }) = sink else {
        return;
    };
    if let Err(m) = validate_brokers(brokers) {
        out.push(("brokers", m));
    }
    if let Some(topic) = topic.as_deref().filter(|t| !valid_topic(t)) {
        out.push(("topic", format!("{topic:?} is not a valid Kafka topic name: 1 to 249 characters of a-z, A-Z, 0-9, `.`, `_` and `-`")));
    }
    if let Some(owned) = options.keys().find(|k| KAFKA_SINK_OWNED.contains(&k.as_str())) {
        out.push((
            "options",
            format!("`{owned}` is set by sluice (idempotent, acks=all, Java-compatible partitioning) and cannot be overridden"),
        ));
    }
    validate_kafka_security(tls.as_ref(), sasl.as_ref(), [("options", options)], out);
}

fn source_key(key: &'static str) -> &'static str {
    match key {
        "tls.cert_file" => "source.tls.cert_file",
        "tls.key_file" => "source.tls.key_file",
        "tls.key_password" => "source.tls.key_password",
        "sasl.username" => "source.sasl.username",
        "sasl.password" => "source.sasl.password",
        "options" => "source.options",
        "consumer_options" => "source.consumer_options",
        "producer_options" => "source.producer_options",
        other => other,
    }
}

/// `tls` and `sasl` of a Kafka source or sink: whole, and not set twice
/// (again in librdkafka `options`).
pub(crate) fn validate_kafka_security<const N: usize>(
    tls: Option<&KafkaTls>,
    sasl: Option<&KafkaSasl>,
    options: [(&'static str, &BTreeMap<String, Secret>); N],
    out: &mut Found,
) {
    if let Some(tls) = tls {
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => out.push(("tls.cert_file", "`cert_file` needs `key_file` (the certificate's private key)".into())),
            (None, Some(_)) => out.push(("tls.key_file", "`key_file` needs `cert_file` (the certificate it is the key of)".into())),
            _ => {}
        }
        if tls.key_password.is_some() && tls.key_file.is_none() {
            out.push(("tls.key_password", "`key_password` is the password of `key_file`, which is not set".into()));
        }
    }
    if let Some(sasl) = sasl {
        if sasl.username.trim().is_empty() {
            out.push(("sasl.username", "`username` must not be empty".into()));
        }
        if sasl.password.0.is_empty() {
            out.push(("sasl.password", "`password` must not be empty (is its environment variable set?)".into()));
        }
    }
    if tls.is_some() || sasl.is_some() {
        for (name, table) in options {
            if let Some(key) = table.keys().find(|k| crate::kafka::SECURITY_PROPERTIES.contains(&k.as_str())) {
                out.push((name, format!("`{key}` is set by `tls` / `sasl`; set it there, not in librdkafka options")));
            }
        }
    }
}

/// Kafka's own rule for topic names.
pub fn valid_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub(crate) fn validate_brokers(brokers: &str) -> Result<(), String> {
    for broker in brokers.split(',').map(str::trim) {
        let ok = broker
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && !host.contains(['/', ' ']) && port.parse::<u16>().is_ok());
        if !ok {
            return Err(format!(
                "{broker:?} is not a Kafka broker address; write host:port, e.g. \"127.0.0.1:9092\" (several: comma-separated)"
            ));
        }
    }
    Ok(())
}

fn validate_nats_sink(sink: &SinkConfig, out: &mut Found) {
    let (url, subject, stream) = match sink {
        SinkConfig::Nats(NatsSinkConfig { url, subject, .. }) => (url, subject, &None),
        SinkConfig::Jetstream(JetStreamSinkConfig { url, subject, stream, .. }) => (url, subject, stream),
        SinkConfig::Stdout(_) | SinkConfig::File(_) | SinkConfig::Kafka(_) => return,
    };
    if let Err(m) = validate_url(url) {
        out.push(("url", m));
    }
    if let Some(Err(e)) = subject.as_deref().map(publishable_subject) {
        out.push(("subject", e.to_string()));
    }
    if let Some(stream) = stream {
        if !valid_name(stream) {
            out.push(("stream", format!("{stream:?} is not a valid stream name: no spaces, dots, `*`, `>` or slashes")));
        }
        if subject.is_none() {
            out.push(("stream", "creating a stream needs the sink's `subject` (the subject the stream captures)".into()));
        }
    }
}

fn validate_url(urls: &str) -> Result<(), String> {
    for url in urls.split(',').map(str::trim) {
        let rest = ["nats://", "tls://", "ws://", "wss://"].iter().find_map(|scheme| url.strip_prefix(scheme)).unwrap_or(url);
        let host_port = rest.rsplit('@').next().unwrap_or(rest);
        if url.is_empty() || host_port.is_empty() || host_port.contains(['/', ' ']) {
            let url = crate::nats::redact_url(url);
            return Err(format!("{url:?} is not a NATS server address; write e.g. \"nats://127.0.0.1:4222\" (several: comma-separated)"));
        }
    }
    Ok(())
}

/// `name` as it must be written in a TOML table header: bare when it can be,
/// quoted otherwise.
fn table_key(name: &str) -> String {
    let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}
