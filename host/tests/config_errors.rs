//! Snapshot tests of the config loader, in the style of Spin's
//! `tests/ui/invalid/*.toml` + `.err`.
//!
//! - `tests/config/invalid/NAME.toml` holds one mistake; `NAME.err` holds the
//!   exact message a user sees for it (`ConfigError`'s `Display`), followed by
//!   one newline.
//! - `tests/config/valid/*.toml` must load; `valid_configs_load_with_*` check
//!   a few of their fields.
//!
//! Stable messages, whatever the working directory: every file is opened by
//! its absolute path (`CARGO_MANIFEST_DIR/tests/config/...`) and the folder
//! prefix (`<that folder>/`) is then removed from the message wherever it
//! occurs. A message therefore reads as if `sluice` had been started in the
//! config's folder: `NAME.toml: pipeline ...`.
//!
//! The environment is hermetic: the process's variables are never read. A
//! config declares the variables it needs in comment lines of the form
//! `# test-env: NAME=value`, and is loaded with
//! `sluice::config::parse(text, path, env)` where `env` knows only those.
//! For configs without any `${`, the test also checks that
//! `sluice::config::load(path)` gives the same message.
//!
//! To (re)write the `.err` files from the current messages instead of
//! comparing, run with `SLUICE_BLESS=1`:
//!
//! ```sh
//! SLUICE_BLESS=1 cargo test -p sluice --test config_errors
//! ```
//!
//! then review the diff. Blessing never deletes: a stale `.err` is reported
//! by `every_invalid_config_has_an_err_file_and_vice_versa`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf, MAIN_SEPARATOR};
use std::time::Duration;

use sluice::config::{
    Allocator, Codec, Config, FileSinkConfig, FileSourceConfig, IdempotencyKey, JetStreamSourceConfig, LineFormat, Ordering, OtlpProtocol,
    RecordFormat, SinkConfig, SourceConfig, StdinSourceConfig, StdoutSinkConfig,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The comment that declares a variable for a config; see the top of this
/// file.
const ENV_DIRECTIVE: &str = "# test-env:";

fn folder(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("config").join(kind)
}

/// The files of `dir` whose extension is `ext`, sorted.
fn files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == ext) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// The `# test-env: NAME=value` declarations of a config.
fn declared_env(text: &str) -> Result<Vec<(String, String)>, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(ENV_DIRECTIVE))
        .map(|decl| {
            decl.trim()
                .split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("`{ENV_DIRECTIVE}{decl}` is not NAME=value"))
        })
        .collect()
}

/// Parses the config at `path` with only its declared environment.
fn parse_hermetic(path: &Path) -> Result<Result<Config, sluice::config::ConfigError>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let env = declared_env(&text)?;
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    Ok(sluice::config::parse(&text, path, lookup))
}

/// A message with the config folder prefix removed (see the top of the file).
fn normalise(message: &str, dir: &Path) -> String {
    message.replace(&format!("{}{MAIN_SEPARATOR}", dir.display()), "")
}

/// The message a user sees for the invalid config at `path`, normalised.
fn error_message(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let dir = path.parent().ok_or("config has no folder")?;
    let message = match parse_hermetic(path)? {
        Ok(_) => return Err(format!("{} loaded, but it should be invalid", path.display()).into()),
        Err(err) => normalise(&err.to_string(), dir),
    };
    if !std::fs::read_to_string(path)?.contains("${") {
        let via_load = match sluice::config::load(path) {
            Ok(_) => return Err(format!("{} loaded via `load`, but not via `parse`", path.display()).into()),
            Err(err) => normalise(&err.to_string(), dir),
        };
        if via_load != message {
            return Err(format!("`load` and `parse` disagree on {}:\n{via_load}\n{message}", path.display()).into());
        }
    }
    Ok(message)
}

#[test]
fn invalid_configs_fail_with_the_recorded_message() -> TestResult {
    // SLUICE_BLESS=1 rewrites the .err files instead of comparing.
    let bless = std::env::var("SLUICE_BLESS").is_ok_and(|v| v == "1");
    let dir = folder("invalid");
    let configs = files(&dir, "toml")?;
    assert!(configs.len() >= 20, "expected the invalid configs in {}", dir.display());
    let mut mismatches = Vec::new();
    for config in &configs {
        let actual = error_message(config)?;
        let err_file = config.with_extension("err");
        if bless {
            std::fs::write(&err_file, format!("{actual}\n"))?;
            continue;
        }
        let expected = match std::fs::read_to_string(&err_file) {
            Ok(text) => text,
            Err(e) => {
                mismatches.push(format!("{}: cannot read: {e}", err_file.display()));
                continue;
            }
        };
        let expected = expected.strip_suffix('\n').unwrap_or(&expected);
        if expected != actual {
            mismatches.push(format!("{}\n--- expected\n{expected}\n--- actual\n{actual}", err_file.display()));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} message(s) differ (rerun with SLUICE_BLESS=1 to accept):\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
    Ok(())
}

#[test]
fn every_invalid_config_has_an_err_file_and_vice_versa() -> TestResult {
    let dir = folder("invalid");
    let stems = |ext| -> Result<BTreeSet<String>, Box<dyn std::error::Error>> {
        Ok(files(&dir, ext)?.iter().filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned())).collect())
    };
    let (tomls, errs) = (stems("toml")?, stems("err")?);
    let no_err: Vec<_> = tomls.difference(&errs).collect();
    let no_toml: Vec<_> = errs.difference(&tomls).collect();
    assert!(no_err.is_empty(), "configs without a .err file (run with SLUICE_BLESS=1): {no_err:?}");
    assert!(no_toml.is_empty(), ".err files without a config (delete them): {no_toml:?}");
    Ok(())
}

#[test]
fn every_valid_config_loads() -> TestResult {
    let dir = folder("valid");
    let configs = files(&dir, "toml")?;
    assert!(configs.len() >= 3, "expected the valid configs in {}", dir.display());
    for config in configs {
        if let Err(err) = parse_hermetic(&config)? {
            return Err(format!("{} should load: {err}", config.display()).into());
        }
    }
    Ok(())
}

fn load_valid(name: &str) -> Result<(Config, PathBuf), Box<dyn std::error::Error>> {
    let dir = folder("valid");
    let config = parse_hermetic(&dir.join(name))??;
    Ok((config, dir))
}

#[test]
fn valid_configs_load_with_defaults_applied() -> TestResult {
    let (config, dir) = load_valid("minimal.toml")?;
    assert_eq!(config.runtime.allocator, Allocator::OnDemand);
    assert_eq!(config.runtime.cache_dir, None);
    assert_eq!(config.runtime.shutdown_timeout, Duration::from_secs(30));
    let p = config.pipelines.get("orders").ok_or("no pipeline `orders`")?;
    match &p.source {
        SourceConfig::File(FileSourceConfig { path, format, follow, checkpoint, .. }) => {
            assert_eq!(path, &dir.join("events.jsonl"), "relative to the config's folder");
            assert_eq!((*format, *follow, checkpoint), (LineFormat::Json, false, &None));
        }
        other => return Err(format!("unexpected source {other:?}").into()),
    }
    assert!(matches!(p.sink, SinkConfig::Stdout(StdoutSinkConfig { format: RecordFormat::Json })));
    assert_eq!(p.plugin.path, dir.join("plugins/enricher.wasm"));
    assert_eq!(p.plugin.sha256, None);
    assert!(p.plugin.init_config()?.is_empty());
    assert!(p.routes.is_empty());
    let wasi = &p.plugin.wasi;
    assert!(wasi.env.is_empty() && !wasi.stdout && !wasi.stderr && wasi.read_dirs.is_empty());
    let policy = &p.policy;
    assert_eq!(policy.max_attempts, 5);
    assert_eq!(policy.timeout, Duration::from_secs(5));
    assert_eq!(policy.memory.as_u64(), 64 * 1024 * 1024);
    assert_eq!((policy.concurrency, policy.batch_size), (1, 256));
    assert_eq!(policy.ordering, Ordering::Partition);
    let backoff = &policy.backoff;
    assert_eq!((backoff.initial, backoff.max), (Duration::from_millis(100), Duration::from_secs(30)));
    assert_eq!((backoff.multiplier, backoff.jitter), (2.0, 0.2));
    Ok(())
}

#[test]
fn valid_configs_load_with_everything_set() -> TestResult {
    let (config, dir) = load_valid("everything.toml")?;
    assert_eq!(config.runtime.allocator, Allocator::Pooling);
    assert_eq!(config.runtime.cache_dir, Some(dir.join("cache")));
    assert_eq!(config.runtime.shutdown_timeout, Duration::from_secs(20));
    assert_eq!(config.pipelines.len(), 3);

    let p = config.pipelines.get("orders").ok_or("no pipeline `orders`")?;
    match &p.source {
        SourceConfig::File(FileSourceConfig { path, format, follow, checkpoint, .. }) => {
            assert_eq!(path, &dir.join("data/orders.jsonl"));
            assert_eq!((*format, *follow), (LineFormat::Json, true));
            assert_eq!(checkpoint, &Some(dir.join("state/orders.checkpoint")));
        }
        other => return Err(format!("unexpected source {other:?}").into()),
    }
    match &p.sink {
        SinkConfig::File(FileSinkConfig { path, format, fsync }) => {
            assert_eq!(path, &dir.join("out/orders.jsonl"));
            assert_eq!((*format, *fsync), (RecordFormat::Json, true));
        }
        other => return Err(format!("unexpected sink {other:?}").into()),
    }
    assert!(
        matches!(p.routes.get("audit"), Some(SinkConfig::File(FileSinkConfig { path, format: RecordFormat::Payload, fsync: false })) if path == &dir.join("out/audit.log"))
    );
    assert!(matches!(p.routes.get("console"), Some(SinkConfig::Stdout(StdoutSinkConfig { format: RecordFormat::Payload }))));
    assert!(matches!(&p.dead_letter, Some(SinkConfig::File(FileSinkConfig { path, .. })) if path == &dir.join("out/dead-letter.jsonl")));

    let plugin = &p.plugin;
    assert_eq!(plugin.path, dir.join("plugins/enricher.wasm"));
    assert_eq!(plugin.sha256.as_deref(), Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"));
    let flat = plugin.init_config()?;
    let get = |key: &str| flat.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(get("require"), Some("user"));
    assert_eq!(get("set.env"), Some("production"), "nested tables flatten to dotted keys");
    assert_eq!(get("set.region.name"), Some("eu-west"));
    assert_eq!(get("limit"), Some("10"), "integers become their text");
    assert_eq!(get("ratio"), Some("0.5"), "floats become their text");
    assert_eq!(get("strict"), Some("true"), "booleans become their text");
    assert_eq!(flat.len(), 6);
    assert_eq!(plugin.wasi.env, vec!["TZ".to_owned(), "LANG".to_owned()]);
    assert!(plugin.wasi.stdout && plugin.wasi.stderr);
    assert_eq!(plugin.wasi.read_dirs.get("/data"), Some(&dir.join("reference-data")));

    let policy = &p.policy;
    assert_eq!(policy.max_attempts, 3);
    assert_eq!(policy.timeout, Duration::from_millis(1500));
    assert_eq!(policy.memory.as_u64(), 128 * 1024 * 1024);
    assert_eq!((policy.concurrency, policy.batch_size), (4, 16));
    assert_eq!(policy.ordering, Ordering::Key);
    let backoff = &policy.backoff;
    assert_eq!((backoff.initial, backoff.max), (Duration::from_millis(250), Duration::from_secs(10)));
    assert_eq!((backoff.multiplier, backoff.jitter), (3.0, 0.0));

    let stdin = config.pipelines.get("console").ok_or("no pipeline `console`")?;
    assert!(matches!(stdin.source, SourceConfig::Stdin(StdinSourceConfig { format: LineFormat::Lines })));
    assert_eq!(stdin.policy.ordering, Ordering::None);
    assert_eq!((stdin.codec, &stdin.idempotency), (Codec::None, &None), "off by default");

    let users = config.pipelines.get("nestjs-users").ok_or("no pipeline `nestjs-users`")?;
    assert_eq!(users.codec, Codec::Nestjs);
    let idempotency = users.idempotency.as_ref().ok_or("no idempotency")?;
    assert_eq!(idempotency.key, IdempotencyKey::Header("Idempotency-Key".into()));
    assert_eq!((idempotency.window, idempotency.capacity), (Duration::from_secs(60), 1000));
    let breaker = users.breaker.as_ref().ok_or("no breaker")?;
    assert_eq!((breaker.failures, breaker.window, breaker.reset), (10, Duration::from_secs(30), Duration::from_secs(15)));
    assert_eq!(stdin.breaker, None, "no breaker by default");
    let correlation = users.correlation.as_ref().ok_or("no correlation")?;
    assert_eq!((correlation.header.as_str(), correlation.generate), ("x-request-id", false));
    assert_eq!(stdin.correlation, None, "no correlation ids by default");
    let tracing = config.tracing.as_ref().ok_or("no [tracing]")?;
    assert_eq!(
        (tracing.otlp_endpoint.as_str(), tracing.protocol, tracing.service_name.as_str()),
        ("http://127.0.0.1:4318", OtlpProtocol::HttpJson, "orders")
    );
    assert_eq!(tracing.sample_ratio, 0.25);
    Ok(())
}

#[test]
fn valid_configs_load_with_env_interpolation() -> TestResult {
    // The config declares `# test-env: SLUICE_TEST_OUT=/var/spool/sluice` and
    // `# test-env: SLUICE_TEST_TOKEN=s3cret`; nothing else is set.
    let (config, dir) = load_valid("env.toml")?;
    let p = config.pipelines.get("orders").ok_or("no pipeline `orders`")?;
    assert!(
        matches!(&p.sink, SinkConfig::File(FileSinkConfig { path, .. }) if path == Path::new("/var/spool/sluice/orders.jsonl")),
        "a set variable, absolute path kept"
    );
    assert!(
        matches!(&p.dead_letter, Some(SinkConfig::File(FileSinkConfig { path, .. })) if path == &dir.join("dead-letter/orders.jsonl")),
        "the default of an unset variable, then resolved"
    );
    let flat = p.plugin.init_config()?;
    let get = |key: &str| flat.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(get("token"), Some("s3cret"));
    assert_eq!(get("region"), Some("eu-west"), "default used");
    assert_eq!(get("empty"), Some(""), "empty default");
    assert_eq!(get("price"), Some("$5"), "`$$` is a literal `$`");
    assert_eq!(get("greeting"), Some("hello $USER"), "a `$` not followed by `{{` is kept");
    assert_eq!(p.policy.max_attempts, 7, "a number from a default");
    Ok(())
}

#[test]
fn the_documented_example_loads() -> TestResult {
    // The "complete annotated example" of docs/configuration.md must stay
    // valid. Every variable it references is set, to `value-of-NAME`.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let text = std::fs::read_to_string(&docs)?;
    let start = text.find("```toml\n# sluice.toml: complete example").ok_or("no complete example in docs/configuration.md")?;
    let block = &text[start + "```toml\n".len()..];
    let block = &block[..block.find("```").ok_or("the example block is not closed")?];
    let config = sluice::config::parse(block, &docs.with_file_name("sluice.toml"), |name| Some(format!("value-of-{name}")))?;
    assert_eq!(config.pipelines.len(), 5);
    let kafka = config.pipelines.get("kafka-orders").ok_or("no pipeline `kafka-orders`")?;
    assert!(matches!(&kafka.source, sluice::config::SourceConfig::Kafka(k) if k.exactly_once));
    let payments = config.pipelines.get("payments").ok_or("no pipeline `payments`")?;
    assert!(
        matches!(&payments.source, sluice::config::SourceConfig::Jetstream(JetStreamSourceConfig { stream, .. }) if stream == "PAYMENTS")
    );
    let flat = config.pipelines.get("orders").ok_or("no pipeline `orders`")?.plugin.init_config()?;
    let keys: Vec<&str> = flat.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["api_token", "max_items", "require", "set.env", "strict"], "as the example's comment says");
    Ok(())
}

#[test]
fn valid_configs_load_with_schemas() -> TestResult {
    let (config, _) = load_valid("schemas.toml")?;
    let orders = config.pipelines.get("orders").ok_or("no pipeline `orders`")?;
    let schemas = orders.schemas.as_ref().ok_or("no schemas")?;
    assert_eq!((schemas.type_header.as_str(), schemas.version_header.as_str()), ("ce-type", "ce-dataversion"));
    assert_eq!((schemas.unknown, schemas.missing), (sluice::config::Unmatched::Pass, sluice::config::Unmatched::Reject));
    let selectors: Vec<String> = schemas.input.iter().chain(&schemas.output).map(|e| e.selector()).collect();
    assert_eq!(selectors, ["order-created@1", "order-created@*", "order-enriched@1"]);
    // Paths are resolved against the config's folder, and the documents read.
    assert!(schemas.input[0].path.ends_with("config/valid/../schemas/order-created-v1.json"), "{:?}", schemas.input[0].path);
    assert_eq!(schemas.input[0].document["required"], serde_json::json!(["id", "total"]));
    // Without the table, nothing is validated.
    let (minimal, _) = load_valid("minimal.toml")?;
    assert!(minimal.pipelines.values().all(|p| p.schemas.is_none()));
    Ok(())
}
