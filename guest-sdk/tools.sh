# Shared by guest-sdk/c/build.sh and guest-sdk/go/build.sh (sourced): makes
# sure the component tools are there, installing them from crates.io into
# $SLUICE_CACHE/tools (default <repo>/.cache/tools) on first use, and sets
#   WASM_TOOLS   wasm-tools binary (cargo install --locked wasm-tools, ~4 min cold)
#   WIT_BINDGEN  wit-bindgen binary (cargo install --locked wit-bindgen-cli, ~3 min cold)
#   ADAPTER      the WASI preview1 *reactor* adapter, from the crate
#                wasi-preview1-component-adapter-provider (same version as
#                the host's wasmtime), fetched with `cargo fetch`: seconds
# Pinned versions: keep in step with the host's wasmtime and wit-bindgen.
WASM_TOOLS_VERSION=1.263.0
WIT_BINDGEN_VERSION=0.63.0
ADAPTER_VERSION=48.0.8

_sluice_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_sluice_cache="${SLUICE_CACHE:-$_sluice_root/.cache}"
_sluice_tools="$_sluice_cache/tools"

_cargo_install() { # crate version binary minutes
    local bin="$_sluice_tools/bin/$3"
    # The same version already on the PATH (e.g. ~/.cargo/bin) will do.
    if [[ ! -x "$bin" ]] && command -v "$3" >/dev/null && "$3" --version 2>/dev/null | grep -q " $2"; then
        command -v "$3"
        return
    fi
    if [[ ! -x "$bin" ]] || ! "$bin" --version 2>/dev/null | grep -q " $2"; then
        echo "==> compiling $3 $2 from crates.io into $_sluice_tools (first time only, ~$4 min on 2 cores)" >&2
        CARGO_TARGET_DIR="$_sluice_cache/cargo-install-target" \
            cargo install --locked --quiet --root "$_sluice_tools" "$1@$2" >&2
    fi
    echo "$bin"
}

ensure_wasm_tools() { WASM_TOOLS="$(_cargo_install wasm-tools "$WASM_TOOLS_VERSION" wasm-tools 4)"; }
ensure_wit_bindgen() { WIT_BINDGEN="$(_cargo_install wit-bindgen-cli "$WIT_BINDGEN_VERSION" wit-bindgen 3)"; }

ensure_adapter() {
    ADAPTER="$_sluice_tools/wasi_snapshot_preview1.reactor-$ADAPTER_VERSION.wasm"
    [[ -f "$ADAPTER" ]] && return 0
    echo "==> fetching wasi-preview1-component-adapter-provider $ADAPTER_VERSION (crates.io, seconds)" >&2
    local fetch="$_sluice_cache/adapter-fetch"
    mkdir -p "$fetch/src" "$_sluice_tools"
    printf '[package]\nname = "adapter-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nwasi-preview1-component-adapter-provider = "=%s"\n[workspace]\n' \
        "$ADAPTER_VERSION" > "$fetch/Cargo.toml"
    : > "$fetch/src/lib.rs"
    (cd "$fetch" && cargo fetch --quiet >&2)
    local crate
    crate="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/wasi-preview1-component-adapter-provider-"$ADAPTER_VERSION".crate | head -1)"
    tar -xzOf "$crate" "wasi-preview1-component-adapter-provider-$ADAPTER_VERSION/artefacts/wasi_snapshot_preview1.reactor.wasm" > "$ADAPTER.tmp"
    mv "$ADAPTER.tmp" "$ADAPTER"
}

# sluice_world DIR [CAPABILITY…]: writes into DIR a WIT package whose world
# `plugin` imports `log` and the capabilities named (`state`, `client`,
# and `metrics`, which needs no grant but is imported only when used too) from
# sluice:plugin@0.2.0, and `http` (wasi:http/outgoing-handler@0.2.12, the
# version the host's wasmtime-wasi-http implements, with the WASI packages
# it uses from the vendored guest-sdk/wasi-wit), and exports `handler`,
# and `manifest` (the event versions the plugin accepts) when named; build with `--wit DIR` (jco), `-d DIR` (componentize-py), world `plugin`.
#
# Why: componentize-js and componentize-py import every interface of the
# world they are given, used or not, and a plugin importing `state` is
# refused by a pipeline that does not grant it. C and Go build against a
# world with every capability (their linkers drop an import nothing calls,
# and so does Rust's, against wit/sluice.wit directly). The JS and Python
# build scripts name the capabilities a plugin uses by looking at what it
# imports from the SDK (see there).
sluice_world() {
    local dir="$1" capability imports="" exports=""
    shift
    for capability in "$@"; do
        case "$capability" in
            state) imports+="    import sluice:plugin/state@0.2.0;"$'\n' ;;
            client) imports+="    import sluice:plugin/client@0.2.0;"$'\n' ;;
            # Not a capability (no grant needed), imported only when used.
            metrics) imports+="    import sluice:plugin/metrics@0.2.0;"$'\n' ;;
            # Neither: how the plugin's own HTTP requests failed (JS `fetch`).
            http-failure) imports+="    import sluice:plugin/http-failure@0.2.0;"$'\n' ;;
            http)
                imports+="    import wasi:http/outgoing-handler@0.2.12;"$'\n'
                mkdir -p "$dir/deps"
                cp "$_sluice_root"/guest-sdk/wasi-wit/*.wit "$dir/deps/"
                ;;
            # An export, not an import: `accepts` (C and Go always have it,
            # JS and Python when the plugin module exports `manifest`).
            manifest) exports+="    export sluice:plugin/manifest@0.2.0;"$'\n' ;;
            *) echo "unknown capability $capability (state, client, metrics, http-failure, http, manifest)" >&2; return 2 ;;
        esac
    done
    mkdir -p "$dir/deps/sluice-plugin@0.2.0"
    cp "$_sluice_root/wit/sluice.wit" "$dir/deps/sluice-plugin@0.2.0/sluice.wit"
    cat > "$dir/world.wit" <<WIT
// Generated by guest-sdk/tools.sh (sluice_world): the plugin world with only
// the capabilities this plugin uses.
package sluice:sdk;

world plugin {
    import sluice:plugin/log@0.2.0;
${imports}    export sluice:plugin/handler@0.2.0;
${exports}}
WIT
}
