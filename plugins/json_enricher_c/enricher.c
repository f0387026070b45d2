// json_enricher_c: the C twin of plugins/json_enricher (Rust), same config,
// same outputs on the same events (JSON compared parsed: this one writes
// with cJSON, `2000.0` as `2000`).
//
// Filters and enriches JSON-object events. The object keeps its field order;
// the output has the event's key and headers, with
// `content-type: application/json` replacing any incoming `content-type`.
// A payload that is not a JSON object is rejected (dead-lettered).
//
// Config (all optional; any other key refuses the load):
// - `require`: a field name; events without that field are dropped.
// - `drop_if`: `field=value`; events whose `field` is the string `value` are dropped.
// - `set.<field>`: adds `<field>` with this string value, or overwrites it.
// - `event_id_field`: a field name that receives the event's id.
// - `fail_on`: a field name; an event whose field is the string `retryable`,
//   `reject` or `trap` fails that way (for testing error handling).
// - `accepts`: comma-separated event versions the plugin declares it
//   handles (`order-created@1,order-created@2`, `refund@*`); the host
//   dead-letters the rest as `unsupported`. Default `*`.
//
// Filters look at the incoming object, before any field is set.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

typedef struct {
    char *ptr;
    size_t len;
    bool set;
} text_t;

static struct {
    text_t require, drop_field, drop_value, event_id_field, fail_on;
    text_t *set_fields, *set_values;
    size_t set_count;
    char **accepts; // NULL-terminated
} self;

// A NUL-terminated copy (cJSON takes keys and compares strings as C strings).
static text_t copy(const char *p, size_t n) {
    text_t t = {malloc(n + 1), n, true};
    if (!t.ptr) abort();
    memcpy(t.ptr, p, n);
    t.ptr[n] = '\0';
    return t;
}

static text_t optional(const sluice_config_t *config, const char *key) {
    size_t n;
    const char *v = sluice_config_get(config, key, &n);
    return v ? copy(v, n) : (text_t){0};
}

char *plugin_init(const sluice_config_t *config) {
    static const char *const known[] = {"require", "drop_if", "set.*", "event_id_field", "fail_on", "accepts"};
    char *refusal = sluice_config_deny_unknown(config, known, 6);
    if (refusal) return refusal;
    self.require = optional(config, "require");
    self.event_id_field = optional(config, "event_id_field");
    self.fail_on = optional(config, "fail_on");
    size_t n;
    const char *rule = sluice_config_get(config, "drop_if", &n);
    if (rule) {
        const char *eq = memchr(rule, '=', n);
        if (!eq || eq == rule) return sluice_errorf("`drop_if` must be `field=value`, got `%.*s`", (int)n, rule);
        self.drop_field = copy(rule, (size_t)(eq - rule));
        self.drop_value = copy(eq + 1, n - (size_t)(eq - rule) - 1);
    }
    self.set_fields = calloc(config->len + 1, sizeof(text_t));
    self.set_values = calloc(config->len + 1, sizeof(text_t));
    if (!self.set_fields || !self.set_values) abort();
    for (size_t i = 0; i < config->len; i++) {
        const plugin_string_t *k = &config->ptr[i].f0, *v = &config->ptr[i].f1;
        if (k->len < 4 || memcmp(k->ptr, "set.", 4) != 0) continue;
        if (k->len == 4) return sluice_errorf("`set.` needs a field name, as in `set.team`");
        self.set_fields[self.set_count] = copy((const char *)k->ptr + 4, k->len - 4);
        self.set_values[self.set_count++] = copy((const char *)v->ptr, v->len);
    }
    const char *list = sluice_config_get(config, "accepts", &n);
    if (!list) list = "*", n = 1;
    self.accepts = calloc(n + 2, sizeof(char *)); // at most n/2 + 1 selectors
    if (!self.accepts) abort();
    for (size_t start = 0, count = 0; start <= n;) {
        const char *comma = memchr(list + start, ',', n - start);
        size_t end = comma ? (size_t)(comma - list) : n, a = start, b = end;
        while (a < b && list[a] == ' ') a++;
        while (b > a && list[b - 1] == ' ') b--;
        if (b > a) self.accepts[count++] = copy(list + a, b - a).ptr;
        start = end + 1;
    }
    return NULL;
}

const char *const *plugin_accepts(void) {
    return (const char *const *)self.accepts;
}

sluice_failure_t *plugin_handle(const sluice_event_t *event, sluice_outputs_t *outputs) {
    char err[200];
    cJSON *object = sluice_json_parse(event->payload.ptr, event->payload.len, err, sizeof err);
    if (!object) return sluice_reject("payload is not a JSON object: %s", err);
    if (!cJSON_IsObject(object)) {
        cJSON_Delete(object);
        return sluice_reject("payload is not a JSON object");
    }
    if (self.fail_on.set) {
        const cJSON *how = cJSON_GetObjectItemCaseSensitive(object, self.fail_on.ptr);
        sluice_failure_t *f = NULL;
        if (sluice_json_is_string(how, "retryable"))
            f = sluice_retryable("asked to fail (retryable) by field `%s`", self.fail_on.ptr);
        else if (sluice_json_is_string(how, "reject"))
            f = sluice_reject("asked to fail (reject) by field `%s`", self.fail_on.ptr);
        else if (sluice_json_is_string(how, "trap")) {
            fprintf(stderr, "asked to trap by field `%s`\n", self.fail_on.ptr);
            abort();
        }
        if (f) {
            cJSON_Delete(object);
            return f;
        }
    }
    bool drop = (self.require.set && !cJSON_GetObjectItemCaseSensitive(object, self.require.ptr)) ||
                (self.drop_field.set &&
                 sluice_json_is_string(cJSON_GetObjectItemCaseSensitive(object, self.drop_field.ptr), self.drop_value.ptr));
    if (drop) {
        cJSON_Delete(object);
        return NULL;
    }
    for (size_t i = 0; i < self.set_count; i++)
        sluice_json_set(object, self.set_fields[i].ptr, cJSON_CreateString(self.set_values[i].ptr));
    if (self.event_id_field.set) {
        char *id = copy((const char *)event->id.ptr, event->id.len).ptr;
        sluice_json_set(object, self.event_id_field.ptr, cJSON_CreateString(id));
        free(id);
    }

    sluice_output_t *out = sluice_output_json(outputs, object);
    cJSON_Delete(object);
    if (event->key.is_some) sluice_output_key(out, event->key.val.ptr, event->key.val.len);
    for (size_t i = 0; i < event->headers.len; i++) {
        const sluice_plugin_types_header_t *h = &event->headers.ptr[i];
        if (h->key.len == 12 && memcmp(h->key.ptr, "content-type", 12) == 0) continue;
        sluice_output_header(out, (const char *)h->key.ptr, h->key.len, h->value.ptr, h->value.len);
    }
    sluice_output_header(out, "content-type", 12, "application/json", 16);
    return NULL;
}
