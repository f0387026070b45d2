//! Which version of the contract a plugin targets, and calling its exports
//! whatever the version. A plugin built against the frozen
//! `sluice:plugin@0.1.0` runs unchanged beside 0.2.0 ones: both map onto
//! the same event and output types (see [`super::bindings`]).

use wasmtime::component::{Component, ComponentExportIndex, Func, Instance as Raw, InstancePre};
use wasmtime::Store;

use super::bindings::{self, v0_1};
use super::instance::{HandleResult, PluginState};
use super::packed;
use crate::event::Event;

/// The package version a plugin was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `sluice:plugin@0.2.0`, the current world.
    V0_2,
    /// `sluice:plugin@0.1.0`, frozen, still run.
    V0_1,
}

impl Target {
    /// The package name and version, as the WIT spells it.
    pub fn package(self) -> &'static str {
        match self {
            Target::V0_2 => "sluice:plugin@0.2.0",
            Target::V0_1 => "sluice:plugin@0.1.0",
        }
    }

    /// The instance name of one of the package's interfaces.
    pub fn interface(self, name: &str) -> String {
        match self {
            Target::V0_2 => format!("sluice:plugin/{name}@0.2.0"),
            Target::V0_1 => format!("sluice:plugin/{name}@0.1.0"),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.package())
    }
}

/// A component linked and checked against its world, ready to instantiate.
pub(super) enum Pre {
    /// With `packed-handler.handle-packed`, when the plugin exports it.
    V0_2(bindings::PluginPre<PluginState>, Option<ComponentExportIndex>),
    V0_1(v0_1::PluginPre<PluginState>),
}

impl Pre {
    /// Finds the version the component's exports implement: 0.2.0 first.
    /// The error is the current version's, which is the one to build for.
    pub fn new(component: &Component, instance_pre: InstancePre<PluginState>) -> Result<Self, wasmtime::Error> {
        match bindings::PluginPre::new(instance_pre.clone()) {
            Ok(pre) => Ok(Pre::V0_2(pre, packed::find(component, Target::V0_2))),
            Err(current) => v0_1::PluginPre::new(instance_pre).map(Pre::V0_1).map_err(|_| current),
        }
    }

    pub fn target(&self) -> Target {
        match self {
            Pre::V0_2(..) => Target::V0_2,
            Pre::V0_1(_) => Target::V0_1,
        }
    }

    /// A new instance, through the export indices resolved once.
    pub async fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            // `handle-packed` is not in the bindings: it needs the raw instance.
            Pre::V0_2(_, Some(_)) => self.instantiate_raw(store).await?.0,
            Pre::V0_2(pre, None) => Bindings::V0_2(pre.instantiate_async(store).await?, None),
            Pre::V0_1(pre) => Bindings::V0_1(pre.instantiate_async(store).await?),
        })
    }

    /// A new instance with its raw handle too (for exports the bindings do
    /// not cover, such as `manifest`).
    pub async fn instantiate_raw(&self, store: &mut Store<PluginState>) -> wasmtime::Result<(Bindings, Raw)> {
        Ok(match self {
            Pre::V0_2(pre, packed) => {
                let raw = pre.instance_pre().instantiate_async(&mut *store).await?;
                let plugin = bindings::Plugin::new(&mut *store, &raw)?;
                let packed = packed.as_ref().map(|index| packed::resolve(store, &raw, index)).transpose()?;
                (Bindings::V0_2(plugin, packed), raw)
            }
            Pre::V0_1(pre) => {
                let raw = pre.instance_pre().instantiate_async(&mut *store).await?;
                (Bindings::V0_1(v0_1::Plugin::new(store, &raw)?), raw)
            }
        })
    }
}

/// A live instance's exports.
pub(super) enum Bindings {
    /// With `handle-packed`, when the plugin exports it.
    V0_2(bindings::Plugin, Option<Func>),
    V0_1(v0_1::Plugin),
}

impl Bindings {
    /// Whether batches go through `handle-packed`.
    pub fn packed(&self) -> bool {
        matches!(self, Bindings::V0_2(_, Some(_)))
    }

    /// Batches go through `handle-batch` from now on (to compare the two).
    pub fn unpack(&mut self) {
        if let Bindings::V0_2(_, packed) = self {
            *packed = None;
        }
    }

    pub async fn init(&self, store: &mut Store<PluginState>, config: &[(String, String)]) -> wasmtime::Result<Result<(), String>> {
        match self {
            Bindings::V0_2(p, _) => p.sluice_plugin_handler().call_init(store, config).await,
            Bindings::V0_1(p) => p.sluice_plugin_handler().call_init(store, config).await,
        }
    }

    pub async fn handle(&self, store: &mut Store<PluginState>, event: &Event) -> wasmtime::Result<HandleResult> {
        match self {
            Bindings::V0_2(p, _) => p.sluice_plugin_handler().call_handle(store, event).await,
            Bindings::V0_1(p) => p.sluice_plugin_handler().call_handle(store, event).await,
        }
    }

    /// `scratch` is the instance's buffer for packing (see [`packed`]).
    pub async fn handle_batch(
        &self,
        store: &mut Store<PluginState>,
        events: &[Event],
        scratch: &mut Vec<u8>,
    ) -> wasmtime::Result<Vec<HandleResult>> {
        match self {
            Bindings::V0_2(_, Some(func)) if packed::worth_packing(events) => packed::handle(store, *func, events, scratch).await,
            Bindings::V0_2(p, _) => p.sluice_plugin_handler().call_handle_batch(store, events).await,
            Bindings::V0_1(p) => p.sluice_plugin_handler().call_handle_batch(store, events).await,
        }
    }
}
