//! `sluice plugin new`: a plugin project in any supported language that
//! builds (`bash build.sh`) and passes `sluice plugin test … --expect
//! expected.jsonl` as generated. The templates are in `host/templates/`.
//!
//! `--with state,http,client,metrics` adds what a plugin that acts outside
//! itself needs, each shown once in the handler, with the files that answer
//! its calls in `plugin test` (`http.json`, `replies.json`). A template
//! marks a feature's part `{{#feature}}…{{/feature}}`: kept when asked
//! for, dropped otherwise. Every language's template does the same with
//! each feature (same outputs, same calls in the same order), so one
//! `expected.jsonl` serves them all.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::ValueEnum;

/// The languages a plugin can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    #[value(alias = "javascript")]
    Js,
    #[value(alias = "typescript")]
    Ts,
    #[value(alias = "py")]
    Python,
    C,
    Go,
}

impl Lang {
    pub(super) fn id(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
            Lang::Ts => "ts",
            Lang::Python => "python",
            Lang::C => "c",
            Lang::Go => "go",
        }
    }

    pub(super) fn display(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Ts => "TypeScript",
            Lang::Python => "Python",
            Lang::C => "C",
            Lang::Go => "Go",
        }
    }

    /// (path in the project, template text)
    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::Rust => &[
                ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml")),
                ("src/lib.rs", include_str!("../../templates/rust/lib.rs")),
                ("build.sh", include_str!("../../templates/rust/build.sh")),
            ],
            Lang::Js => {
                &[("plugin.js", include_str!("../../templates/js/plugin.js")), ("build.sh", include_str!("../../templates/js/build.sh"))]
            }
            Lang::Ts => {
                &[("plugin.ts", include_str!("../../templates/ts/plugin.ts")), ("build.sh", include_str!("../../templates/ts/build.sh"))]
            }
            Lang::Python => {
                &[("app.py", include_str!("../../templates/python/app.py")), ("build.sh", include_str!("../../templates/python/build.sh"))]
            }
            Lang::C => {
                &[("plugin.c", include_str!("../../templates/c/plugin.c")), ("build.sh", include_str!("../../templates/c/build.sh"))]
            }
            Lang::Go => &[
                ("go.mod", include_str!("../../templates/go/go.mod")),
                ("main.go", include_str!("../../templates/go/main.go")),
                ("build.sh", include_str!("../../templates/go/build.sh")),
            ],
        }
    }
}

/// What `--with` adds to a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Feature {
    /// The pipeline's key/value state: a count per key.
    State,
    /// Outbound HTTP (`wasi:http`): a POST whose answer goes in a header.
    Http,
    /// A service call (`client.request`) whose answer goes in a header.
    Client,
    /// The plugin's own metrics: a counter and a histogram.
    Metrics,
}

impl Feature {
    const ALL: [Feature; 4] = [Feature::State, Feature::Http, Feature::Client, Feature::Metrics];

    fn id(self) -> &'static str {
        match self {
            Feature::State => "state",
            Feature::Http => "http",
            Feature::Client => "client",
            Feature::Metrics => "metrics",
        }
    }
}

/// `text` with the parts of the features in `with` kept and the others
/// dropped.
fn sections(text: &str, with: &[Feature]) -> String {
    let mut text = text.to_owned();
    for feature in Feature::ALL {
        let (open, close) = (format!("{{{{#{}}}}}", feature.id()), format!("{{{{/{}}}}}", feature.id()));
        while let Some(start) = text.find(&open) {
            let Some(end) = text[start..].find(&close).map(|e| start + e) else { break };
            let inner = if with.contains(&feature) { text[start + open.len()..end].to_owned() } else { String::new() };
            text.replace_range(start..end + close.len(), &inner);
        }
    }
    text
}

/// The calls the `hello` event makes, as `plugin test` prints them (the
/// `calls` member of its expected line), in the order the handler makes
/// them: its idempotency keys count from 0.
fn expected_calls(with: &[Feature]) -> String {
    let mut calls = Vec::new();
    if with.contains(&Feature::Http) {
        calls.push(format!(
            r#"{{"method":"POST","target":"api.example.com:443","path":"/lookup","status":200,"idempotency_key":"hello:{}"}}"#,
            calls.len()
        ));
    }
    if with.contains(&Feature::Client) {
        calls.push(format!(r#"{{"target":"lookup","path":"lookup","idempotency_key":"hello:{}"}}"#, calls.len()));
    }
    if calls.is_empty() {
        String::new()
    } else {
        format!(r#","calls":[{}]"#, calls.join(","))
    }
}

/// The `plugin test` options the project's calls need.
pub fn test_flags(with: &[Feature]) -> String {
    let mut flags = String::new();
    if with.contains(&Feature::Http) {
        flags.push_str(" --http-replies http.json");
    }
    if with.contains(&Feature::Client) {
        flags.push_str(" --replies replies.json");
    }
    flags
}

const COMMON: &[(&str, &str)] = &[
    ("events.jsonl", include_str!("../../templates/common/events.jsonl")),
    ("expected.jsonl", include_str!("../../templates/common/expected.jsonl")),
    ("README.md", include_str!("../../templates/common/README.md")),
];

/// Files a feature brings: what answers its calls in `plugin test`.
fn feature_files(feature: Feature) -> &'static [(&'static str, &'static str)] {
    match feature {
        Feature::Http => &[("http.json", include_str!("../../templates/common/http.json"))],
        Feature::Client => &[("replies.json", include_str!("../../templates/common/replies.json"))],
        Feature::State | Feature::Metrics => &[],
    }
}

/// Where this binary was built from: the checkout whose `guest-sdk/` the
/// generated project uses, unless `--sdk` says otherwise.
fn default_checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Creates the project `dir` (default: `./NAME`), with the parts of the
/// features in `with`.
pub fn new(lang: Lang, name: &str, dir: Option<&Path>, sdk: Option<&Path>, with: &[Feature]) -> anyhow::Result<ExitCode> {
    let with: Vec<Feature> = Feature::ALL.into_iter().filter(|f| with.contains(f)).collect();
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!("plugin name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter (it names the crate, module and component)");
    }
    let checkout = sdk.map(Path::to_path_buf).unwrap_or_else(default_checkout);
    let checkout = checkout.canonicalize().ok().filter(|c| c.join("guest-sdk").is_dir()).with_context(|| {
        format!(
            "no Sluice checkout with guest-sdk/ at {}: pass --sdk with the path of one (the project builds against its SDKs)",
            checkout.display()
        )
    })?;
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty: choose another name or --dir", dir.display());
    }
    let checkout_text = checkout.to_string_lossy();
    let mut config_keys = vec!["\"tag\""];
    if with.contains(&Feature::Http) {
        config_keys.push("\"url\"");
    }
    if with.contains(&Feature::Client) {
        config_keys.push("\"service\"");
    }
    let with_flag = match with.is_empty() {
        true => String::new(),
        false => format!(" --with {}", with.iter().map(|f| f.id()).collect::<Vec<_>>().join(",")),
    };
    let flags = test_flags(&with);
    let fill = |text: &str| {
        sections(text, &with)
            .replace("{{config_keys}}", &config_keys.join(", "))
            .replace("{{calls}}", &expected_calls(&with))
            .replace("{{with_flag}}", &with_flag)
            .replace("{{test_flags}}", &flags)
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sluice}}", &checkout_text)
            .replace("{{lang}}", lang.id())
            .replace("{{language}}", lang.display())
    };
    let extra = with.iter().flat_map(|f| feature_files(*f));
    for (path, text) in lang.files().iter().chain(COMMON).chain(extra) {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, fill(text)).with_context(|| format!("cannot write {}", target.display()))?;
    }
    println!("created {} plugin `{name}` in {}", lang.display(), dir.display());
    println!(
        "next:   sluice plugin build {0} && cd {0} && sluice plugin test {name}.wasm --events events.jsonl{flags} --expect expected.jsonl",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_kept_or_dropped_by_feature() {
        let text = "a{{#state}}S{{/state}}b{{#http}}H\n{{/http}}c{{#state}}s{{/state}}";
        assert_eq!(sections(text, &[]), "abc");
        assert_eq!(sections(text, &[Feature::State]), "aSbcs");
        assert_eq!(sections(text, &[Feature::Http, Feature::State]), "aSbH\ncs");
    }

    #[test]
    fn the_calls_expected_count_their_keys_in_order() {
        assert_eq!(expected_calls(&[Feature::State]), "");
        assert_eq!(expected_calls(&[Feature::Client]), r#","calls":[{"target":"lookup","path":"lookup","idempotency_key":"hello:0"}]"#);
        let both = expected_calls(&[Feature::Http, Feature::Client]);
        assert!(
            both.contains(r#""path":"/lookup","status":200,"idempotency_key":"hello:0""#)
                && both.ends_with(r#""idempotency_key":"hello:1"}]"#),
            "{both}"
        );
        assert_eq!(test_flags(&[Feature::Http, Feature::Client]), " --http-replies http.json --replies replies.json");
    }

    #[test]
    fn every_template_has_balanced_parts() {
        let all = Lang::value_variants().iter().flat_map(|l| l.files().iter()).chain(COMMON).map(|(_, text)| *text);
        for text in all {
            for feature in Feature::ALL {
                let opened = text.matches(&format!("{{{{#{}}}}}", feature.id())).count();
                let closed = text.matches(&format!("{{{{/{}}}}}", feature.id())).count();
                assert_eq!(opened, closed, "{}: {text}", feature.id());
            }
            assert!(!sections(text, &Feature::ALL).contains("{{#") && !sections(text, &[]).contains("{{/"));
        }
    }
}
