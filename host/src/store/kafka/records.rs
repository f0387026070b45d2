//! The records of a Kafka plugin store and the state they add up to.
//!
//! The store topic (compacted) holds, by key:
//! - `pointer/<pipeline>`: a [`Pointer`] (JSON), written in a transaction;
//! - `version/<sha256>`: a [`Manifest`] (JSON): where the version's chunks
//!   are in the chunks topic, and the sha256 of each;
//! - `signature/<sha256>`: the signature line the version was pushed with;
//! - `host/<pipeline>/<host>`: a [`Heartbeat`] (JSON), or a tombstone
//!   when the host stopped cleanly;
//! - `sync/<nonce>`: a tombstone a reader writes and waits to read back,
//!   to know it has read everything written before ([`super`]).
//!
//! The chunks topic holds `<sha256>/<index>` → up to [`CHUNK_SIZE`] bytes
//! of the component. Compaction keeps the last record of each key, which
//! is the whole state: [`Index::apply`] folds records in log order.
//!
//! Names in keys have `%` and `/` escaped, so `host/a/b/c` is never
//! ambiguous.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{Heartbeat, Pointer, StoreError};

/// Bytes per chunk: half of Kafka's default 1 MB record limit
/// (`message.max.bytes`, broker and librdkafka), which leaves room for the
/// batch and record headers on clusters that kept the default.
pub const CHUNK_SIZE: usize = 512 * 1024;

/// Where one chunk of a version is, and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub partition: i32,
    pub offset: i64,
    pub size: usize,
    pub sha256: String,
}

/// A version: its digest, size and chunks, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub digest: String,
    pub size: usize,
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// The component from its chunks' bytes (in manifest order), each
    /// checked against its sha256, the whole against the digest.
    pub fn assemble(&self, chunks: Vec<Vec<u8>>) -> Result<Vec<u8>, StoreError> {
        let mut bytes = Vec::with_capacity(self.size);
        for (index, (reference, chunk)) in self.chunks.iter().zip(chunks).enumerate() {
            let actual = crate::runtime::plugin::digest_of(&chunk);
            if actual != reference.sha256 {
                return Err(StoreError::DamagedChunk {
                    digest: self.digest.clone(),
                    index,
                    count: self.chunks.len(),
                    size: chunk.len(),
                    actual,
                    expected: reference.sha256.clone(),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let actual = crate::runtime::plugin::digest_of(&bytes);
        if actual != self.digest {
            return Err(StoreError::Damaged { digest: self.digest.clone(), actual });
        }
        Ok(bytes)
    }
}

/// `%` and `/` of a name escaped, for a key part.
pub fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

pub fn pointer_key(pipeline: &str) -> String {
    format!("pointer/{}", escape(pipeline))
}

pub fn manifest_key(digest: &str) -> String {
    format!("version/{digest}")
}

pub fn signature_key(digest: &str) -> String {
    format!("signature/{digest}")
}

pub fn heartbeat_key(pipeline: &str, host: &str) -> String {
    format!("host/{}/{}", escape(pipeline), escape(host))
}

pub fn chunk_key(digest: &str, index: usize) -> String {
    format!("{digest}/{index}")
}

pub const SYNC_PREFIX: &str = "sync/";

/// What a record changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The pointer of this pipeline.
    Pointer(String),
    /// A reader's barrier (its nonce).
    Barrier(String),
    Other,
}

/// The store's state: the last record of each key, read.
#[derive(Debug, Default)]
pub struct Index {
    pointers: HashMap<String, Pointer>,
    manifests: HashMap<String, Manifest>,
    signatures: HashMap<String, String>,
    /// Key → the heartbeat and when it was written (record timestamp, ms).
    beats: HashMap<String, (Heartbeat, i64)>,
}

impl Index {
    /// Folds one record in (`value` `None`: a tombstone). A record this
    /// version cannot read is logged and skipped: one bad record must not
    /// stop a host from following the store.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>, timestamp_ms: i64) -> Applied {
        fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
            serde_json::from_slice(value)
                .map_err(|e| tracing::warn!("record {key} of the plugin store is not readable (skipped): {e}"))
                .ok()
        }
        if let Some(nonce) = key.strip_prefix(SYNC_PREFIX) {
            return Applied::Barrier(nonce.to_owned());
        }
        let Some((kind, rest)) = key.split_once('/') else { return Applied::Other };
        let owned = rest.to_owned();
        match (kind, value) {
            ("pointer", Some(value)) => {
                let Some(pointer) = parse::<Pointer>(key, value) else { return Applied::Other };
                let pipeline = unescape(rest);
                self.pointers.insert(pipeline.clone(), pointer);
                Applied::Pointer(pipeline)
            }
            ("pointer", None) => {
                let pipeline = unescape(rest);
                self.pointers.remove(&pipeline);
                Applied::Pointer(pipeline)
            }
            ("version", Some(value)) => {
                if let Some(manifest) = parse::<Manifest>(key, value) {
                    self.manifests.insert(owned, manifest);
                }
                Applied::Other
            }
            ("signature", Some(value)) => {
                self.signatures.insert(owned, String::from_utf8_lossy(value).trim().to_owned());
                Applied::Other
            }
            ("host", Some(value)) => {
                if let Some(beat) = parse::<Heartbeat>(key, value) {
                    self.beats.insert(owned, (beat, timestamp_ms));
                }
                Applied::Other
            }
            ("version", None) => {
                self.manifests.remove(&owned);
                Applied::Other
            }
            ("signature", None) => {
                self.signatures.remove(&owned);
                Applied::Other
            }
            ("host", None) => {
                self.beats.remove(&owned);
                Applied::Other
            }
            _ => Applied::Other,
        }
    }

    pub fn pointer(&self, pipeline: &str) -> Option<Pointer> {
        self.pointers.get(pipeline).cloned()
    }

    pub fn manifest(&self, digest: &str) -> Option<Manifest> {
        self.manifests.get(digest).cloned()
    }

    pub fn signature(&self, digest: &str) -> Option<String> {
        self.signatures.get(digest).cloned()
    }

    /// The heartbeats written less than `ttl` before `now_ms`.
    pub fn heartbeats(&self, now_ms: i64, ttl: Duration) -> Vec<Heartbeat> {
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.beats.values().filter(|(_, at)| now_ms.saturating_sub(*at) < ttl).map(|(beat, _)| beat.clone()).collect()
    }
}

fn unescape(part: &str) -> String {
    part.replace("%2F", "/").replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(digest: &str) -> Vec<u8> {
        let pointer = Pointer { digest: digest.into(), history: Vec::new(), at: "now".into(), by: "push".into(), candidate: None };
        serde_json::to_vec(&pointer).unwrap_or_default()
    }

    fn beat(host: &str) -> Vec<u8> {
        let beat = Heartbeat {
            host: host.into(),
            pipeline: "a/b".into(),
            digest: "d".into(),
            refused: None,
            candidate: None,
            candidate_refused: None,
            at: "now".into(),
        };
        serde_json::to_vec(&beat).unwrap_or_default()
    }

    #[test]
    fn the_last_record_of_a_key_is_its_state() {
        let mut index = Index::default();
        assert_eq!(index.apply(&pointer_key("a/b"), Some(&pointer("x")), 0), Applied::Pointer("a/b".into()));
        index.apply(&pointer_key("a/b"), Some(&pointer("y")), 0);
        assert_eq!(index.pointer("a/b").map(|p| p.digest).as_deref(), Some("y"));
        assert_eq!(index.apply("sync/n1", None, 0), Applied::Barrier("n1".into()));
        index.apply(&signature_key("y"), Some(b"sig line\n"), 0);
        assert_eq!(index.signature("y").as_deref(), Some("sig line"));
        // A record that does not parse leaves the state as it was.
        index.apply(&pointer_key("a/b"), Some(b"{"), 0);
        assert_eq!(index.pointer("a/b").map(|p| p.digest).as_deref(), Some("y"));
    }

    #[test]
    fn heartbeats_expire_and_a_tombstone_removes_one_at_once() {
        let mut index = Index::default();
        let ttl = Duration::from_secs(15);
        index.apply(&heartbeat_key("a/b", "h1"), Some(&beat("h1")), 1_000);
        index.apply(&heartbeat_key("a/b", "h2"), Some(&beat("h2")), 10_000);
        assert_eq!(index.heartbeats(12_000, ttl).len(), 2);
        assert_eq!(index.heartbeats(20_000, ttl).len(), 1, "h1 is older than the TTL");
        index.apply(&heartbeat_key("a/b", "h2"), None, 11_000);
        assert!(index.heartbeats(12_000, ttl).iter().all(|b| b.host != "h2"), "h2 left");
    }

    #[test]
    fn names_with_slashes_do_not_collide() {
        assert_ne!(heartbeat_key("a/b", "c"), heartbeat_key("a", "b/c"));
        assert_eq!(unescape(&escape("50%/x")), "50%/x");
    }

    #[test]
    fn a_damaged_chunk_is_named() {
        let (one, two) = (vec![1u8; 10], vec![2u8; 5]);
        let whole: Vec<u8> = one.iter().chain(&two).copied().collect();
        let chunk =
            |bytes: &[u8], offset| ChunkRef { partition: 0, offset, size: bytes.len(), sha256: crate::runtime::plugin::digest_of(bytes) };
        let manifest =
            Manifest { digest: crate::runtime::plugin::digest_of(&whole), size: 15, chunks: vec![chunk(&one, 0), chunk(&two, 1)] };
        assert_eq!(manifest.assemble(vec![one.clone(), two.clone()]).ok(), Some(whole));
        let err = manifest.assemble(vec![one, vec![3u8; 5]]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("chunk 1 of 2") && err.contains("is damaged"), "{err}");
    }
}
