// counter_c: the C twin of plugins/counter (Rust): counts events per key in
// the pipeline's state (the `state` capability) and outputs the new count,
// with the same outputs and failures.
//
// For each event, the key is the event's key (or, without one, its payload
// up to the first `:`): `count:<key>` is incremented by one, and one output
// is returned with the same key and the payload `<key>=<count>`.
//
// Payload rules, to test that failed attempts leave no trace (each
// increments first, then fails):
// - `...:retry-once`: a retryable error on the first attempt;
// - `...:reject`: rejected (dead-lettered).
//
// Metrics, recorded on every attempt before it can fail (a retried event
// counts twice): counter `counted` labelled `key`, and histogram
// `payload_bytes` of each payload's size.
//
// Config: `prefix` (optional, default `count:`): the state key prefix.
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

static char *prefix;
static size_t prefix_len;

char *plugin_init(const sluice_config_t *config) {
    static const char *const known[] = {"prefix"};
    char *refusal = sluice_config_deny_unknown(config, known, 1);
    if (refusal) return refusal;
    const char *p = sluice_config_get(config, "prefix", &prefix_len);
    if (!p) {
        p = "count:";
        prefix_len = strlen(p);
    }
    prefix = malloc(prefix_len ? prefix_len : 1);
    if (!prefix) abort();
    memcpy(prefix, p, prefix_len);
    return NULL;
}

static bool ends_with(const char *text, size_t len, const char *suffix) {
    size_t n = strlen(suffix);
    return len >= n && memcmp(text + len - n, suffix, n) == 0;
}

sluice_failure_t *plugin_handle(const sluice_event_t *event, sluice_outputs_t *outputs) {
    const char *text = (const char *)event->payload.ptr;
    size_t len = event->payload.len;
    while (len && (text[len - 1] == ' ' || (text[len - 1] >= '\t' && text[len - 1] <= '\r'))) len--;
    const char *key = text;
    size_t key_len;
    if (event->key.is_some) {
        key = (const char *)event->key.val.ptr;
        key_len = event->key.val.len;
    } else {
        const char *colon = memchr(text, ':', len);
        key_len = colon ? (size_t)(colon - text) : len;
    }

    sluice_label_t labels[] = {{"key", key, key_len}};
    sluice_counter_add("counted", labels, 1, 1);
    sluice_histogram_observe("payload_bytes", NULL, 0, (double)event->payload.len);

    size_t state_key_len = prefix_len + key_len;
    char *state_key = malloc(state_key_len ? state_key_len : 1);
    if (!state_key) abort();
    memcpy(state_key, prefix, prefix_len);
    memcpy(state_key + prefix_len, key, key_len);
    int64_t count;
    sluice_failure_t *f = sluice_state_increment(state_key, state_key_len, 1, &count);
    free(state_key);
    if (f) return f; // unavailable: retried; a broken limit: rejected

    if (ends_with(text, len, ":retry-once") && event->attempt == 1)
        return sluice_retryable("first attempt fails after counting %.*s to %" PRId64, (int)key_len, key, count);
    if (ends_with(text, len, ":reject"))
        return sluice_reject("rejected after counting %.*s to %" PRId64, (int)key_len, key, count);

    char *payload = sluice_errorf("%.*s=%" PRId64, (int)key_len, key, count);
    sluice_output_t *out = sluice_output_new(outputs, payload, strlen(payload));
    sluice_output_key(out, key, key_len);
    free(payload);
    return NULL;
}
