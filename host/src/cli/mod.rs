//! Command-line interface. `anyhow` lives here, at the edge: library errors
//! are typed, and this layer adds the context a user needs.

mod check;
mod inspect;
mod logging;
mod new_plugin;
mod run;
mod test_plugin;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "sluice", version, about = "WebAssembly-plugin event stream processor")]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value = "human", env = "SLUICE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipelines of a config until their sources end or SIGINT/SIGTERM.
    Run {
        /// The config file (TOML).
        config: PathBuf,
    },
    /// Validate a config and load every plugin in it, without running.
    Check {
        /// The config file (TOML).
        config: PathBuf,
    },
    /// Plugin author tools.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin project (code, build.sh, events and expected output)
    /// that builds and passes `sluice plugin test` as generated.
    New {
        /// Project name: lowercase letters, digits, `-` and `_`.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum, default_value = "rust")]
        lang: new_plugin::Lang,
        /// Where to create it. Default: ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The Sluice checkout whose guest-sdk/ the project uses. Default:
        /// the one this binary was built from.
        #[arg(long, value_name = "CHECKOUT")]
        sdk: Option<PathBuf>,
    },
    /// Show a component's world, imports, exports, size and digest.
    Inspect {
        /// The component (.wasm).
        plugin: PathBuf,
    },
    /// Run events through a plugin and print each result as a JSON line.
    Test {
        /// The component (.wasm).
        plugin: PathBuf,
        /// Events file (JSON lines, or raw lines with --format lines); `-` for stdin.
        #[arg(long)]
        events: PathBuf,
        /// Plugin config entries, repeatable: --config key=value.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// How each line becomes an event.
        #[arg(long, value_enum, default_value = "json")]
        format: InputFormat,
        /// Per-event timeout.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Memory cap per instance, e.g. 64MiB.
        #[arg(long, default_value = "64MiB")]
        memory: bytesize::ByteSize,
        /// Compare the printed lines with this file (as written by an earlier
        /// run) and exit 1 on any difference: a plugin's regression test.
        #[arg(long, value_name = "FILE")]
        expect: Option<PathBuf>,
        /// Keep compiled components here, as `[runtime] cache_dir` does:
        /// JavaScript and Python plugins take seconds to compile and
        /// milliseconds to load from the cache.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum InputFormat {
    Json,
    Lines,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    if !matches!(cli.command, Command::Run { .. }) {
        // The tools print reports; `sluice plugin inspect x | head` should
        // end quietly like any Unix tool. `run` keeps SIGPIPE ignored (Rust's
        // default) so a closed stdout sink is an error the pipeline reports.
        // SAFETY: called before any thread is spawned; restores the default
        // disposition of one signal.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Run { config } => run::run(&config),
        Command::Check { config } => check::check(&config),
        Command::Plugin(PluginCommand::Inspect { plugin }) => inspect::inspect(&plugin),
        Command::Plugin(PluginCommand::New { name, lang, dir, sdk }) => {
            new_plugin::new(lang, &name, dir.as_deref(), sdk.as_deref())
        }
        Command::Plugin(PluginCommand::Test { plugin, events, config, format, timeout, memory, expect, cache_dir }) => {
            let options = test_plugin::Options { config, format, timeout, memory, expect, cache_dir };
            test_plugin::test(&plugin, &events, &options)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
