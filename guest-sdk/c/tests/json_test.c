// Native tests of sluice_json.c, the SDK's glue over cJSON: what it refuses
// that cJSON alone lets through, how it merges repeated keys, and that
// numbers are written back exactly (the vendored patch). Run by ./dev test
// (guest SDK tests) and by hand:
//
//   bash guest-sdk/c/tests/run.sh
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice_json.h"

static int failures;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            fprintf(stderr, "%s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                  \
            fputc('\n', stderr);                           \
            failures++;                                    \
        }                                                  \
    } while (0)

// Parses `in` and writes it back compactly; NULL (with `err` set) if refused.
static char *roundtrip(const char *in, char *err, size_t err_cap) {
    cJSON *v = sluice_json_parse((const uint8_t *)in, strlen(in), err, err_cap);
    if (!v) return NULL;
    char *out = cJSON_PrintUnformatted(v);
    cJSON_Delete(v);
    return out;
}

static void same(const char *in, const char *want) {
    char err[200] = "";
    char *got = roundtrip(in, err, sizeof err);
    CHECK(got && strcmp(got, want) == 0, "%s: got %s, want %s (%s)", in, got ? got : "NULL", want, err);
    free(got);
}

static void refused(const char *in, const char *message) {
    char err[200] = "";
    char *got = roundtrip(in, err, sizeof err);
    CHECK(!got && strcmp(err, message) == 0, "%s: got %s / \"%s\", want refused with \"%s\"", in, got ? got : "NULL", err, message);
    free(got);
}

int main(void) {
    // Field order kept; repeated keys: first position, last value.
    same("{\"b\":1,\"a\":2}", "{\"b\":1,\"a\":2}");
    same("{\"user\":\"first\",\"a\":1,\"user\":\"second\",\"b\":2}", "{\"user\":\"second\",\"a\":1,\"b\":2}");
    same("{\"k\":1,\"x\":0,\"k\":2,\"k\":3}", "{\"k\":3,\"x\":0}");
    same("[{\"a\":1,\"a\":{\"b\":1,\"b\":2}}]", "[{\"a\":{\"b\":2}}]");
    // Numbers: exact doubles (0.30000000000000004 is not 0.3), integers.
    same("[0.30000000000000004,0.1,1.5,2E3,-12,123456789.125,1e16,5e-324,1.7976931348623157e+308]",
         "[0.30000000000000004,0.1,1.5,2000,-12,123456789.125,1e+16,4.94065645841247e-324,1.7976931348623157e+308]");
    // Escapes and UTF-8 pass through.
    same("[\"\\u0041\\n\\u001f \\u00e9\\ud83d\\ude00 \xc3\xa9\"]", "[\"A\\n\\u001f \xc3\xa9\xf0\x9f\x98\x80 \xc3\xa9\"]");
    same(" {\"a\" : [ ] } \n", "{\"a\":[]}");
    // What cJSON alone lets through.
    refused("{\"user\":\"\xff\"}", "invalid UTF-8 at byte 9");
    refused("[\"\xed\xa0\x80\"]", "invalid UTF-8 at byte 2");  // a surrogate, encoded
    refused("[\"\xc0\xaf\"]", "invalid UTF-8 at byte 2");      // overlong
    refused("[\"a\tb\"]", "control character (\\u0000-\\u001F) in a string at byte 3");
    refused("[\"a\\u0000b\"]", "\\u0000 in a string at byte 3: C strings cannot hold it");
    refused("{} x", "trailing characters at byte 3");
    // `\\u0000` is a backslash and text, not U+0000; `\"` does not end a string.
    same("[\"\\\\u0000\",\"\\\"\\t\"]", "[\"\\\\u0000\",\"\\\"\\t\"]");
    // cJSON's own refusals, with the offset.
    refused("not json", "invalid JSON at byte 0");
    refused("{\"a\":", "invalid JSON at byte 4"); // cJSON points where it stopped
    refused("[\"\\ud800\"]", "invalid JSON at byte 2"); // a lone surrogate escape
    // 128 levels parse, the 129th is refused (CJSON_NESTING_LIMIT=128).
    char deep[600];
    for (int levels = 128; levels <= 129; levels++) {
        memset(deep, '[', (size_t)levels);
        memset(deep + levels, ']', (size_t)levels);
        deep[2 * levels] = '\0';
        char err[200] = "";
        char *got = roundtrip(deep, err, sizeof err);
        CHECK((got != NULL) == (levels == 128), "%d levels: %s", levels, got ? "parsed" : err);
        free(got);
    }
    // sluice_json_set replaces in place or appends; is_string compares.
    char err[200];
    cJSON *o = sluice_json_parse((const uint8_t *)"{\"a\":1,\"b\":2}", 13, err, sizeof err);
    CHECK(o, "parse: %s", err);
    if (o) {
        sluice_json_set(o, "a", cJSON_CreateString("x"));
        sluice_json_set(o, "c", cJSON_CreateString("y"));
        char *out = cJSON_PrintUnformatted(o);
        CHECK(out && strcmp(out, "{\"a\":\"x\",\"b\":2,\"c\":\"y\"}") == 0, "set: %s", out ? out : "NULL");
        CHECK(sluice_json_is_string(cJSON_GetObjectItemCaseSensitive(o, "a"), "x"), "is_string a");
        CHECK(!sluice_json_is_string(cJSON_GetObjectItemCaseSensitive(o, "b"), "2"), "is_string b");
        CHECK(!sluice_json_is_string(NULL, "x"), "is_string NULL");
        free(out);
        cJSON_Delete(o);
    }
    if (failures) fprintf(stderr, "%d failure(s)\n", failures);
    else printf("sluice_json: all checks passed\n");
    return failures ? 1 : 0;
}
