// {{name}}: forwards every event with a header `x-tag` (config `tag`,
// default `{{name}}`); an empty payload is rejected.
{{#state}}// - state: counts the events of each key (`seen:<key>` in the pipeline's
//   state) and puts the count in a header `x-seen`.
{{/state}}{{#http}}// - HTTP: POSTs the payload to config `url` (default
//   `https://api.example.com/lookup`) and puts the answer in `x-lookup`; a
//   4xx rejects the event, a 5xx or a failed request retries it.
{{/http}}{{#client}}// - service call: asks the destination config `service` (default
//   `lookup`) about the payload and puts the answer in `x-answer`.
{{/client}}{{#metrics}}// - metrics: counts the events per tag (`sluice_plugin_events_total`) and
//   records payload sizes (`sluice_plugin_payload_bytes`).
{{/metrics}}{{#state}}#include <inttypes.h>
#include <stdio.h>
{{/state}}#include <stdlib.h>
#include <string.h>

#include "sluice.h"

static char *tag;
static size_t tag_len;
{{#http}}static char *url;
{{/http}}{{#client}}static char *service;
{{/client}}
// A NUL-terminated copy of config value `key`, or of `fallback`.
static char *config_string(const sluice_config_t *config, const char *key, const char *fallback, size_t *len) {
    const char *value = sluice_config_get(config, key, len);
    if (!value) {
        value = fallback;
        *len = strlen(fallback);
    }
    char *copy = malloc(*len + 1);
    if (!copy) abort();
    memcpy(copy, value, *len);
    copy[*len] = '\0';
    return copy;
}

char *plugin_init(const sluice_config_t *config) {
    static const char *const known[] = {{{config_keys}}};
    char *refusal = sluice_config_deny_unknown(config, known, sizeof known / sizeof known[0]);
    if (refusal) return refusal;
    tag = config_string(config, "tag", "{{name}}", &tag_len);
{{#http}}    size_t url_len;
    url = config_string(config, "url", "https://api.example.com/lookup", &url_len);
{{/http}}{{#client}}    size_t service_len;
    service = config_string(config, "service", "lookup", &service_len);
{{/client}}    return NULL;
}

sluice_failure_t *plugin_handle(const sluice_event_t *event, sluice_outputs_t *outputs) {
    if (event->payload.len == 0) return sluice_reject("empty payload");
{{#metrics}}    // Recorded on every attempt, never fails the event.
    sluice_label_t labels[] = {{"tag", tag, tag_len}};
    sluice_counter_add("events", labels, 1, 1);
    sluice_histogram_observe("payload_bytes", NULL, 0, (double)event->payload.len);
{{/metrics}}{{#state}}    // Kept only if the event succeeds (a failed attempt's writes are dropped).
    size_t key_len = event->key.is_some ? event->key.val.len : 0;
    char *state_key = malloc(5 + key_len + 1);
    if (!state_key) abort();
    memcpy(state_key, "seen:", 5);
    if (key_len) memcpy(state_key + 5, event->key.val.ptr, key_len);
    int64_t seen;
    sluice_failure_t *refused = sluice_state_increment(state_key, 5 + key_len, 1, &seen);
    free(state_key);
    if (refused) return refused; // unavailable retries, a broken limit rejects
    char seen_text[24];
    int seen_len = snprintf(seen_text, sizeof seen_text, "%" PRId64, seen);
{{/state}}{{#http}}    // The host adds `Idempotency-Key: <event id>:<n>` (the same on every
    // retry) and the event's `traceparent`.
    sluice_http_request_t req = {.method = "POST", .url = url, .body = event->payload.ptr, .body_len = event->payload.len};
    sluice_http_response_t lookup;
    sluice_failure_t *failed = sluice_http_request(&req, &lookup);
    if (failed) return failed; // denied rejects, a timeout retries
    if (lookup.status < 200 || lookup.status >= 300) {
        failed = lookup.status >= 400 && lookup.status < 500 ? sluice_reject("%s answered %u", url, lookup.status)
                                                        : sluice_retryable("%s answered %u", url, lookup.status);
        sluice_http_response_free(&lookup);
        return failed;
    }
{{/http}}{{#client}}    sluice_bytes_t answer;
    sluice_failure_t *unanswered = sluice_client_request(service, event->payload.ptr, event->payload.len, -1, &answer);
    if (unanswered) { // a service error rejects, a timeout or no responders retries
{{#http}}        sluice_http_response_free(&lookup);
{{/http}}        return unanswered;
    }
{{/client}}    sluice_output_t *out = sluice_output_new(outputs, event->payload.ptr, event->payload.len);
    if (event->key.is_some) sluice_output_key(out, event->key.val.ptr, event->key.val.len);
    for (size_t i = 0; i < event->headers.len; i++) {
        const sluice_plugin_types_header_t *h = &event->headers.ptr[i];
        sluice_output_header(out, (const char *)h->key.ptr, h->key.len, h->value.ptr, h->value.len);
    }
    sluice_output_header(out, "x-tag", 5, tag, tag_len);
{{#state}}    sluice_output_header(out, "x-seen", 6, seen_text, (size_t)seen_len);
{{/state}}{{#http}}    sluice_output_header(out, "x-lookup", 8, lookup.body.ptr, lookup.body.len);
    sluice_http_response_free(&lookup);
{{/http}}{{#client}}    sluice_output_header(out, "x-answer", 8, answer.ptr, answer.len);
    free(answer.ptr);
{{/client}}    return NULL;
}
