// http_enrich_c: the C twin of plugins/http_enrich (Rust): calls an HTTP
// API once per event with sluice_http_request and outputs its answer, with
// the same outputs and failures. The pipeline grants it with
// `[plugin.http] allow`.
//
// Each event's payload is sent (POST, or as configured) to `url`; the
// response body becomes the output's payload, with the event's key and a
// `http-status` header. The host adds `Idempotency-Key: <event id>:0` (the
// same on every retry of the event) and the event's `traceparent`.
//
// - 2xx and 3xx: the output;
// - 4xx: the API refused this event; retrying will not help: rejected;
// - 5xx: retryable; a request that got no response (the SDK's failure):
//   denied or a bad URL rejects, a timeout or a transport failure retries.
//
// Config: `url` (required), `method` (`POST` default, `PUT`, `GET`: no
// body), `content_type` (default `application/json`).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sluice.h"

static char *url, *method, *content_type;

// A NUL-terminated copy of config value `key`, or `fallback` (copied), or NULL.
static char *config_string(const sluice_config_t *config, const char *key, const char *fallback) {
    size_t len;
    const char *value = sluice_config_get(config, key, &len);
    if (!value && !fallback) return NULL;
    if (!value) {
        value = fallback;
        len = strlen(fallback);
    }
    char *copy = malloc(len + 1);
    if (!copy) abort();
    memcpy(copy, value, len);
    copy[len] = '\0';
    return copy;
}

char *plugin_init(const sluice_config_t *config) {
    static const char *const known[] = {"url", "method", "content_type"};
    char *refusal = sluice_config_deny_unknown(config, known, 3);
    if (refusal) return refusal;
    url = config_string(config, "url", NULL);
    if (!url) return sluice_errorf("missing required config key `url`");
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return sluice_errorf("`url` must be an http:// or https:// URL, got `%s`", url);
    method = config_string(config, "method", "POST");
    for (char *c = method; *c; c++)
        if (*c >= 'a' && *c <= 'z') *c = (char)(*c - 'a' + 'A');
    if (strcmp(method, "POST") != 0 && strcmp(method, "PUT") != 0 && strcmp(method, "GET") != 0)
        return sluice_errorf("`method` must be POST, PUT or GET, got `%s`", method);
    content_type = config_string(config, "content_type", "application/json");
    return NULL;
}

sluice_failure_t *plugin_handle(const sluice_event_t *event, sluice_outputs_t *outputs) {
    sluice_http_header_t type = SLUICE_HTTP_HEADER("content-type", content_type);
    sluice_http_request_t req = {.method = method, .url = url};
    if (strcmp(method, "GET") != 0) {
        req.headers = &type;
        req.n_headers = 1;
        req.body = event->payload.ptr;
        req.body_len = event->payload.len;
    }
    sluice_http_response_t resp;
    sluice_failure_t *f = sluice_http_request(&req, &resp);
    if (f) return f; // denied or a bad URL rejects, the rest retries
    if (resp.status >= 400 && resp.status < 500) {
        f = sluice_reject("%s answered %u: %.*s", url, resp.status, (int)resp.body.len, (const char *)resp.body.ptr);
    } else if (resp.status >= 500) {
        f = sluice_retryable("%s answered %u", url, resp.status);
    } else {
        sluice_output_t *out = sluice_output_new(outputs, resp.body.ptr, resp.body.len);
        char status[8];
        int n = snprintf(status, sizeof status, "%u", resp.status);
        sluice_output_header(out, "http-status", strlen("http-status"), status, (size_t)n);
    }
    sluice_http_response_free(&resp);
    return f;
}
