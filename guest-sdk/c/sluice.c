// The `handler` exports of sluice:plugin@0.2.0 on top of the generated
// bindings, and the helpers declared in sluice.h.
#include "sluice.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct sluice_failure {
    bool retryable;
    char *message;
    int state_error; // a sluice_state_error_t, or -1
    int call_error;  // a sluice_call_error_t, or -1
    int http_error;  // a sluice_http_error_t, or -1
};

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort(); // out of memory: a trap, reported by the host
    return p;
}

static void *dup_bytes(const void *data, size_t len) {
    void *p = xmalloc(len);
    if (len) memcpy(p, data, len);
    return p;
}

static char *vformat(const char *format, va_list args) {
    va_list copy;
    va_copy(copy, args);
    int n = vsnprintf(NULL, 0, format, copy);
    va_end(copy);
    char *out = xmalloc(n > 0 ? (size_t)n + 1 : 1);
    vsnprintf(out, n > 0 ? (size_t)n + 1 : 1, format, args);
    return out;
}

char *sluice_errorf(const char *format, ...) {
    va_list args;
    va_start(args, format);
    char *out = vformat(format, args);
    va_end(args);
    return out;
}

static sluice_failure_t *failure(bool retryable, const char *format, va_list args) {
    sluice_failure_t *f = xmalloc(sizeof *f);
    f->retryable = retryable;
    f->message = vformat(format, args);
    f->state_error = -1;
    f->call_error = -1;
    f->http_error = -1;
    return f;
}

sluice_failure_t *sluice_retryable(const char *format, ...) {
    va_list args;
    va_start(args, format);
    sluice_failure_t *f = failure(true, format, args);
    va_end(args);
    return f;
}

sluice_failure_t *sluice_reject(const char *format, ...) {
    va_list args;
    va_start(args, format);
    sluice_failure_t *f = failure(false, format, args);
    va_end(args);
    return f;
}

// ---- config

const char *sluice_config_get(const sluice_config_t *config, const char *key, size_t *len) {
    size_t n = strlen(key);
    for (size_t i = 0; i < config->len; i++) {
        const plugin_string_t *k = &config->ptr[i].f0;
        if (k->len == n && memcmp(k->ptr, key, n) == 0) {
            if (len) *len = config->ptr[i].f1.len;
            return (const char *)config->ptr[i].f1.ptr;
        }
    }
    return NULL;
}

char *sluice_config_deny_unknown(const sluice_config_t *config, const char *const *known, size_t count) {
    for (size_t i = 0; i < config->len; i++) {
        const plugin_string_t *k = &config->ptr[i].f0;
        bool ok = false;
        for (size_t j = 0; j < count && !ok; j++) {
            size_t n = strlen(known[j]);
            if (n && known[j][n - 1] == '*')
                ok = k->len >= n - 1 && memcmp(k->ptr, known[j], n - 1) == 0;
            else
                ok = k->len == n && memcmp(k->ptr, known[j], n) == 0;
        }
        if (ok) continue;
        if (count == 0)
            return sluice_errorf("unknown config key `%.*s` (this plugin takes no configuration)", (int)k->len, (const char *)k->ptr);
        size_t total = 1;
        for (size_t j = 0; j < count; j++) total += strlen(known[j]) + 2;
        char *list = xmalloc(total), *end = list;
        for (size_t j = 0; j < count; j++) {
            if (j) {
                memcpy(end, ", ", 2);
                end += 2;
            }
            size_t n = strlen(known[j]);
            memcpy(end, known[j], n);
            end += n;
        }
        *end = '\0';
        char *msg = sluice_errorf("unknown config key `%.*s` (expected one of: %s)", (int)k->len, (const char *)k->ptr, list);
        free(list);
        return msg;
    }
    return NULL;
}

// ---- events

const uint8_t *sluice_header(const sluice_event_t *event, const char *name, size_t *len) {
    size_t n = strlen(name);
    for (size_t i = 0; i < event->headers.len; i++) {
        const sluice_plugin_types_header_t *h = &event->headers.ptr[i];
        if (h->key.len == n && memcmp(h->key.ptr, name, n) == 0) {
            if (len) *len = h->value.len;
            return h->value.ptr;
        }
    }
    return NULL;
}

// ---- outputs

sluice_output_t *sluice_output_new(sluice_outputs_t *outputs, const void *payload, size_t len) {
    if (outputs->len == outputs->cap) {
        outputs->cap = outputs->cap ? outputs->cap * 2 : 4;
        outputs->ptr = realloc(outputs->ptr, outputs->cap * sizeof *outputs->ptr);
        if (!outputs->ptr) abort();
    }
    sluice_output_t *o = &outputs->ptr[outputs->len++];
    memset(o, 0, sizeof *o);
    o->payload.ptr = dup_bytes(payload, len);
    o->payload.len = len;
    return o;
}

void sluice_output_key(sluice_output_t *output, const void *key, size_t len) {
    output->key.is_some = true;
    output->key.val.ptr = dup_bytes(key, len);
    output->key.val.len = len;
}

void sluice_output_destination(sluice_output_t *output, const char *destination) {
    output->destination.is_some = true;
    output->destination.val.len = strlen(destination);
    output->destination.val.ptr = dup_bytes(destination, output->destination.val.len);
}

void sluice_output_header(sluice_output_t *output, const char *key, size_t key_len, const void *value, size_t value_len) {
    size_t n = output->headers.len;
    output->headers.ptr = realloc(output->headers.ptr, (n + 1) * sizeof *output->headers.ptr);
    if (!output->headers.ptr) abort();
    sluice_plugin_types_header_t *h = &output->headers.ptr[n];
    h->key.ptr = dup_bytes(key, key_len);
    h->key.len = key_len;
    h->value.ptr = dup_bytes(value, value_len);
    h->value.len = value_len;
    output->headers.len = n + 1;
}

sluice_output_t *sluice_output_json(sluice_outputs_t *outputs, const cJSON *value) {
    char *text = cJSON_PrintUnformatted(value);
    if (!text) abort(); // out of memory (cJSON's only failure here): a trap
    sluice_output_t *o = sluice_output_new(outputs, text, strlen(text));
    cJSON_free(text);
    return o;
}

void sluice_failure_free(sluice_failure_t *failure) {
    if (!failure) return;
    free(failure->message);
    free(failure);
}

int sluice_failure_state_error(const sluice_failure_t *failure) {
    return failure ? failure->state_error : -1;
}

// ---- state

// The host's refusal as a failure, in the Rust SDK's words (state::describe).
static sluice_failure_t *state_failure(sluice_plugin_state_state_error_t *err) {
    sluice_failure_t *f;
    switch (err->tag) {
    case SLUICE_PLUGIN_STATE_STATE_ERROR_KEY_TOO_LONG:
        f = sluice_reject("state key longer than the limit of %u bytes", (unsigned)err->val.key_too_long);
        break;
    case SLUICE_PLUGIN_STATE_STATE_ERROR_VALUE_TOO_LARGE:
        f = sluice_reject("state value larger than the limit of %u bytes", (unsigned)err->val.value_too_large);
        break;
    case SLUICE_PLUGIN_STATE_STATE_ERROR_TOO_MANY_WRITES:
        f = sluice_reject("an event may write at most %u state keys", (unsigned)err->val.too_many_writes);
        break;
    case SLUICE_PLUGIN_STATE_STATE_ERROR_TOO_MANY_READS:
        f = sluice_reject("an event may read at most %u state keys and scans", (unsigned)err->val.too_many_reads);
        break;
    case SLUICE_PLUGIN_STATE_STATE_ERROR_NOT_A_COUNTER:
        f = sluice_reject("state value is not a counter (ASCII decimal text)");
        break;
    case SLUICE_PLUGIN_STATE_STATE_ERROR_OVERFLOW:
        f = sluice_reject("state counter would overflow a signed 64-bit integer");
        break;
    case SLUICE_PLUGIN_STATE_STATE_ERROR_UNAVAILABLE:
        f = sluice_retryable("state unavailable: %.*s", (int)err->val.unavailable.len, (const char *)err->val.unavailable.ptr);
        break;
    default:
        f = sluice_reject("state error %d", (int)err->tag);
        break;
    }
    f->state_error = err->tag;
    sluice_plugin_state_state_error_free(err);
    return f;
}

static plugin_string_t borrowed(const char *text, size_t len) {
    return (plugin_string_t){(uint8_t *)text, len};
}

sluice_failure_t *sluice_state_get(const char *key, size_t key_len, sluice_bytes_t *value, bool *found) {
    plugin_string_t k = borrowed(key, key_len);
    plugin_option_list_u8_t ret;
    sluice_plugin_state_state_error_t err;
    *found = false;
    if (!sluice_plugin_state_get(&k, &ret, &err)) return state_failure(&err);
    if (ret.is_some) {
        *found = true;
        value->ptr = ret.val.ptr;
        value->len = ret.val.len;
    }
    return NULL;
}

sluice_failure_t *sluice_state_set(const char *key, size_t key_len, const void *value, size_t value_len) {
    plugin_string_t k = borrowed(key, key_len);
    plugin_list_u8_t v = {(uint8_t *)value, value_len};
    sluice_plugin_state_state_error_t err;
    if (!sluice_plugin_state_set(&k, &v, &err)) return state_failure(&err);
    return NULL;
}

sluice_failure_t *sluice_state_delete(const char *key, size_t key_len) {
    plugin_string_t k = borrowed(key, key_len);
    sluice_plugin_state_state_error_t err;
    if (!sluice_plugin_state_delete(&k, &err)) return state_failure(&err);
    return NULL;
}

sluice_failure_t *sluice_state_increment(const char *key, size_t key_len, int64_t delta, int64_t *value) {
    plugin_string_t k = borrowed(key, key_len);
    sluice_plugin_state_state_error_t err;
    if (!sluice_plugin_state_increment(&k, delta, value, &err)) return state_failure(&err);
    return NULL;
}

sluice_failure_t *sluice_state_scan(const char *prefix, size_t prefix_len, const char *after, size_t after_len, uint32_t limit,
                                    sluice_state_page_t *page) {
    plugin_string_t p = borrowed(prefix, prefix_len);
    plugin_string_t a = borrowed(after, after_len);
    sluice_plugin_state_state_error_t err;
    if (!sluice_plugin_state_scan(&p, after ? &a : NULL, limit, page, &err)) return state_failure(&err);
    return NULL;
}

void sluice_state_page_free(sluice_state_page_t *page) {
    sluice_plugin_state_page_free(page);
}

// ---- logging

void sluice_log(sluice_level_t level, const char *message) {
    plugin_string_t text = {(uint8_t *)message, strlen(message)};
    plugin_list_tuple2_string_string_t fields = {NULL, 0};
    sluice_plugin_log_log((sluice_plugin_log_level_t)level, &text, &fields);
}

// ---- metrics

// The pairs of one call live on the stack up to this many labels (the host
// takes at most 10); the host copies what it keeps.
#define SLUICE_STACK_LABELS 16

// Borrows `labels` as the WIT list: into `stack` when they fit, else into
// a malloc'd array the caller frees.
static plugin_tuple2_string_string_t *metric_pairs(const sluice_label_t *labels, size_t n, plugin_tuple2_string_string_t *stack) {
    plugin_tuple2_string_string_t *pairs = stack;
    if (n > SLUICE_STACK_LABELS && !(pairs = malloc(n * sizeof *pairs))) abort();
    for (size_t i = 0; i < n; i++) {
        pairs[i].f0 = (plugin_string_t){(uint8_t *)labels[i].name, strlen(labels[i].name)};
        pairs[i].f1 = (plugin_string_t){(uint8_t *)labels[i].value, labels[i].value_len};
    }
    return pairs;
}

void sluice_counter_add(const char *name, const sluice_label_t *labels, size_t n_labels, uint64_t value) {
    plugin_tuple2_string_string_t stack[SLUICE_STACK_LABELS];
    plugin_list_tuple2_string_string_t list = {metric_pairs(labels, n_labels, stack), n_labels};
    plugin_string_t n = {(uint8_t *)name, strlen(name)};
    sluice_plugin_metrics_counter_add(&n, &list, value);
    if (list.ptr != stack) free(list.ptr);
}

void sluice_gauge_set(const char *name, const sluice_label_t *labels, size_t n_labels, double value) {
    plugin_tuple2_string_string_t stack[SLUICE_STACK_LABELS];
    plugin_list_tuple2_string_string_t list = {metric_pairs(labels, n_labels, stack), n_labels};
    plugin_string_t n = {(uint8_t *)name, strlen(name)};
    sluice_plugin_metrics_gauge_set(&n, &list, value);
    if (list.ptr != stack) free(list.ptr);
}

void sluice_histogram_observe(const char *name, const sluice_label_t *labels, size_t n_labels, double value) {
    plugin_tuple2_string_string_t stack[SLUICE_STACK_LABELS];
    plugin_list_tuple2_string_string_t list = {metric_pairs(labels, n_labels, stack), n_labels};
    plugin_string_t n = {(uint8_t *)name, strlen(name)};
    sluice_plugin_metrics_histogram_observe(&n, &list, value);
    if (list.ptr != stack) free(list.ptr);
}

// ---- the exports

static bool initialised = false;

bool exports_sluice_plugin_handler_init(plugin_list_tuple2_string_string_t *config, plugin_string_t *err) {
    char *refusal = plugin_init(config);
    plugin_list_tuple2_string_string_free(config);
    if (refusal) {
        err->ptr = (uint8_t *)refusal;
        err->len = strlen(refusal);
        return false;
    }
    initialised = true;
    return true;
}

static bool handle_one(sluice_event_t *event, exports_sluice_plugin_handler_list_output_t *ret,
                       exports_sluice_plugin_handler_handler_error_t *err) {
    sluice_failure_t *f;
    sluice_outputs_t outputs = {0};
    if (!initialised)
        f = sluice_retryable("plugin not initialised");
    else
        f = plugin_handle(event, &outputs);
    if (f) {
        for (size_t i = 0; i < outputs.len; i++) sluice_plugin_types_output_free(&outputs.ptr[i]);
        free(outputs.ptr);
        err->disposition = f->retryable ? SLUICE_PLUGIN_TYPES_DISPOSITION_RETRYABLE : SLUICE_PLUGIN_TYPES_DISPOSITION_REJECT;
        err->message.ptr = (uint8_t *)f->message;
        err->message.len = strlen(f->message);
        free(f);
        return false;
    }
    ret->ptr = outputs.ptr;
    ret->len = outputs.len;
    return true;
}

bool exports_sluice_plugin_handler_handle(exports_sluice_plugin_handler_event_t *event,
                                          exports_sluice_plugin_handler_list_output_t *ret,
                                          exports_sluice_plugin_handler_handler_error_t *err) {
    bool ok = handle_one(event, ret, err);
    exports_sluice_plugin_handler_event_free(event);
    return ok;
}

void exports_sluice_plugin_handler_handle_batch(exports_sluice_plugin_handler_list_event_t *events,
                                                exports_sluice_plugin_handler_list_result_list_output_handler_error_t *ret) {
    ret->len = events->len;
    ret->ptr = xmalloc(events->len * sizeof *ret->ptr);
    for (size_t i = 0; i < events->len; i++) {
        exports_sluice_plugin_handler_result_list_output_handler_error_t *r = &ret->ptr[i];
        r->is_err = !handle_one(&events->ptr[i], &r->val.ok, &r->val.err);
    }
    exports_sluice_plugin_handler_list_event_free(events);
}

// ---- manifest

// The plugin's own definition replaces this one at link time.
__attribute__((weak)) const char *const *plugin_accepts(void) {
    static const char *const everything[] = {"*", NULL};
    return everything;
}

void exports_sluice_plugin_manifest_accepts(plugin_list_string_t *ret) {
    // Nothing before a successful init, as in the Rust SDK.
    const char *const *list = initialised ? plugin_accepts() : NULL;
    size_t n = 0;
    while (list && list[n]) n++;
    ret->len = n;
    ret->ptr = n ? xmalloc(n * sizeof *ret->ptr) : NULL;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(list[i]);
        ret->ptr[i].ptr = dup_bytes(list[i], len);
        ret->ptr[i].len = len;
    }
}

// ---- client

int sluice_failure_call_error(const sluice_failure_t *failure) {
    return failure ? failure->call_error : -1;
}

#define STR(s) (int)(s).len, (const char *)(s).ptr

// The host's answer as a failure, in the Rust SDK's words (client::describe).
static sluice_failure_t *call_failure(sluice_plugin_client_call_error_t *err) {
    sluice_failure_t *f;
    switch (err->tag) {
    case SLUICE_PLUGIN_CLIENT_CALL_ERROR_UNKNOWN_DESTINATION:
        f = sluice_reject("no client destination named `%.*s` in the pipeline", STR(err->val.unknown_destination));
        break;
    case SLUICE_PLUGIN_CLIENT_CALL_ERROR_NOT_ALLOWED:
        f = sluice_reject("call not allowed: %.*s", STR(err->val.not_allowed));
        break;
    case SLUICE_PLUGIN_CLIENT_CALL_ERROR_TIMEOUT:
        f = sluice_retryable("no answer within %u ms", (unsigned)err->val.timeout);
        break;
    case SLUICE_PLUGIN_CLIENT_CALL_ERROR_NO_RESPONDERS:
        f = sluice_retryable("nobody listens on the destination");
        break;
    case SLUICE_PLUGIN_CLIENT_CALL_ERROR_SERVICE:
        if (err->val.service.code.is_some)
            f = sluice_reject("the service answered with error %.*s: %.*s", STR(err->val.service.code.val), STR(err->val.service.message));
        else
            f = sluice_reject("the service answered with an error: %.*s", STR(err->val.service.message));
        break;
    case SLUICE_PLUGIN_CLIENT_CALL_ERROR_TOO_MANY_CALLS:
        f = sluice_reject("an event may make at most %u calls to this destination", (unsigned)err->val.too_many_calls);
        break;
    case SLUICE_PLUGIN_CLIENT_CALL_ERROR_TOO_LARGE:
        f = sluice_reject("payload larger than the destination's limit of %u bytes", (unsigned)err->val.too_large);
        break;
    case SLUICE_PLUGIN_CLIENT_CALL_ERROR_UNAVAILABLE:
        f = sluice_retryable("service unavailable: %.*s", STR(err->val.unavailable));
        break;
    default:
        f = sluice_reject("service call error %d", (int)err->tag);
        break;
    }
    f->call_error = err->tag;
    sluice_plugin_client_call_error_free(err);
    return f;
}

sluice_failure_t *sluice_client_request(const char *destination, const void *payload, size_t payload_len, int64_t timeout_ms,
                                        sluice_bytes_t *reply) {
    plugin_string_t d = borrowed(destination, strlen(destination));
    plugin_list_u8_t p = {(uint8_t *)payload, payload_len};
    sluice_plugin_client_list_header_t headers = {NULL, 0};
    uint32_t timeout = timeout_ms > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)(timeout_ms < 0 ? 0 : timeout_ms);
    sluice_plugin_client_reply_t ret;
    sluice_plugin_client_call_error_t err;
    if (!sluice_plugin_client_request(&d, &p, &headers, timeout_ms < 0 ? NULL : &timeout, &ret, &err)) return call_failure(&err);
    reply->ptr = ret.payload.ptr;
    reply->len = ret.payload.len;
    sluice_plugin_client_list_header_free(&ret.headers);
    return NULL;
}

sluice_failure_t *sluice_client_emit(const char *destination, const void *payload, size_t payload_len) {
    plugin_string_t d = borrowed(destination, strlen(destination));
    plugin_list_u8_t p = {(uint8_t *)payload, payload_len};
    sluice_plugin_client_list_header_t headers = {NULL, 0};
    sluice_plugin_client_call_error_t err;
    if (!sluice_plugin_client_emit(&d, &p, &headers, &err)) return call_failure(&err);
    return NULL;
}

// ---- http (the call sequence of the Rust SDK's http.rs, imp::send). Every
// resource handle owned here is dropped (children before their parents) or
// handed on: the request constructor takes the fields, `handle` the request
// and its options, `finish` a body.

int sluice_failure_http_error(const sluice_failure_t *failure) {
    return failure ? failure->http_error : -1;
}

// Bytes per write into the request body: the most blocking-write-and-flush
// takes at once.
#define HTTP_WRITE_CHUNK 4096
// The most one blocking-read asks for.
#define HTTP_READ_CHUNK (64 * 1024)

static sluice_failure_t *http_failure(sluice_http_error_t kind, const char *format, ...) __attribute__((format(printf, 2, 3)));
static sluice_failure_t *http_failure(sluice_http_error_t kind, const char *format, ...) {
    va_list args;
    va_start(args, format);
    bool retryable = !(kind == SLUICE_HTTP_INVALID_URL || kind == SLUICE_HTTP_INVALID_HEADER || kind == SLUICE_HTTP_DENIED);
    sluice_failure_t *f = failure(retryable, format, args);
    va_end(args);
    f->http_error = kind;
    return f;
}

// The error-code case names as the Rust SDK prints them (Debug), so a
// transport failure reads the same in every language.
static const char *const http_error_codes[] = {
    "DnsTimeout", "DnsError", "DestinationNotFound", "DestinationUnavailable",
    "DestinationIpProhibited", "DestinationIpUnroutable", "ConnectionRefused",
    "ConnectionTerminated", "ConnectionTimeout", "ConnectionReadTimeout",
    "ConnectionWriteTimeout", "ConnectionLimitReached", "TlsProtocolError",
    "TlsCertificateError", "TlsAlertReceived", "HttpRequestDenied",
    "HttpRequestLengthRequired", "HttpRequestBodySize", "HttpRequestMethodInvalid",
    "HttpRequestUriInvalid", "HttpRequestUriTooLong", "HttpRequestHeaderSectionSize",
    "HttpRequestHeaderSize", "HttpRequestTrailerSectionSize", "HttpRequestTrailerSize",
    "HttpResponseIncomplete", "HttpResponseHeaderSectionSize", "HttpResponseHeaderSize",
    "HttpResponseBodySize", "HttpResponseTrailerSectionSize", "HttpResponseTrailerSize",
    "HttpResponseTransferCoding", "HttpResponseContentCoding", "HttpResponseTimeout",
    "HttpUpgradeFailed", "HttpProtocolError", "LoopDetected", "ConfigurationError",
    "InternalError",
};

// How the host marks an internal-error that is a denial with its reason.
#define DENIED_PREFIX "denied: "
#define DENIED_PREFIX_LEN (sizeof DENIED_PREFIX - 1)

// The error-code as a failure (the Rust SDK's from_code); frees `code`.
static sluice_failure_t *http_code_failure(wasi_http_types_error_code_t *code, const char *host) {
    sluice_failure_t *f;
    switch (code->tag) {
    case WASI_HTTP_TYPES_ERROR_CODE_HTTP_REQUEST_DENIED:
        f = http_failure(SLUICE_HTTP_DENIED, "HTTP request to %s denied: not in the pipeline's plugin.http.allow", host);
        break;
    case WASI_HTTP_TYPES_ERROR_CODE_CONNECTION_TIMEOUT:
    case WASI_HTTP_TYPES_ERROR_CODE_CONNECTION_READ_TIMEOUT:
    case WASI_HTTP_TYPES_ERROR_CODE_HTTP_RESPONSE_TIMEOUT:
        f = http_failure(SLUICE_HTTP_TIMEOUT, "HTTP request to %s timed out", host);
        break;
    case WASI_HTTP_TYPES_ERROR_CODE_HTTP_RESPONSE_BODY_SIZE:
        if (code->val.http_response_body_size.is_some)
            f = http_failure(SLUICE_HTTP_TOO_LARGE, "HTTP response body over the limit of %llu bytes",
                             (unsigned long long)code->val.http_response_body_size.val);
        else
            f = http_failure(SLUICE_HTTP_TOO_LARGE, "HTTP response body over the limit");
        break;
    case WASI_HTTP_TYPES_ERROR_CODE_INTERNAL_ERROR:
        // A denial with its reason (`plugin test --http-replies` with no
        // rule for the request): see host/src/runtime/http/send.rs.
        if (code->val.internal_error.is_some && code->val.internal_error.val.len >= DENIED_PREFIX_LEN &&
            memcmp(code->val.internal_error.val.ptr, DENIED_PREFIX, DENIED_PREFIX_LEN) == 0)
            f = http_failure(SLUICE_HTTP_DENIED, "HTTP request to %s denied: %.*s", host,
                             (int)(code->val.internal_error.val.len - DENIED_PREFIX_LEN),
                             (const char *)code->val.internal_error.val.ptr + DENIED_PREFIX_LEN);
        else if (code->val.internal_error.is_some)
            f = http_failure(SLUICE_HTTP_TRANSPORT, "HTTP request to %s failed: InternalError(Some(\"%.*s\"))", host,
                             STR(code->val.internal_error.val));
        else
            f = http_failure(SLUICE_HTTP_TRANSPORT, "HTTP request to %s failed: InternalError(None)", host);
        break;
    default:
        if (code->tag < sizeof http_error_codes / sizeof *http_error_codes)
            f = http_failure(SLUICE_HTTP_TRANSPORT, "HTTP request to %s failed: %s", host, http_error_codes[code->tag]);
        else
            f = http_failure(SLUICE_HTTP_TRANSPORT, "HTTP request to %s failed: error-code %d", host, (int)code->tag);
        break;
    }
    wasi_http_types_error_code_free(code);
    return f;
}

// A body error without an error-code (wasmtime passes its own error there,
// as text): the cap and the deadline are still told apart.
static sluice_failure_t *http_body_failure(const plugin_string_t *text, const char *host) {
    char *t = xmalloc(text->len + 1);
    memcpy(t, text->ptr, text->len);
    t[text->len] = '\0';
    sluice_failure_t *f;
    if (strstr(t, "body size exceeds limit")) {
        const char *tail = strrchr(t, ':');
        unsigned long long limit = tail ? strtoull(tail + 1, NULL, 10) : 0;
        f = limit ? http_failure(SLUICE_HTTP_TOO_LARGE, "HTTP response body over the limit of %llu bytes", limit)
                  : http_failure(SLUICE_HTTP_TOO_LARGE, "HTTP response body over the limit");
    } else if (strstr(t, "timeout") || strstr(t, "timed out")) {
        f = http_failure(SLUICE_HTTP_TIMEOUT, "HTTP request to %s timed out", host);
    } else {
        f = http_failure(SLUICE_HTTP_BODY, "HTTP response body: %s", t);
    }
    free(t);
    return f;
}

// The stream-error as a failure (its io error dropped).
static sluice_failure_t *http_stream_failure(wasi_io_streams_stream_error_t *err, const char *host) {
    if (err->tag == WASI_IO_STREAMS_STREAM_ERROR_CLOSED) return http_failure(SLUICE_HTTP_BODY, "HTTP response body: the stream closed early");
    wasi_io_error_own_error_t io = err->val.last_operation_failed;
    wasi_http_types_error_code_t code;
    sluice_failure_t *f;
    if (wasi_http_types_http_error_code(wasi_io_error_borrow_error(io), &code)) {
        f = http_code_failure(&code, host);
    } else {
        plugin_string_t text;
        wasi_io_error_method_error_to_debug_string(wasi_io_error_borrow_error(io), &text);
        f = http_body_failure(&text, host);
        plugin_string_free(&text);
    }
    wasi_io_error_error_drop_own(io);
    return f;
}

// The parts of a URL a request needs (the Rust SDK's Url::parse): *authority
// and *path point into `url`.
static bool http_split_url(const char *url, bool *https, const char **authority, size_t *authority_len, const char **path, size_t *path_len) {
    const char *rest = strstr(url, "://");
    if (!rest) return false;
    size_t scheme_len = (size_t)(rest - url);
    if (scheme_len == 5 && strncasecmp(url, "https", 5) == 0) *https = true;
    else if (scheme_len == 4 && strncasecmp(url, "http", 4) == 0) *https = false;
    else return false;
    rest += 3;
    size_t end = strcspn(rest, "#");
    size_t host_end = strcspn(rest, "/?#");
    if (host_end == 0) return false;
    *authority = rest;
    *authority_len = host_end;
    *path = rest + host_end;
    *path_len = end - host_end;
    return true;
}

static const char *const http_methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"};

static bool http_append(wasi_http_types_own_fields_t fields, const char *name, const void *value, size_t value_len) {
    wasi_http_types_field_name_t n = borrowed(name, strlen(name));
    wasi_http_types_field_value_t v = {(uint8_t *)value, value_len};
    wasi_http_types_header_error_t err;
    return wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(fields), &n, &v, &err);
}

static sluice_failure_t *http_write_body(wasi_http_types_own_outgoing_body_t body, const sluice_http_request_t *req, const char *host) {
    wasi_http_types_own_output_stream_t stream;
    if (!wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body), &stream))
        return http_failure(SLUICE_HTTP_BODY, "HTTP response body: cannot write the request body");
    sluice_failure_t *f = NULL;
    const uint8_t *bytes = req->body;
    for (size_t start = 0; start < req->body_len && !f; start += HTTP_WRITE_CHUNK) {
        size_t n = req->body_len - start < HTTP_WRITE_CHUNK ? req->body_len - start : HTTP_WRITE_CHUNK;
        plugin_list_u8_t chunk = {(uint8_t *)bytes + start, n};
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(wasi_io_streams_borrow_output_stream(stream), &chunk, &err))
            f = http_stream_failure(&err, host);
    }
    wasi_io_streams_output_stream_drop_own(stream); // before finish: a child of the body
    return f;
}

static sluice_failure_t *http_read_body(wasi_http_types_own_incoming_body_t incoming, const char *host, sluice_bytes_t *out) {
    wasi_http_types_own_input_stream_t stream;
    if (!wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(incoming), &stream))
        return http_failure(SLUICE_HTTP_BODY, "HTTP response body: cannot read the response body");
    sluice_failure_t *f = NULL;
    size_t len = 0, cap = 0;
    uint8_t *buf = NULL;
    for (;;) {
        plugin_list_u8_t chunk;
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_input_stream_blocking_read(wasi_io_streams_borrow_input_stream(stream), HTTP_READ_CHUNK, &chunk, &err)) {
            if (err.tag != WASI_IO_STREAMS_STREAM_ERROR_CLOSED) f = http_stream_failure(&err, host);
            break;
        }
        if (len + chunk.len > cap) {
            cap = (len + chunk.len) * 2;
            buf = realloc(buf, cap);
            if (!buf) abort();
        }
        if (chunk.len) memcpy(buf + len, chunk.ptr, chunk.len);
        len += chunk.len;
        plugin_list_u8_free(&chunk);
    }
    wasi_io_streams_input_stream_drop_own(stream); // before the body: a child of it
    if (f) {
        free(buf);
        return f;
    }
    out->ptr = buf ? buf : xmalloc(1);
    out->len = len;
    return NULL;
}

sluice_failure_t *sluice_http_request(const sluice_http_request_t *req, sluice_http_response_t *resp) {
    memset(resp, 0, sizeof *resp);
    bool https;
    const char *authority, *path;
    size_t authority_len, path_len;
    if (!req->url || !http_split_url(req->url, &https, &authority, &authority_len, &path, &path_len))
        return http_failure(SLUICE_HTTP_INVALID_URL, "not an http(s) URL: %s", req->url ? req->url : "(null)");
    char *host = xmalloc(authority_len + 1);
    memcpy(host, authority, authority_len);
    host[authority_len] = '\0';
    sluice_failure_t *f = NULL;

    wasi_http_types_own_fields_t fields = wasi_http_types_constructor_fields();
    bool has_length = false;
    for (size_t i = 0; i < req->n_headers && !f; i++) {
        has_length = has_length || strcasecmp(req->headers[i].name, "content-length") == 0;
        if (!http_append(fields, req->headers[i].name, req->headers[i].value, req->headers[i].value_len))
            f = http_failure(SLUICE_HTTP_INVALID_HEADER, "invalid header `%s`", req->headers[i].name);
    }
    if (!f && req->body_len && !has_length) {
        char length[24];
        int n = snprintf(length, sizeof length, "%zu", req->body_len);
        if (!http_append(fields, "content-length", length, (size_t)n)) f = http_failure(SLUICE_HTTP_INVALID_HEADER, "invalid header `content-length`");
    }
    if (f) {
        wasi_http_types_fields_drop_own(fields);
        free(host);
        return f;
    }

    wasi_http_types_own_outgoing_request_t request = wasi_http_types_constructor_outgoing_request(fields);
    wasi_http_types_borrow_outgoing_request_t r = wasi_http_types_borrow_outgoing_request(request);
    const char *method_name = req->method && *req->method ? req->method : "GET";
    wasi_http_types_method_t method = {.tag = WASI_HTTP_TYPES_METHOD_OTHER};
    method.val.other = borrowed(method_name, strlen(method_name));
    for (size_t i = 0; i < sizeof http_methods / sizeof *http_methods; i++)
        if (strcasecmp(method_name, http_methods[i]) == 0) method.tag = (uint8_t)i;
    wasi_http_types_scheme_t scheme = {.tag = https ? WASI_HTTP_TYPES_SCHEME_HTTPS : WASI_HTTP_TYPES_SCHEME_HTTP};
    plugin_string_t a = borrowed(authority, authority_len);
    plugin_string_t p = path_len ? borrowed(path, path_len) : borrowed("/", 1);
    wasi_http_types_own_outgoing_body_t body = {0};
    if (!wasi_http_types_method_outgoing_request_set_method(r, &method) || !wasi_http_types_method_outgoing_request_set_scheme(r, &scheme) ||
        !wasi_http_types_method_outgoing_request_set_authority(r, &a) || !wasi_http_types_method_outgoing_request_set_path_with_query(r, &p)) {
        f = http_failure(SLUICE_HTTP_INVALID_URL, "not an http(s) URL: %s", req->url);
    } else if (req->body_len && !wasi_http_types_method_outgoing_request_body(r, &body)) {
        f = http_failure(SLUICE_HTTP_BODY, "HTTP response body: cannot open the request body");
    }
    if (f) {
        wasi_http_types_outgoing_request_drop_own(request);
        free(host);
        return f;
    }

    wasi_http_types_own_request_options_t options = {0};
    if (req->timeout_ms) {
        options = wasi_http_types_constructor_request_options();
        wasi_http_types_duration_t nanos = req->timeout_ms > UINT64_MAX / 1000000 ? UINT64_MAX : req->timeout_ms * 1000000;
        wasi_http_types_method_request_options_set_connect_timeout(wasi_http_types_borrow_request_options(options), &nanos);
        wasi_http_types_method_request_options_set_first_byte_timeout(wasi_http_types_borrow_request_options(options), &nanos);
    }
    wasi_http_types_own_future_incoming_response_t pending;
    wasi_http_types_error_code_t code;
    if (!wasi_http_outgoing_handler_handle(request, req->timeout_ms ? &options : NULL, &pending, &code)) {
        if (req->body_len) wasi_http_types_outgoing_body_drop_own(body);
        f = http_code_failure(&code, host);
        free(host);
        return f;
    }
    if (req->body_len) {
        f = http_write_body(body, req, host);
        if (f) {
            wasi_http_types_outgoing_body_drop_own(body);
        } else if (!wasi_http_types_static_outgoing_body_finish(body, NULL, &code)) {
            f = http_code_failure(&code, host);
        }
    }

    wasi_http_types_result_result_own_incoming_response_error_code_void_t got = {0};
    wasi_http_types_borrow_future_incoming_response_t future = wasi_http_types_borrow_future_incoming_response(pending);
    while (!f && !wasi_http_types_method_future_incoming_response_get(future, &got)) {
        wasi_http_types_own_pollable_t pollable = wasi_http_types_method_future_incoming_response_subscribe(future);
        wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(pollable));
        wasi_io_poll_pollable_drop_own(pollable);
    }
    if (!f && got.is_err) f = http_failure(SLUICE_HTTP_TRANSPORT, "HTTP request to %s failed: the response was taken twice", host);
    if (!f && got.val.ok.is_err) f = http_code_failure(&got.val.ok.val.err, host);
    if (!f) {
        wasi_http_types_own_incoming_response_t response = got.val.ok.val.ok;
        wasi_http_types_borrow_incoming_response_t borrowed_response = wasi_http_types_borrow_incoming_response(response);
        resp->status = wasi_http_types_method_incoming_response_status(borrowed_response);
        wasi_http_types_own_headers_t headers = wasi_http_types_method_incoming_response_headers(borrowed_response);
        wasi_http_types_method_fields_entries(wasi_http_types_borrow_fields(headers), &resp->headers);
        wasi_http_types_fields_drop_own(headers);
        wasi_http_types_own_incoming_body_t incoming;
        if (!wasi_http_types_method_incoming_response_consume(borrowed_response, &incoming)) {
            f = http_failure(SLUICE_HTTP_BODY, "HTTP response body: cannot open the response body");
        } else if ((f = http_read_body(incoming, host, &resp->body))) {
            wasi_http_types_incoming_body_drop_own(incoming);
        } else {
            wasi_http_types_future_trailers_drop_own(wasi_http_types_static_incoming_body_finish(incoming));
        }
        wasi_http_types_incoming_response_drop_own(response);
        if (f) sluice_http_response_free(resp);
    }
    wasi_http_types_future_incoming_response_drop_own(pending);
    free(host);
    return f;
}

const uint8_t *sluice_http_response_header(const sluice_http_response_t *resp, const char *name, size_t *len) {
    size_t n = strlen(name);
    for (size_t i = 0; i < resp->headers.len; i++) {
        const wasi_http_types_tuple2_field_name_field_value_t *h = &resp->headers.ptr[i];
        if (h->f0.len == n && strncasecmp((const char *)h->f0.ptr, name, n) == 0) {
            *len = h->f1.len;
            return h->f1.ptr;
        }
    }
    *len = 0;
    return NULL;
}

void sluice_http_response_free(sluice_http_response_t *resp) {
    if (resp->headers.ptr) wasi_http_types_list_tuple2_field_name_field_value_free(&resp->headers);
    free(resp->body.ptr);
    memset(resp, 0, sizeof *resp);
}
