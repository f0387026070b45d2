//! `[pipelines.<name>.state]`: the pipeline's key/value state for its
//! plugin (the `state` capability), and where it is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::SourceConfig;
use crate::source::kafka::KafkaSourceConfig;
use crate::source::lines::FileSourceConfig;

/// Where state is kept. See docs/configuration.md#state for what survives
/// what with each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StateBackend {
    /// A local database file (redb), committed with the source's position:
    /// file and stdin sources, and NATS/JetStream on a single host.
    #[default]
    Embedded,
    /// In memory: lost when the process stops. For tests and demos.
    Memory,
    /// A NATS JetStream KV bucket: state lives with the broker, so the
    /// pipeline can move to another host. NATS and JetStream sources only.
    JetstreamKv,
    /// A compacted Kafka topic written in the exactly-once transaction, with
    /// a local cache restored on partition assignment (the Kafka Streams
    /// model). Kafka sources with `exactly_once = true` only.
    KafkaChangelog,
}

/// The `state` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Where state is kept. Default `embedded`.
    #[serde(default)]
    pub backend: StateBackend,
    /// `embedded`: the database file (created if missing; its folder must
    /// exist). Several pipelines may share one file: each has its own
    /// tables. Relative paths are relative to the config file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `jetstream-kv`: the bucket, created if missing (history 1). Default
    /// `sluice-state-<pipeline>` (characters other than `[A-Za-z0-9_-]`
    /// become `_`). Applied markers go to a second bucket, `<bucket>-applied`.
    #[serde(default)]
    pub bucket: Option<String>,
    /// `jetstream-kv`: the NATS server(s), comma-separated. Default: the
    /// source's `url`. The source's login and TLS keys are used either way.
    #[serde(default)]
    pub url: Option<String>,
    /// `kafka-changelog`: the changelog topic, created compacted if missing
    /// with as many partitions as the largest input topic. Default
    /// `sluice-<pipeline>-state-changelog` (characters Kafka refuses in a
    /// topic name become `_`).
    #[serde(default)]
    pub topic: Option<String>,
    /// `kafka-changelog`: how long restoring the assigned partitions' state
    /// may take, including waiting for the broker to end a killed host's
    /// open transaction (`transaction.timeout.ms`). Default 2 min.
    #[serde(default = "default_restore_timeout", with = "humantime_serde")]
    pub restore_timeout: Duration,
    /// How long an event stays recognised as applied, so its redelivery is
    /// acknowledged without running it again. Must exceed the longest time
    /// the source may take to redeliver (JetStream: `ack_wait` times the
    /// deliveries). Default 24 h. `embedded` prunes markers older than this;
    /// `jetstream-kv` sets it as the markers bucket's `max_age` when it
    /// creates the bucket (an existing bucket keeps its own).
    #[serde(default = "default_marker_retention", with = "humantime_serde")]
    pub marker_retention: Duration,
    /// Longest key, in bytes. Default 1 KiB.
    #[serde(default = "default_max_key")]
    pub max_key_bytes: ByteSize,
    /// Largest value, in bytes. Default 1 MiB.
    #[serde(default = "default_max_value")]
    pub max_value_bytes: ByteSize,
    /// Writes (set, delete, increment) one event may make. Default 1000.
    #[serde(default = "default_max_writes")]
    pub max_writes: usize,
    /// `embedded`: the longest a commit stays without fsync. Default 200 ms
    /// with a file or stdin source (whose position is committed in the same
    /// transaction, so a crash rolls state and position back together and
    /// the file is re-read from there), `0s` (fsync every commit) with any
    /// other source, which may not set it: its acknowledgement leaves the
    /// host, and state lost after it would be lost for good.
    #[serde(default, with = "humantime_serde")]
    pub sync_interval: Option<Duration>,
}

/// How long the embedded backend may leave commits unsynced by default,
/// when the position is committed with the state: a crash costs re-reading
/// at most this much of the file, and an fsync per 200 ms instead of per
/// commit takes the embedded backend from ~28 µs to a few µs per event.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// A day: far longer than any broker's redelivery delay.
fn default_marker_retention() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}
fn default_restore_timeout() -> Duration {
    crate::state::kafka_changelog::DEFAULT_RESTORE_TIMEOUT
}
fn default_max_key() -> ByteSize {
    ByteSize::kib(1)
}
fn default_max_value() -> ByteSize {
    ByteSize::mib(1)
}
fn default_max_writes() -> usize {
    1000
}

impl StateConfig {
    /// The embedded backend's fsync interval for this source (zero: every
    /// commit).
    pub fn sync_interval(&self, source: &SourceConfig) -> Duration {
        match (self.sync_interval, source) {
            (Some(interval), _) => interval,
            (None, SourceConfig::File(_) | SourceConfig::Stdin(_)) => DEFAULT_SYNC_INTERVAL,
            (None, _) => Duration::ZERO,
        }
    }

    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = self.path.as_mut().filter(|p| p.is_relative()) {
            *path = base.join(&*path);
        }
    }

    /// The cross-field rules: what the backend needs, and whether it fits
    /// the source. Each rule broken is pushed to `out` as `(key, message)`.
    pub(super) fn validate(&self, source: &SourceConfig, out: &mut Vec<(&'static str, String)>) {
        match self.backend {
            StateBackend::Embedded => {
                if self.path.is_none() {
                    out.push((
                        "state.path",
                        "missing: the embedded backend keeps state in a database file, e.g. `path = \"state.redb\"`".into(),
                    ));
                }
                if matches!(source, SourceConfig::Kafka(_)) {
                    out.push((
                        "state.backend",
                        "`embedded` keeps state on this host only, but a Kafka consumer group moves partitions between hosts on a rebalance, and the host that takes a partition would not have its state; use `backend = \"kafka-changelog\"` (with `exactly_once = true`)".into(),
                    ));
                }
                if let SourceConfig::File(FileSourceConfig { checkpoint: Some(_), .. }) = source {
                    out.push((
                        "source.checkpoint",
                        "a file source of a pipeline with embedded state keeps its position in the state database, committed with the state (so the two never disagree after a crash): remove `checkpoint`".into(),
                    ));
                }
                if self.sync_interval.is_some_and(|i| !i.is_zero()) && !matches!(source, SourceConfig::File(_) | SourceConfig::Stdin(_)) {
                    out.push((
                        "state.sync_interval",
                        "only a file or stdin source may defer the fsync: this source's acknowledgement leaves the host once a commit returns, and state lost in a crash after that would be lost for good; remove `sync_interval` (or set it to \"0s\")".into(),
                    ));
                }
            }
            StateBackend::Memory => {
                if self.path.is_some() {
                    out.push((
                        "state.path",
                        "the memory backend keeps nothing on disk: remove `path`, or use `backend = \"embedded\"`".into(),
                    ));
                }
            }
            StateBackend::JetstreamKv => {
                if self.path.is_some() {
                    out.push((
                        "state.path",
                        "the jetstream-kv backend keeps state in a KV bucket, not a file: remove `path` (name the bucket with `bucket`)"
                            .into(),
                    ));
                }
                if !matches!(source, SourceConfig::Nats(_) | SourceConfig::Jetstream(_)) {
                    let kind = match source {
                        SourceConfig::Kafka(_) => "a Kafka source: a consumer group moves partitions between hosts, and this backend's commits assume one writer per pipeline; use `backend = \"kafka-changelog\"`",
                        _ => "a file or stdin source: its position belongs with the file, use `backend = \"embedded\"`",
                    };
                    out.push(("state.backend", format!("`jetstream-kv` works with `nats` and `jetstream` sources only, not {kind}")));
                }
                if let Some(bucket) = &self.bucket {
                    if !crate::state::jetstream_kv::valid_bucket(bucket) {
                        out.push(("state.bucket", format!("{bucket:?} is not a valid KV bucket name: letters, digits, `_` and `-` only")));
                    }
                }
                if self.marker_retention.is_zero() {
                    out.push(("state.marker_retention", "must be greater than zero".into()));
                }
            }
            StateBackend::KafkaChangelog => {
                if self.path.is_some() {
                    out.push((
                        "state.path",
                        "the kafka-changelog backend keeps state in a Kafka topic, not a file: remove `path` (name the topic with `topic`)"
                            .into(),
                    ));
                }
                match source {
                    SourceConfig::Kafka(KafkaSourceConfig { exactly_once: false, .. }) => out.push((
                        "state.backend",
                        "`kafka-changelog` needs `exactly_once = true` on the Kafka source: without a transaction, state and offsets commit separately and a crash between them would apply an event's state changes twice".into(),
                    )),
                    SourceConfig::Kafka(KafkaSourceConfig { pattern: Some(_), .. }) => out.push((
                        "state.backend",
                        "`kafka-changelog` needs the source's `topics`, not a `pattern`: the changelog has one partition per input partition, fixed when it is created".into(),
                    )),
                    SourceConfig::Kafka(_) => {}
                    _ => out.push((
                        "state.backend",
                        "`kafka-changelog` works with a `kafka` source only: its changelog partitions follow the input partitions, and its commits ride on the source's Kafka transaction".into(),
                    )),
                }
                if let Some(topic) = self.topic.as_deref().filter(|t| !super::valid_topic(t)) {
                    out.push((
                        "state.topic",
                        format!("{topic:?} is not a valid Kafka topic name (1 to 249 characters of a-z, A-Z, 0-9, `.`, `_`, `-`)"),
                    ));
                }
                if self.restore_timeout.is_zero() {
                    out.push(("state.restore_timeout", "must be greater than zero".into()));
                }
            }
        }
        if self.backend != StateBackend::KafkaChangelog && self.topic.is_some() {
            out.push(("state.topic", "`topic` is for `backend = \"kafka-changelog\"`".into()));
        }
        if self.backend != StateBackend::Embedded && self.sync_interval.is_some() {
            out.push(("state.sync_interval", "`sync_interval` is for `backend = \"embedded\"`".into()));
        }
        if self.backend != StateBackend::JetstreamKv && (self.bucket.is_some() || self.url.is_some()) {
            out.push(("state.bucket", "`bucket` and `url` are for `backend = \"jetstream-kv\"`".into()));
        }
        if self.max_key_bytes.as_u64() == 0 || self.max_value_bytes.as_u64() == 0 || self.max_writes == 0 {
            out.push(("state", "max_key_bytes, max_value_bytes and max_writes must be greater than zero".into()));
        }
    }
}
