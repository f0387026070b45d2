//! Filesystem helpers shared by the stages.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably: write a sibling
/// temporary file (named after this process, so two processes never share
/// one), fsync it, rename it over `path`. Readers see the old or the new
/// content, never a torn one. Creates the parent folder if needed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
