//! Command-line interface. `anyhow` lives here, at the edge: library errors
//! are typed, and this layer adds the context a user needs.

mod build_plugin;
mod candidate;
mod check;
mod dlq;
mod inspect;
mod logging;
mod new_plugin;
mod run;
mod sign;
mod status;
mod store;
mod tap;
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
    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// per-module directives in `RUST_LOG` syntax (`info,sluice::dispatch=debug`).
    #[arg(long, global = true, default_value = "info", env = "SLUICE_LOG")]
    log_level: String,
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
        /// Once the admin API listens, write the address it bound
        /// (`127.0.0.1:40123` and a newline) to this file, replacing it
        /// atomically: how a script or test finds the port when `[admin]
        /// listen` asks for any free one (port 0).
        #[arg(long, value_name = "FILE", env = "SLUICE_ADMIN_ADDR_FILE")]
        admin_addr_file: Option<PathBuf>,
    },
    /// Validate a config and load every plugin in it, without running.
    Check {
        /// The config file (TOML).
        config: PathBuf,
    },
    /// Show what a running host does: pipelines, plugin versions, rates,
    /// failures (from its admin API).
    Status {
        /// The admin API's address (`[admin] listen` of the running host).
        #[arg(long, default_value = "127.0.0.1:9090", env = "SLUICE_ADMIN")]
        admin: String,
        /// Time between the two samples the rates come from.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// The admin API's read token (`[admin] read_token`, or `token`),
        /// when it requires one. From the environment only, so it stays out
        /// of the process list.
        #[arg(skip = std::env::var("SLUICE_ADMIN_READ_TOKEN").ok())]
        token: Option<String>,
        /// PEM file of the CA the admin API's certificate chains to, for an
        /// `https://` address served with `[admin] tls_cert`.
        #[arg(long, value_name = "FILE", env = "SLUICE_ADMIN_CA")]
        ca_file: Option<std::path::PathBuf>,
    },
    /// Watch a running pipeline's events live: inputs, outputs and dead
    /// letters (sampled, from its admin API), until interrupted.
    Tap {
        /// The pipeline's name.
        pipeline: String,
        /// The admin API's address (`[admin] listen` of the running host).
        #[arg(long, default_value = "127.0.0.1:9090", env = "SLUICE_ADMIN")]
        admin: String,
        /// Show inputs (none of --inputs/--outputs/--dead-letters: all three).
        #[arg(long)]
        inputs: bool,
        /// Show outputs.
        #[arg(long)]
        outputs: bool,
        /// Show dead letters.
        #[arg(long)]
        dead_letters: bool,
        /// Show every Nth event.
        #[arg(long, value_name = "N", conflicts_with = "rate")]
        sample: Option<u64>,
        /// Show at most R events a second.
        #[arg(long, value_name = "R")]
        rate: Option<f64>,
        /// How each event is printed.
        #[arg(long, value_enum, default_value = "json")]
        format: tap::TapFormat,
        /// The admin API's read token, from the environment only.
        #[arg(skip = std::env::var("SLUICE_ADMIN_READ_TOKEN").ok())]
        token: Option<String>,
        /// PEM file of the CA the admin API's certificate chains to.
        #[arg(long, value_name = "FILE", env = "SLUICE_ADMIN_CA")]
        ca_file: Option<std::path::PathBuf>,
    },
    /// Plugin author tools.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Dead-letter tools.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Send dead-lettered events back to their source (or elsewhere): the
    /// `sluice-dlq-*` headers are stripped, key, payload and headers restored.
    Replay {
        /// Where the dead-letter records are: file:PATH (JSON lines),
        /// jetstream:STREAM[:SUBJECT] or kafka:TOPIC. Reading changes nothing.
        #[arg(long, value_name = "FROM")]
        from: dlq::Origin,
        /// Where the events go: KIND or KIND:NAME, KIND being file, nats,
        /// jetstream or kafka. KIND alone, or no --to: each record's own source
        /// (`sluice-dlq-source`: a path, subject or topic), on the kind of
        /// --from (file → file, jetstream → jetstream, kafka → kafka).
        #[arg(long, value_name = "TO")]
        to: Option<dlq::To>,
        /// Only records of this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only records with this reason (rejected, retries-exhausted,
        /// undecodable); repeatable.
        #[arg(long = "reason", value_name = "REASON")]
        reasons: Vec<String>,
        /// Only records dead-lettered at or after this time: RFC 3339
        /// (2026-01-05T10:00:00Z) or a duration ago (30m, 2h, 1d).
        #[arg(long, value_parser = dlq::parse_time)]
        since: Option<std::time::SystemTime>,
        /// Only records dead-lettered before this time (same forms).
        #[arg(long, value_parser = dlq::parse_time)]
        until: Option<std::time::SystemTime>,
        /// Print what would be replayed, and send nothing.
        #[arg(long)]
        dry_run: bool,
        /// NATS server(s) for jetstream:/nats: sources and destinations; a
        /// login may be written in it (`nats://user:password@host`).
        #[arg(long, env = "NATS_URL", hide_env_values = true, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// PEM file of the CA the NATS server's certificate must chain to.
        #[arg(long, value_name = "FILE")]
        nats_tls_ca: Option<std::path::PathBuf>,
        /// PEM client certificate for NATS (mTLS), with --nats-tls-key.
        #[arg(long, value_name = "FILE", requires = "nats_tls_key")]
        nats_tls_cert: Option<std::path::PathBuf>,
        /// PEM private key of --nats-tls-cert.
        #[arg(long, value_name = "FILE", requires = "nats_tls_cert")]
        nats_tls_key: Option<std::path::PathBuf>,
        /// Kafka bootstrap servers for kafka: sources and destinations.
        #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
    },
}

/// A running host's admin API, for commands that change what it runs.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API's address (`[admin] listen` of the running host).
    #[arg(long, default_value = "127.0.0.1:9090", env = "SLUICE_ADMIN")]
    admin: String,
    /// `[admin] token`. From the environment only, so it stays out of the
    /// process list.
    #[arg(skip = std::env::var("SLUICE_ADMIN_TOKEN").ok())]
    token: Option<String>,
    /// PEM file of the CA the admin API's certificate chains to.
    #[arg(long, value_name = "FILE", env = "SLUICE_ADMIN_CA")]
    ca_file: Option<std::path::PathBuf>,
}

impl AdminArgs {
    fn into_admin(self) -> candidate::Admin {
        candidate::Admin { admin: self.admin, token: self.token, ca_file: self.ca_file }
    }
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
        /// Start from a plugin that also uses these (comma-separated; every
        /// language): `state` (a count per key), `http` (a POST to an API),
        /// `client` (a service request), `metrics` (a counter and a
        /// histogram). Each is shown once in the handler; `http.json` and
        /// `replies.json` answer its calls in `plugin test`.
        #[arg(long, value_enum, value_delimiter = ',', value_name = "FEATURES")]
        with: Vec<new_plugin::Feature>,
    },
    /// Build a plugin project (made by `plugin new`) in whatever language it
    /// is written in: runs its build.sh and prints the component's path.
    Build {
        /// The project folder. Default: the current one.
        dir: Option<PathBuf>,
    },
    /// Make an Ed25519 key pair for signing plugins: NAME.key (private,
    /// PKCS#8 PEM, mode 0600) and NAME.pub (public, for `[plugins]
    /// trusted_keys`). Never overwrites.
    Keygen {
        /// Path and name of the pair, without extension (e.g. keys/release).
        name: PathBuf,
    },
    /// Sign a component with a private key: writes PLUGIN.sig, the
    /// signature line a host with `[plugins] trusted_keys` requires beside
    /// the file (or in an upload's `Sluice-Signature` header).
    Sign {
        /// The component (.wasm).
        plugin: PathBuf,
        /// The private key (PEM, as `plugin keygen` or `openssl genpkey
        /// -algorithm ed25519` writes it).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signature line. Default: PLUGIN.sig.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Publish a version to the fleet's plugin store (`[plugins.store]` of
    /// --config) and make it the current version of PIPELINE: every host
    /// running it with that store loads it (as an upload) and swaps it in.
    Push {
        /// The config whose `[plugins.store]` names the store (a host's
        /// config will do).
        #[arg(long, value_name = "FILE", default_value = "sluice.toml")]
        config: PathBuf,
        /// The pipeline's name.
        pipeline: String,
        /// The component (.wasm).
        plugin: PathBuf,
        /// Its signature line (`sluice plugin sign`). Default: PLUGIN.sig
        /// when that file exists.
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
    },
    /// Make the version current before the current one of PIPELINE current
    /// again, on every host following the store.
    Rollback {
        /// The config whose `[plugins.store]` names the store.
        #[arg(long, value_name = "FILE", default_value = "sluice.toml")]
        config: PathBuf,
        /// The pipeline's name.
        pipeline: String,
    },
    /// Try a new version of PIPELINE beside its current one on a running
    /// host (its admin API): shadowed (outputs compared, never published)
    /// or as a canary (a fraction of keys, for real), promoted or rolled
    /// back by `[pipelines.NAME.rollout]` or by hand (`plugin promote`,
    /// `plugin abort`). Progress: `sluice status`. With `--config`, through
    /// the fleet's plugin store instead: every host tries it, and the first
    /// host whose rules decide decides for the fleet.
    Candidate {
        /// The pipeline's name.
        pipeline: String,
        /// The component (.wasm).
        plugin: PathBuf,
        /// `shadow` or `canary`. Default: the config's `rollout.mode`.
        #[arg(long)]
        mode: Option<String>,
        /// Shadow: the fraction of events the candidate also handles.
        #[arg(long)]
        sample: Option<f64>,
        /// Canary: the fraction of keys the candidate handles.
        #[arg(long)]
        canary: Option<f64>,
        /// Its signature line. Default: PLUGIN.sig when that file exists.
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// The config whose `[plugins.store]` names the fleet's store: the
        /// candidate goes there, not to one host's admin API.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make PIPELINE's candidate its current version (a running host's
    /// admin API, or with `--config` the fleet's store).
    Promote {
        pipeline: String,
        /// Promote the fleet's candidate in this config's `[plugins.store]`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop trying PIPELINE's candidate; the current version keeps serving
    /// (one host's admin API, or with `--config` the whole fleet).
    Abort {
        pipeline: String,
        /// Clear the fleet's candidate in this config's `[plugins.store]`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show, per pipeline, the store's current version and the version each
    /// host runs (from their heartbeats); exits 2 when a fleet is split.
    Fleet {
        /// The config whose `[plugins.store]` names the store.
        #[arg(long, value_name = "FILE", default_value = "sluice.toml")]
        config: PathBuf,
        /// Only this pipeline. Default: the config's and every one a host
        /// reports.
        pipeline: Option<String>,
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
        /// Seed the plugin's state (an in-memory store, as a pipeline's
        /// `[state]` would give it) from this JSON object: `{"key": "text"}`
        /// or `{"key": {"base64": "…"}}`. Without it the state starts empty.
        /// Writes of events that succeed are kept for the later events.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Answer the plugin's service calls (`sluice:plugin/client`) from
        /// this JSON file of rules per destination instead of a broker (see
        /// docs/plugin-guide.md): `{"inventory": [{"when": "none", "error":
        /// {"code": "409", "message": "out of stock"}}, {"reply_json":
        /// {"reserved": true}}]}`. Without it every call is `unavailable`.
        #[arg(long, value_name = "FILE")]
        replies: Option<PathBuf>,
        /// Let the plugin make HTTP requests to this destination, as an
        /// entry of `[plugin.http] allow` would (repeatable, e.g.
        /// `--allow-http api.example.com:443`). Without it, a plugin's
        /// requests are denied (it still loads).
        #[arg(long = "allow-http", value_name = "HOST:PORT", conflicts_with = "http_replies")]
        allow_http: Vec<String>,
        /// Answer the plugin's HTTP requests (`wasi:http`) from this JSON
        /// file of rules instead of the network (see docs/plugin-guide.md,
        /// "Outbound HTTP"): `[{"method": "GET", "url_prefix":
        /// "https://api.example.com/customers/", "body_json": {"name":
        /// "Ada"}}, {"url": "https://api.example.com/hooks", "error":
        /// "timeout"}]`. The first matching rule answers; a request no rule
        /// matches is denied, and the call printed names it.
        #[arg(long = "http-replies", value_name = "FILE")]
        http_replies: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum InputFormat {
    Json,
    Lines,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, &cli.log_level);
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
        Command::Run { config, admin_addr_file } => run::run(&config, admin_addr_file),
        Command::Check { config } => check::check(&config),
        Command::Status { admin, interval, token, ca_file } => status::status(&status::Options { admin, interval, token, ca_file }),
        Command::Tap { pipeline, admin, inputs, outputs, dead_letters, sample, rate, format, token, ca_file } => {
            tap::tap(&tap::Options { admin, pipeline, inputs, outputs, dead_letters, sample, rate, format, token, ca_file })
        }
        Command::Plugin(PluginCommand::Inspect { plugin }) => inspect::inspect(&plugin),
        Command::Plugin(PluginCommand::Keygen { name }) => sign::keygen(&name),
        Command::Plugin(PluginCommand::Sign { plugin, key, out }) => sign::sign(&plugin, &key, out),
        Command::Plugin(PluginCommand::Build { dir }) => build_plugin::build(dir.as_deref()),
        Command::Plugin(PluginCommand::Push { config, pipeline, plugin, signature }) => store::push(&config, &pipeline, &plugin, signature),
        Command::Plugin(PluginCommand::Rollback { config, pipeline }) => store::rollback(&config, &pipeline),
        Command::Plugin(PluginCommand::Candidate { pipeline, plugin, mode, sample, canary, signature, config, admin }) => {
            let trial = candidate::Trial { mode, sample, canary, signature };
            match config {
                Some(config) => store::candidate(&config, &pipeline, &plugin, &trial),
                None => candidate::candidate(&admin.into_admin(), &pipeline, &plugin, &trial),
            }
        }
        Command::Plugin(PluginCommand::Promote { pipeline, config, admin }) => match config {
            Some(config) => store::decide(&config, &pipeline, sluice::store::Decision::Promote),
            None => candidate::promote(&admin.into_admin(), &pipeline),
        },
        Command::Plugin(PluginCommand::Abort { pipeline, config, admin }) => match config {
            Some(config) => store::decide(&config, &pipeline, sluice::store::Decision::Abort),
            None => candidate::abort(&admin.into_admin(), &pipeline),
        },
        Command::Plugin(PluginCommand::Fleet { config, pipeline }) => store::fleet(&config, pipeline.as_deref()),
        Command::Dlq(DlqCommand::Replay {
            from,
            to,
            pipeline,
            reasons,
            since,
            until,
            dry_run,
            nats_url,
            nats_tls_ca,
            nats_tls_cert,
            nats_tls_key,
            brokers,
        }) => {
            let nats = sluice::config::NatsServer {
                url: nats_url,
                tls_ca: nats_tls_ca,
                tls_cert: nats_tls_cert,
                tls_key: nats_tls_key,
                ..Default::default()
            };
            let filter = sluice::replay::Filter { pipeline, reasons, since, until };
            dlq::replay(&dlq::Options { from, to, filter, dry_run, nats, brokers })
        }
        Command::Plugin(PluginCommand::New { name, lang, dir, sdk, with }) => {
            new_plugin::new(lang, &name, dir.as_deref(), sdk.as_deref(), &with)
        }
        Command::Plugin(PluginCommand::Test {
            plugin,
            events,
            config,
            format,
            timeout,
            memory,
            expect,
            cache_dir,
            state,
            replies,
            allow_http,
            http_replies,
        }) => {
            let options =
                test_plugin::Options { config, format, timeout, memory, expect, cache_dir, state, replies, allow_http, http_replies };
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
