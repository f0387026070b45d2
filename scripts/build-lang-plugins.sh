#!/usr/bin/env bash
# Builds the example plugins written in other languages than Rust
# (plugins/*_js, *_ts, *_py, *_c, *_go: the JSON enricher and the stateful
# counter in each, and ask_ts/ask_py/ask_c/ask_go: a service call in
# TypeScript, Python, C and Go; http_enrich_ts/_py/_c/_go: outbound HTTP,
# the twins of plugins/http_enrich; abi_go: the WIT types the others leave
# out, through the Go SDK's hand-written ABI; `shop`: the three services of
# examples/shop, shop_*.wasm) with each
# language's guest-sdk/<lang>/build.sh
# (TypeScript: the JavaScript one),
# into plugins/target/components/<name>.wasm, and prints their paths.
#
#   bash scripts/build-lang-plugins.sh [js] [ts] [python] [c] [go] [shop]   # default: all six
#
# A plugin is rebuilt only when its sources, its SDK or the WIT changed (a
# stamp of their sha256 sits next to the component), so a second run takes
# about a second. The first run installs each toolchain into .cache/
# (npm ci, a pip venv, cargo install wasm-tools and wit-bindgen-cli); see
# docs/plugins/README.md for what each costs.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/plugins/target/components"
mkdir -p "$out"
langs=("$@")
[[ ${#langs[@]} -gt 0 ]] || langs=(js ts python c go shop)

# sha256 over every file under the given paths (sorted), for the stamp.
fingerprint() {
    find "$@" -type f -not -path '*/target/*' -not -path '*/__pycache__/*' -not -name '*.wasm' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

# build NAME LANG_SDK_DIR COMMAND...: runs COMMAND unless the stamp matches.
# The sources are plugins/NAME, or $plugin_dir when set.
build() {
    local name="$1" sdk="$2"
    shift 2
    local wasm="$out/$name.wasm" stamp="$out/$name.stamp" sum
    sum="$(fingerprint "${plugin_dir:-$root/plugins/$name}" "$root/guest-sdk/$sdk" "$root/guest-sdk/tools.sh" "$root/guest-sdk/wasi-wit" "$root/wit")"
    if [[ -f "$wasm" && -f "$stamp" && "$(cat "$stamp")" == "$sum" ]]; then
        echo "$wasm"
        return
    fi
    echo "==> building $name" >&2
    rm -f "$stamp"
    "$@" >/dev/null
    echo "$sum" > "$stamp"
    echo "$wasm"
}

for lang in "${langs[@]}"; do
    case "$lang" in
        js)
            build json_enricher_js js bash "$root/guest-sdk/js/build.sh" "$root/plugins/json_enricher_js/enricher.js" "$out/json_enricher_js.wasm"
            build counter_js js bash "$root/guest-sdk/js/build.sh" "$root/plugins/counter_js/counter.js" "$out/counter_js.wasm"
            ;;
        ts)
            build json_enricher_ts js bash "$root/guest-sdk/js/build.sh" "$root/plugins/json_enricher_ts/enricher.ts" "$out/json_enricher_ts.wasm"
            build counter_ts js bash "$root/guest-sdk/js/build.sh" "$root/plugins/counter_ts/counter.ts" "$out/counter_ts.wasm"
            build ask_ts js bash "$root/guest-sdk/js/build.sh" "$root/plugins/ask_ts/ask.ts" "$out/ask_ts.wasm"
            build http_enrich_ts js bash "$root/guest-sdk/js/build.sh" "$root/plugins/http_enrich_ts/enrich.ts" "$out/http_enrich_ts.wasm"
            ;;
        python)
            build json_enricher_py python bash "$root/guest-sdk/python/build.sh" "$root/plugins/json_enricher_py" app "$out/json_enricher_py.wasm"
            build counter_py python bash "$root/guest-sdk/python/build.sh" "$root/plugins/counter_py" app "$out/counter_py.wasm"
            build ask_py python bash "$root/guest-sdk/python/build.sh" "$root/plugins/ask_py" app "$out/ask_py.wasm"
            build http_enrich_py python bash "$root/guest-sdk/python/build.sh" "$root/plugins/http_enrich_py" app "$out/http_enrich_py.wasm"
            ;;
        c)
            build json_enricher_c c bash "$root/guest-sdk/c/build.sh" "$out/json_enricher_c.wasm" "$root/plugins/json_enricher_c/enricher.c"
            build counter_c c bash "$root/guest-sdk/c/build.sh" "$out/counter_c.wasm" "$root/plugins/counter_c/counter.c"
            build ask_c c bash "$root/guest-sdk/c/build.sh" "$out/ask_c.wasm" "$root/plugins/ask_c/ask.c"
            build http_enrich_c c bash "$root/guest-sdk/c/build.sh" "$out/http_enrich_c.wasm" "$root/plugins/http_enrich_c/enrich.c"
            ;;
        go)
            build json_enricher_go go bash "$root/guest-sdk/go/build.sh" "$root/plugins/json_enricher_go" "$out/json_enricher_go.wasm"
            build counter_go go bash "$root/guest-sdk/go/build.sh" "$root/plugins/counter_go" "$out/counter_go.wasm"
            build ask_go go bash "$root/guest-sdk/go/build.sh" "$root/plugins/ask_go" "$out/ask_go.wasm"
            build http_enrich_go go bash "$root/guest-sdk/go/build.sh" "$root/plugins/http_enrich_go" "$out/http_enrich_go.wasm"
            build abi_go go bash "$root/guest-sdk/go/build.sh" "$root/plugins/abi_go" "$out/abi_go.wasm"
            ;;
        shop)
            plugin_dir="$root/examples/shop/order" build shop_order js bash "$root/guest-sdk/js/build.sh" "$root/examples/shop/order/order.ts" "$out/shop_order.wasm"
            plugin_dir="$root/examples/shop/inventory" build shop_inventory python bash "$root/guest-sdk/python/build.sh" "$root/examples/shop/inventory" app "$out/shop_inventory.wasm"
            plugin_dir="$root/examples/shop/notification" build shop_notification go bash "$root/guest-sdk/go/build.sh" "$root/examples/shop/notification" "$out/shop_notification.wasm"
            ;;
        *) echo "unknown language $lang (js, ts, python, c, go, shop)" >&2; exit 2 ;;
    esac
done
