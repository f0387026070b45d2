//! The optional `manifest` export (world `plugin-with-manifest`): which
//! event versions a plugin accepts.
//!
//! The `bindgen!` of [`super::bindings`] is for world `plugin`, which every
//! plugin implements; `manifest` is looked up by name on the component
//! instead, so a plugin without it (every plugin built before it existed,
//! and every JavaScript, Python, C and Go plugin today) loads exactly as
//! before. It is called once per loaded version, after `init`, on the
//! instance the load makes anyway.

use wasmtime::component::{Component, ComponentExportIndex, Instance as Raw};
use wasmtime::Store;

use super::instance::PluginState;
use super::world::Target;
use crate::schema::Accepts;

/// The instance name of the export, without the package version (which is
/// the plugin's: see [`Target`]).
pub const INTERFACE: &str = "sluice:plugin/manifest";

/// The index of `manifest.accepts` in `component`, if it exports it.
pub fn find(component: &Component, target: Target) -> Option<ComponentExportIndex> {
    let interface = component.get_export_index(None, target.interface("manifest"))?;
    component.get_export_index(Some(&interface), "accepts")
}

/// Calls `accepts` on a fresh instance and parses the list.
pub async fn accepts(store: &mut Store<PluginState>, instance: Raw, func: ComponentExportIndex) -> Result<Accepts, String> {
    let accepts = instance
        .get_typed_func::<(), (Vec<String>,)>(&mut *store, func)
        .map_err(|e| format!("`{INTERFACE}` does not have the expected type (`accepts: func() -> list<string>`): {e:#}"))?;
    let (list,) = accepts.call_async(&mut *store, ()).await.map_err(|e| format!("`accepts` failed: {e:#}"))?;
    Accepts::parse(&list).map_err(|e| format!("`accepts` returned a bad list: {e}"))
}
