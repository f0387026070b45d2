use std::path::Path;
use std::process::ExitCode;

use sluice::pipeline::{load_plugin, plugin_spec};
use sluice::runtime::Runtime;
use sluice::supervisor::runtime_options;

/// Validates the config and loads (compiles, checks the world of, and
/// initialises) every plugin. Reports every problem, not just the first:
/// every rule broken, files and subjects shared in ways that cannot work,
/// source files that do not exist, sink folders that cannot be written, and
/// plugins (of the pipelines whose own rules hold).
pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let sluice::config::Checked { config, problems: found, invalid } = sluice::config::load_for_check(path)?;
    for problem in &found {
        println!("error {problem}");
    }
    let runtime = super::tokio_runtime()?;
    runtime.block_on(async {
        let wasm = Runtime::new(&runtime_options(&config))?;
        let mut problems = found.len();
        for (name, pipeline) in config.pipelines.iter().filter(|(name, _)| !invalid.contains(*name)) {
            let loaded = match plugin_spec(name, pipeline) {
                Ok(spec) => load_plugin(&wasm, spec).await,
                Err(err) => Err(err),
            };
            match loaded {
                Ok(plugin) => {
                    println!(
                        "ok    pipeline `{name}`: plugin {} ({}, sha256 {})",
                        plugin.name(),
                        bytesize::ByteSize::b(plugin.size() as u64),
                        plugin.digest()
                    );
                    let capabilities: Vec<&str> = plugin.capabilities().iter().map(|c| c.name()).collect();
                    println!(
                        "      targets {}; capabilities: {}",
                        plugin.target(),
                        if capabilities.is_empty() { "none".to_owned() } else { capabilities.join(", ") }
                    );
                    if let Some(accepts) = plugin.accepts() {
                        println!("      accepts: {accepts}");
                    }
                }
                Err(err) => {
                    problems += 1;
                    println!("error pipeline `{name}`: {err}");
                }
            }
        }
        if config.pipelines.is_empty() {
            println!("warning: {} configures no pipelines", path.display());
        }
        Ok(if problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}
