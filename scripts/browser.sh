#!/usr/bin/env bash
# A real browser for the console's tests (tests/browser/console.py).
#
#   scripts/browser.sh install   install Debian's chromium and chromium-driver
#                                (apt) and Python's selenium (pip, into
#                                .cache/browser-venv) if missing
#   scripts/browser.sh test      run the browser test against target/debug/sluice;
#                                screenshots go to target/console-*.png
#
# The Rust integration test (tests/tests/console.rs) needs none of this: it
# checks what /ui serves; this drives the page itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.cache/browser-venv

install() {
    if ! command -v chromedriver >/dev/null 2>&1; then
        echo "==> installing chromium and chromium-driver (Debian packages, ~300 MB)" >&2
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || {
            $sudo apt-get update >/dev/null
            $sudo apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null
        }
    fi
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import selenium" 2>/dev/null; then
        echo "==> installing selenium (PyPI) into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "selenium>=4.20,<5"
    fi
}

case "${1:-}" in
    install) install ;;
    test) install; exec "$venv/bin/python" tests/browser/console.py "${@:2}" ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
