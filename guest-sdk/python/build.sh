#!/usr/bin/env bash
# Builds a Python Sluice plugin into a component with componentize-py.
#
#   bash guest-sdk/python/build.sh APP_DIR MODULE OUT.wasm
#
# MODULE (a .py file in APP_DIR, without the extension) defines `Handler`,
# usually `Handler = export(MyPlugin)` with the SDK (the package
# sluice_plugin, found here; `from sluice_plugin import state` for the
# pipeline's state, `http` for outbound HTTP: the world imports only what
# the app imports, see capabilities.py). The first run makes a venv with
# the pinned componentize-py (requirements.txt) in $SLUICE_CACHE/py
# (default: <repo>/.cache/py), ~15 s.
# A build takes ~15 s and makes an ~18 MB component (CPython inside).
set -euo pipefail

sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$sdk/../.." && pwd)"
cache="${SLUICE_CACHE:-$root/.cache}/py"

[[ $# -eq 3 ]] || { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
app_dir="$1"
module="$2"
out="$3"
[[ -f "$app_dir/$module.py" ]] || { echo "no such file: $app_dir/$module.py" >&2; exit 1; }

if ! cmp -s "$sdk/requirements.txt" "$cache/requirements.txt" || [[ ! -x "$cache/bin/componentize-py" ]]; then
    command -v python3 >/dev/null || { echo "python3 is needed to install componentize-py" >&2; exit 1; }
    echo "==> installing componentize-py into $cache (pip, first time only, ~15 s)" >&2
    python3 -m venv "$cache" >&2
    "$cache/bin/pip" install --quiet --disable-pip-version-check -r "$sdk/requirements.txt" >&2
    cp "$sdk/requirements.txt" "$cache/requirements.txt"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The world: log, the capabilities the app imports (capabilities.py), and
# handler; componentize-py would import every interface of wit/sluice.wit.
# shellcheck source=../tools.sh
source "$root/guest-sdk/tools.sh"
capabilities="$("$cache/bin/python3" "$sdk/capabilities.py" "$app_dir" "$module" "$sdk")"
# shellcheck disable=SC2086 # one capability per word
sluice_world "$work/wit" $capabilities

mkdir -p "$(dirname "$out")"
# The SDK goes on the path after the app, so an app may vendor its own copy.
"$cache/bin/componentize-py" -d "$work/wit" -w plugin componentize \
    -p "$app_dir" -p "$sdk" "$module" -o "$out" >&2
echo "$out"
