//! `sluice plugin keygen` and `sluice plugin sign`: the operator's side of
//! signed plugins (see `sluice::runtime::signature`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use sluice::runtime::digest_of;

use sluice::runtime::signature::{self, Signature};

/// Writes `NAME.key` and `NAME.pub` and says what to do with each.
pub fn keygen(stem: &Path) -> anyhow::Result<ExitCode> {
    let (id, private, public) = signature::generate(stem)?;
    println!("key id:  {id}");
    println!("private: {} (mode 0600: keep it off the hosts, it signs plugins)", private.display());
    println!("public:  {} (list it in `[plugins] trusted_keys` on every host)", public.display());
    Ok(ExitCode::SUCCESS)
}

/// Signs `plugin` with `key`, writing the signature line to `out` (default
/// `<plugin>.sig`, where the host looks for it).
pub fn sign(plugin: &Path, key: &Path, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
    if !bytes.starts_with(b"\0asm") {
        anyhow::bail!("{} is not a WebAssembly file (it does not start with `\\0asm`): sign the built component", plugin.display());
    }
    let key = signature::read_signing_key(key)?;
    let digest = digest_of(&bytes);
    let line = Signature::sign(&key, &digest);
    let out = out.unwrap_or_else(|| signature::signature_path(plugin));
    // Written whole under another name, then renamed: a host watching the
    // folder never reads half a signature.
    let mut partial = out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, format!("{line}\n")).with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &out).with_context(|| format!("cannot write {}", out.display()))?;
    println!("signed:    {} (sha256 {digest})", plugin.display());
    println!("key id:    {}", line.key_id);
    println!("signature: {}", out.display());
    Ok(ExitCode::SUCCESS)
}
