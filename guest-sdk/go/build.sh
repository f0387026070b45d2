#!/usr/bin/env bash
# Builds a Go Sluice plugin (a `main` package using sluice/plugin) into a
# component, with the machine's Go (1.24 or newer: go:wasmexport).
#
#   bash guest-sdk/go/build.sh PACKAGE_DIR OUT.wasm
#
# Steps: `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared` makes a core
# module (a WASI preview1 reactor exporting the canonical-ABI functions of
# abi*.go); cmd/adapterrealloc adds `cabi_realloc_adapter`, which gives the
# adapter memory inside Go's data segment (see adapter_arena.go);
# `wasm-tools component embed` adds the WIT world (wasi:http from
# guest-sdk/wasi-wit); `wasm-tools component new --adapt` turns it into a
# component, mapping the preview1 imports of Go's runtime onto WASI 0.2
# with the reactor adapter. wasm-tools and the adapter come from crates.io
# on first use (guest-sdk/tools.sh).
set -euo pipefail

sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$sdk/../.." && pwd)"
[[ $# -eq 2 ]] || { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
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
# The adapter takes its state and stack (two 64 KiB blocks) on the first
# WASI call, which Go's runtime makes while it starts (`_initialize`). Not
# with --realloc-via-memory-grow: Go's heap later grows over pages taken
# behind its back (the traps Go plugins used to have). Not from the Go
# export cabi_realloc either: that would re-enter Go before its runtime is
# up. wit-component gives the adapter `cabi_realloc_adapter` when the module
# exports it: a bump allocator over an array in Go's data segment, added here
# (built natively with the same Go; the environment's GOOS/GOARCH are reset).
(cd "$sdk" && GOOS= GOARCH= GOFLAGS= go run ./cmd/adapterrealloc "$work/core.wasm" "$work/core-adapted.wasm")
# World `plugin` with every capability: `component new` imports only what
# the module imports, and Go's linker drops the imports nothing calls, so a
# plugin that never calls plugin.State does not import `state` (nor
# `client` without plugin.Client, nor `metrics` without plugin.Metrics, nor
# wasi:http without plugin.HTTP).
sluice_world "$work/wit" state client metrics http manifest
"$WASM_TOOLS" component embed "$work/wit" --world plugin "$work/core-adapted.wasm" -o "$work/embedded.wasm"
"$WASM_TOOLS" component new "$work/embedded.wasm" --adapt "wasi_snapshot_preview1=$ADAPTER" -o "$out"
echo "$out"
