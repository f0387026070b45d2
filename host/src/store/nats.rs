//! The JetStream backend of the plugin store.
//!
//! - Object store bucket `<bucket>` (default `sluice-plugins`): object
//!   `<sha256>.wasm` is a version; its signature line, when it was pushed
//!   with one, is object `<sha256>.sig` beside it.
//! - KV bucket `<bucket>-current`: key `<pipeline>` holds the pointer (JSON
//!   [`Pointer`]); updates are compare-and-set on the key's revision.
//! - KV bucket `<bucket>-hosts`, entries expiring after [`HEARTBEAT_TTL`]:
//!   key `<pipeline>.<host>` holds a [`Heartbeat`] (JSON).
//!
//! Pipeline and host names become key tokens with [`super::key_token`].

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

use super::{key_token, Heartbeat, PluginStore, Pointer, StoreConfig, StoreError, StoredVersion};

pub use super::HEARTBEAT_TTL;

pub struct NatsStore {
    objects: object_store::ObjectStore,
    current: kv::Store,
    hosts: kv::Store,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl NatsStore {
    /// Opens (creating if missing) the three buckets.
    pub async fn open(config: &StoreConfig, connections: &crate::nats::Connections) -> Result<Self, StoreError> {
        let client = connections.get(&config.nats_server()).await.map_err(unavailable)?;
        let js = jetstream::new(client);
        let bucket = &config.bucket;
        let objects = match js.get_object_store(bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config { bucket: bucket.clone(), ..Default::default() })
                .await
                .map_err(|e| unavailable(format!("object store bucket {bucket}: {e}")))?,
        };
        let current = key_value(&js, format!("{bucket}-current"), Duration::ZERO).await?;
        let hosts = key_value(&js, format!("{bucket}-hosts"), HEARTBEAT_TTL).await?;
        Ok(Self { objects, current, hosts })
    }

    async fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut object = match self.objects.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unavailable(format!("object {name}: {e}"))),
        };
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(|e| unavailable(format!("object {name}: {e}")))?;
        Ok(Some(bytes))
    }
}

/// A KV bucket, created if missing ([`crate::nats::key_value_bucket`]).
async fn key_value(js: &jetstream::Context, bucket: String, max_age: Duration) -> Result<kv::Store, StoreError> {
    crate::nats::key_value_bucket(js, &bucket, max_age).await.map_err(unavailable)
}

fn pointer_of(entry: &kv::Entry) -> Result<Option<Pointer>, StoreError> {
    match entry.operation {
        kv::Operation::Put => {
            serde_json::from_slice(&entry.value).map(Some).map_err(|e| StoreError::Malformed(format!("pointer {}: {e}", entry.key)))
        }
        kv::Operation::Delete | kv::Operation::Purge => Ok(None),
    }
}

#[async_trait::async_trait]
impl PluginStore for NatsStore {
    async fn put(&self, bytes: &[u8], signature: Option<&str>) -> Result<String, StoreError> {
        let digest = crate::runtime::plugin::digest_of(bytes);
        let wasm = format!("{digest}.wasm");
        let stored = match self.objects.info(&wasm).await {
            Ok(info) => info.size == bytes.len(),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => false,
            Err(e) => return Err(unavailable(format!("object {wasm}: {e}"))),
        };
        if !stored {
            self.objects.put(wasm.as_str(), &mut &bytes[..]).await.map_err(|e| unavailable(format!("object {wasm}: {e}")))?;
        }
        if let Some(signature) = signature {
            let sig = format!("{digest}.sig");
            let line = signature.trim().as_bytes();
            self.objects.put(sig.as_str(), &mut &line[..]).await.map_err(|e| unavailable(format!("object {sig}: {e}")))?;
        }
        Ok(digest)
    }

    async fn get(&self, digest: &str) -> Result<StoredVersion, StoreError> {
        let bytes = self.read(&format!("{digest}.wasm")).await?.ok_or_else(|| StoreError::NoVersion(digest.to_owned()))?;
        let actual = crate::runtime::plugin::digest_of(&bytes);
        if actual != digest {
            return Err(StoreError::Damaged { digest: digest.to_owned(), actual });
        }
        let signature = self.read(&format!("{digest}.sig")).await?.map(|line| String::from_utf8_lossy(&line).trim().to_owned());
        Ok(StoredVersion { digest: digest.to_owned(), bytes, signature })
    }

    async fn pointer(&self, pipeline: &str) -> Result<Option<Pointer>, StoreError> {
        match self.current.entry(key_token(pipeline)).await.map_err(unavailable)? {
            Some(entry) => pointer_of(&entry),
            None => Ok(None),
        }
    }

    async fn update_pointer(
        &self,
        pipeline: &str,
        change: &(dyn Fn(Option<Pointer>) -> Result<Pointer, StoreError> + Send + Sync),
    ) -> Result<Pointer, StoreError> {
        let key = key_token(pipeline);
        let entry = self.current.entry(key.as_str()).await.map_err(unavailable)?;
        let (current, revision) = match &entry {
            Some(entry) => (pointer_of(entry)?, Some(entry.revision)),
            None => (None, None),
        };
        let unchanged = current.clone();
        let next = change(current)?;
        if Some(&next) == unchanged.as_ref() {
            return Ok(next);
        }
        let value = serde_json::to_vec(&next).map_err(|e| StoreError::Malformed(e.to_string()))?;
        let conflict = || StoreError::Conflict(pipeline.to_owned());
        match revision {
            Some(revision) => match self.current.update(key.as_str(), value.into(), revision).await {
                Ok(_) => Ok(next),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(conflict()),
                Err(e) => Err(unavailable(e)),
            },
            None => match self.current.create(key.as_str(), value.into()).await {
                Ok(_) => Ok(next),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(conflict()),
                Err(e) => Err(unavailable(e)),
            },
        }
    }

    async fn watch(&self, pipeline: &str) -> Result<futures::stream::BoxStream<'static, Result<Pointer, StoreError>>, StoreError> {
        let watch = self.current.watch_with_history(key_token(pipeline)).await.map_err(unavailable)?;
        let pointers = watch.map_err(unavailable).try_filter_map(|entry| async move { pointer_of(&entry) });
        Ok(pointers.boxed())
    }

    async fn beat(&self, heartbeat: &Heartbeat) -> Result<(), StoreError> {
        let key = format!("{}.{}", key_token(&heartbeat.pipeline), key_token(&heartbeat.host));
        let value = serde_json::to_vec(heartbeat).map_err(|e| StoreError::Malformed(e.to_string()))?;
        self.hosts.put(key, value.into()).await.map_err(unavailable)?;
        Ok(())
    }

    async fn leave(&self, pipeline: &str, host: &str) -> Result<(), StoreError> {
        let key = format!("{}.{}", key_token(pipeline), key_token(host));
        self.hosts.delete(key).await.map_err(unavailable)?;
        Ok(())
    }

    async fn heartbeats(&self) -> Result<Vec<Heartbeat>, StoreError> {
        let keys: Vec<String> = self.hosts.keys().await.map_err(unavailable)?.try_collect().await.map_err(unavailable)?;
        let mut beats = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.hosts.get(key.as_str()).await.map_err(unavailable)? {
                match serde_json::from_slice::<Heartbeat>(&value) {
                    Ok(beat) => beats.push(beat),
                    Err(e) => tracing::warn!("heartbeat {key} in the plugin store is not readable: {e}"),
                }
            }
        }
        Ok(beats)
    }
}
