// Sluice plugin SDK for C (sluice:plugin@0.2.0, world `plugin`).
//
// On top of the bindings `wit-bindgen c` generates (plugin.h, made by
// build.sh), this SDK implements the three `handler` exports and calls two
// functions the plugin defines:
//
//   // Accept the config (return NULL) or refuse it (return a message from
//   // sluice_errorf; the SDK frees it).
//   char *plugin_init(const sluice_config_t *config);
//
//   // Append outputs with sluice_output_* (none filters the event out) and
//   // return NULL, or fail the event: return sluice_retryable(...) or
//   // sluice_reject(...). A trap (abort(), __builtin_trap()) counts as a
//   // retryable failure and the host replaces the instance.
//   sluice_failure_t *plugin_handle(const sluice_event_t *event, sluice_outputs_t *outputs);
//
// A plugin may also declare the event types and versions it handles (the
// `manifest` export), as selectors such as "order-created@2",
// "order-created@*" (any version) or "*" (every event):
//
//   // A NULL-terminated array the plugin keeps (static, or built in
//   // plugin_init: the host asks once, after it). Without this function
//   // the plugin accepts every event ("*").
//   const char *const *plugin_accepts(void);
//
// The host dead-letters an event the list does not cover as `unsupported`
// without calling plugin_handle.
//
// handle-batch is derived from plugin_handle. Memory: everything the SDK
// hands out is malloc'd and freed by the bindings after the host has read
// it; the event is freed after plugin_handle returns (copy what you keep).
#ifndef SLUICE_H
#define SLUICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "plugin.h"
#include "sluice_json.h"

typedef exports_sluice_plugin_handler_event_t sluice_event_t;
typedef exports_sluice_plugin_handler_output_t sluice_output_t;
typedef plugin_list_tuple2_string_string_t sluice_config_t;

typedef struct {
    sluice_output_t *ptr;
    size_t len, cap;
} sluice_outputs_t;

typedef struct sluice_failure sluice_failure_t;

// ---- config: the `init` key/value pairs, in the host's order
// The value of `key` (not NUL-terminated: *len is set), or NULL.
const char *sluice_config_get(const sluice_config_t *config, const char *key, size_t *len);
// NULL if every key is listed (`prefix*` accepts a family), else the
// Rust SDK's message: "unknown config key `x` (expected one of: a, b)".
char *sluice_config_deny_unknown(const sluice_config_t *config, const char *const *known, size_t count);

// ---- events
// The first header `name`, or NULL (*len is set).
const uint8_t *sluice_header(const sluice_event_t *event, const char *name, size_t *len);

// ---- outputs (all data is copied)
// Appends an output with this payload and the event's key, and returns it.
sluice_output_t *sluice_output_new(sluice_outputs_t *outputs, const void *payload, size_t len);
void sluice_output_key(sluice_output_t *output, const void *key, size_t len);
void sluice_output_destination(sluice_output_t *output, const char *destination);
void sluice_output_header(sluice_output_t *output, const char *key, size_t key_len, const void *value, size_t value_len);
// Appends an output with `value` as compact JSON (cJSON_PrintUnformatted).
sluice_output_t *sluice_output_json(sluice_outputs_t *outputs, const cJSON *value);

// ---- failures and messages (printf-style)
sluice_failure_t *sluice_retryable(const char *format, ...) __attribute__((format(printf, 1, 2)));
sluice_failure_t *sluice_reject(const char *format, ...) __attribute__((format(printf, 1, 2)));
char *sluice_errorf(const char *format, ...) __attribute__((format(printf, 1, 2)));

// Frees a failure the plugin does not return (one from sluice_state_*,
// sluice_client_* or sluice_http_request).
void sluice_failure_free(sluice_failure_t *failure);

// ---- state: the pipeline's key/value state (the `state` capability,
// granted by a `[pipelines.<name>.state]` table; a plugin that calls none
// of these does not import it and needs no grant). What an event writes is
// seen by its own later reads at once and by other events only once it
// concludes with its outputs accepted; a failed attempt leaves no trace.
//
// Each returns NULL on success, or the host's refusal as a failure with the
// Rust SDK's disposition and wording (`unavailable` is retryable, every
// other case rejects): return it from plugin_handle as is, or inspect it
// with sluice_failure_state_error and free it with sluice_failure_free.
//
//   int64_t count;
//   sluice_failure_t *f = sluice_state_increment(key, key_len, 1, &count);
//   if (f) return f;
typedef enum {
    SLUICE_STATE_KEY_TOO_LONG,
    SLUICE_STATE_VALUE_TOO_LARGE,
    SLUICE_STATE_TOO_MANY_WRITES,
    SLUICE_STATE_TOO_MANY_READS,
    SLUICE_STATE_NOT_A_COUNTER,
    SLUICE_STATE_OVERFLOW,
    SLUICE_STATE_UNAVAILABLE,
} sluice_state_error_t;
// The state-error case of a failure from sluice_state_*, or -1 for any
// other failure.
int sluice_failure_state_error(const sluice_failure_t *failure);

// Bytes the SDK allocated (malloc): free(ptr) when done.
typedef struct {
    uint8_t *ptr;
    size_t len;
} sluice_bytes_t;
// One page of sluice_state_scan: entries[i].f0 is a key, .f1 its value
// (ptr/len each), in key order; when `next.is_some`, pass next.val as
// `after` for the following page. Free with sluice_state_page_free.
typedef sluice_plugin_state_page_t sluice_state_page_t;

// *found tells whether `key` has a value; if so *value holds a copy.
sluice_failure_t *sluice_state_get(const char *key, size_t key_len, sluice_bytes_t *value, bool *found);
sluice_failure_t *sluice_state_set(const char *key, size_t key_len, const void *value, size_t value_len);
// No error if `key` has no value.
sluice_failure_t *sluice_state_delete(const char *key, size_t key_len);
// Adds `delta` to the counter at `key` (missing counts as 0) and sets
// *value to the new count. Counters are ASCII decimal text ("42").
sluice_failure_t *sluice_state_increment(const char *key, size_t key_len, int64_t delta, int64_t *value);
// Keys starting with `prefix` after `after` (exclusive; NULL for the first
// page), at most `limit` (the host caps it too).
sluice_failure_t *sluice_state_scan(const char *prefix, size_t prefix_len, const char *after, size_t after_len, uint32_t limit,
                                    sluice_state_page_t *page);
void sluice_state_page_free(sluice_state_page_t *page);

// ---- client: calls to other services, as a NestJS ClientProxy makes them
// (the `client` capability: each destination is a
// `[pipelines.<name>.clients.<destination>]` table; a plugin that calls
// neither function does not import it and needs no grant). The host adds
// the event's correlation id, its traceparent and an Idempotency-Key
// `<event id>:<n>` (the same on every retry) to each request, and lists
// every request in the event's dead letter. An emit is an output of the
// event: published with its outputs only if it succeeds.
//
// Each returns NULL on success, or the host's answer as a failure with the
// Rust SDK's disposition and wording (timeout, no responders and
// unavailable are retryable; every other case rejects): return it from
// plugin_handle as is, or inspect it with sluice_failure_call_error and
// free it with sluice_failure_free.
//
//   sluice_bytes_t reply;
//   sluice_failure_t *f = sluice_client_request("inventory", body, body_len, -1, &reply);
//   if (f) return f;
//   ... free(reply.ptr);
typedef enum {
    SLUICE_CALL_UNKNOWN_DESTINATION,
    SLUICE_CALL_NOT_ALLOWED,
    SLUICE_CALL_TIMEOUT,
    SLUICE_CALL_NO_RESPONDERS,
    SLUICE_CALL_SERVICE, // the service answered with an error: see the failure's message
    SLUICE_CALL_TOO_MANY_CALLS,
    SLUICE_CALL_TOO_LARGE,
    SLUICE_CALL_UNAVAILABLE,
} sluice_call_error_t;
// The call-error case of a failure from sluice_client_*, or -1 for any
// other failure.
int sluice_failure_call_error(const sluice_failure_t *failure);
// Sends `payload` to `destination` (a NUL-terminated name) and waits for
// the answer, at most `timeout_ms` (negative: the destination's
// `timeout`); *reply gets the answer's payload (free(reply->ptr)).
sluice_failure_t *sluice_client_request(const char *destination, const void *payload, size_t payload_len, int64_t timeout_ms,
                                        sluice_bytes_t *reply);
// Publishes `payload` to `destination` without waiting (a NestJS event).
sluice_failure_t *sluice_client_emit(const char *destination, const void *payload, size_t payload_len);

// ---- http: outbound HTTP through the standard wasi:http/outgoing-handler
// (the `http` capability: the pipeline lists the destinations a plugin may
// call in `[pipelines.<name>.plugin.http] allow = [...]`; a plugin that
// never calls sluice_http_request does not import wasi:http and needs no
// grant). A call blocks until the whole response is read. The host adds an
// Idempotency-Key `<event id>:<n>` (the same on every retry of the event)
// and the event's traceparent unless the request sets them, and lists
// every request in the event's dead letter. http:// and https:// (the
// host's web PKI roots).
//
// A response is no failure, whatever its status. A request that gets no
// response returns a failure with the Rust SDK's disposition and wording
// (http::Error): a bad URL or header and a destination the pipeline does
// not allow reject the event, anything else (a timeout, a refused
// connection, a cut-off body) is retryable. Return it from plugin_handle as
// is, or inspect it with sluice_failure_http_error and free it with
// sluice_failure_free.
//
//   sluice_http_header_t type = SLUICE_HTTP_HEADER("content-type", "application/json");
//   sluice_http_request_t req = {.method = "POST", .url = url, .headers = &type, .n_headers = 1,
//                                .body = event->payload.ptr, .body_len = event->payload.len};
//   sluice_http_response_t resp;
//   sluice_failure_t *f = sluice_http_request(&req, &resp);
//   if (f) return f;
//   ... resp.status, resp.body.ptr/len, sluice_http_response_header(&resp, "etag", &len)
//   sluice_http_response_free(&resp);
typedef enum {
    SLUICE_HTTP_INVALID_URL,    // not an http:// or https:// URL with a host
    SLUICE_HTTP_INVALID_HEADER, // a header name or value the host refuses
    SLUICE_HTTP_DENIED,         // not in the pipeline's plugin.http.allow (plugin test: no rule matches)
    SLUICE_HTTP_TIMEOUT,        // no response within the timeout
    SLUICE_HTTP_TOO_LARGE,      // the body passed plugin.http.max_response_bytes
    SLUICE_HTTP_TRANSPORT,      // connection refused, TLS or DNS failure, a broken response…
    SLUICE_HTTP_BODY,           // the body could not be read
} sluice_http_error_t;
// The http error case of a failure from sluice_http_request, or -1 for any
// other failure.
int sluice_failure_http_error(const sluice_failure_t *failure);

// A request header: a NUL-terminated name and a value of value_len bytes.
typedef struct {
    const char *name;
    const void *value;
    size_t value_len;
} sluice_http_header_t;
// A header whose value is a NUL-terminated string.
#define SLUICE_HTTP_HEADER(name, value) ((sluice_http_header_t){(name), (value), strlen(value)})

typedef struct {
    const char *method; // "GET", "POST"…; NULL: GET
    const char *url;    // NUL-terminated: http(s)://host[:port][/path][?query]
    const sluice_http_header_t *headers;
    size_t n_headers;
    const void *body; // sent with a content-length; body_len 0: no body
    size_t body_len;
    // Bounds the connection and the wait for the response head, in ms;
    // 0: the pipeline's plugin.http.timeout (which applies anyway).
    uint64_t timeout_ms;
} sluice_http_request_t;

// A response, its body read whole. headers.ptr[i].f0 is a name (lowercase,
// may repeat), .f1 its value (ptr/len each). Free with
// sluice_http_response_free.
typedef struct {
    uint16_t status;
    wasi_http_types_list_tuple2_field_name_field_value_t headers;
    sluice_bytes_t body;
} sluice_http_response_t;

// Sends the request and reads the whole response into *resp (left empty on
// failure).
sluice_failure_t *sluice_http_request(const sluice_http_request_t *req, sluice_http_response_t *resp);
// The first value of header `name` (case-insensitive), or NULL (*len is set).
const uint8_t *sluice_http_response_header(const sluice_http_response_t *resp, const char *name, size_t *len);
void sluice_http_response_free(sluice_http_response_t *resp);

// ---- metrics: the plugin's own, on the host's /metrics as
// sluice_plugin_<name> (counters get _total) with the pipeline and plugin
// as labels. No capability is needed (a plugin that calls none of these
// does not import `metrics`), and recording never fails the event: the
// host drops, counts and reports once what breaks its rules (names
// [a-zA-Z_][a-zA-Z0-9_]*, one kind per name), and folds label sets past
// max_series per metric (100 by default) into one series labelled
// `other`. A value is recorded when called, not when the event succeeds:
// a failed attempt's values stay. Histogram buckets: exponential from
// 0.001 to ~16 777.
//
//   sluice_label_t labels[] = {{"key", key, key_len}, SLUICE_LABEL("shop", "x")};
//   sluice_counter_add("counted", labels, 2, 1);
//   sluice_histogram_observe("payload_bytes", NULL, 0, (double)event->payload.len);

// A label: a NUL-terminated name and a value of value_len bytes (need not
// be NUL-terminated).
typedef struct {
    const char *name;
    const char *value;
    size_t value_len;
} sluice_label_t;
// A label whose value is a NUL-terminated string.
#define SLUICE_LABEL(name, value) ((sluice_label_t){(name), (value), strlen(value)})

// Adds `value` to counter `name` (NUL-terminated) with `labels[0..n_labels)`.
void sluice_counter_add(const char *name, const sluice_label_t *labels, size_t n_labels, uint64_t value);
// Sets gauge `name` (NaN and infinities are dropped by the host).
void sluice_gauge_set(const char *name, const sluice_label_t *labels, size_t n_labels, double value);
// Records one observation in histogram `name`.
void sluice_histogram_observe(const char *name, const sluice_label_t *labels, size_t n_labels, double value);

// ---- logging into the host's log stream
typedef enum { SLUICE_TRACE, SLUICE_DEBUG, SLUICE_INFO, SLUICE_WARN, SLUICE_ERROR } sluice_level_t;
void sluice_log(sluice_level_t level, const char *message);

// Defined by the plugin.
char *plugin_init(const sluice_config_t *config);
sluice_failure_t *plugin_handle(const sluice_event_t *event, sluice_outputs_t *outputs);
// Optional (the SDK's weak default accepts every event).
const char *const *plugin_accepts(void);

#endif
