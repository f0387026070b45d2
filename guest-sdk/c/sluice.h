// Sluice plugin SDK for C (sluice:plugin@0.1.0, world `plugin`).
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
// handle-batch is derived from plugin_handle. Memory: everything the SDK
// hands out is malloc'd and freed by the bindings after the host has read
// it; the event is freed after plugin_handle returns (copy what you keep).
#ifndef SLUICE_H
#define SLUICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
// Appends an output with `value` as compact JSON (serde_json's format).
sluice_output_t *sluice_output_json(sluice_outputs_t *outputs, const sj_value *value);

// ---- failures and messages (printf-style)
sluice_failure_t *sluice_retryable(const char *format, ...) __attribute__((format(printf, 1, 2)));
sluice_failure_t *sluice_reject(const char *format, ...) __attribute__((format(printf, 1, 2)));
char *sluice_errorf(const char *format, ...) __attribute__((format(printf, 1, 2)));

// ---- logging into the host's log stream
typedef enum { SLUICE_TRACE, SLUICE_DEBUG, SLUICE_INFO, SLUICE_WARN, SLUICE_ERROR } sluice_level_t;
void sluice_log(sluice_level_t level, const char *message);

// Defined by the plugin.
char *plugin_init(const sluice_config_t *config);
sluice_failure_t *plugin_handle(const sluice_event_t *event, sluice_outputs_t *outputs);

#endif
