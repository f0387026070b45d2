// `ask_ts`: the TypeScript twin of plugins/ask (Rust): asks another service
// about each event (the `client` capability) and outputs its answer, with
// the same outputs and failures. Type-checked against
// the SDK's generated sluice.d.ts by build.sh.
//
// For each event, the payload is emitted to the `emit` destination (when
// configured; an output of the event, published only if it succeeds), then
// sent as a request to the `request` destination (when configured), whose
// answer becomes the one output; without `request` the payload is the
// output.
//
// Errors: a service error rejects the event with the service's message (it
// would answer the same again); a timeout, no responders or an unreachable
// broker is retryable (what an uncaught `CallError` does by itself).
// `...:retry-once` fails retryably on the first attempt and `...:reject` is
// rejected, each after its calls.
//
// Config: `request`, `emit` (optional destinations), `timeout_ms`
// (optional; default: the destination's `timeout`).
import { plugin, client, CallError, HandlerError, Output, type Config, type Event } from 'sluice';

interface Settings {
  request: string | null;
  emit: string | null;
  timeoutMs: number | null;
}

function init(config: Config): Settings {
  config.denyUnknown(['request', 'emit', 'timeout_ms']);
  const timeout = config.get('timeout_ms');
  if (timeout !== null && !/^[0-9]+$/.test(timeout)) throw `timeout_ms: not a number of milliseconds: ${timeout}`;
  return { request: config.get('request'), emit: config.get('emit'), timeoutMs: timeout === null ? null : Number(timeout) };
}

function handle(self: Settings, event: Event): Output[] {
  if (self.emit !== null) client.emit(self.emit, event.payload);
  let payload: Uint8Array = event.payload;
  if (self.request !== null) {
    try {
      payload = client.request(self.request, event.payload, { timeoutMs: self.timeoutMs }).payload;
    } catch (e) {
      if (e instanceof CallError && e.kind === 'service') throw HandlerError.reject(e.message);
      throw e;
    }
  }
  const text = event.text();
  if (text.endsWith(':retry-once') && event.attempt === 1) throw HandlerError.retryable('first attempt fails after its calls');
  if (text.endsWith(':reject')) throw HandlerError.reject('rejected after its calls');
  return [Output.of(payload)];
}

export const handler = plugin({ init, handle });
