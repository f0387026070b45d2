#include "sluice_json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    size_t len, pos;
    char *err;
    size_t err_cap;
} parser;

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) abort(); // out of memory: trap, the host reports it
    return q;
}

void sj_buf_append(sj_buf *out, const void *data, size_t len) {
    if (out->len + len > out->cap) {
        size_t cap = out->cap ? out->cap * 2 : 64;
        while (cap < out->len + len) cap *= 2;
        out->ptr = xrealloc(out->ptr, cap);
        out->cap = cap;
    }
    memcpy(out->ptr + out->len, data, len);
    out->len += len;
}

static sj_value *fail(parser *ps, const char *what) {
    snprintf(ps->err, ps->err_cap, "%s at byte %zu", what, ps->pos);
    return NULL;
}

static sj_value *new_value(sj_kind kind) {
    sj_value *v = xrealloc(NULL, sizeof *v);
    memset(v, 0, sizeof *v);
    v->kind = kind;
    return v;
}

void sj_free(sj_value *v) {
    if (!v) return;
    free(v->text);
    for (size_t i = 0; v->kind == SJ_ARRAY && i < v->count; i++) sj_free(v->items[i]);
    for (size_t i = 0; v->kind == SJ_OBJECT && i < v->count; i++) {
        free(v->members[i].key);
        sj_free(v->members[i].value);
    }
    free(v->items);
    free(v->members);
    free(v->index);
    free(v);
}

sj_value *sj_string(const char *s, size_t len) {
    sj_value *v = new_value(SJ_STRING);
    v->text = xrealloc(NULL, len);
    memcpy(v->text, s, len);
    v->len = len;
    return v;
}

int sj_is_string(const sj_value *v, const char *s, size_t len) {
    return v && v->kind == SJ_STRING && v->len == len && memcmp(v->text, s, len) == 0;
}

// Objects up to this many members are searched linearly; larger ones
// keep a hash index (built on the insert that passes this count).
#define SJ_INDEX_FROM 8

static size_t key_hash(const char *key, size_t len) { // FNV-1a
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)key[i]) * 0x100000001b3u;
    return (size_t)(h ^ (h >> 32));
}

static int key_is(const sj_member *m, const char *key, size_t key_len) {
    return m->key_len == key_len && memcmp(m->key, key, key_len) == 0;
}

// The position of `key` among obj's members, or obj->count if absent.
static size_t find_member(const sj_value *obj, const char *key, size_t key_len) {
    if (!obj->index) {
        for (size_t i = 0; i < obj->count; i++)
            if (key_is(&obj->members[i], key, key_len)) return i;
        return obj->count;
    }
    size_t mask = obj->index_cap - 1;
    for (size_t slot = key_hash(key, key_len) & mask;; slot = (slot + 1) & mask) {
        size_t at = obj->index[slot];
        if (!at) return obj->count;
        if (key_is(&obj->members[at - 1], key, key_len)) return at - 1;
    }
}

static void index_put(sj_value *obj, size_t position) {
    const sj_member *m = &obj->members[position];
    size_t mask = obj->index_cap - 1;
    size_t slot = key_hash(m->key, m->key_len) & mask;
    while (obj->index[slot]) slot = (slot + 1) & mask;
    obj->index[slot] = position + 1;
}

// Appends a member whose key is not there yet; takes ownership of `key`.
static void append_member(sj_value *obj, char *key, size_t key_len, sj_value *v) {
    if (obj->count == obj->cap) {
        obj->cap = obj->cap ? obj->cap * 2 : 8;
        obj->members = xrealloc(obj->members, obj->cap * sizeof *obj->members);
    }
    size_t position = obj->count++;
    obj->members[position] = (sj_member){key, key_len, v};
    if (obj->count <= SJ_INDEX_FROM) return;
    if (obj->index && obj->count * 2 <= obj->index_cap) {
        index_put(obj, position);
        return;
    }
    size_t cap = 16;
    while (cap < obj->count * 4) cap *= 2;
    free(obj->index);
    obj->index = xrealloc(NULL, cap * sizeof *obj->index);
    memset(obj->index, 0, cap * sizeof *obj->index);
    obj->index_cap = cap;
    for (size_t i = 0; i < obj->count; i++) index_put(obj, i);
}

sj_value *sj_get(const sj_value *obj, const char *key, size_t key_len) {
    if (!obj || obj->kind != SJ_OBJECT) return NULL;
    size_t i = find_member(obj, key, key_len);
    return i < obj->count ? obj->members[i].value : NULL;
}

// Sets `key` to `v`, taking ownership of both: a repeated key keeps its
// position and takes the new value, as serde_json's ordered map does.
static void set_owned(sj_value *obj, char *key, size_t key_len, sj_value *v) {
    size_t i = find_member(obj, key, key_len);
    if (i < obj->count) {
        free(key);
        sj_free(obj->members[i].value);
        obj->members[i].value = v;
        return;
    }
    append_member(obj, key, key_len, v);
}

void sj_set(sj_value *obj, const char *key, size_t key_len, sj_value *v) {
    char *copy = xrealloc(NULL, key_len);
    memcpy(copy, key, key_len);
    set_owned(obj, copy, key_len, v);
}

static void ws(parser *ps) {
    while (ps->pos < ps->len) {
        uint8_t c = ps->p[ps->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
        ps->pos++;
    }
}

static int peek(parser *ps) { return ps->pos < ps->len ? ps->p[ps->pos] : -1; }

static void put_utf8(sj_buf *b, uint32_t c) {
    uint8_t t[4];
    size_t n;
    if (c < 0x80) { t[0] = (uint8_t)c; n = 1; }
    else if (c < 0x800) { t[0] = 0xc0 | (c >> 6); t[1] = 0x80 | (c & 63); n = 2; }
    else if (c < 0x10000) { t[0] = 0xe0 | (c >> 12); t[1] = 0x80 | ((c >> 6) & 63); t[2] = 0x80 | (c & 63); n = 3; }
    else { t[0] = 0xf0 | (c >> 18); t[1] = 0x80 | ((c >> 12) & 63); t[2] = 0x80 | ((c >> 6) & 63); t[3] = 0x80 | (c & 63); n = 4; }
    sj_buf_append(b, t, n);
}

static int hex4(parser *ps, uint32_t *out) {
    if (ps->pos + 4 > ps->len) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = ps->p[ps->pos + i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return 0;
    }
    ps->pos += 4;
    *out = v;
    return 1;
}

// Length of the valid UTF-8 sequence at s (0 if invalid).
static size_t utf8_len(const uint8_t *s, size_t avail) {
    uint8_t b = s[0];
    size_t n;
    uint32_t c;
    if (b < 0x80) return 1;
    if (b >= 0xc2 && b < 0xe0) { n = 2; c = b & 31; }
    else if (b >= 0xe0 && b < 0xf0) { n = 3; c = b & 15; }
    else if (b >= 0xf0 && b < 0xf5) { n = 4; c = b & 7; }
    else return 0;
    if (n > avail) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 63);
    }
    if ((n == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) || (n == 4 && (c < 0x10000 || c > 0x10ffff))) return 0;
    return n;
}

static int parse_string(parser *ps, sj_buf *b) {
    ps->pos++; // opening quote
    for (;;) {
        // A run of plain ASCII goes in with one copy.
        size_t run = ps->pos;
        while (ps->pos < ps->len) {
            uint8_t c = ps->p[ps->pos];
            if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
            ps->pos++;
        }
        if (ps->pos > run) sj_buf_append(b, ps->p + run, ps->pos - run);
        if (ps->pos >= ps->len) return fail(ps, "EOF while parsing a string"), 0;
        uint8_t c = ps->p[ps->pos];
        if (c == '"') { ps->pos++; return 1; }
        if (c < 0x20) return fail(ps, "control character (\\u0000-\\u001F) found while parsing a string"), 0;
        if (c == '\\') {
            ps->pos++;
            int e = peek(ps);
            ps->pos++;
            char simple = 0;
            switch (e) {
            case '"': simple = '"'; break;
            case '\\': simple = '\\'; break;
            case '/': simple = '/'; break;
            case 'b': simple = '\b'; break;
            case 'f': simple = '\f'; break;
            case 'n': simple = '\n'; break;
            case 'r': simple = '\r'; break;
            case 't': simple = '\t'; break;
            case 'u': {
                uint32_t u, v;
                if (!hex4(ps, &u)) return fail(ps, "invalid escape"), 0;
                if (u >= 0xd800 && u <= 0xdfff) {
                    if (u >= 0xdc00 || ps->pos + 2 > ps->len || ps->p[ps->pos] != '\\' || ps->p[ps->pos + 1] != 'u')
                        return fail(ps, "lone leading surrogate in hex escape"), 0;
                    ps->pos += 2;
                    if (!hex4(ps, &v) || v < 0xdc00 || v > 0xdfff) return fail(ps, "lone leading surrogate in hex escape"), 0;
                    u = 0x10000 + ((u - 0xd800) << 10) + (v - 0xdc00);
                }
                put_utf8(b, u);
                continue;
            }
            default:
                return fail(ps, "invalid escape"), 0;
            }
            sj_buf_append(b, &simple, 1);
            continue;
        }
        size_t n = utf8_len(ps->p + ps->pos, ps->len - ps->pos);
        if (!n) return fail(ps, "invalid unicode code point"), 0;
        sj_buf_append(b, ps->p + ps->pos, n);
        ps->pos += n;
    }
}

void sj_format_float(double f, char out[40]) {
    if (f == 0) { strcpy(out, signbit(f) ? "-0.0" : "0.0"); return; }
    if (!isfinite(f)) { strcpy(out, "null"); return; }
    char *o = out;
    if (f < 0) { *o++ = '-'; f = -f; }
    // The shortest %e that reads back as f: the digits ryu would pick.
    char e[40];
    for (int prec = 0; prec < 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec, f);
        if (strtod(e, NULL) == f) break;
    }
    char digits[24];
    size_t length = 0;
    char *p = e;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[length++] = *p;
    while (length > 1 && digits[length - 1] == '0') length--;
    digits[length] = 0;
    int kk = atoi(p + 1) + 1; // the point sits after kk digits
    int k = kk - (int)length;
    if (k >= 0 && kk <= 16) {
        o += sprintf(o, "%s", digits);
        for (int i = 0; i < k; i++) *o++ = '0';
        strcpy(o, ".0");
    } else if (kk > 0 && kk <= 16) {
        memcpy(o, digits, kk);
        o += kk;
        *o++ = '.';
        strcpy(o, digits + kk);
    } else if (kk > -5 && kk <= 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -kk; i++) *o++ = '0';
        strcpy(o, digits);
    } else if (length == 1) {
        sprintf(o, kk - 1 < 0 ? "%se%d" : "%se+%d", digits, kk - 1);
    } else {
        sprintf(o, kk - 1 < 0 ? "%c.%se%d" : "%c.%se+%d", digits[0], digits + 1, kk - 1);
    }
}

// Not inlined: its buffer would sit in every frame of the recursive parse_value.
__attribute__((noinline)) static sj_value *parse_number(parser *ps) {
    size_t start = ps->pos;
    int is_float = 0;
    if (peek(ps) == '-') ps->pos++;
    size_t int_start = ps->pos;
    while (peek(ps) >= '0' && peek(ps) <= '9') ps->pos++;
    if (ps->pos == int_start || (ps->p[int_start] == '0' && ps->pos - int_start > 1)) return fail(ps, "invalid number");
    if (peek(ps) == '.') {
        is_float = 1;
        size_t d = ++ps->pos;
        while (peek(ps) >= '0' && peek(ps) <= '9') ps->pos++;
        if (ps->pos == d) return fail(ps, "invalid number");
    }
    if (peek(ps) == 'e' || peek(ps) == 'E') {
        is_float = 1;
        ps->pos++;
        if (peek(ps) == '+' || peek(ps) == '-') ps->pos++;
        size_t d = ps->pos;
        while (peek(ps) >= '0' && peek(ps) <= '9') ps->pos++;
        if (ps->pos == d) return fail(ps, "invalid number");
    }
    size_t n = ps->pos - start;
    char text[400];
    if (n >= sizeof text) return fail(ps, "number too long");
    memcpy(text, ps->p + start, n);
    text[n] = 0;
    sj_value *v = new_value(SJ_NUMBER);
    if (!is_float) {
        errno = 0;
        int fits;
        if (text[0] == '-') {
            long long x = strtoll(text, NULL, 10);
            fits = errno == 0 && x != 0; // serde_json: `-0` is a float
        } else {
            strtoull(text, NULL, 10);
            fits = errno == 0;
        }
        if (fits) {
            v->text = xrealloc(NULL, n);
            memcpy(v->text, text, n);
            v->len = n;
            return v;
        }
    }
    double f = strtod(text, NULL);
    if (!isfinite(f)) {
        sj_free(v);
        return fail(ps, "number out of range");
    }
    char out[40];
    sj_format_float(f, out);
    v->len = strlen(out);
    v->text = xrealloc(NULL, v->len);
    memcpy(v->text, out, v->len);
    return v;
}

// The value at ps->pos, inside `depth` open arrays and objects. As in
// serde_json, the 128th nested array or object is refused.
static sj_value *parse_value(parser *ps, int depth) {
    int c = peek(ps);
    if (c < 0) return fail(ps, "EOF while parsing a value");
    if (c == '{' || c == '[') {
        if (depth >= 127) return fail(ps, "recursion limit exceeded");
        int obj = c == '{';
        sj_value *v = new_value(obj ? SJ_OBJECT : SJ_ARRAY);
        ps->pos++;
        ws(ps);
        if (peek(ps) == (obj ? '}' : ']')) { ps->pos++; return v; }
        for (;;) {
            ws(ps);
            sj_buf key = {0};
            if (obj) {
                if (peek(ps) != '"') { sj_free(v); return fail(ps, "key must be a string"); }
                if (!parse_string(ps, &key)) { free(key.ptr); sj_free(v); return NULL; }
                ws(ps);
                if (peek(ps) != ':') { free(key.ptr); sj_free(v); return fail(ps, "expected `:`"); }
                ps->pos++;
                ws(ps);
            }
            sj_value *item = parse_value(ps, depth + 1);
            if (!item) { free(key.ptr); sj_free(v); return NULL; }
            if (obj) {
                set_owned(v, (char *)key.ptr, key.len, item);
            } else {
                if (v->count == v->cap) {
                    v->cap = v->cap ? v->cap * 2 : 8;
                    v->items = xrealloc(v->items, v->cap * sizeof *v->items);
                }
                v->items[v->count++] = item;
            }
            ws(ps);
            int d = peek(ps);
            if (d == ',') { ps->pos++; continue; }
            if (d == (obj ? '}' : ']')) { ps->pos++; return v; }
            sj_free(v);
            if (d < 0) return fail(ps, obj ? "EOF while parsing an object" : "EOF while parsing a list");
            return fail(ps, obj ? "expected `,` or `}`" : "expected `,` or `]`");
        }
    }
    if (c == '"') {
        sj_buf b = {0};
        if (!parse_string(ps, &b)) { free(b.ptr); return NULL; }
        sj_value *v = new_value(SJ_STRING);
        v->text = (char *)b.ptr;
        v->len = b.len;
        return v;
    }
    static const struct { const char *word; sj_kind kind; int b; } words[] = {
        {"true", SJ_BOOL, 1}, {"false", SJ_BOOL, 0}, {"null", SJ_NULL, 0}};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(words[i].word);
        if (ps->len - ps->pos >= n && memcmp(ps->p + ps->pos, words[i].word, n) == 0) {
            ps->pos += n;
            sj_value *v = new_value(words[i].kind);
            v->boolean = words[i].b;
            return v;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(ps);
    return fail(ps, "expected value");
}

sj_value *sj_parse(const uint8_t *data, size_t len, char *err, size_t err_cap) {
    parser ps = {data, len, 0, err, err_cap};
    ws(&ps);
    sj_value *v = parse_value(&ps, 0);
    if (!v) return NULL;
    ws(&ps);
    if (ps.pos != len) {
        sj_free(v);
        return fail(&ps, "trailing characters");
    }
    return v;
}

static void write_string(sj_buf *out, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    sj_buf_append(out, "\"", 1);
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)s[i];
        char esc[7];
        size_t n = 2;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            if (c >= 0x20) continue;
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        sj_buf_append(out, s + start, i - start);
        sj_buf_append(out, esc, n);
        start = i + 1;
    }
    sj_buf_append(out, s + start, len - start);
    sj_buf_append(out, "\"", 1);
}

void sj_write(sj_buf *out, const sj_value *v) {
    switch (v->kind) {
    case SJ_NULL: sj_buf_append(out, "null", 4); break;
    case SJ_BOOL: v->boolean ? sj_buf_append(out, "true", 4) : sj_buf_append(out, "false", 5); break;
    case SJ_NUMBER: sj_buf_append(out, v->text, v->len); break;
    case SJ_STRING: write_string(out, v->text, v->len); break;
    case SJ_ARRAY:
        sj_buf_append(out, "[", 1);
        for (size_t i = 0; i < v->count; i++) {
            if (i) sj_buf_append(out, ",", 1);
            sj_write(out, v->items[i]);
        }
        sj_buf_append(out, "]", 1);
        break;
    case SJ_OBJECT:
        sj_buf_append(out, "{", 1);
        for (size_t i = 0; i < v->count; i++) {
            if (i) sj_buf_append(out, ",", 1);
            write_string(out, v->members[i].key, v->members[i].key_len);
            sj_buf_append(out, ":", 1);
            sj_write(out, v->members[i].value);
        }
        sj_buf_append(out, "}", 1);
        break;
    }
}
