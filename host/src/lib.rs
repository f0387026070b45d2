//! Sluice: a WebAssembly-plugin event stream processor.
//!
//! The modules follow the path of one event through the host:
//!
//! 1. [`config`]: the TOML file, strict and typed, with `${ENV}` interpolation.
//!    It describes pipelines; each pipeline is one source, one plugin, sinks and
//!    a policy.
//! 2. [`source`]: where events come from (a file, stdin, core NATS, JetStream).
//!    A source yields [`source::Delivery`]s: an [`event::Event`] plus an
//!    acknowledgement handle that is settled only once the event is done.
//!    A pipeline with a `codec` wraps its source to decode the wire format
//!    ([`codec::decoding`]); replies are encoded back by `codec::reply`.
//! 3. [`dispatch`]: the pipeline driver. It refuses inputs over the
//!    header caps (`dispatch::limits`) as it takes them, assigns deliveries
//!    to ordered lanes, calls the plugin through [`runtime`], applies the retry
//!    policy ([`dispatch::RetryPolicy`]), routes outputs to sinks and
//!    dead-letters what fails.
//!    Before the call, [`schema`] checks an event against its JSON Schema
//!    (chosen by its type and version headers) and against the versions the
//!    plugin accepts; after it, each output against its schema.
//! 4. [`runtime`]: wasmtime. One engine per process, compiled components
//!    cached, instances with memory caps, epoch deadlines and denied-by-default
//!    WASI. A trap fails one call and the instance is replaced. What a
//!    plugin may reach outside itself (state, outbound HTTP to allowed
//!    hosts) is granted per pipeline and checked at load.
//! 5. [`sink`]: where outputs and dead-letter records go (stdout, a file,
//!    core NATS, JetStream). A sink reports when a record is durably accepted,
//!    and only then is the source acknowledged.
//!
//! [`pipeline`] assembles one pipeline from its config and [`supervisor`]
//! runs many of them in one process, isolated from each other, until they end
//! or a shutdown signal drains them; one that fails is started again by its
//! restart policy (`supervisor::restart`). [`codec`] holds the JSON-lines encoding
//! shared by the file and stdio sources and sinks and the NestJS wire
//! format at the pipeline's edges, `fs` the atomic file
//! write used by checkpoints and the compiled-component cache, [`nats`] the
//! connections and header mapping NATS sources and sinks share, [`kafka`]
//! the client settings, message mapping and transactions of Kafka's.
//! [`replay`] reads dead-letter records back into the events they were and
//! sends them to a source again, for `sluice dlq replay` and the admin API's
//! dead-letters routes. `telemetry` exports a span per event, and one per
//! outbound call of its plugin, to OpenTelemetry when `[tracing]` asks for it.
//! [`state`] holds plugin state per pipeline, made durable with its events.
//! `rollout` tries a candidate version beside the current one (shadow or
//! canary) and decides when it is promoted or rolled back.
//! [`store`] is the fleet's plugin store (`[plugins.store]`): versions pushed
//! to the broker once, followed by every host running the pipeline.
//! [`client`] opens the services a plugin may call (`sluice:plugin/client`)
//! and makes its requests.
//! [`time`] is how times are written everywhere (RFC 3339, UTC, ms).
//! `tap` captures a sampled live view of a pipeline's inputs, outputs
//! and dead letters for `sluice tap`.
//! [`service`] tells systemd (`Type=notify`) when the host is ready,
//! reloading or stopping, and pings its watchdog.
//!
//! # The public surface
//!
//! What the `sluice` binary, the benches and the integration tests use, and
//! what an embedder needs to run pipelines of its own: loading a config
//! ([`config::load`]), running it ([`supervisor::run`]), loading and
//! checking a plugin ([`runtime::Runtime`], [`pipeline::load_plugin`]), and
//! the parts a pipeline is made of ([`source::Source`], [`sink::Sink`],
//! [`dispatch::Dispatcher`], [`state::Store`]) for benches and tests that
//! assemble one by hand. Everything else (the admin API, metrics, hot
//! reload, rollout, the tap, telemetry, the file helpers) is the host's own
//! and private to the crate: it changes without notice.

#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod config;
pub mod dispatch;
pub mod event;
pub mod kafka;
pub mod nats;
pub mod pipeline;
pub mod replay;
pub mod runtime;
pub mod schema;
pub mod service;
pub mod sink;
pub mod source;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod time;

pub(crate) mod admin;
pub(crate) mod fs;
pub(crate) mod metrics;
pub(crate) mod reload;
pub(crate) mod rollout;
pub(crate) mod tap;
pub(crate) mod telemetry;
