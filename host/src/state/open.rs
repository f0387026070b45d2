//! Opening a pipeline's state from its `[pipelines.<name>.state]` table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::embedded::{EmbeddedDb, EmbeddedOptions};
use super::jetstream_kv::{default_bucket, KvBackend, KvOptions};
use super::kafka_changelog::{default_topic, ChangelogBackend, ChangelogOptions};
use super::memory::MemoryBackend;
use super::{Backend, Limits, StateError, Store};
use crate::config::{NatsServer, SourceConfig, StateBackend, StateConfig};
use crate::kafka::transaction::Transaction;
use crate::nats::Connections;
use crate::source::kafka::PartitionState;

/// The pipeline's state store, its backend opened. `source` and
/// `connections` are for `jetstream-kv`, which connects to the source's
/// server (or `state.url` with the source's login) over the shared
/// connection.
pub async fn open(
    pipeline: &str,
    config: &StateConfig,
    source: &SourceConfig,
    connections: &Connections,
) -> Result<Arc<Store>, StateError> {
    Ok(open_for_pipeline(pipeline, config, source, connections, None).await?.store)
}

/// An opened state, and what the source must tell of partition changes
/// (`kafka-changelog`).
pub struct Opened {
    /// The pipeline's state.
    pub store: Arc<Store>,
    /// For the Kafka source: told of assignments and revokes, so each
    /// partition's state is restored before its events are handled.
    pub partition_state: Option<Arc<dyn PartitionState>>,
}

/// [`open`], with the pipeline's exactly-once Kafka transaction, which the
/// `kafka-changelog` backend writes into.
pub async fn open_for_pipeline(
    pipeline: &str,
    config: &StateConfig,
    source: &SourceConfig,
    connections: &Connections,
    transaction: Option<&Arc<Transaction>>,
) -> Result<Opened, StateError> {
    let mut partition_state: Option<Arc<dyn PartitionState>> = None;
    let limits = Limits {
        max_key_bytes: config.max_key_bytes.as_u64() as usize,
        max_value_bytes: config.max_value_bytes.as_u64() as usize,
        max_writes_per_event: config.max_writes,
        ..Limits::default()
    };
    let backend: Arc<dyn Backend> = match (config.backend, &config.path) {
        (StateBackend::Memory, _) => Arc::new(MemoryBackend::new()),
        (StateBackend::Embedded, Some(path)) => Arc::new(database(path).await?.backend(
            pipeline,
            EmbeddedOptions {
                marker_retention: config.marker_retention,
                sync_interval: config.sync_interval(source),
                ..EmbeddedOptions::default()
            },
        )),
        (StateBackend::JetstreamKv, _) => {
            let Some(mut server) = source.nats_server() else {
                return Err(StateError::Unavailable("the jetstream-kv backend needs a NATS or JetStream source".into()));
            };
            if let Some(url) = &config.url {
                server = NatsServer { url: url.clone(), ..server };
            }
            let client = connections.get(&server).await.map_err(|e| StateError::Unavailable(e.to_string()))?;
            let options = KvOptions {
                marker_retention: config.marker_retention,
                ..KvOptions::new(config.bucket.clone().unwrap_or_else(|| default_bucket(pipeline)))
            };
            Arc::new(KvBackend::open(client, &options).await?)
        }
        (StateBackend::Embedded, None) => return Err(StateError::Unavailable("the embedded backend needs `state.path`".into())),
        (StateBackend::KafkaChangelog, _) => {
            let (SourceConfig::Kafka(kafka), Some(transaction)) = (source, transaction) else {
                return Err(StateError::Unavailable("the kafka-changelog backend needs an exactly-once Kafka source".into()));
            };
            let options = ChangelogOptions {
                topic: config.topic.clone().unwrap_or_else(|| default_topic(pipeline)),
                // The source's connection settings (TLS, SASL), for the
                // restore consumer and the topic admin.
                client: crate::kafka::client_config(&kafka.brokers, &kafka.connection_options()),
                input_topics: kafka.topics.clone(),
                restore_timeout: config.restore_timeout,
            };
            let backend = Arc::new(ChangelogBackend::open(transaction.clone(), options).await?);
            partition_state = Some(backend.clone());
            backend
        }
    };
    Ok(Opened { store: Store::new(backend, limits), partition_state })
}

/// The process's handle on a database file: redb opens a file once per
/// process, and pipelines (and a pipeline restarted by a config reload)
/// share it. Kept open for the life of the process.
async fn database(path: &Path) -> Result<EmbeddedDb, StateError> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, EmbeddedDb>>> = OnceLock::new();
    let key = canonical(path);
    let open = OPEN.get_or_init(Mutex::default);
    if let Some(db) = open.lock().ok().and_then(|dbs| dbs.get(&key).cloned()) {
        return Ok(db);
    }
    let db = EmbeddedDb::open(path.to_path_buf()).await?;
    let mut dbs = open.lock().map_err(|_| StateError::Unavailable("the state database registry is poisoned".into()))?;
    // Another pipeline may have opened it meanwhile: keep the first.
    Ok(dbs.entry(key).or_insert(db).clone())
}

/// The same file under any spelling (`..`, symlinks), once it exists.
fn canonical(path: &Path) -> PathBuf {
    match (path.parent().and_then(|dir| dir.canonicalize().ok()), path.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}
