//! Links the `sluice` binary with packed relative relocations (`DT_RELR`)
//! where the C library can load them.
//!
//! Why: the binary is position independent (so ASLR covers it), and the
//! dynamic loader applies ~80,000 relative relocations at every start. As
//! `RELA` records they are a 1.9 MB table that the loader reads whole, and
//! those pages stay in the process's RSS for its life: 1.6–1.9 MiB of an
//! idle host's ~20 (docs/benchmarks.md, "Idle RSS under 20 MiB"). As
//! `RELR` the same relocations are a bitmap of a few KiB. Nothing else
//! changes: same code, same ASLR.
//!
//! Only when building for the machine that runs the build script with
//! glibc ≥ 2.36, the first to load `RELR` (an older one refuses the binary
//! with "GLIBC_ABI_DT_RELR not found"); a cross build or another C library
//! links as before. `SLUICE_LINK_RELR=0` turns it off.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SLUICE_LINK_RELR");
    if std::env::var("SLUICE_LINK_RELR").is_ok_and(|v| v == "0") {
        return;
    }
    let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if native && linux_gnu && glibc_loads_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// glibc ≥ 2.36 on this machine (the target, since the build is native).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_loads_relr() -> bool {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    let mut parts = version.to_str().unwrap_or("").split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_loads_relr() -> bool {
    false
}
