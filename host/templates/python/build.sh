#!/usr/bin/env bash
# Builds {{name}}.wasm with componentize-py (CPython inside, ~18 MB).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash "{{sluice}}/guest-sdk/python/build.sh" . app {{name}}.wasm
