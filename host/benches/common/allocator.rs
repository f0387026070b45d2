//! The allocator the `sluice` binary ships with (`host/src/main.rs`), so a
//! bench allocates as the host does. `dispatch` wraps it in a counting
//! allocator of its own instead.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
