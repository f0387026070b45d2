#!/usr/bin/env bash
# Builds a C Sluice plugin into a component.
#
#   bash guest-sdk/c/build.sh OUT.wasm SOURCE.c [MORE.c…]
#
# Steps: `wit-bindgen c` generates the bindings of world `plugin` of
# sluice:plugin@0.2.0, with wasi:http from guest-sdk/wasi-wit (plugin.h,
# plugin.c, plugin_component_type.o) into a temporary folder; Debian's
# clang compiles them with the sources, the SDK (sluice.c, sluice_json.c),
# the vendored cJSON (vendor/cjson) and wasi-libc as a WASI preview1
# reactor; `wasm-tools component new` wraps the module, mapping wasi-libc's
# preview1 imports (if any are left after linking) onto WASI 0.2 with the
# reactor adapter.
#
# Needs: clang-16, lld-16, wasi-libc, libclang-rt-16-dev-wasm32 (apt), and
# wasm-tools + wit-bindgen-cli (crates.io; installed into .cache/ on first
# use by guest-sdk/tools.sh). CC overrides the compiler.
set -euo pipefail

sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$sdk/../.." && pwd)"
[[ $# -ge 2 ]] || { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out="$1"
shift
cc="${CC:-clang-16}"
command -v "$cc" >/dev/null || {
    echo "$cc is needed to build C plugins (Debian: apt-get install clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32)" >&2
    exit 1
}
# shellcheck source=../tools.sh
source "$root/guest-sdk/tools.sh"
ensure_wasm_tools
ensure_wit_bindgen
ensure_adapter

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# World `plugin` with every capability: the linker drops the bindings (and
# so the imports) a plugin never calls, and `component new` imports only
# what the module imports, so a plugin that never calls sluice_state_*
# (sluice_client_*, sluice_http_request) does not import `state`
# (`client`, wasi:http), nor `metrics` without sluice_counter_add….
sluice_world "$work/wit" state client metrics http manifest
"$WIT_BINDGEN" c "$work/wit" --world plugin --out-dir "$work/gen" >/dev/null
mkdir -p "$(dirname "$out")"
"$cc" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
    -Wno-unused-parameter -Wno-missing-field-initializers \
    -I "$work/gen" -I "$sdk" -I "$sdk/vendor/cjson" -DCJSON_NESTING_LIMIT=128 \
    -o "$work/core.wasm" \
    "$@" "$sdk/sluice.c" "$sdk/sluice_json.c" "$sdk/vendor/cjson/cJSON.c" \
    "$work/gen/plugin.c" "$work/gen/plugin_component_type.o" \
    -Wl,--strip-all
# The adapter is only linked in if the module imports WASI preview1 (stdio
# does; a plugin using no libc I/O imports nothing but the contract).
"$WASM_TOOLS" component new "$work/core.wasm" --adapt "wasi_snapshot_preview1=$ADAPTER" -o "$out"
echo "$out"
