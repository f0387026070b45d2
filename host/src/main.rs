//! The `sluice` binary: the stream service and the plugin author's tools.

mod cli;

/// mimalloc, for Rust's allocations and, through its `override` feature,
/// for every `malloc` in the process (librdkafka, OpenSSL, libc's own).
/// A quarter of the broker paths' CPU was glibc's malloc and free: with
/// mimalloc sluice spends ~10–20% less CPU per event on Kafka and core
/// NATS, for ~1 MiB more idle RSS (docs/benchmarks.md, "The allocator").
/// Built without transparent huge pages (`no_thp`): with them, an idle
/// host held 44 MiB instead of 23. `--no-default-features` builds on
/// glibc's malloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
