// The SDK's glue over cJSON (see sluice_json.h for why each part exists).
#include "sluice_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The length of the UTF-8 sequence starting at p[0] (at most `left` bytes),
// or 0 when it is not valid UTF-8 (overlong forms, surrogates and code
// points past U+10FFFF included).
static size_t utf8_sequence(const uint8_t *p, size_t left) {
    uint8_t b = p[0];
    size_t n;
    uint32_t c;
    if (b < 0x80) return 1;
    if (b >= 0xc2 && b < 0xe0) n = 2, c = b & 0x1f;
    else if (b >= 0xe0 && b < 0xf0) n = 3, c = b & 0x0f;
    else if (b >= 0xf0 && b < 0xf5) n = 4, c = b & 0x07;
    else return 0;
    if (n > left) return 0;
    for (size_t k = 1; k < n; k++) {
        if ((p[k] & 0xc0) != 0x80) return 0;
        c = (c << 6) | (p[k] & 0x3f);
    }
    if ((n == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) || (n == 4 && (c < 0x10000 || c > 0x10ffff))) return 0;
    return n;
}

// What cJSON lets through and the other SDKs refuse: invalid UTF-8
// anywhere, raw control characters in strings, and `\u0000` in a string
// (which a C string cannot hold). One pass over the bytes; false with a
// message in `err` on the first.
static bool check_text(const uint8_t *data, size_t len, char *err, size_t err_cap) {
    bool in_string = false;
    for (size_t i = 0; i < len;) {
        uint8_t b = data[i];
        if (b >= 0x80) {
            size_t n = utf8_sequence(data + i, len - i);
            if (!n) {
                snprintf(err, err_cap, "invalid UTF-8 at byte %zu", i);
                return false;
            }
            i += n;
            continue;
        }
        if (b == '"') {
            in_string = !in_string;
        } else if (in_string && b < 0x20) {
            snprintf(err, err_cap, "control character (\\u0000-\\u001F) in a string at byte %zu", i);
            return false;
        } else if (in_string && b == '\\') {
            if (i + 5 < len && memcmp(data + i + 1, "u0000", 5) == 0) {
                snprintf(err, err_cap, "\\u0000 in a string at byte %zu: C strings cannot hold it", i);
                return false;
            }
            i += 2; // the escaped character (`\"` does not end the string)
            continue;
        }
        i++;
    }
    return true;
}

static int by_key(const void *a, const void *b) {
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string, y->string);
}

// Repeated keys of every object under `value`: the first member takes the
// last one's value, the others go. Sorting finds them in O(n log n) (a
// lookup per member would cost n²/2 comparisons on a wide object); qsort
// is not stable, so ties are told apart by position.
static void merge_repeated_keys(cJSON *value) {
    if (!cJSON_IsObject(value) && !cJSON_IsArray(value)) return;
    size_t n = 0;
    for (cJSON *c = value->child; c; c = c->next) {
        merge_repeated_keys(c);
        n++;
    }
    if (!cJSON_IsObject(value) || n < 2) return;
    cJSON **sorted = malloc(n * sizeof *sorted);
    if (!sorted) abort(); // out of memory: a trap, reported by the host
    size_t i = 0;
    for (cJSON *c = value->child; c; c = c->next) sorted[i++] = c;
    qsort(sorted, n, sizeof *sorted, by_key);
    for (size_t start = 0; start < n;) {
        size_t end = start + 1;
        while (end < n && strcmp(sorted[start]->string, sorted[end]->string) == 0) end++;
        if (end - start > 1) {
            // The run's members in document order: first and last.
            cJSON *first = NULL, *last = NULL;
            for (cJSON *c = value->child; c; c = c->next) {
                if (strcmp(c->string, sorted[start]->string) != 0) continue;
                if (!first) first = c;
                last = c;
            }
            for (cJSON *c = first->next; c;) {
                cJSON *next = c->next;
                if (c != last && strcmp(c->string, first->string) == 0) cJSON_Delete(cJSON_DetachItemViaPointer(value, c));
                c = next;
            }
            cJSON_DetachItemViaPointer(value, last);
            cJSON_ReplaceItemViaPointer(value, first, last);
        }
        start = end;
    }
    free(sorted);
}

cJSON *sluice_json_parse(const uint8_t *data, size_t len, char *err, size_t err_cap) {
    if (!check_text(data, len, err, err_cap)) return NULL;
    const char *end = NULL;
    cJSON *value = cJSON_ParseWithLengthOpts((const char *)data, len, &end, false);
    if (!value) {
        const char *at = cJSON_GetErrorPtr();
        size_t offset = at && at >= (const char *)data ? (size_t)(at - (const char *)data) : 0;
        snprintf(err, err_cap, offset >= len ? "unexpected end of JSON at byte %zu" : "invalid JSON at byte %zu", offset);
        return NULL;
    }
    for (size_t i = (size_t)(end - (const char *)data); i < len; i++) {
        if (data[i] != ' ' && data[i] != '\t' && data[i] != '\n' && data[i] != '\r') {
            cJSON_Delete(value);
            snprintf(err, err_cap, "trailing characters at byte %zu", i);
            return NULL;
        }
    }
    merge_repeated_keys(value);
    return value;
}

void sluice_json_set(cJSON *object, const char *key, cJSON *value) {
    // Replacing names the value `key`, frees the old member and keeps its
    // position; without one, the value is appended.
    if (cJSON_ReplaceItemInObjectCaseSensitive(object, key, value)) return;
    if (!cJSON_AddItemToObject(object, key, value)) abort(); // out of memory (or not an object): a trap
}

bool sluice_json_is_string(const cJSON *value, const char *text) {
    return cJSON_IsString(value) && strcmp(value->valuestring, text) == 0;
}
