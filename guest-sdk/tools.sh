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

_cargo_install() { # crate version binary
    local bin="$_sluice_tools/bin/$3"
    # The same version already on the PATH (e.g. ~/.cargo/bin) will do.
    if [[ ! -x "$bin" ]] && command -v "$3" >/dev/null && "$3" --version 2>/dev/null | grep -q " $2"; then
        command -v "$3"
        return
    fi
    if [[ ! -x "$bin" ]] || ! "$bin" --version 2>/dev/null | grep -q " $2"; then
        echo "==> cargo install --locked $1@$2 into $_sluice_tools (first time only)" >&2
        CARGO_TARGET_DIR="$_sluice_cache/cargo-install-target" \
            cargo install --locked --quiet --root "$_sluice_tools" "$1@$2" >&2
    fi
    echo "$bin"
}

ensure_wasm_tools() { WASM_TOOLS="$(_cargo_install wasm-tools "$WASM_TOOLS_VERSION" wasm-tools)"; }
ensure_wit_bindgen() { WIT_BINDGEN="$(_cargo_install wit-bindgen-cli "$WIT_BINDGEN_VERSION" wit-bindgen)"; }

ensure_adapter() {
    ADAPTER="$_sluice_tools/wasi_snapshot_preview1.reactor-$ADAPTER_VERSION.wasm"
    [[ -f "$ADAPTER" ]] && return 0
    echo "==> fetching wasi-preview1-component-adapter-provider $ADAPTER_VERSION (crates.io)" >&2
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
