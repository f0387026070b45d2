// JSON for Sluice C plugins that round-trips like serde_json in the Rust SDK:
// objects keep their field order (a repeated key keeps its first position
// and its last value), strings are written with serde_json's escapes, and
// numbers are re-formatted by its rules (integers exact within i64/u64,
// anything else as the shortest f64 written as serde_json does: 1.5, 100000.0,
// 1e+16, 1.2e-7). So the same input gives the same bytes as a Rust plugin.
#ifndef SLUICE_JSON_H
#define SLUICE_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum { SJ_NULL, SJ_BOOL, SJ_NUMBER, SJ_STRING, SJ_ARRAY, SJ_OBJECT } sj_kind;

typedef struct sj_value sj_value;

typedef struct {
    char *key;          // UTF-8, not NUL-terminated
    size_t key_len;
    sj_value *value;
} sj_member;

struct sj_value {
    sj_kind kind;
    int boolean;
    char *text;         // SJ_STRING: UTF-8 bytes; SJ_NUMBER: canonical text
    size_t len;
    sj_value **items;   // SJ_ARRAY
    sj_member *members; // SJ_OBJECT, in field order
    size_t count, cap;
    // SJ_OBJECT with more than a few members: a hash table of member
    // positions + 1 (0: empty slot), so that looking a key up or setting one
    // does not scan every member (parsing an object of n fields would
    // otherwise cost n²/2 key comparisons).
    size_t *index;
    size_t index_cap;   // a power of two, at least twice `count`
};

typedef struct {
    uint8_t *ptr;
    size_t len, cap;
} sj_buf;

// Parses one JSON value. NULL on error, with a message in `err`.
sj_value *sj_parse(const uint8_t *data, size_t len, char *err, size_t err_cap);
void sj_free(sj_value *v);
// The member `key` of an object, or NULL.
sj_value *sj_get(const sj_value *obj, const char *key, size_t key_len);
// Sets `key` (overwriting in place, or appending); takes ownership of `v`.
void sj_set(sj_value *obj, const char *key, size_t key_len, sj_value *v);
sj_value *sj_string(const char *s, size_t len);
// True when `v` is a string equal to s[0..len).
int sj_is_string(const sj_value *v, const char *s, size_t len);
// Appends `v` as compact JSON.
void sj_write(sj_buf *out, const sj_value *v);
void sj_buf_append(sj_buf *out, const void *data, size_t len);
// `f` formatted as serde_json writes an f64.
void sj_format_float(double f, char out[40]);

#endif
