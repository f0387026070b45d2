#!/usr/bin/env bash
# Type-checks plugin.ts (tsc) and builds {{name}}.wasm with jco/componentize-js
# (QuickJS); pass `--engine starlingmonkey` for the SpiderMonkey-based engine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash "{{sluice}}/guest-sdk/js/build.sh" plugin.ts {{name}}.wasm "$@"
