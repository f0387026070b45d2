//! `sluice plugin new`: a plugin project in any supported language that
//! builds (`bash build.sh`) and passes `sluice plugin test … --expect
//! expected.jsonl` as generated. The templates are in `host/templates/`.

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
            Lang::Js => &[
                ("plugin.js", include_str!("../../templates/js/plugin.js")),
                ("build.sh", include_str!("../../templates/js/build.sh")),
            ],
            Lang::Ts => &[
                ("plugin.ts", include_str!("../../templates/ts/plugin.ts")),
                ("build.sh", include_str!("../../templates/ts/build.sh")),
            ],
            Lang::Python => &[
                ("app.py", include_str!("../../templates/python/app.py")),
                ("build.sh", include_str!("../../templates/python/build.sh")),
            ],
            Lang::C => &[
                ("plugin.c", include_str!("../../templates/c/plugin.c")),
                ("build.sh", include_str!("../../templates/c/build.sh")),
            ],
            Lang::Go => &[
                ("go.mod", include_str!("../../templates/go/go.mod")),
                ("main.go", include_str!("../../templates/go/main.go")),
                ("build.sh", include_str!("../../templates/go/build.sh")),
            ],
        }
    }
}

const COMMON: &[(&str, &str)] = &[
    ("events.jsonl", include_str!("../../templates/common/events.jsonl")),
    ("expected.jsonl", include_str!("../../templates/common/expected.jsonl")),
    ("README.md", include_str!("../../templates/common/README.md")),
];

/// Where this binary was built from: the checkout whose `guest-sdk/` the
/// generated project uses, unless `--sdk` says otherwise.
fn default_checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Creates the project `dir` (default: `./NAME`).
pub fn new(lang: Lang, name: &str, dir: Option<&Path>, sdk: Option<&Path>) -> anyhow::Result<ExitCode> {
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
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sluice}}", &checkout_text)
            .replace("{{lang}}", lang.id())
            .replace("{{language}}", lang.display())
    };
    for (path, text) in lang.files().iter().chain(COMMON) {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, fill(text)).with_context(|| format!("cannot write {}", target.display()))?;
    }
    println!("created {} plugin `{name}` in {}", lang.display(), dir.display());
    println!("next:   sluice plugin build {0} && sluice plugin test {0}/plugin.wasm --events {0}/events.jsonl --expect {0}/expected.jsonl", dir.display());
    Ok(ExitCode::SUCCESS)
}
