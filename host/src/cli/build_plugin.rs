//! `sluice plugin build [DIR]`: builds a plugin project in whatever language
//! it is written in, and says where the component is.
//!
//! Every `plugin new` project carries its own `build.sh` (the language's
//! toolchain steps, pointing at the SDK it was made against), so building is
//! running that script. What this command adds is what a newcomer missed:
//! the language named before a long silent step, the toolchain checked
//! first with the command that installs it, a note of what the first build
//! fetches and how long it takes, a line every few seconds while the build
//! is quiet, and at the end the component's path, size and digest with the
//! command that tests it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice::runtime::digest_of;

use super::new_plugin::Lang;

/// How long a build may stay quiet before we say it still runs.
const QUIET: Duration = Duration::from_secs(10);

/// Which language the project in `dir` is written in, from the files a
/// `plugin new` project of each language has.
pub fn detect(dir: &Path) -> Option<Lang> {
    let has = |name: &str| dir.join(name).is_file();
    let any_with = |extension: &str| {
        std::fs::read_dir(dir).into_iter().flatten().flatten().any(|entry| entry.path().extension().is_some_and(|e| e == extension))
    };
    if has("Cargo.toml") {
        Some(Lang::Rust)
    } else if has("go.mod") {
        Some(Lang::Go)
    } else if any_with("ts") {
        Some(Lang::Ts)
    } else if any_with("js") || any_with("mjs") {
        Some(Lang::Js)
    } else if any_with("py") {
        Some(Lang::Python)
    } else if any_with("c") {
        Some(Lang::C)
    } else {
        None
    }
}

/// The tool a language's build cannot start without, how to get it, and
/// what its first build fetches.
fn toolchain(lang: Lang) -> (&'static str, &'static str, &'static str) {
    match lang {
        Lang::Rust => ("cargo", "install Rust with rustup (https://rustup.rs)", "the first build adds the wasm32-wasip2 target and compiles the dependencies: 1–3 min"),
        Lang::Js | Lang::Ts => ("npm", "install Node.js 20 or newer (it brings npm)", "the first build installs jco and componentize-js from npm into the checkout's .cache/: ~1 min"),
        Lang::Python => ("python3", "install Python 3.10 or newer", "the first build installs componentize-py from PyPI into a venv in the checkout's .cache/: ~1 min; every build embeds CPython and takes ~15 s"),
        Lang::C => ("clang-16", "on Debian: apt-get install clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32", "the first build compiles wasm-tools and wit-bindgen from crates.io into the checkout's .cache/: ~7 min"),
        Lang::Go => ("go", "install Go 1.24 or newer", "the first build compiles wasm-tools from crates.io into the checkout's .cache/: ~4 min"),
    }
}

/// Whether `program` is on the PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

pub fn build(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        bail!("{} is not a folder: pass the folder of a plugin project (one made by `sluice plugin new`)", dir.display());
    }
    let lang = detect(&dir).with_context(|| {
        format!("cannot tell the language of the project in {}: no Cargo.toml, go.mod, or .ts/.js/.py/.c file", dir.display())
    })?;
    let script = dir.join("build.sh");
    if !script.is_file() {
        bail!(
            "{} has no build.sh: `sluice plugin build` runs the one `sluice plugin new --lang {}` writes; make a project with it and copy your code in",
            dir.display(),
            lang.id()
        );
    }
    let (tool, install, first_time) = toolchain(lang);
    if !on_path(tool) {
        bail!("building a {} plugin needs `{tool}`, which is not on the PATH: {install}", lang.display());
    }
    eprintln!("building the {} plugin in {} with build.sh ({first_time})", lang.display(), dir.display());
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg("build.sh")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run bash {}", script.display()))?;
    let mut stdout = child.stdout.take().context("the build's stdout")?;
    let (done, finished) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let read = stdout.read_to_string(&mut text);
        let _ = done.send(());
        read.map(|_| text)
    });
    while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(QUIET) {
        eprintln!("… still building ({}s)", started.elapsed().as_secs());
    }
    let status = child.wait().context("waiting for build.sh")?;
    let printed = reader.join().map_err(|_| anyhow::anyhow!("the thread reading build.sh's output panicked"))?.unwrap_or_default();
    if !status.success() {
        bail!("{} failed ({status}){}", script.display(), last_lines(&printed));
    }
    // Every template's build.sh ends by printing the component's path
    // (`NAME.wasm`, relative to the project).
    let printed_path = printed.lines().rev().map(str::trim).find(|line| line.ends_with(".wasm")).with_context(|| {
        format!("build.sh succeeded but printed no component path: it should end by printing the .wasm it wrote{}", last_lines(&printed))
    })?;
    // Shown inside the project folder as given, whether build.sh printed
    // it relative or absolute.
    let component = match (dir.join(printed_path).canonicalize(), dir.canonicalize()) {
        (Ok(full), Ok(project)) if full.parent() == Some(project.as_path()) => full.file_name().map_or(full.clone(), |name| dir.join(name)),
        _ => dir.join(printed_path),
    };
    let bytes = std::fs::metadata(&component)
        .with_context(|| format!("build.sh printed {printed_path}, but there is no {}", component.display()))?
        .len();
    let digest = digest_of(&std::fs::read(&component).with_context(|| format!("cannot read {}", component.display()))?);
    println!("{}", component.display());
    eprintln!(
        "built {} ({} KiB, sha256 {}) in {:.1}s\ntest it: sluice plugin test {} --events {} --expect {}",
        component.display(),
        bytes.div_ceil(1024),
        &digest[..12],
        started.elapsed().as_secs_f64(),
        component.display(),
        dir.join("events.jsonl").display(),
        dir.join("expected.jsonl").display(),
    );
    Ok(ExitCode::SUCCESS)
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    match lines.len() {
        0 => String::new(),
        n => format!(":\n{}", lines[n.saturating_sub(20)..].join("\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_template_language() -> std::io::Result<()> {
        let cases: [(&[&str], Lang); 6] = [
            (&["Cargo.toml", "src.rs"], Lang::Rust),
            (&["go.mod", "main.go"], Lang::Go),
            (&["plugin.ts", "build.sh"], Lang::Ts),
            (&["plugin.js"], Lang::Js),
            (&["app.py"], Lang::Python),
            (&["plugin.c"], Lang::C),
        ];
        for (files, lang) in cases {
            let dir = tempfile::tempdir()?;
            for file in files {
                std::fs::write(dir.path().join(file), "")?;
            }
            assert_eq!(detect(dir.path()), Some(lang), "{files:?}");
        }
        let empty = tempfile::tempdir()?;
        assert_eq!(detect(empty.path()), None);
        Ok(())
    }
}
