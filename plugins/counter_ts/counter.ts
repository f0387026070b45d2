// `counter_ts`: the TypeScript twin of plugins/counter (Rust) and of
// counter_js: counts events per key in the pipeline's state (the `state`
// capability) and outputs the new count, with the same outputs and
// failures. Type-checked against the SDK's generated sluice.d.ts by build.sh.
//
// For each event, the key is the event's key (or, without one, its payload
// up to the first `:`): `count:<key>` is incremented by one, and one output
// is returned with the same key and the payload `<key>=<count>`.
// `...:retry-once` fails retryably on the first attempt and `...:reject` is
// rejected, each after incrementing (failed attempts leave no trace).
//
// Metrics, recorded on every attempt before it can fail: counter `counted`
// labelled `key`, histogram `payload_bytes`.
//
// Config: `prefix` (optional, default `count:`): the state key prefix.
import { plugin, state, metrics, HandlerError, Output, utf8, type Config, type Event } from 'sluice';

interface Settings {
  prefix: string;
}

function init(config: Config): Settings {
  config.denyUnknown(['prefix']);
  return { prefix: config.get('prefix') ?? 'count:' };
}

function handle(self: Settings, event: Event): Output[] {
  const text = event.text().trimEnd();
  const key = event.key !== null ? utf8.decode(event.key) : text.split(':')[0];
  metrics.counter('counted', { key }).inc();
  metrics.histogram('payload_bytes').observe(event.payload.length);
  const count: number = state.increment(self.prefix + key, 1);
  if (text.endsWith(':retry-once') && event.attempt === 1) {
    throw HandlerError.retryable(`first attempt fails after counting ${key} to ${count}`);
  }
  if (text.endsWith(':reject')) throw HandlerError.reject(`rejected after counting ${key} to ${count}`);
  return [Output.text(`${key}=${count}`, { key })];
}

export const handler = plugin({ init, handle });
