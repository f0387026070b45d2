// Type declarations of the Sluice plugin SDK for JavaScript (sluice.js), for
// plugins written in TypeScript: `import { plugin, Output } from 'sluice'`.
// build.sh type-checks a `.ts` entry against this file with `tsc` (strict),
// then bundles it with sluice.js. Keep in step with sluice.js.

/** How a failed event is treated: retried with backoff, or dead-lettered now. */
export type Disposition = 'retryable' | 'reject';

/** A handler failure with its disposition. Throw it from `handle`. */
export class HandlerError extends Error {
  constructor(disposition: Disposition, message: string);
  static retryable(message: string): HandlerError;
  static reject(message: string): HandlerError;
  readonly disposition: Disposition;
  /** What the component model lowers as the WIT `handler-error`. */
  readonly payload: { disposition: Disposition; message: string };
}

/** UTF-8 encoding and strict decoding. */
export const utf8: {
  /** Lone surrogates become U+FFFD. */
  encode(text: string): Uint8Array;
  /** Throws a `reject` HandlerError on invalid UTF-8, naming the byte offset. */
  decode(bytes: Uint8Array | ArrayLike<number>): string;
};

/** Bytes as the output builders accept them: strings are sent as UTF-8. */
export type BytesLike = Uint8Array | readonly number[] | string;

/** The `init` configuration: string pairs in the host's order (sorted by key). */
export class Config {
  constructor(pairs: ReadonlyArray<readonly [string, string]>);
  readonly pairs: Array<[string, string]>;
  /** The value of `key`, or null. */
  get(key: string): string | null;
  /** Throws a message naming the missing key (which refuses the load). */
  require(key: string): string;
  keys(): string[];
  /** `[rest, value]` for every key starting with `prefix`, prefix stripped. */
  withPrefix(prefix: string): Array<[string, string]>;
  /** Refuses any key not listed; `prefix*` accepts a family of keys. */
  denyUnknown(known: readonly string[]): void;
}

/** One message header (`sluice:plugin/types.header`). */
export interface Header {
  key: string;
  value: Uint8Array;
}

/** The event record as the component model hands it over. */
export interface RawEvent {
  id: string;
  source: string;
  key?: Uint8Array | null;
  payload: Uint8Array;
  headers: Header[];
  timestampMs: number | bigint;
  attempt: number;
  replyTo?: string | null;
}

/** The event as `handle` sees it. */
export class Event {
  constructor(raw: RawEvent);
  /** Stable per source position (see wit/sluice.wit). */
  readonly id: string;
  readonly source: string;
  readonly key: Uint8Array | null;
  readonly payload: Uint8Array;
  readonly headers: Header[];
  readonly timestampMs: number;
  /** 1 on the first delivery. */
  readonly attempt: number;
  readonly replyTo: string | null;
  /** The first header `name` (case-sensitive) as bytes, or null. */
  header(name: string): Uint8Array | null;
  /** The first header `name` as text, or null (also when it is not UTF-8). */
  headerText(name: string): string | null;
  /** The payload as text; invalid UTF-8 rejects the event. */
  text(): string;
  /** The payload parsed with `Json.parse`; invalid JSON rejects the event. */
  json(): JsonValue;
}

/** An output record (`sluice:plugin/types.output`), as the builders make it. */
export interface Output {
  destination: string | null;
  key: Uint8Array | null;
  payload: Uint8Array;
  headers: Header[];
  reply: boolean;
}

/** The optional fields of an output. */
export interface OutputFields {
  /** A route name, topic or subject; default: the pipeline's route. */
  destination?: string | null;
  key?: BytesLike | null;
  headers?: ReadonlyArray<{ key: string; value: BytesLike }>;
  /** Send to the event's `replyTo` (request/reply). */
  reply?: boolean;
}

/** Builders for outputs. */
export const Output: {
  of(payload: BytesLike, fields?: OutputFields): Output;
  text(text: string, fields?: OutputFields): Output;
  /** `value` as compact JSON (`Json.stringify`: serde_json's format), UTF-8. */
  json(value: JsonInput, fields?: OutputFields): Output;
  /** The answer to a request: sent to the event's `replyTo`. */
  reply(payload: BytesLike, fields?: Omit<OutputFields, 'reply'>): Output;
  /** The event's key, payload and headers, unchanged. */
  forward(event: Event): Output;
};

/** A JSON number kept as serde_json writes it; `Number(n)` gives its value. */
export class JsonNumber {
  constructor(text: string);
  readonly text: string;
  valueOf(): number;
  toString(): string;
}

/**
 * What `Json.parse` returns: objects are Maps in field order, numbers
 * JsonNumbers. `number` is there for values a plugin sets itself
 * (`object.set('count', 3)`): parse never makes one.
 */
export type JsonValue = null | boolean | string | number | JsonNumber | JsonValue[] | Map<string, JsonValue>;

/** What `Json.stringify` accepts. */
export type JsonInput =
  | null
  | undefined
  | boolean
  | string
  | number
  | bigint
  | JsonNumber
  | readonly JsonInput[]
  | ReadonlyMap<string, JsonInput>
  | { readonly [key: string]: JsonInput };

/** JSON that round-trips like serde_json in the Rust SDK (byte-for-byte outputs). */
export const Json: {
  /** Throws a SyntaxError on invalid JSON. */
  parse(text: string): JsonValue;
  stringify(value: JsonInput): string;
};

/** `f` as serde_json writes it: 1.5, 100000.0, 1e+16, 1.2e-7, -0.0. */
export function formatFloat(f: number): string;

/** The WIT `state-error` cases. */
export type StateErrorKind =
  | 'key-too-long'
  | 'value-too-large'
  | 'too-many-writes'
  | 'too-many-reads'
  | 'not-a-counter'
  | 'overflow'
  | 'unavailable';

/**
 * A state operation refused by the host. A HandlerError: uncaught, it fails
 * the event (`unavailable` retryable, every other kind rejected).
 */
export class StateError extends HandlerError {
  constructor(kind: StateErrorKind, detail?: number | string | null);
  readonly kind: StateErrorKind;
  /** The limit (`key-too-long`…`too-many-reads`), the reason (`unavailable`), or null. */
  readonly detail: number | string | null;
}

/** One page of `state.scan`. */
export interface StatePage {
  entries: Array<[key: string, value: Uint8Array]>;
  /** Pass as `after` for the next page; null: this was the last. */
  next: string | null;
}

/**
 * The pipeline's state (the `state` capability: the pipeline grants it with
 * `[pipelines.<name>.state]`). Writes belong to the event: seen by its own
 * later reads at once, by other events once it concludes with its outputs
 * accepted. Every method throws a `StateError`.
 */
export const state: {
  get(key: string): Uint8Array | null;
  /** null also when the value is not UTF-8. */
  getText(key: string): string | null;
  /** `Json.parse` of the value, or null; a value that is not JSON rejects the event. */
  getJson(key: string): JsonValue | null;
  set(key: string, value: BytesLike): void;
  setJson(key: string, value: JsonInput): void;
  delete(key: string): void;
  /** Adds `delta` (default 1) and returns the new value (exact up to 2^53). */
  increment(key: string, delta?: number): number;
  scan(prefix: string, options?: { after?: string | null; limit?: number }): StatePage;
  entries(prefix: string): Generator<[key: string, value: Uint8Array], void, undefined>;
};

/** Structured fields of a log line. */
export type CallErrorKind =
  | 'unknown-destination'
  | 'not-allowed'
  | 'timeout'
  | 'no-responders'
  | 'service'
  | 'too-many-calls'
  | 'too-large'
  | 'unavailable';

/** An error the service itself answered with (a NestJS `err`, a NATS `Nats-Service-Error`). */
export interface ServiceError {
  readonly code: string | null;
  readonly message: string;
  readonly payload: Uint8Array;
}

/**
 * A service call that got no answer. A HandlerError: uncaught, `timeout`,
 * `no-responders` and `unavailable` retry the event, the others reject it.
 */
export class CallError extends HandlerError {
  constructor(kind: CallErrorKind, detail?: unknown);
  readonly kind: CallErrorKind;
  /** The limit, the timeout in ms, the destination or the reason; null for `service` and `no-responders`. */
  readonly detail: number | string | null;
  /** What the service answered, for `service`; otherwise null. */
  readonly service: ServiceError | null;
}

/** Headers as an object or as `[key, value]` pairs. */
export type HeadersInit = Record<string, BytesLike> | ReadonlyArray<readonly [string, BytesLike]>;

/** A service's answer. */
export class Reply {
  readonly payload: Uint8Array;
  readonly headers: Header[];
  text(): string;
  /** The payload parsed as JSON (with the NestJS codec: the `response` value). */
  json(): JsonValue;
}

export interface RequestOptions {
  headers?: HeadersInit;
  /** Default: the destination's `timeout`. */
  timeoutMs?: number | null;
  /** Send `payload` as JSON (`Json.stringify`). */
  json?: boolean;
}

/**
 * Calls to other services (`[pipelines.<name>.clients.<destination>]`), as
 * a NestJS `ClientProxy` makes them. Every method throws a `CallError`.
 */
export const client: {
  /** Sends and waits for the answer (NestJS `send`). */
  request(destination: string, payload: BytesLike | JsonInput, options?: RequestOptions): Reply;
  /** `request` with a JSON payload, returning the answer parsed as JSON. */
  requestJson(destination: string, value: JsonInput, options?: Omit<RequestOptions, 'json'>): JsonValue;
  /** Publishes without waiting (NestJS `emit`): an output of the event, sent only if it succeeds. */
  emit(destination: string, payload: BytesLike | JsonInput, options?: { headers?: HeadersInit; json?: boolean }): void;
  /** `emit` with a JSON payload. */
  emitJson(destination: string, value: JsonInput, options?: { headers?: HeadersInit }): void;
};

export type LogFields = Record<string, unknown> | ReadonlyArray<readonly [string, unknown]>;

/** Structured logging into the host's log stream: `log.info('msg', { key: 'value' })`. */
export const log: {
  trace(message: string, fields?: LogFields): void;
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
};

/** Metric labels: `{ sku: 'a' }` or `[['sku', 'a']]`; values become text. */
export type MetricLabels = Record<string, unknown> | ReadonlyArray<readonly [string, unknown]>;

/**
 * The plugin's own metrics, on the host's `/metrics` as
 * `sluice_plugin_<name>` (counters `_total`) with the pipeline and plugin
 * as labels. Names and label names are `[a-zA-Z_][a-zA-Z0-9_]*`; the host
 * drops and counts what breaks its rules, never failing the event, and
 * folds label sets past `max_series` per metric into `other`. A failed
 * attempt's values stay.
 */
export const metrics: {
  counter(name: string, labels?: MetricLabels): {
    /** Adds a non-negative integer (default 1); anything else throws a TypeError. */
    add(value?: number): void;
    inc(): void;
  };
  gauge(name: string, labels?: MetricLabels): { set(value: number): void };
  /** Buckets: exponential from 0.001 to ~16 777 (seconds or sizes alike). */
  histogram(name: string, labels?: MetricLabels): { observe(value: number): void };
};

/** A plugin: `init` (optional) makes the state, `handle` answers each event. */
export interface Plugin<State> {
  /** Refuse the config by throwing a string or an Error. */
  init?(config: Config): State;
  /**
   * Return the outputs (none: the event is filtered out); throw a
   * HandlerError to fail. May be `async` (e.g. to `await fetch(…)`, with
   * the StarlingMonkey engine): the engine runs the event loop until the
   * promise settles, within the handler's deadline.
   */
  handle(state: State, event: Event): Output[] | Promise<Output[]>;
  /**
   * The event types and versions the plugin handles, as selectors:
   * `order-created@2`, `order-created@*` (any version), `*` (every event).
   * Asked once per loaded version, after `init`; the host dead-letters what
   * the list does not cover as `unsupported`. Default: `['*']`. Takes
   * effect when the module also exports `manifest = handler.manifest`.
   */
  accepts?(state: State): string[];
}

/** The `manifest` export: `export const manifest = handler.manifest`. */
export interface Manifest {
  accepts(): string[];
}

/** The `handler` export the component model expects. */
export interface Handler {
  init(pairs: Array<[string, string]>): void;
  handle(raw: RawEvent): Output[] | Promise<Output[]>;
  handleBatch(raws: RawEvent[]): Array<{ tag: 'ok'; val: Output[] } | { tag: 'err'; val: { disposition: Disposition; message: string } }>;
  /** The plugin's `accepts`, as the `manifest` export. */
  readonly manifest: Manifest;
}

/** Builds the `handler` export: `export const handler = plugin({ init, handle })`. */
export function plugin<State>(impl: Plugin<State>): Handler;

/** Why an outbound HTTP request failed (see `HttpError`). */
export type HttpErrorKind = 'denied' | 'timeout' | 'too-large' | 'transport';

/**
 * A failed outbound HTTP request, raised by the SDK's `fetch`. A
 * HandlerError: uncaught, `denied` rejects the event (the allow list, or
 * `plugin test --http-replies` without a rule, does not change on retry),
 * the others retry it, as in the other SDKs and in their words.
 */
export class HttpError extends HandlerError {
  constructor(kind: HttpErrorKind, host: string, code: string, message: string);
  readonly kind: HttpErrorKind;
  /** The URL's host (with its port if not the default). */
  readonly host: string;
  /** The `wasi:http` error-code's case, e.g. `HTTP-request-denied`, `internal-error`. */
  readonly code: string;
}

/**
 * The engine's `fetch`, with its failures told apart: the engine rejects
 * every failed request with the same `TypeError`, so this one asks the host
 * how it failed and rejects with an `HttpError` (a denial rejects, a
 * timeout or transport failure retries). Import it to shadow the global:
 * `import { fetch } from 'sluice'`.
 */
export function fetch(input: string, init?: RequestInit): Promise<Response>;

/**
 * `fetch`, as the StarlingMonkey engine provides it over `wasi:http` (a
 * plugin that calls it is built with that engine, and its pipeline must
 * grant `[pipelines.<name>.plugin.http]`). Declared here because the
 * TypeScript check uses the ES library only (no DOM); this is the subset
 * plugins need.
 */
declare global {
  interface Headers {
    get(name: string): string | null;
    has(name: string): boolean;
    forEach(callback: (value: string, name: string) => void): void;
  }
  interface Response {
    readonly status: number;
    readonly ok: boolean;
    readonly headers: Headers;
    text(): Promise<string>;
    json(): Promise<unknown>;
    arrayBuffer(): Promise<ArrayBuffer>;
  }
  interface RequestInit {
    method?: string;
    headers?: Record<string, string> | Array<[string, string]>;
    body?: string | Uint8Array | null;
  }
  function fetch(input: string, init?: RequestInit): Promise<Response>;
}
