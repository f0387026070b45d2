// ask_c: the C twin of plugins/ask (Rust): asks another service about each
// event (the `client` capability) and outputs its answer, with the same
// outputs and failures.
//
// For each event, the payload is emitted to the `emit` destination (when
// configured; an output of the event, published only if it succeeds), then
// sent as a request to the `request` destination (when configured), whose
// answer becomes the one output; without `request` the payload is the
// output.
//
// Errors: a service error rejects the event with the service's message; a
// timeout, no responders or an unreachable broker is retryable (what the
// SDK's failure says by itself). `...:retry-once` fails retryably on the
// first attempt and `...:reject` is rejected, each after its calls.
//
// Config: `request`, `emit` (optional destinations), `timeout_ms`
// (optional; default: the destination's `timeout`).
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

static char *request_to, *emit_to;
static int64_t timeout_ms = -1;

// A NUL-terminated copy of config value `key`, or NULL.
static char *config_string(const sluice_config_t *config, const char *key) {
    size_t len;
    const char *value = sluice_config_get(config, key, &len);
    if (!value) return NULL;
    char *copy = malloc(len + 1);
    if (!copy) abort();
    memcpy(copy, value, len);
    copy[len] = '\0';
    return copy;
}

char *plugin_init(const sluice_config_t *config) {
    static const char *const known[] = {"request", "emit", "timeout_ms"};
    char *refusal = sluice_config_deny_unknown(config, known, 3);
    if (refusal) return refusal;
    request_to = config_string(config, "request");
    emit_to = config_string(config, "emit");
    char *timeout = config_string(config, "timeout_ms");
    if (timeout) {
        char *end;
        long long ms = strtoll(timeout, &end, 10);
        if (*timeout == '\0' || *end != '\0' || ms < 0) {
            char *why = sluice_errorf("timeout_ms: not a number of milliseconds: %s", timeout);
            free(timeout);
            return why;
        }
        timeout_ms = ms;
        free(timeout);
    }
    return NULL;
}

static bool ends_with(const uint8_t *text, size_t len, const char *suffix) {
    size_t n = strlen(suffix);
    return len >= n && memcmp(text + len - n, suffix, n) == 0;
}

sluice_failure_t *plugin_handle(const sluice_event_t *event, sluice_outputs_t *outputs) {
    sluice_failure_t *f;
    if (emit_to && (f = sluice_client_emit(emit_to, event->payload.ptr, event->payload.len))) return f;
    sluice_bytes_t answer = {NULL, 0};
    if (request_to && (f = sluice_client_request(request_to, event->payload.ptr, event->payload.len, timeout_ms, &answer))) return f;
    const uint8_t *text = event->payload.ptr;
    size_t len = event->payload.len;
    if (ends_with(text, len, ":retry-once") && event->attempt == 1) {
        free(answer.ptr);
        return sluice_retryable("first attempt fails after its calls");
    }
    if (ends_with(text, len, ":reject")) {
        free(answer.ptr);
        return sluice_reject("rejected after its calls");
    }
    if (request_to) {
        sluice_output_new(outputs, answer.ptr, answer.len);
        free(answer.ptr);
    } else {
        sluice_output_new(outputs, text, len);
    }
    return NULL;
}
