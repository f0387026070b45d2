//! Which plugin version a pipeline runs now. Hot reload swaps it; each lane
//! looks at it between batches, so a swap never splits a batch (or an
//! event's retries in place) between two versions, and a lane's order is
//! kept across it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::HandlerFactory;

/// One loaded version.
pub struct Version {
    /// Increases with every swap (rollbacks included), so a lane can tell
    /// "the same version" from "a new load of the same file".
    pub generation: u64,
    /// Makes the handlers (plugin instances) lanes call.
    pub factory: Arc<dyn HandlerFactory>,
    /// The factory's digest, shared once per version: every output carries
    /// it, and a factory's `digest_arc` may allocate on each call.
    pub digest: Arc<str>,
}

impl Version {
    fn new(generation: u64, factory: Arc<dyn HandlerFactory>) -> Self {
        let digest = factory.digest_arc();
        Self { generation, factory, digest }
    }
}

/// The plugin version a pipeline's lanes use: swapped whole by hot reload
/// and rollout, read by each lane before each batch.
pub struct PluginSlot {
    current: ArcSwap<Version>,
    generations: AtomicU64,
}

impl PluginSlot {
    /// A slot holding `factory` as generation 1.
    pub fn new(factory: Arc<dyn HandlerFactory>) -> Self {
        Self { current: ArcSwap::from_pointee(Version::new(1, factory)), generations: AtomicU64::new(1) }
    }

    /// The version to use for the next batch.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// The generation of the current version, without taking a reference.
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Makes `factory` the current version; returns the generation it got.
    pub fn swap(&self, factory: Arc<dyn HandlerFactory>) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::AcqRel) + 1;
        self.current.store(Arc::new(Version::new(generation, factory)));
        generation
    }
}
