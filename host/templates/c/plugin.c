// {{name}}: forwards every event with a header `x-tag` (config `tag`,
// default `{{name}}`); an empty payload is rejected.
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

static char *tag;
static size_t tag_len;

char *plugin_init(const sluice_config_t *config) {
    static const char *const known[] = {"tag"};
    char *refusal = sluice_config_deny_unknown(config, known, 1);
    if (refusal) return refusal;
    const char *value = sluice_config_get(config, "tag", &tag_len);
    if (!value) {
        value = "{{name}}";
        tag_len = strlen(value);
    }
    tag = malloc(tag_len + 1);
    if (!tag) abort();
    memcpy(tag, value, tag_len);
    return NULL;
}

sluice_failure_t *plugin_handle(const sluice_event_t *event, sluice_outputs_t *outputs) {
    if (event->payload.len == 0) return sluice_reject("empty payload");
    sluice_output_t *out = sluice_output_new(outputs, event->payload.ptr, event->payload.len);
    if (event->key.is_some) sluice_output_key(out, event->key.val.ptr, event->key.val.len);
    for (size_t i = 0; i < event->headers.len; i++) {
        const sluice_plugin_types_header_t *h = &event->headers.ptr[i];
        sluice_output_header(out, (const char *)h->key.ptr, h->key.len, h->value.ptr, h->value.len);
    }
    sluice_output_header(out, "x-tag", 5, tag, tag_len);
    return NULL;
}
