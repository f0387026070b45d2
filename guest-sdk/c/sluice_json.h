// JSON for Sluice C plugins: cJSON (vendor/cjson, MIT, built with the
// plugin), plus what a plugin would otherwise have to write around it.
//
// Use cJSON's own API on the values (cJSON_GetObjectItemCaseSensitive,
// cJSON_IsString, cJSON_CreateString, cJSON_Delete…); parse with
// sluice_json_parse rather than cJSON_Parse, because it reads a payload the
// way the Rust, JavaScript, Python and Go SDKs read one:
// - it refuses what RFC 8259 refuses and cJSON lets through: invalid UTF-8
//   and raw control characters in strings;
// - it refuses a string holding U+0000 (`"\u0000"`), which a cJSON (C)
//   string cannot hold: cJSON would cut the string there without a word;
// - a repeated key keeps its first position and its last value (cJSON
//   keeps both, and its lookups find the first);
// - at most 128 nested arrays and objects (CJSON_NESTING_LIMIT, set by
//   build.sh: serde_json's limit, and a bound on the C stack).
// Numbers are doubles (cJSON's): integers beyond 2^53 lose precision, as in
// JavaScript; they are written with 15 significant digits when those read
// back as the same double, else 17 (exact: vendor/cjson/README.md has the
// one-line patch that makes it so).
#ifndef SLUICE_JSON_H
#define SLUICE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cJSON.h"

// Parses one JSON document of `len` bytes (no NUL needed). NULL on error,
// with a message naming the byte offset in `err` (e.g. "invalid UTF-8 at
// byte 9"). Free the result with cJSON_Delete.
cJSON *sluice_json_parse(const uint8_t *data, size_t len, char *err, size_t err_cap);

// Sets member `key` of `object` to `value` (taking ownership of it):
// replaces the member in place if there is one, appends it otherwise.
void sluice_json_set(cJSON *object, const char *key, cJSON *value);

// True when `value` is a string equal to the NUL-terminated `text`.
bool sluice_json_is_string(const cJSON *value, const char *text);

#endif
