use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use sluice::runtime::digest_of;
use wasmtime::component::{types::ComponentItem, Component};

use sluice::runtime::{Runtime, RuntimeOptions, Target};

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
    let digest = digest_of(&bytes);
    println!("sha256:  {digest}");
    println!("signed:  {}", signature_note(path, &digest));
    println!("imports:");
    for (name, item) in ty.imports(runtime.engine()) {
        println!("  {name} ({})", kind(&item.ty));
    }
    println!("exports:");
    let mut target = None;
    let mut manifest = false;
    for (name, item) in ty.exports(runtime.engine()) {
        for version in [Target::V0_2, Target::V0_1] {
            if name == version.interface("handler") {
                target = target.or(Some(version));
            }
            manifest |= name == version.interface("manifest");
        }
        println!("  {name} ({})", kind(&item.ty));
    }
    let world = sluice::runtime::WORLD;
    if let Some(target) = target {
        println!("targets: {target} (exports {})", target.interface("handler"));
        let capabilities = sluice::runtime::imported(&component, runtime.engine());
        match capabilities.as_slice() {
            [] => println!("capabilities: none"),
            some => {
                let names: Vec<&str> = some.iter().map(|c| c.name()).collect();
                println!("capabilities: {} (the pipeline must grant each)", names.join(", "));
            }
        }
        if manifest {
            // The list may depend on the config: `sluice check` prints it.
            println!("manifest: declares the event versions it accepts (read after `init`; `sluice check` shows the list)");
        }
        if sluice::runtime::find_packed(&component, target).is_some() {
            println!(
                "batches: packed (exports {}; the host calls it instead of handle-batch for events averaging under 1 KiB)",
                target.interface("packed-handler")
            );
        }
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "world:   not a Sluice plugin: it exports neither {} nor {} ({world})",
            Target::V0_2.interface("handler"),
            Target::V0_1.interface("handler")
        );
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

/// What the signature beside `path` (`<path>.sig`) says, unverified: the
/// key that signed and whether it is for this file. Whether the key is
/// trusted is the host's call (`[plugins] trusted_keys`).
fn signature_note(path: &Path, digest: &str) -> String {
    use sluice::runtime::signature::{signature_path, Signature};
    let sig = signature_path(path);
    match std::fs::read_to_string(&sig) {
        Err(_) => format!("no ({} not found)", sig.display()),
        Ok(line) => match Signature::parse(&line) {
            Err(e) => format!("unreadable {}: {e}", sig.display()),
            Ok(signature) if signature.sha256 == digest => format!("by key {} ({})", signature.key_id, sig.display()),
            Ok(signature) => format!("NO: {} is for sha256 {}, another version", sig.display(), signature.sha256),
        },
    }
}
