#!/usr/bin/env bash
# Builds {{name}}.wasm with clang (wasm32-wasi), wit-bindgen and wasm-tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash "{{sluice}}/guest-sdk/c/build.sh" {{name}}.wasm plugin.c
