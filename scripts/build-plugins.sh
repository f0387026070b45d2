#!/usr/bin/env bash
# Builds the example and test plugins (plugins/*) into WebAssembly components
# and prints their paths. Runnable from any directory.
#
#   bash scripts/build-plugins.sh
#
# CARGO_BUILD_JOBS is honoured, e.g. CARGO_BUILD_JOBS=1 on a busy machine.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target=wasm32-wasip2

if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi

# --target-dir: the components land in plugins/target even when the caller
# exports CARGO_TARGET_DIR for the host workspace.
cargo build --release --target "$target" --manifest-path "$root/plugins/Cargo.toml" --target-dir "$root/plugins/target"

# rustc emits a component (not a core module) for cdylibs on this target.
out="$root/plugins/target/$target/release"
for manifest in "$root"/plugins/*/Cargo.toml; do
    name="$(basename "$(dirname "$manifest")")"
    wasm="$out/$name.wasm"
    [[ -f "$wasm" ]] || { echo "missing $wasm" >&2; exit 1; }
    echo "$wasm"
done
