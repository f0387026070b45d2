// `http_enrich_ts`: the TypeScript twin of plugins/http_enrich (Rust): calls
// an HTTP API once per event with `fetch` and outputs its answer, with the
// same outputs and failures. `fetch` makes build.sh pick the StarlingMonkey
// engine with wasi:http; the pipeline grants it with `[plugin.http]`.
//
// Each event's payload is POSTed (or sent as configured) to `url`; the
// response body becomes the output's payload, with the event's key and a
// `http-status` header. The host adds `Idempotency-Key: <event id>:0` (the
// same on every retry) and the event's `traceparent`.
//
// - 2xx and 3xx: the output;
// - 4xx, or a denied request: rejected (retrying will not help);
// - 5xx or a failed request (timeout, transport): retryable.
//
// `fetch` is the SDK's (the engine's, with its failures told apart as
// `HttpError`s, worded as the other SDKs word them).
//
// Config: `url` (required), `method` (`POST` default, `PUT`, `GET`),
// `content_type` (default `application/json`).
import { plugin, fetch, HandlerError, HttpError, Output, type Config, type Event } from 'sluice';

interface Settings {
  url: string;
  method: string;
  contentType: string;
}

function init(config: Config): Settings {
  config.denyUnknown(['url', 'method', 'content_type']);
  const url = config.get('url');
  if (url === null) throw 'missing required config key `url`';
  const method = (config.get('method') ?? 'POST').toUpperCase();
  if (!['POST', 'PUT', 'GET'].includes(method)) throw `method: expected POST, PUT or GET, got ${method}`;
  return { url, method, contentType: config.get('content_type') ?? 'application/json' };
}

async function handle(self: Settings, event: Event): Promise<Output[]> {
  let response: Response;
  try {
    response = await fetch(self.url, {
      method: self.method,
      headers: { 'content-type': self.contentType },
      body: self.method === 'GET' ? undefined : event.payload,
    });
  } catch (e) {
    // Denied rejects, the rest retries: the disposition the SDK gave it.
    if (e instanceof HttpError) throw e;
    throw HandlerError.retryable(`${self.method} ${self.url} failed: ${e}`);
  }
  const body = new Uint8Array(await response.arrayBuffer());
  if (response.status >= 400 && response.status < 500) throw HandlerError.reject(`${self.method} ${self.url}: HTTP ${response.status}`);
  if (response.status >= 500) throw HandlerError.retryable(`${self.method} ${self.url}: HTTP ${response.status}`);
  return [Output.of(body, { key: event.key, headers: [{ key: 'http-status', value: String(response.status) }] })];
}

export const handler = plugin({ init, handle });
