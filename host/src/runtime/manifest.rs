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
use crate::schema::Accepts;

/// The instance name of the export, with the package version.
pub const INTERFACE: &str = "sluice:plugin/manifest@0.1.0";

/// The index of `manifest.accepts` in `component`, if it exports it.
pub fn find(component: &Component) -> Option<ComponentExportIndex> {
    let interface = component.get_export_index(None, INTERFACE)?;
    component.get_export_index(Some(&interface), "accepts")
}

/// Calls `accepts` on a fresh instance and parses the list.
pub fn accepts(store: &mut Store<PluginState>, instance: &Raw, func: &ComponentExportIndex) -> Result<Accepts, String> {
    let accepts = instance
        .get_typed_func::<(), (Vec<String>,)>(&mut *store, func)
        .map_err(|e| format!("`{INTERFACE}` does not have the expected type (`accepts: func() -> list<string>`): {e:#}"))?;
    let (list,) = accepts.call(&mut *store, ()).map_err(|e| format!("`accepts` failed: {e:#}"))?;
    Accepts::parse(&list).map_err(|e| format!("`accepts` returned a bad list: {e}"))
}
