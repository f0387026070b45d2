#!/usr/bin/env bash
# Builds and runs the C SDK's native tests (json_test.c: sluice_json.c over
# the vendored cJSON, with the flags guest-sdk/c/build.sh uses). CC
# overrides the compiler (default: cc).
set -euo pipefail
sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"${CC:-cc}" -std=c11 -O1 -Wall -Wextra -Werror -DCJSON_NESTING_LIMIT=128 -I "$sdk" -I "$sdk/vendor/cjson" \
    "$sdk/tests/json_test.c" "$sdk/sluice_json.c" "$sdk/vendor/cjson/cJSON.c" -lm -o "$work/json_test"
"$work/json_test"
