#!/usr/bin/env bash
# Builds a JavaScript (or TypeScript) Sluice plugin into a component.
#
#   bash guest-sdk/js/build.sh ENTRY.js|ENTRY.ts OUT.wasm [--engine quickjs|starlingmonkey]
#
# ENTRY exports `handler` (see sluice.ts) and may `import … from 'sluice'`:
# the SDK is bundled in. The SDK is TypeScript: `tsc` compiles sluice.ts
# into the sluice.js bundled and the sluice.d.ts plugins are checked
# against (in $SLUICE_CACHE/js/sdk/, once per version of the sources). A
# TypeScript entry (.ts, .mts, .cts) is first type-checked by `tsc` (strict)
# against that sluice.d.ts; the bundler then strips its types. The first
# run installs the pinned toolchain (package.json / package-lock.json here:
# jco, componentize-js, typescript) with `npm ci` into $SLUICE_CACHE/js
# (default: <repo>/.cache/js), ~25 s; later runs reuse it.
#
# Engines: quickjs (default; ~1.7 MB, builds in ~3 s, cheaper calls) or
# starlingmonkey (~12 MB, builds in ~10 s, has the web APIs: TextEncoder,
# URL, crypto, fetch…). A plugin that calls `fetch` is built with
# starlingmonkey and wasi:http (outbound HTTP). Both are built with every WASI feature they can do
# without turned off where the backend allows it: see docs/plugins/js.md.
set -euo pipefail

sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$sdk/../.." && pwd)"
cache="${SLUICE_CACHE:-$root/.cache}/js"

[[ $# -ge 2 ]] || { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
entry="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
out="$2"
engine="${4:-}"
[[ "${3:-}" == "" || "${3:-}" == "--engine" ]] || { echo "unknown option $3" >&2; exit 2; }
[[ -f "$entry" ]] || { echo "no such file: $1" >&2; exit 1; }

# (Re)install when the lock file changed since the last install.
if ! cmp -s "$sdk/package-lock.json" "$cache/package-lock.json" || [[ ! -x "$cache/node_modules/.bin/jco" ]] || [[ ! -x "$cache/node_modules/.bin/tsc" ]]; then
    command -v npm >/dev/null || { echo "npm is needed to build JavaScript plugins (Debian: apt-get install nodejs npm)" >&2; exit 1; }
    echo "==> installing jco + componentize-js into $cache (npm ci, first time only, ~30 s)" >&2
    mkdir -p "$cache"
    cp "$sdk/package.json" "$sdk/package-lock.json" "$cache/"
    (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error --cache "$cache/.npm" >&2)
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# shellcheck source=../tools.sh
source "$root/guest-sdk/tools.sh"

# The SDK: sluice.ts compiled by tsc (strict) into sluice.js and the
# generated declarations sluice.d.ts, typed against the declarations
# `jco guest-types` makes from wit/sluice.wit (every interface a plugin may
# import). Kept in $cache/sdk/<digest of the sources>, so worktrees and
# versions sharing the cache do not overwrite each other's; ~2 s, once.
# $cache/sdk/current points at the last one built (for editors: map
# `sluice` to .cache/js/sdk/current/sluice.d.ts).
digest="$(cat "$sdk/sluice.ts" "$root/wit/sluice.wit" "$sdk/package-lock.json" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
gen="$cache/sdk/$digest"
if [[ ! -f "$gen/sluice.js" ]]; then
    echo "==> compiling the SDK (guest-sdk/js/sluice.ts, tsc) into $gen" >&2
    sluice_world "$work/sdk-wit" state client metrics http-failure manifest
    "$cache/node_modules/.bin/jco" guest-types "$work/sdk-wit" --world-name plugin -o "$work/wit-types" >/dev/null
    printf '{"compilerOptions": {"strict": true, "declaration": true, "target": "es2022", "module": "esnext",
  "moduleResolution": "bundler", "lib": ["es2022"], "types": [], "rootDir": %s, "outDir": %s},
  "files": [%s, %s]}\n' "\"$sdk\"" "\"$work/sdk\"" "\"$sdk/sluice.ts\"" "\"$work/wit-types/plugin.d.ts\"" > "$work/tsconfig.sdk.json"
    "$cache/node_modules/.bin/tsc" -p "$work/tsconfig.sdk.json" >&2 || { echo "tsc: type errors in guest-sdk/js/sluice.ts (see above)" >&2; exit 1; }
    mkdir -p "$cache/sdk"
    # Another build may have made the same one meanwhile: either will do.
    mv -T "$work/sdk" "$gen" 2>/dev/null || [[ -f "$gen/sluice.js" ]]
fi
ln -sfn "$digest" "$cache/sdk/current"

# TypeScript: type-check first (the bundler only strips types). `sluice`
# resolves to the SDK's declarations; only the ES library, no DOM or Node
# types (neither engine has those APIs).
case "$entry" in
    *.ts | *.mts | *.cts)
        printf '{"compilerOptions": {"strict": true, "noEmit": true, "target": "es2022", "module": "esnext",
  "moduleResolution": "bundler", "lib": ["es2022"], "types": [], "skipLibCheck": false,
  "paths": {"sluice": [%s]}}, "files": [%s]}\n' "\"$gen/sluice.d.ts\"" "\"$entry\"" > "$work/tsconfig.json"
        "$cache/node_modules/.bin/tsc" -p "$work/tsconfig.json" >&2 || {
            echo "tsc: type errors in $1 (see above)" >&2
            exit 1
        }
        ;;
esac

# The bundler maps `import … from 'sluice'` to the SDK and leaves the WIT
# imports (`sluice:plugin/…`) to componentize.
# Imports of `sluice:` modules have no side effects: one whose bindings
# nothing uses is dropped (how a plugin that does not use `state` does not
# import it).
bundle_config="$work/bundle.mjs"
printf 'export default { resolve: { alias: { sluice: %s } }, external: [/^sluice:/],
  treeshake: { moduleSideEffects: (id, external) => !(external && id.startsWith("sluice:")) } };\n' \
    "\"$gen/sluice.js\"" > "$bundle_config"

# The world: log, the capabilities the bundle imports, and handler.
capabilities="$(node "$sdk/capabilities.mjs" "$cache" "$entry" "$bundle_config")"
# `http` (the plugin calls `fetch`) is the engine's, not a WIT import of
# ours: it picks StarlingMonkey with wasi:http, the only engine with fetch.
http=false
if grep -qx http <<<"$capabilities"; then
    http=true
    capabilities="$(grep -vx http <<<"$capabilities" || true)"
    if [[ "$engine" == quickjs ]]; then
        echo "$1 calls fetch, which only the starlingmonkey engine has (QuickJS has no fetch): build with --engine starlingmonkey" >&2
        exit 1
    fi
    engine=starlingmonkey
fi
engine="${engine:-quickjs}"
# shellcheck disable=SC2086 # one capability per word
sluice_world "$work/wit" $capabilities

mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
case "$engine" in
    quickjs)
        # -d is refused by this backend; it imports a few WASI interfaces
        # (clocks, environment, stdio, exit, insecure-seed; see docs).
        "$cache/node_modules/.bin/jco" componentize "$entry" --wit "$work/wit" -n plugin \
            --backend qjs --backend-qjs-disable-async \
            --bundle --bundle-config "$bundle_config" -o "$out" >&2
        ;;
    starlingmonkey)
        # No fetch event (the plugin world exports none); wasi:http only
        # when the plugin calls fetch (the pipeline must then grant it with
        # `[pipelines.<name>.plugin.http]`).
        disabled=(fetch-event)
        $http || disabled+=(http)
        "$cache/node_modules/.bin/jco" componentize "$entry" --wit "$work/wit" -n plugin \
            -d "${disabled[@]}" \
            --bundle --bundle-config "$bundle_config" -o "$out" >&2
        ;;
    *) echo "unknown engine $engine (quickjs or starlingmonkey)" >&2; exit 2 ;;
esac
echo "$out"
