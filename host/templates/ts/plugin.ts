// `{{name}}`: forwards every event with a header `x-tag` (config `tag`,
// default `{{name}}`); an empty payload is rejected. `bash build.sh`
// type-checks this file (tsc, strict) against the SDK's declarations.
{{#state}}// - state: counts the events of each key (`seen:<key>` in the pipeline's
//   state) and puts the count in a header `x-seen`.
{{/state}}{{#http}}// - HTTP: POSTs the payload to config `url` (default
//   `https://api.example.com/lookup`) with `fetch` and puts the answer in
//   `x-lookup`; a 4xx or a denied request rejects the event, a 5xx or a
//   failed request retries it. (`fetch`, the SDK's, makes build.sh use the
//   StarlingMonkey engine.)
{{/http}}{{#client}}// - service call: asks the destination config `service` (default
//   `lookup`) about the payload and puts the answer in `x-answer`.
{{/client}}{{#metrics}}// - metrics: counts the events per tag (`sluice_plugin_events_total`) and
//   records payload sizes (`sluice_plugin_payload_bytes`).
{{/metrics}}import { plugin, HandlerError, Output, {{#http}}fetch, {{/http}}{{#state}}state, {{/state}}{{#client}}client, CallError, {{/client}}{{#metrics}}metrics, {{/metrics}}{{#state}}utf8, {{/state}}type Config, type Event } from 'sluice';

interface Settings {
  tag: string;
{{#http}}  url: string;
{{/http}}{{#client}}  service: string;
{{/client}}}

export const handler = plugin({
  init(config: Config): Settings {
    config.denyUnknown([{{config_keys}}]);
    return { tag: config.get('tag') ?? '{{name}}'{{#http}}, url: config.get('url') ?? 'https://api.example.com/lookup'{{/http}}{{#client}}, service: config.get('service') ?? 'lookup'{{/client}} };
  },
  {{#http}}async {{/http}}handle(self: Settings, event: Event) {
    if (event.payload.length === 0) throw HandlerError.reject('empty payload');
    const headers = [...event.headers, { key: 'x-tag', value: self.tag }];
{{#metrics}}    // Recorded on every attempt, never fails the event.
    metrics.counter('events', { tag: self.tag }).inc();
    metrics.histogram('payload_bytes').observe(event.payload.length);
{{/metrics}}{{#state}}    // Kept only if the event succeeds (a failed attempt's writes are dropped).
    const key = event.key !== null ? utf8.decode(event.key) : '';
    headers.push({ key: 'x-seen', value: String(state.increment(`seen:${key}`, 1)) });
{{/state}}{{#http}}    // The host adds `Idempotency-Key: <event id>:<n>` (the same on every
    // retry) and the event's `traceparent`.
    let response: Response;
    try {
      response = await fetch(self.url, { method: 'POST', body: event.payload });
    } catch (e) {
      // The SDK's fetch throws an HttpError: a denial rejects, the rest retries.
      if (e instanceof HandlerError) throw e;
      throw HandlerError.retryable(`POST ${self.url} failed: ${e}`);
    }
    if (response.status >= 400 && response.status < 500) throw HandlerError.reject(`${self.url} answered ${response.status}`);
    if (response.status >= 500) throw HandlerError.retryable(`${self.url} answered ${response.status}`);
    headers.push({ key: 'x-lookup', value: await response.text() });
{{/http}}{{#client}}    // A service error rejects; an uncaught timeout or no-responders retries.
    try {
      const reply = client.request(self.service, event.payload);
      headers.push({ key: 'x-answer', value: reply.text() });
    } catch (e) {
      if (e instanceof CallError && e.kind === 'service') throw HandlerError.reject(e.message);
      throw e;
    }
{{/client}}    return [Output.of(event.payload, { key: event.key, headers })];
  },
});
