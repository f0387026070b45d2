// `counter_js`: the JavaScript twin of plugins/counter (Rust): counts events
// per key in the pipeline's state (the `state` capability) and outputs the
// new count, with the same outputs and failures.
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
import { plugin, state, metrics, HandlerError, Output, utf8 } from 'sluice';

export const handler = plugin({
  init(config) {
    config.denyUnknown(['prefix']);
    return { prefix: config.get('prefix') ?? 'count:' };
  },

  handle(self, event) {
    const text = event.text().trimEnd();
    const key = event.key !== null ? utf8.decode(event.key) : text.split(':')[0];
    metrics.counter('counted', { key }).inc();
    metrics.histogram('payload_bytes').observe(event.payload.length);
    const count = state.increment(self.prefix + key, 1);
    if (text.endsWith(':retry-once') && event.attempt === 1) {
      throw HandlerError.retryable(`first attempt fails after counting ${key} to ${count}`);
    }
    if (text.endsWith(':reject')) throw HandlerError.reject(`rejected after counting ${key} to ${count}`);
    return [Output.text(`${key}=${count}`, { key })];
  },
});
