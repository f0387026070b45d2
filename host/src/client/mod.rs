//! Service calls (`sluice:plugin/client`): the destinations of a pipeline's
//! `[pipelines.<name>.clients.*]` tables, opened at pipeline build, and the
//! requests a plugin makes to them.
//!
//! - [`Clients`]: every destination of one pipeline, by name; shared by its
//!   lanes and lent to each per-event call through the event's scope.
//! - `nats`, `kafka`: the transports (request/reply over a NATS inbox;
//!   a Kafka record with NestJS's reply headers, answered on a reply topic).
//! - `codec`: the NestJS envelope of requests, answers and emits.
//! - `metrics`: requests per destination and outcome, and their latency.
//!
//! Emits do not go through here at call time: an emit is an output of the
//! event, routed to the destination's sink (see `emit_route`).

pub(crate) mod codec;
pub(crate) mod kafka;
pub(crate) mod metrics;
pub(crate) mod nats;
pub(crate) mod stub;

pub use stub::StubReplies;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ClientConfig, ClientUse, Codec, PipelineConfig, SinkConfig, Transport};
use crate::event::Header;
use crate::runtime::bindings::current::client::{CallError, Reply};
use crate::sink::kafka::KafkaSinkConfig;
use crate::sink::nats::NatsSinkConfig;

/// The route name an emit to `destination` is sent through. Routes named
/// in config are TOML keys a user writes; this one has a prefix no config
/// route is expected to use, so the two do not meet.
pub(crate) fn emit_route(destination: &str) -> String {
    format!("sluice-client-emit:{destination}")
}

/// The destination an emit route is for (the inverse of `emit_route`).
pub fn emitted_to(route: &str) -> Option<&str> {
    route.strip_prefix("sluice-client-emit:")
}

/// The sinks emits go to: one per destination that allows `emit`,
/// publishing to its subject or topic (added to the pipeline's routes).
pub(crate) fn emit_sinks(config: &PipelineConfig) -> BTreeMap<String, SinkConfig> {
    config
        .clients
        .iter()
        .filter(|(_, client)| client.allows(ClientUse::Emit))
        .filter_map(|(name, client)| Some((emit_route(name), emit_sink(client)?)))
        .collect()
}

fn emit_sink(client: &ClientConfig) -> Option<SinkConfig> {
    let address = client.address()?;
    Some(match client.transport {
        Transport::Nats => {
            let server = client.nats_server();
            SinkConfig::Nats(NatsSinkConfig {
                url: server.url,
                token: server.token,
                credentials: server.credentials,
                user: server.user,
                password: server.password,
                nkey: server.nkey,
                tls_ca: server.tls_ca,
                tls_cert: server.tls_cert,
                tls_key: server.tls_key,
                subject: Some(address),
            })
        }
        Transport::Kafka => SinkConfig::Kafka(KafkaSinkConfig {
            brokers: client.brokers(),
            topic: Some(address),
            tls: client.tls.clone(),
            sasl: client.sasl.clone(),
            options: client.options.clone(),
        }),
    })
}

/// How a destination's requests travel.
enum Link {
    Nats(async_nats::Client),
    Kafka(Arc<kafka::Requester>),
    /// `emit` only: requests are refused before they reach a transport.
    EmitOnly,
    /// Answered by rules from a file (`sluice plugin test --replies`).
    Stub(Vec<stub::Rule>, Arc<str>),
}

/// One destination, ready for requests.
pub(crate) struct Destination {
    pub name: String,
    pub config: ClientConfig,
    /// The subject or topic requests and emits go to.
    pub address: String,
    link: Link,
}

/// Why opening a destination failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot open client destination `{destination}`: {message}")]
pub struct OpenError {
    /// The destination's name (`[pipelines.<name>.clients.<destination>]`).
    pub destination: String,
    /// Why it cannot be opened.
    pub message: String,
}

/// Every destination of one pipeline.
pub struct Clients {
    destinations: HashMap<String, Destination>,
    /// Requests per destination and outcome, and their latency, for
    /// `/metrics`.
    pub metrics: Arc<metrics::ClientMetrics>,
}

impl Clients {
    /// Opens the request side of every destination of `config` (NATS
    /// connections shared with the pipeline's sources and sinks; a Kafka
    /// producer and a reader of the reply topic per request destination).
    pub async fn open(
        pipeline: &str,
        config: &PipelineConfig,
        connections: &crate::nats::Connections,
        producers: &crate::sink::kafka::Producers,
        metrics: Arc<metrics::ClientMetrics>,
    ) -> Result<Option<Arc<Self>>, OpenError> {
        if config.clients.is_empty() {
            return Ok(None);
        }
        let mut destinations = HashMap::new();
        for (name, client) in &config.clients {
            let error = |message: String| OpenError { destination: name.clone(), message };
            let address = client.address().ok_or_else(|| error("no subject or topic".into()))?;
            let link = match (client.allows(ClientUse::Request), client.transport) {
                (false, _) => Link::EmitOnly,
                (true, Transport::Nats) => {
                    let connection =
                        connections.get(&client.nats_server()).await.map_err(|e| error(format!("{}: {}", e.url, e.message)))?;
                    Link::Nats(connection)
                }
                (true, Transport::Kafka) => {
                    let requester = kafka::Requester::open(pipeline, name, client, producers).await.map_err(error)?;
                    Link::Kafka(Arc::new(requester))
                }
            };
            destinations.insert(name.clone(), Destination { name: name.clone(), config: client.clone(), address, link });
        }
        Ok(Some(Arc::new(Self { destinations, metrics })))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Destination> {
        self.destinations.get(name)
    }

    /// Destinations answered by `stubs` instead of a broker (for `sluice
    /// plugin test`): each one the file names allows requests and emits,
    /// with the default limits.
    pub fn stubbed(stubs: &stub::StubReplies) -> Result<Arc<Self>, OpenError> {
        let path: Arc<str> = Arc::from(stubs.path.as_str());
        let mut destinations = HashMap::new();
        for (name, rules) in &stubs.destinations {
            let error = |message: String| OpenError { destination: name.clone(), message };
            let table = format!("transport = \"nats\"\nsubject = {}\nallow = [\"request\", \"emit\"]\n", toml::Value::String(name.clone()));
            let config: ClientConfig = toml::from_str(&table).map_err(|e| error(e.to_string()))?;
            let link = Link::Stub(rules.clone(), path.clone());
            destinations.insert(name.clone(), Destination { name: name.clone(), config, address: name.clone(), link });
        }
        Ok(Arc::new(Self { destinations, metrics: Arc::default() }))
    }
}

/// A request, as the host sends it: the plugin's payload (before the
/// codec) and headers, plus the ones the host adds.
pub(crate) struct Outgoing {
    pub payload: Vec<u8>,
    pub headers: Vec<Header>,
    pub timeout: Duration,
}

impl Destination {
    /// Sends one request and waits for its answer, at most `timeout`.
    pub async fn request(&self, outgoing: Outgoing) -> Result<Reply, CallError> {
        match &self.link {
            Link::Nats(client) => nats::request(client, self, outgoing).await,
            Link::Kafka(requester) => requester.request(self, outgoing).await,
            Link::EmitOnly => {
                Err(CallError::NotAllowed(format!("destination `{}` allows emit only (add \"request\" to its `allow`)", self.name)))
            }
            Link::Stub(rules, path) => {
                let timeout_ms = u32::try_from(outgoing.timeout.as_millis()).unwrap_or(u32::MAX);
                stub::answer(rules, &outgoing.payload, timeout_ms, path)
            }
        }
    }

    /// The payload of an emit, in the destination's codec.
    pub fn emit_payload(&self, payload: &[u8]) -> Vec<u8> {
        match (self.config.codec, self.config.transport) {
            (Codec::Nestjs, Transport::Nats) => codec::event_packet(&self.config.pattern_json().unwrap_or_default(), payload),
            _ => payload.to_vec(),
        }
    }
}

/// A short, stable word for a call's outcome (metrics label, call log).
pub(crate) fn outcome(result: &Result<Reply, CallError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(CallError::UnknownDestination(_)) => "unknown-destination",
        Err(CallError::NotAllowed(_)) => "not-allowed",
        Err(CallError::Timeout(_)) => "timeout",
        Err(CallError::NoResponders) => "no-responders",
        Err(CallError::Service(_)) => "service-error",
        Err(CallError::TooManyCalls(_)) => "too-many-calls",
        Err(CallError::TooLarge(_)) => "too-large",
        Err(CallError::Unavailable(_)) => "unavailable",
    }
}

/// A call error as one line (the dead letter's call log).
pub(crate) fn describe(error: &CallError) -> String {
    match error {
        CallError::UnknownDestination(name) => format!("unknown destination `{name}`"),
        CallError::NotAllowed(why) => format!("not allowed: {why}"),
        CallError::Timeout(ms) => format!("no answer within {ms} ms"),
        CallError::NoResponders => "no responders".into(),
        CallError::Service(e) => match &e.code {
            Some(code) => format!("service error {code}: {}", e.message),
            None => format!("service error: {}", e.message),
        },
        CallError::TooManyCalls(max) => format!("more than {max} calls in one event"),
        CallError::TooLarge(max) => format!("payload larger than {max} bytes"),
        CallError::Unavailable(why) => format!("unavailable: {why}"),
    }
}

/// What one event's call may do with the pipeline's destinations: lent
/// with the event's scope ([`crate::runtime::EventScope::client`]).
pub struct ClientScope {
    /// The pipeline's destinations.
    pub clients: Arc<Clients>,
    /// The event's correlation id header (the pipeline's `correlation`),
    /// passed on with every request and emit.
    pub correlation: Option<Header>,
    /// The handler's deadline: no request waits past it.
    pub deadline: tokio::time::Instant,
    /// Calls made per destination by this attempt.
    counts: HashMap<String, u32>,
}

impl ClientScope {
    /// A scope for one event's call, with no calls made yet.
    pub fn new(clients: Arc<Clients>, correlation: Option<Header>, deadline: tokio::time::Instant) -> Self {
        Self { clients, correlation, deadline, counts: HashMap::new() }
    }

    /// Admits one more `what` call to `name` by this event with a payload
    /// of `bytes`: the destination exists, allows it, and neither its call
    /// count nor its payload limit is exceeded.
    pub fn admit(&mut self, name: &str, what: ClientUse, bytes: usize) -> Result<(), CallError> {
        let Some(destination) = self.clients.get(name) else {
            return Err(CallError::UnknownDestination(name.to_owned()));
        };
        let config = &destination.config;
        if !config.allows(what) {
            let (asked, other) = match what {
                ClientUse::Request => ("request", "emit"),
                ClientUse::Emit => ("emit", "request"),
            };
            return Err(CallError::NotAllowed(format!("destination `{name}` allows {other} only, not {asked} (see its `allow`)")));
        }
        let max_bytes = config.max_payload_bytes.as_u64();
        if bytes as u64 > max_bytes {
            return Err(CallError::TooLarge(u32::try_from(max_bytes).unwrap_or(u32::MAX)));
        }
        let count = self.counts.entry(name.to_owned()).or_default();
        if *count >= config.max_calls_per_event {
            return Err(CallError::TooManyCalls(config.max_calls_per_event));
        }
        *count += 1;
        Ok(())
    }
}
