#!/usr/bin/env bash
# Builds a Go Sluice plugin (a `main` package using sluice/plugin) into a
# component, with the machine's Go (1.24 or newer: go:wasmexport).
#
#   bash guest-sdk/go/build.sh PACKAGE_DIR OUT.wasm
#
# Steps: `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared` makes a core
# module (a WASI preview1 reactor exporting the canonical-ABI functions of
# abi.go); `wasm-tools component embed` adds the WIT world; `wasm-tools
# component new --adapt` turns it into a component, mapping the preview1
# imports of Go's runtime onto WASI 0.2 with the reactor adapter
# (allocating with memory.grow, see below). wasm-tools
# and the adapter come from crates.io on first use (guest-sdk/tools.sh).
set -euo pipefail

sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$sdk/../.." && pwd)"
[[ $# -eq 2 ]] || { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
pkg="$1"
out="$2"
command -v go >/dev/null || { echo "go is needed to build Go plugins (1.24 or newer)" >&2; exit 1; }
# shellcheck source=../tools.sh
source "$root/guest-sdk/tools.sh"
ensure_wasm_tools
ensure_adapter

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$out")"
(cd "$pkg" && GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -ldflags=-s -o "$work/core.wasm" .)
"$WASM_TOOLS" component embed "$root/wit" --world plugin "$work/core.wasm" -o "$work/embedded.wasm"
# --realloc-via-memory-grow: the adapter allocates its state on the first
# WASI call, which Go's runtime makes while it starts (`_initialize`); the
# default, calling the module's cabi_realloc, would re-enter Go before its
# runtime is up and trap ("uninitialized element").
"$WASM_TOOLS" component new "$work/embedded.wasm" --adapt "wasi_snapshot_preview1=$ADAPTER" \
    --realloc-via-memory-grow -o "$out"
echo "$out"
