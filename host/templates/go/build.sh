#!/usr/bin/env bash
# Builds {{name}}.wasm with Go (wasip1, go:wasmexport) and wasm-tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash "{{sluice}}/guest-sdk/go/build.sh" . {{name}}.wasm
