//! The config schema. Every field's doc comment is user documentation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// The whole file: process-wide runtime settings and named pipelines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings. Optional.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Pipelines by name. Each runs independently: one failing does not stop
    /// the others.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// The admin HTTP API (pipelines, plugin versions, hot reload). Unset:
    /// no admin server.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// OpenTelemetry export of a span per event. Unset: no export (trace
    /// context is still passed from inputs to outputs).
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// Where plugin versions may come from: the keys they must be signed
    /// by. Unset: any component the config or an upload names is loaded.
    #[serde(default)]
    pub plugins: PluginsConfig,
}

/// `[plugins]`: settings for every pipeline's plugin versions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Public keys (PEM files, Ed25519) whose signatures are accepted. When
    /// any is named, every version is refused unless one of them signed it:
    /// its `<plugin>.wasm.sig` beside the file, or the upload's
    /// `Sluice-Signature` header (docs/operations.md, "Signed plugins").
    /// Read at start: a change needs a restart.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// `[plugins.store]`: a store on the broker the hosts share, from which
    /// every host takes its pipelines' current plugin versions (`sluice
    /// plugin push`). Unset: versions come from the local files.
    #[serde(default)]
    pub store: Option<crate::store::StoreConfig>,
}

/// `[tracing]`: where spans go (OTLP over HTTP).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is added), as in `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: String,
    /// `http/protobuf` (default) or `http/json`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The `service.name` resource attribute. Default `sluice`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of traces started here (events without a sampled
    /// `traceparent`) that are recorded, 0.0-1.0. Default 1.0. An incoming
    /// `traceparent`'s sampled flag is followed.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

/// How spans are sent to the OpenTelemetry collector (`[tracing] protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// `http/protobuf`: OTLP over HTTP, protobuf-encoded (the default, and
    /// what every collector accepts).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// `http/json`: OTLP over HTTP, JSON-encoded.
    #[serde(rename = "http/json")]
    HttpJson,
}

fn default_service_name() -> String {
    "sluice".into()
}
fn default_sample_ratio() -> f64 {
    1.0
}

/// The admin HTTP API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address and port to listen on. Default `127.0.0.1:9090`: loopback
    /// only; anything else exposes the API to the network.
    #[serde(default = "default_admin_listen", deserialize_with = "socket_address")]
    pub listen: std::net::SocketAddr,
    /// Bearer token the mutating endpoints (reload, upload, rollback,
    /// pause, resume) require. Unset: those endpoints are disabled. Keep it
    /// in the environment: `token = "${SLUICE_ADMIN_TOKEN}"`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Bearer token `GET /pipelines`, `GET /pipelines/{name}` and `GET
    /// /metrics` require (`token` is accepted too). Unset: those are open to
    /// anyone who can reach `listen`. `/healthz` and `/readyz` stay open for
    /// probes.
    #[serde(default)]
    pub read_token: Option<Secret>,
    /// The largest plugin upload (`PUT /pipelines/{name}/plugin`) accepted;
    /// a larger one is refused (413) before its body is read. Default
    /// 64MiB: JavaScript and Python components are a few MiB to a few tens
    /// of MiB. Other routes take at most 64 KiB.
    #[serde(default = "default_max_upload")]
    pub max_upload: ByteSize,
    /// Connections open at once, at most; a connection over the cap is
    /// closed at once (and counted in `sluice_admin_connections_refused_total`).
    /// Default 64: a few operators, scrapers and probes need a handful.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// PEM certificate chain to serve the API over HTTPS with (with
    /// `tls_key`). Unset: plain HTTP. Read at start (and checked by
    /// `sluice check`); a renewed certificate needs a restart.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_max_upload() -> ByteSize {
    ByteSize::mib(64)
}
fn default_max_connections() -> usize {
    64
}

fn socket_address<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<std::net::SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address and port; write e.g. \"127.0.0.1:9090\" (loopback) or \"0.0.0.0:9090\" (every interface)"
        ))
    })
}

fn default_admin_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9090))
}

fn default_true() -> bool {
    true
}

/// Settings shared by every pipeline in the process.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Where compiled plugins are cached, keyed by the plugin's sha256 and the
    /// engine's settings. JavaScript and Python plugins take seconds to
    /// compile and milliseconds to load from here. Unset: no cache. The
    /// directory must be writable only by the user running sluice: cached
    /// machine code is trusted when loaded.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// `on-demand` (default) allocates instance memory as needed;
    /// `pooling` pre-reserves slots, which makes instantiation ~35% faster and
    /// pays off for plugins that use a fresh instance per event.
    #[serde(default)]
    pub allocator: Allocator,
    /// How long a shutdown waits for in-flight events before handing them
    /// back to their source. Default 30s: under Kafka's default session
    /// timeout (45s), so a drain never outlives the group membership.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Reload a pipeline's plugin when its file changes (hot reload; see
    /// docs/operations.md). Default true.
    #[serde(default = "default_true")]
    pub watch_plugins: bool,
    /// This host's name among the hosts of a consumer group: it ends the
    /// default transactional id of exactly-once Kafka pipelines, which must
    /// differ between running hosts and stay the same when one restarts
    /// (the restarted host then fences its dead predecessor and aborts its
    /// open transaction at once). Default: the machine's host name, with
    /// `-1`, `-2`, … added for a second, third… host running on the same
    /// machine at once (each holds a lock on a slot file under
    /// `$XDG_RUNTIME_DIR/sluice` or the temp folder; a restarted host takes
    /// the lowest free slot, its own if it was the one that stopped). Set
    /// it when hosts are started in no fixed order on one machine, or by
    /// different users.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Threads that run the pipelines' lanes, and so the plugins: each a
    /// single-threaded async runtime, lanes spread over them (the least
    /// loaded first). A lane's plugin calls, and the tasks a call starts
    /// (an outbound HTTP request, its connection), stay on its thread, and
    /// a guest burning CPU never delays the admin API, the sources or the
    /// sinks. Default `0`: no plugin threads, lanes run on the shared async
    /// workers. Measured (docs/benchmarks.md, 2026-12-07): no gain for a
    /// pipeline, ~25% off the added cost of an outbound HTTP call.
    #[serde(default)]
    pub plugin_threads: Option<usize>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            allocator: Allocator::default(),
            shutdown_timeout: default_shutdown_timeout(),
            watch_plugins: true,
            instance_id: None,
            plugin_threads: None,
        }
    }
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Instance memory strategy; see [`RuntimeConfig::allocator`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocator {
    /// `on-demand`: memory allocated per instance as needed.
    #[default]
    OnDemand,
    /// `pooling`: slots reserved up front, faster instantiation.
    Pooling,
}

/// One pipeline: source → plugin → sinks, under a policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where events come from.
    pub source: SourceConfig,
    /// The WebAssembly component that handles each event.
    pub plugin: PluginConfig,
    /// The default route: outputs without a destination, or whose destination
    /// names no route, go here (a destination is then the topic/subject).
    pub sink: SinkConfig,
    /// Named extra sinks. An output whose destination equals a route's name
    /// goes to that route's sink.
    #[serde(default)]
    pub routes: BTreeMap<String, SinkConfig>,
    /// Where events go that were rejected or ran out of attempts. Required:
    /// without it a failing event would have nowhere to go but the floor.
    pub dead_letter: Option<SinkConfig>,
    /// Retry, timeout, memory and concurrency rules.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// The wire format of the payloads: `none` (default: payloads are handed
    /// to the plugin as they are) or `nestjs` (NestJS microservice packets:
    /// the plugin sees `data`, replies go back as NestJS responses).
    #[serde(default)]
    pub codec: Codec,
    /// Skip repeats of an event already handled, by key, within a window.
    /// Unset: every delivery is handled.
    #[serde(default)]
    pub idempotency: Option<IdempotencyConfig>,
    /// JSON Schemas for inputs and outputs, by event type and version
    /// (see [`super::SchemasConfig`]). Unset: nothing is validated.
    #[serde(default)]
    pub schemas: Option<super::SchemasConfig>,
    /// Stop calling a plugin that keeps failing, and stop taking events
    /// while it is open. Unset: no breaker.
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    /// Take a correlation id from each input (or make one), show it to the
    /// plugin and put it on every output, reply and dead-letter record.
    /// Unset: no correlation id.
    #[serde(default)]
    pub correlation: Option<CorrelationConfig>,
    /// Key/value state for the plugin (grants the `state` capability).
    /// Unset: a plugin that imports `state` is refused.
    #[serde(default)]
    pub state: Option<super::StateConfig>,
    /// Services the plugin may call or emit to, by the destination name it
    /// uses (grants the `client` capability). Empty: a plugin that imports
    /// `client` is refused.
    #[serde(default)]
    pub clients: BTreeMap<String, super::ClientConfig>,
    /// What happens when the pipeline stops on an error after it started
    /// (a sink or its broker failing, an exactly-once commit failing):
    /// by default it starts again after a backoff.
    #[serde(default)]
    pub restart: RestartConfig,
    /// How a candidate version is tried (shadow or canary) and when it is
    /// promoted or rolled back. Unset: candidates are shadowed on every
    /// event and promoted by hand.
    #[serde(default)]
    pub rollout: Option<super::RolloutConfig>,
}

/// `[pipelines.<name>.restart]`: starting a failed pipeline again.
///
/// A pipeline that stopped on an error after it had started is started
/// again (its source, sinks and state opened anew, its plugin the version
/// that was current) after `initial_backoff`, doubling with each failure
/// in a row up to `max_backoff` (±10% jitter), as Flink's
/// exponential-delay restart strategy does (same defaults). A run that
/// stayed up longer than `max_backoff` counts as recovered: the next
/// failure waits `initial_backoff` again. A pipeline that cannot start at
/// all when the host starts (or a config reload starts it) is not
/// restarted: that is a config or deployment error, reported at once.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// Restart after a failure. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The wait before the first restart. Default 1s.
    #[serde(default = "default_restart_initial", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The longest wait: a pipeline whose broker stays down tries again
    /// this often. Default 1m.
    #[serde(default = "default_restart_max", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Restarts allowed within `window` (Erlang/OTP's intensity and
    /// period; Flink's failure-rate strategy); one more and the pipeline
    /// stays failed, `/readyz` saying why. Unset (the default): no limit,
    /// so an outage of any length ends without an operator.
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// The sliding window `max_restarts` counts in. Default 10m.
    #[serde(default = "default_restart_window", with = "humantime_serde")]
    pub window: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_backoff: default_restart_initial(),
            max_backoff: default_restart_max(),
            max_restarts: None,
            window: default_restart_window(),
        }
    }
}

fn default_restart_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_restart_max() -> Duration {
    Duration::from_secs(60)
}
fn default_restart_window() -> Duration {
    Duration::from_secs(600)
}

/// Correlation ids: see docs/configuration.md#correlation-ids-and-tracing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationConfig {
    /// The header that carries it. Default `x-correlation-id`.
    #[serde(default = "default_correlation_header")]
    pub header: String,
    /// Make one (a random UUID) for an input without it. Default true.
    #[serde(default = "default_true")]
    pub generate: bool,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        Self { header: default_correlation_header(), generate: true }
    }
}

fn default_correlation_header() -> String {
    "x-correlation-id".into()
}

/// The circuit breaker (see `dispatch/breaker.rs`): `failures` failed
/// attempts within `window` open it; after `reset` one probe call decides
/// whether it closes or stays open for another `reset`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failed attempts (retryable errors, traps, timeouts, memory-cap hits,
    /// instances that fail to start; not rejections) that open it. Default 5.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// The window they are counted in. Default 1m.
    #[serde(default = "default_breaker_window", with = "humantime_serde")]
    pub window: Duration,
    /// How long it stays open before a probe. Default 30s.
    #[serde(default = "default_breaker_reset", with = "humantime_serde")]
    pub reset: Duration,
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_window() -> Duration {
    Duration::from_secs(60)
}
fn default_breaker_reset() -> Duration {
    Duration::from_secs(30)
}

/// The wire format of a pipeline's payloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Codec {
    /// Payloads are handed to the plugin, and replies sent, as they are.
    #[default]
    None,
    /// The NestJS microservices packet format (NATS transport): a request
    /// `{"pattern", "data", "id"}` reaches the plugin as `data`, with the
    /// pattern and id in the `nestjs-pattern` and `nestjs-id` headers; a
    /// reply goes back as `{"response", "isDisposed", "id"}`, an error reply
    /// as `{"err", "isDisposed", "id"}`. With a Kafka source, NestJS's Kafka
    /// transport: no envelope, replies marked by `kafka_nest-is-disposed`
    /// and `kafka_nest-err` headers.
    Nestjs,
}

/// Idempotency: a repeat of an event whose key was handled within `window`
/// is acknowledged without calling the plugin, and nothing is sent for it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// Where the key comes from: `"header:NAME"` (a header, name compared
    /// without regard to case), `"json:/POINTER"` (a JSON pointer into the
    /// payload, e.g. `json:/order/id`) or `"event-id"` (the event's id).
    pub key: IdempotencyKey,
    /// How long a handled key is remembered. Default 10m.
    #[serde(default = "default_idempotency_window", with = "humantime_serde")]
    pub window: Duration,
    /// Keys remembered at most (the least recently seen are forgotten
    /// first). Each costs about 100 bytes. Default 100000.
    #[serde(default = "default_idempotency_capacity")]
    pub capacity: usize,
}

/// Where an idempotency key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyKey {
    /// The first header of this name (case-insensitive).
    Header(String),
    /// A JSON pointer (RFC 6901) into the payload.
    Json(String),
    /// The event's id.
    EventId,
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bad = |why: &str| {
            serde::de::Error::custom(format!(
                "{text:?} is not an idempotency key: {why}; write \"header:Idempotency-Key\", \"json:/order/id\" or \"event-id\""
            ))
        };
        if text == "event-id" {
            return Ok(IdempotencyKey::EventId);
        }
        if let Some(name) = text.strip_prefix("header:") {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(bad("the header name is empty or has spaces"));
            }
            return Ok(IdempotencyKey::Header(name.to_owned()));
        }
        if let Some(pointer) = text.strip_prefix("json:") {
            if !pointer.starts_with('/') {
                return Err(bad("a JSON pointer starts with `/`"));
            }
            return Ok(IdempotencyKey::Json(pointer.to_owned()));
        }
        Err(bad("unknown kind"))
    }
}

fn default_idempotency_window() -> Duration {
    Duration::from_secs(600)
}
fn default_idempotency_capacity() -> usize {
    100_000
}

/// Event sources.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Lines of a file. Ends at end of file unless `follow` is set; see
    /// [`FileSourceConfig`](crate::source::lines::FileSourceConfig).
    File(crate::source::lines::FileSourceConfig),
    /// Lines of the process's standard input; ends at end of input; see
    /// [`StdinSourceConfig`](crate::source::lines::StdinSourceConfig).
    Stdin(crate::source::lines::StdinSourceConfig),
    /// Core NATS: a subscription, at-most-once; see
    /// [`NatsSourceConfig`](crate::source::nats::NatsSourceConfig).
    Nats(crate::source::nats::NatsSourceConfig),
    /// A JetStream stream, read through a durable pull consumer,
    /// at-least-once; see
    /// [`JetStreamSourceConfig`](crate::source::jetstream::JetStreamSourceConfig).
    Jetstream(crate::source::jetstream::JetStreamSourceConfig),
    /// Kafka: a consumer group reading topics, at-least-once; see
    /// [`KafkaSourceConfig`](crate::source::kafka::KafkaSourceConfig).
    Kafka(crate::source::kafka::KafkaSourceConfig),
}

/// `tls = { … }` of a Kafka source or sink: the connection is encrypted and
/// the brokers' certificates are checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// PEM file of the CA certificate(s) the brokers' certificates are
    /// checked against (`ssl.ca.location`). Unset: the system's CAs.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate, for brokers that require one
    /// (mutual TLS; `ssl.certificate.location`). Give `key_file` with it.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key
    /// (`ssl.key.location`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The password of an encrypted `key_file` (`ssl.key.password`): keep
    /// it in the environment, `key_password = "${KAFKA_KEY_PASSWORD}"`.
    #[serde(default)]
    pub key_password: Option<Secret>,
}

/// `sasl = { … }` of a Kafka source or sink: the user the brokers
/// authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `scram-sha-512` (default), `scram-sha-256` or `plain` (`plain` sends
    /// the password itself: use it only with `tls`).
    #[serde(default)]
    pub mechanism: SaslMechanism,
    /// The user name (`sasl.username`).
    pub username: String,
    /// The password (`sasl.password`): keep it in the environment,
    /// `password = "${KAFKA_PASSWORD}"`. Never printed.
    pub password: Secret,
}

/// A SASL mechanism librdkafka is built with here (no GSSAPI/Kerberos, no
/// OAUTHBEARER).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaslMechanism {
    /// `scram-sha-512` (the default).
    #[default]
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
    /// `scram-sha-256`.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// `plain`: the password is sent as it is; use it over TLS.
    Plain,
}

impl SaslMechanism {
    /// librdkafka's name (`sasl.mechanism`).
    pub fn librdkafka_name(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

/// A NATS server, how to log in to it and its TLS (the `url`, `user`,
/// `password`, `token`, `nkey`, `credentials` and `tls_*` keys of NATS
/// sources and sinks; `crate::nats::options` turns it into client options).
/// Sources and sinks naming the same server with the same keys share one
/// connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NatsServer {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// A token to log in with.
    pub token: Option<Secret>,
    /// A `.creds` file (JWT and seed).
    pub credentials: Option<PathBuf>,
    /// User name, with `password`.
    pub user: Option<Secret>,
    /// Password, with `user`.
    pub password: Option<Secret>,
    /// An NKey seed to sign the server's challenge with.
    pub nkey: Option<Secret>,
    /// The CA that signed the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS, with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub tls_key: Option<PathBuf>,
}

/// The [`NatsServer`] of a config struct with the NATS connection keys
/// (`url`, `token`, `credentials`, `user`, `password`, `nkey`, `tls_*`):
/// NATS and JetStream sources and sinks.
macro_rules! nats_server_of {
    ($config:expr) => {
        $crate::config::NatsServer {
            url: $config.url.clone(),
            token: $config.token.clone(),
            credentials: $config.credentials.clone(),
            user: $config.user.clone(),
            password: $config.password.clone(),
            nkey: $config.nkey.clone(),
            tls_ca: $config.tls_ca.clone(),
            tls_cert: $config.tls_cert.clone(),
            tls_key: $config.tls_key.clone(),
        }
    };
}
pub(crate) use nats_server_of;

/// Makes the files of such a struct's NATS connection keys (credentials,
/// TLS) relative to `base` when they are relative.
macro_rules! resolve_nats_paths {
    ($config:expr, $base:expr) => {
        for path in [&mut $config.credentials, &mut $config.tls_ca, &mut $config.tls_cert, &mut $config.tls_key].into_iter().flatten() {
            if path.is_relative() {
                *path = $base.join(&*path);
            }
        }
    };
}

impl SourceConfig {
    /// The NATS server of a NATS or JetStream source.
    pub fn nats_server(&self) -> Option<NatsServer> {
        match self {
            SourceConfig::Nats(nats) => Some(nats.server()),
            SourceConfig::Jetstream(jetstream) => Some(jetstream.server()),
            _ => None,
        }
    }

    /// Makes the files the source names relative to `base` (the config
    /// file's folder).
    fn resolve_paths(&mut self, base: &Path) {
        match self {
            SourceConfig::File(file) => file.resolve_paths(base),
            SourceConfig::Stdin(_) => {}
            SourceConfig::Nats(nats) => resolve_nats_paths!(nats, base),
            SourceConfig::Jetstream(jetstream) => resolve_nats_paths!(jetstream, base),
            SourceConfig::Kafka(kafka) => {
                if let Some(tls) = kafka.tls.as_mut() {
                    tls.resolve_paths(base);
                }
            }
        }
    }
}

impl SinkConfig {
    /// The NATS server of a NATS or JetStream sink.
    pub fn nats_server(&self) -> Option<NatsServer> {
        match self {
            SinkConfig::Nats(nats) => Some(nats.server()),
            SinkConfig::Jetstream(jetstream) => Some(jetstream.server()),
            _ => None,
        }
    }

    /// Makes the files the sink names relative to `base` (the config
    /// file's folder).
    fn resolve_paths(&mut self, base: &Path) {
        match self {
            SinkConfig::Stdout(_) => {}
            SinkConfig::File(file) => {
                if file.path.is_relative() {
                    file.path = base.join(&file.path);
                }
            }
            SinkConfig::Nats(nats) => resolve_nats_paths!(nats, base),
            SinkConfig::Jetstream(jetstream) => resolve_nats_paths!(jetstream, base),
            SinkConfig::Kafka(kafka) => {
                if let Some(tls) = kafka.tls.as_mut() {
                    tls.resolve_paths(base);
                }
            }
        }
    }
}

/// A config value that must never be printed: its `Debug` is `***`.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The plugin of a pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path to the component (`.wasm`).
    pub path: PathBuf,
    /// Expected sha256 of the file, hex. When set, any other file is refused.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Passed to the plugin's `init` as key/value strings. Nested tables
    /// flatten to dotted keys (`set.env = "x"` → key `set.env`); numbers and
    /// booleans become their text.
    #[serde(default)]
    pub config: toml::Table,
    /// WASI capabilities granted to the plugin. Everything not listed here is
    /// denied.
    #[serde(default)]
    pub wasi: WasiGrants,
    /// `reuse` (default): each lane keeps one instance for every event and
    /// replaces it only after a failure. `fresh`: a new instance (and `init`)
    /// for every event, so nothing an event leaves in memory reaches the
    /// next. Fresh costs ~40–60 µs per event for Rust and C plugins and
    /// ~0.7–1.7 ms for Go, JavaScript and Python ones (docs/benchmarks.md,
    /// "Every language"); see docs/plugins/README.md for the policy.
    #[serde(default)]
    pub instance: InstancePolicy,
    /// Caps on the metrics the plugin records (`sluice:plugin/metrics`):
    /// label sets per metric and metrics per pipeline.
    #[serde(default)]
    pub metrics: crate::runtime::MetricsLimits,
    /// Outbound HTTP (`wasi:http`): the destinations the plugin may call
    /// and the limits of those calls. Absent: a plugin importing
    /// `wasi:http` is refused. See [`super::HttpConfig`].
    #[serde(default)]
    pub http: Option<super::HttpConfig>,
}

/// Instance lifetime; see [`PluginConfig::instance`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstancePolicy {
    /// `reuse`: one instance per lane, replaced after a failure.
    #[default]
    Reuse,
    /// `fresh`: a new instance, and `init`, for every event.
    Fresh,
}

impl PluginConfig {
    /// The `config` table as the flat key/value list handed to `init`:
    /// nested tables become dotted keys.
    pub fn init_config(&self) -> Result<Vec<(String, String)>, PluginConfigError> {
        let mut flat = Vec::new();
        flatten("", &self.config, &mut flat)?;
        Ok(flat)
    }
}

/// Why a plugin's `config` table cannot be handed to `init`, whose
/// config is a flat list of string pairs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginConfigError {
    /// An array has no single string form `init` could take.
    #[error("`{key}` is an array; plugin config values are strings, numbers or booleans")]
    Array {
        /// The array's dotted key.
        key: String,
    },
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) -> Result<(), PluginConfigError> {
    for (key, value) in table {
        let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::String(s) => out.push((key, s.clone())),
            toml::Value::Integer(i) => out.push((key, i.to_string())),
            toml::Value::Float(f) => out.push((key, f.to_string())),
            toml::Value::Boolean(b) => out.push((key, b.to_string())),
            toml::Value::Datetime(d) => out.push((key, d.to_string())),
            toml::Value::Table(t) => flatten(&key, t, out)?,
            toml::Value::Array(_) => return Err(PluginConfigError::Array { key }),
        }
    }
    Ok(())
}

/// Capabilities a plugin may use. The default is none: no files, no
/// environment, no network, no stdio. Clocks and random numbers are always
/// available because language runtimes (JavaScript, Python, Rust's std
/// hash maps) need them to start.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasiGrants {
    /// Environment variables passed through by name.
    #[serde(default)]
    pub env: Vec<String>,
    /// Let the plugin write to the host's stdout (off: it is discarded).
    #[serde(default)]
    pub stdout: bool,
    /// Let the plugin write to the host's stderr (off: it is discarded).
    #[serde(default)]
    pub stderr: bool,
    /// Directories the plugin may read, guest path → host path.
    #[serde(default)]
    pub read_dirs: BTreeMap<String, PathBuf>,
}

/// Output destinations.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkConfig {
    /// The process's standard output; see [`StdoutSinkConfig`](crate::sink::lines::StdoutSinkConfig).
    Stdout(crate::sink::lines::StdoutSinkConfig),
    /// A file, appended to; see [`FileSinkConfig`](crate::sink::lines::FileSinkConfig).
    File(crate::sink::lines::FileSinkConfig),
    /// Core NATS publish; see [`NatsSinkConfig`](crate::sink::nats::NatsSinkConfig).
    Nats(crate::sink::nats::NatsSinkConfig),
    /// JetStream publish, deduplicated; see [`JetStreamSinkConfig`](crate::sink::nats::JetStreamSinkConfig).
    Jetstream(crate::sink::nats::JetStreamSinkConfig),
    /// Kafka produce, idempotent; see [`KafkaSinkConfig`](crate::sink::kafka::KafkaSinkConfig).
    Kafka(crate::sink::kafka::KafkaSinkConfig),
}

/// Per-pipeline rules for failures, limits and parallelism.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Attempts per event, the first included, before a retryable failure
    /// goes to the dead letter. Default 5.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay between attempts.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Wall-clock limit for one event's handler call; a guest still running
    /// is interrupted and the attempt counts as a retryable failure.
    /// Default 5s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Wall-clock limit for a new instance's start and `init`. A plugin
    /// that overruns it is refused: at start, by `sluice check`, and on a
    /// reload or upload (the running version stays). Default 10s: compiling
    /// is not counted (it happens before), and the slowest runtime we ship,
    /// CPython, starts in about a millisecond once compiled.
    #[serde(default = "default_init_timeout", with = "humantime_serde")]
    pub init_timeout: Duration,
    /// A pipeline with events in flight that neither takes nor finishes
    /// one for this long is reported stuck: `/healthz` answers 503 and
    /// `/readyz` names it. Never less than the longest a call may take
    /// (`timeout × batch_size`) plus `init_timeout`. Default 2m.
    #[serde(default = "default_stuck_after", with = "humantime_serde")]
    pub stuck_after: Duration,
    /// Linear memory cap per plugin instance. Default 64 MiB.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Plugin instances working in parallel (lanes). Default 1.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// What order events keep across lanes.
    #[serde(default)]
    pub ordering: Ordering,
    /// Events handed to the plugin per call, at most. Batching amortises the
    /// cost of a component call and of handing work to the plugin thread; a
    /// batch never waits to fill up. A call also carries at most an eighth of
    /// `memory` in payload bytes (a larger event goes alone), so big events
    /// cannot exhaust the instance. Default 256 (see docs/benchmarks.md).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Add a `sluice-plugin-digest` header (the sha256 of the plugin version
    /// that made it) to every output, so outputs can be traced to a version
    /// across hot reloads. Default true. It has a cost where headers are
    /// costly: on core NATS it cut throughput by ~40% in the NATS benchmark
    /// (every message becomes a message with headers).
    #[serde(default = "default_true")]
    pub version_header: bool,
    /// Outputs one event may produce, at most. More is treated as a plugin
    /// bug: the event is rejected (dead-lettered) with the count. Default
    /// 1000. Bounds what a runaway guest can make the host buffer and send.
    #[serde(default = "default_max_outputs")]
    pub max_outputs: usize,
    /// Bytes (payloads, keys and headers) of one event's outputs, at most;
    /// more rejects the event, as for `max_outputs`. Default 16 MiB.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: ByteSize,
    /// Headers one input event may carry, at most. An input with more is
    /// dead-lettered (reason `undecodable`, the count in the message) before
    /// any work on it. Default 10000: far above what brokers and frameworks
    /// set (tens), low enough that per-header work stays cheap.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Bytes of header names and values one input event may carry, at most;
    /// more dead-letters it, as for `max_headers`. Default 1 MiB (NATS's
    /// default `max_payload` and Kafka's default `message.max.bytes` for the
    /// whole message).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
}

#[cfg(test)]
mod stuck_tests {
    use std::time::Duration;

    #[test]
    fn the_stuck_threshold_is_never_shorter_than_the_longest_healthy_call() {
        let policy = super::PolicyConfig::default();
        assert_eq!(policy.stuck_threshold(), Duration::from_secs(5 * 256 + 10), "5 s × 256 events + 10 s of init");
        let short = super::PolicyConfig { timeout: Duration::from_millis(10), batch_size: 4, ..policy };
        assert_eq!(short.stuck_threshold(), Duration::from_secs(120), "stuck_after when it is the longer");
    }
}

impl PolicyConfig {
    /// How long without progress means stuck: `stuck_after`, raised to the
    /// longest a healthy call can take, so a slow call is not taken for a
    /// hang.
    pub fn stuck_threshold(&self) -> Duration {
        let longest_call = self.timeout.saturating_mul(self.batch_size.max(1) as u32) + self.init_timeout;
        self.stuck_after.max(longest_call)
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff: BackoffConfig::default(),
            timeout: default_timeout(),
            init_timeout: default_init_timeout(),
            stuck_after: default_stuck_after(),
            memory: default_memory(),
            concurrency: default_concurrency(),
            ordering: Ordering::default(),
            batch_size: default_batch_size(),
            version_header: true,
            max_outputs: default_max_outputs(),
            max_output_bytes: default_max_output_bytes(),
            max_headers: default_max_headers(),
            max_header_bytes: default_max_header_bytes(),
        }
    }
}

fn default_max_headers() -> usize {
    10_000
}
fn default_max_header_bytes() -> ByteSize {
    ByteSize::mib(1)
}

fn default_max_outputs() -> usize {
    1000
}
fn default_max_output_bytes() -> ByteSize {
    ByteSize::mib(16)
}
fn default_max_attempts() -> u32 {
    5
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_stuck_after() -> Duration {
    Duration::from_secs(120)
}
fn default_init_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_memory() -> ByteSize {
    ByteSize::mib(64)
}
fn default_concurrency() -> usize {
    1
}
fn default_batch_size() -> usize {
    256
}

/// Order guarantees between events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// Events of one source partition are handled and published in order
    /// (a file or stdin is one partition; a Kafka partition is one).
    #[default]
    Partition,
    /// Events with the same key (within a partition) keep their order;
    /// different keys run in parallel.
    Key,
    /// No order: any lane takes any event.
    None,
}

/// Exponential backoff: `initial × multiplier^(attempt-1)`, capped at `max`,
/// each delay spread by ±`jitter` (a fraction) so retries of many events do
/// not arrive in lockstep.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// Delay before the second attempt. Default 100ms.
    #[serde(default = "default_initial", with = "humantime_serde")]
    pub initial: Duration,
    /// Longest delay. Default 30s.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max: Duration,
    /// Growth per attempt. Default 2.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Random spread, 0 to 1. Default 0.2 (±20%).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { initial: default_initial(), max: default_max_delay(), multiplier: default_multiplier(), jitter: default_jitter() }
    }
}

fn default_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(30)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_jitter() -> f64 {
    0.2
}

impl Config {
    /// Makes relative paths relative to `base` (the config file's folder).
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(dir) = self.runtime.cache_dir.as_mut() {
            fix(dir);
        }
        self.plugins.trusted_keys.iter_mut().for_each(fix);
        if let Some(store) = self.plugins.store.as_mut() {
            store.resolve_paths(base);
        }
        if let Some(admin) = self.admin.as_mut() {
            admin.tls_cert.iter_mut().chain(admin.tls_key.iter_mut()).for_each(fix);
        }
        for pipeline in self.pipelines.values_mut() {
            pipeline.source.resolve_paths(base);
            fix(&mut pipeline.plugin.path);
            if let Some(schemas) = pipeline.schemas.as_mut() {
                schemas.resolve_paths(base);
            }
            if let Some(state) = pipeline.state.as_mut() {
                state.resolve_paths(base);
            }
            for client in pipeline.clients.values_mut() {
                client.resolve_paths(base);
            }
            for dir in pipeline.plugin.wasi.read_dirs.values_mut() {
                fix(dir);
            }
            let sinks = std::iter::once(&mut pipeline.sink).chain(pipeline.routes.values_mut()).chain(pipeline.dead_letter.as_mut());
            for sink in sinks {
                sink.resolve_paths(base);
            }
        }
    }
}

impl KafkaTls {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file].into_iter().flatten() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}

#[cfg(test)]
mod plugin_config_tests {
    use super::{PluginConfig, PluginConfigError};

    #[test]
    fn an_array_in_the_plugin_config_is_refused_with_its_dotted_key() -> Result<(), toml::de::Error> {
        let plugin: PluginConfig = toml::from_str("path = \"p.wasm\"\n[config.set]\ntags = [\"a\", \"b\"]\n")?;
        assert_eq!(plugin.init_config(), Err(PluginConfigError::Array { key: "set.tags".into() }));
        Ok(())
    }
}
