use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, types::ComponentItem};

use sluice::runtime::{Runtime, RuntimeOptions};

/// Prints what a component imports and exports, and whether that matches
/// the Sluice world.
pub fn inspect(path: &Path) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let runtime = Runtime::new(&RuntimeOptions::default())?;
    let component = Component::new(runtime.engine(), &bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a valid WebAssembly component: {e:#}", path.display()))?;
    let ty = component.component_type();
    println!("file:    {}", path.display());
    println!("size:    {} ({} bytes)", bytesize::ByteSize::b(bytes.len() as u64), bytes.len());
    println!("sha256:  {}", hex::encode(Sha256::digest(&bytes)));
    println!("imports:");
    for (name, item) in ty.imports(runtime.engine()) {
        println!("  {name} ({})", kind(&item.ty));
    }
    println!("exports:");
    let mut implements = false;
    let mut manifest = false;
    for (name, item) in ty.exports(runtime.engine()) {
        implements |= name == "sluice:plugin/handler@0.1.0";
        manifest |= name == sluice::runtime::manifest::INTERFACE;
        println!("  {name} ({})", kind(&item.ty));
    }
    let world = sluice::runtime::plugin::WORLD;
    if implements {
        println!("world:   {world} (exports sluice:plugin/handler@0.1.0)");
        if manifest {
            // The list may depend on the config: `sluice check` prints it.
            println!("manifest: declares the event versions it accepts (read after `init`; `sluice check` shows the list)");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        println!("world:   not a Sluice plugin: it does not export sluice:plugin/handler@0.1.0 ({world})");
        Ok(ExitCode::FAILURE)
    }
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "function",
        ComponentItem::CoreFunc(_) => "core function",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}
