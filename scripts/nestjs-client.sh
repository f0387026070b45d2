#!/usr/bin/env bash
# The NestJS client app of the interoperability test (tests/nestjs/): its npm
# packages, installed once into .cache/nestjs-client (git-ignored) from the
# committed package-lock.json, with the apps (*.mjs) copied beside them.
#
#   bash scripts/nestjs-client.sh install   # npm ci, when the lock file changed
#   bash scripts/nestjs-client.sh path      # print the folder to run it from
#
# Needs node (>= 20) and npm; `./dev test` runs `install`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/tests/nestjs"
dest="$root/.cache/nestjs-client"

case "${1:-}" in
    install)
        command -v npm >/dev/null || { echo "npm is not installed (Node.js >= 20 is needed for the NestJS test)" >&2; exit 1; }
        mkdir -p "$dest"
        if ! cmp -s "$src/package-lock.json" "$dest/package-lock.json" || [[ ! -f "$dest/node_modules/.complete" ]]; then
            echo "==> installing the NestJS client's npm packages into $dest" >&2
            cp "$src/package.json" "$src/package-lock.json" "$dest/"
            (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error)
            touch "$dest/node_modules/.complete"
        fi
        cp "$src"/*.mjs "$dest/"
        ;;
    path)
        echo "$dest"
        ;;
    *)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
