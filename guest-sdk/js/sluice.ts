// Sluice plugin SDK for JavaScript and TypeScript (sluice:plugin@0.2.0,
// world `plugin`), written in TypeScript. build.sh compiles it with `tsc`
// into the `sluice.js` the bundler links into a plugin and the
// `sluice.d.ts` TypeScript plugins are checked against (both generated,
// under .cache/js/sdk/); the `sluice:plugin/…` imports below are typed by
// the declarations `jco guest-types` generates from wit/sluice.wit.
//
// The counterpart of the Rust SDK (guest-sdk/rust): you write
// `init(config) -> state` and `handle(state, event) -> outputs`, and
// `plugin({ init, handle })` returns the `handler` export the component model
// expects, with `handleBatch` derived from `handle`.
//
//   import { plugin, HandlerError, Output } from 'sluice';   // build.sh maps `sluice` here
//   export const handler = plugin({
//     init(config) { config.denyUnknown(['prefix']); return { prefix: config.get('prefix') ?? '>' }; },
//     handle(state, event) { return [Output.text(state.prefix + event.text())]; },
//   });
//
// One source works on both componentize-js engines (QuickJS, the default of
// build.sh, and StarlingMonkey): the SDK hides their differences (`null` vs
// `undefined` for a missing option, `number` vs `bigint` for u64) and brings
// its own UTF-8 codec because QuickJS has no TextEncoder/TextDecoder. JSON
// is the engine's own `JSON` (docs/plugins/js.md says what that means for
// big integers and key order).
//
// `state` (the pipeline's key/value state) and `client` (calls to other
// services) are capabilities: build.sh makes the component import one only
// when the plugin uses it (the bundler drops this module's import of it
// otherwise), so a plugin needs no grant for what it does not use.
// `metrics` needs no grant, but is imported the same way, only when used.
import { log as hostLog } from 'sluice:plugin/log@0.2.0';
import * as hostState from 'sluice:plugin/state@0.2.0';
import * as hostClient from 'sluice:plugin/client@0.2.0';
import * as hostMetrics from 'sluice:plugin/metrics@0.2.0';
// Asked only by `fetch` below: imported only by plugins that use it.
import { last as lastHttpFailure } from 'sluice:plugin/http-failure@0.2.0';

// The engines lower what the WIT declarations call `bigint` (u64, s64) and
// `T | undefined` (option) as they like: QuickJS takes and gives Numbers and
// `null`, StarlingMonkey BigInts and `undefined`. The SDK accepts both and
// passes Numbers, which both take.
type Wide = number | bigint;
const wide = (n: number): bigint => n as unknown as bigint;

// A type error unless A is assignable to B: `[Within<A, B>, Within<B, A>]`
// keeps a type this SDK spells out (so that sluice.d.ts needs no WIT
// declarations) in step with the WIT's. Types only: no code.
type Within<A extends B, B> = [A, B];

// ---------------------------------------------------------------- errors

/** How a failed event is treated: retried with backoff, or dead-lettered now. */
export type Disposition = 'retryable' | 'reject';

/** A handler failure with its disposition: `retryable` (retry with backoff) or `reject` (dead letter now). Throw it from `handle`. */
export class HandlerError extends Error {
  /** What the component model lowers as the WIT `handler-error` (both engines read a thrown value's `payload`). */
  readonly payload: { disposition: Disposition; message: string };

  constructor(disposition: Disposition, message: string) {
    super(message);
    this.name = 'HandlerError';
    this.payload = { disposition, message: String(message) };
  }
  static retryable(message: string): HandlerError {
    return new HandlerError('retryable', message);
  }
  static reject(message: string): HandlerError {
    return new HandlerError('reject', message);
  }
  get disposition(): Disposition {
    return this.payload.disposition;
  }
}

// ---------------------------------------------------------------- UTF-8

interface Codecs {
  TextEncoder?: new () => { encode(s: string): Uint8Array };
  TextDecoder?: new (label: string, options: { fatal: boolean; ignoreBOM: boolean }) => { decode(b: Uint8Array): string };
  console?: { error(...args: unknown[]): void };
}
const engine = globalThis as typeof globalThis & Codecs;

// The engine's own codecs where it has them (StarlingMonkey: TextEncoder,
// TextDecoder). QuickJS has neither, but its `encodeURIComponent` /
// `decodeURIComponent` are native UTF-8 codecs: a byte loop in the
// interpreter costs ~5× more. The loops below are kept for what the native
// ones refuse: lone surrogates (encoded as U+FFFD) and invalid UTF-8 (whose
// offset the error names).
const nativeEncoder = engine.TextEncoder ? new engine.TextEncoder() : null;
const nativeDecoder = engine.TextDecoder ? new engine.TextDecoder('utf-8', { fatal: true, ignoreBOM: true }) : null;

function encodeSlow(s: string): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      }
    }
    if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd; // a lone surrogate cannot be UTF-8
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Uint8Array.from(out);
}

function decodeSlow(bytes: Uint8Array): string {
  let out = '';
  let chunk: number[] = [];
  const bad = (i: number): never => {
    throw HandlerError.reject(`payload is not valid UTF-8: invalid byte at offset ${i}`);
  };
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let c: number;
    let n: number;
    if (b < 0x80) [c, n] = [b, 0];
    else if (b >= 0xc2 && b < 0xe0) [c, n] = [b & 31, 1];
    else if (b >= 0xe0 && b < 0xf0) [c, n] = [b & 15, 2];
    else if (b >= 0xf0 && b < 0xf5) [c, n] = [b & 7, 3];
    else return bad(i);
    for (let k = 1; k <= n; k++) {
      const x = bytes[i + k];
      if (x === undefined || (x & 0xc0) !== 0x80) bad(i);
      c = (c << 6) | (x & 63);
    }
    if ((n === 2 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) || (n === 3 && (c < 0x10000 || c > 0x10ffff))) bad(i);
    if (c >= 0x10000) {
      c -= 0x10000;
      chunk.push(0xd800 + (c >> 10), 0xdc00 + (c & 0x3ff));
    } else {
      chunk.push(c);
    }
    if (chunk.length > 4096) {
      out += String.fromCharCode.apply(null, chunk);
      chunk = [];
    }
    i += n + 1;
  }
  return out + String.fromCharCode.apply(null, chunk);
}

/** Bytes as the builders accept them: strings are sent as UTF-8. */
export type BytesLike = Uint8Array | readonly number[] | string;

// A Uint8Array over the same bytes. StarlingMonkey hands a list<u8> over
// as a typed array that is not an instance of this realm's Uint8Array.
function asBytes(value: Uint8Array | ArrayBufferView | ArrayBuffer | ArrayLike<number>): Uint8Array {
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  return Uint8Array.from(value);
}

/** UTF-8 encoding and strict decoding (QuickJS has no TextEncoder). */
export const utf8 = {
  /** Lone surrogates become U+FFFD. */
  encode(text: string): Uint8Array {
    const s = String(text);
    if (nativeEncoder) return nativeEncoder.encode(s);
    let binary: string; // one char per UTF-8 byte
    try {
      binary = unescape(encodeURIComponent(s));
    } catch {
      return encodeSlow(s); // a lone surrogate
    }
    const n = binary.length;
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = binary.charCodeAt(i);
    return out;
  },
  /** Throws a `reject` HandlerError on invalid UTF-8, naming the byte offset. */
  decode(bytes: Uint8Array | ArrayLike<number>): string {
    const view = asBytes(bytes);
    try {
      if (nativeDecoder) return nativeDecoder.decode(view);
      let binary = '';
      for (let i = 0; i < view.length; i += 8192) binary += String.fromCharCode.apply(null, view.subarray(i, i + 8192) as unknown as number[]);
      return decodeURIComponent(escape(binary));
    } catch {
      return decodeSlow(view); // throws, naming the first invalid byte
    }
  },
};

function bytes(value: BytesLike): Uint8Array;
function bytes(value: BytesLike | null | undefined): Uint8Array | null | undefined;
function bytes(value: BytesLike | null | undefined): Uint8Array | null | undefined {
  if (value == null) return value;
  if (typeof value === 'string') return utf8.encode(value);
  if (Array.isArray(value) || ArrayBuffer.isView(value) || (value as unknown) instanceof ArrayBuffer) return asBytes(value);
  throw new TypeError(`expected bytes (Uint8Array, Array or string), got ${typeof value}`);
}

// ---------------------------------------------------------------- JSON

/**
 * A JSON document as the engine's `JSON.parse` makes it: plain objects and
 * arrays, numbers as `number` (integers exact up to 2^53).
 */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

// `JSON.parse`, a syntax error rejecting the event (it would fail again).
function parseJson<T>(text: string, what: string): T {
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw HandlerError.reject(`${what} is not valid JSON: ${messageOf(e)}`);
  }
}

// A lone surrogate: JSON.stringify writes one as an escape (`"\udc00"`),
// which strict parsers downstream (serde_json, Go's encoding/json) refuse.
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * `JSON.stringify(value)`, compact, with a lone surrogate in a string value
 * written as U+FFFD (as the UTF-8 encoder does) so every parser reads the
 * output. A value JSON cannot hold (`undefined`, a function, a BigInt)
 * throws a TypeError: a bug in the plugin.
 */
function stringifyJson(value: unknown): string {
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError(`${typeof value} cannot be written as JSON`);
  // JSON.stringify escapes a surrogate only when it is lone (`\udxxx`):
  // the second pass is for those (and for a string holding `\ud` itself).
  if (text.indexOf('\\ud') < 0) return text;
  return JSON.stringify(value, (_key: string, v: unknown) => (typeof v === 'string' ? v.replace(LONE_SURROGATE, '\ufffd') : v));
}

// ---------------------------------------------------------------- config

/** The `init` configuration: string pairs in the host's order (sorted by key). */
export class Config {
  readonly pairs: Array<[string, string]>;

  constructor(pairs: ReadonlyArray<readonly [string, string]>) {
    this.pairs = pairs.map(([k, v]) => [String(k), String(v)]);
  }
  /** The value of `key`, or null. */
  get(key: string): string | null {
    const hit = this.pairs.find(([k]) => k === key);
    return hit ? hit[1] : null;
  }
  /** Throws a message naming the missing key (which refuses the load). */
  require(key: string): string {
    const value = this.get(key);
    if (value === null) throw `missing required config key \`${key}\``;
    return value;
  }
  keys(): string[] {
    return this.pairs.map(([k]) => k);
  }
  /** `[rest, value]` for every key starting with `prefix`, prefix stripped. */
  withPrefix(prefix: string): Array<[string, string]> {
    return this.pairs.filter(([k]) => k.startsWith(prefix)).map(([k, v]): [string, string] => [k.slice(prefix.length), v]);
  }
  /** Refuses any key not listed; `prefix*` accepts a family of keys. Same message as the Rust SDK. */
  denyUnknown(known: readonly string[]): void {
    const isKnown = (key: string) => known.some((p) => (p.endsWith('*') ? key.startsWith(p.slice(0, -1)) : key === p));
    const unknown = this.keys().find((k) => !isKnown(k));
    if (unknown === undefined) return;
    throw known.length === 0
      ? `unknown config key \`${unknown}\` (this plugin takes no configuration)`
      : `unknown config key \`${unknown}\` (expected one of: ${known.join(', ')})`;
  }
}

// ---------------------------------------------------------------- events and outputs

/** One message header (`sluice:plugin/types.header`). */
export interface Header {
  key: string;
  value: Uint8Array;
}

/** The event record as the component model hands it over (either engine). */
export interface RawEvent {
  id: string;
  source: string;
  key?: Uint8Array | null;
  payload: Uint8Array;
  headers: Header[];
  timestampMs: Wide;
  attempt: number;
  replyTo?: string | null;
}

/**
 * The event as `handle` sees it: the WIT record (camelCase fields) with
 * `key`/`replyTo` `null` when absent and `timestampMs` a Number on both
 * engines, plus helpers.
 */
export class Event {
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

  constructor(raw: RawEvent) {
    this.id = raw.id;
    this.source = raw.source;
    this.key = raw.key ?? null;
    this.payload = raw.payload;
    this.headers = raw.headers;
    this.timestampMs = Number(raw.timestampMs);
    this.attempt = raw.attempt;
    this.replyTo = raw.replyTo ?? null;
  }
  /** The first header `name` (case-sensitive) as bytes, or null. */
  header(name: string): Uint8Array | null {
    const h = this.headers.find((x) => x.key === name);
    return h ? h.value : null;
  }
  /** The first header `name` as text, or null (also when it is not UTF-8). */
  headerText(name: string): string | null {
    const value = this.header(name);
    if (value === null) return null;
    try {
      return utf8.decode(value);
    } catch {
      return null;
    }
  }
  /** The payload as text; invalid UTF-8 rejects the event. */
  text(): string {
    return utf8.decode(this.payload);
  }
  /**
   * The payload parsed with the engine's `JSON.parse`; invalid UTF-8 or
   * JSON rejects the event. `T` is what you know the payload to be (not
   * checked): `event.json<Order>()`.
   */
  json<T = JsonValue>(): T {
    return parseJson<T>(this.text(), 'payload');
  }
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

/** Builders for outputs. Payloads, keys and header values may be strings (sent as UTF-8). */
export const Output = {
  /** An output with this payload and optional fields: `{ destination, key, headers, reply }`. */
  of(payload: BytesLike, fields: OutputFields = {}): Output {
    return {
      destination: fields.destination ?? null,
      key: bytes(fields.key) ?? null,
      payload: bytes(payload),
      headers: (fields.headers ?? []).map((h) => ({ key: String(h.key), value: bytes(h.value) })),
      reply: Boolean(fields.reply),
    };
  },
  text(text: string, fields?: OutputFields): Output {
    return Output.of(utf8.encode(text), fields);
  },
  /** `value` as compact JSON (the engine's `JSON.stringify`), UTF-8. */
  json(value: unknown, fields?: OutputFields): Output {
    return Output.of(utf8.encode(stringifyJson(value)), fields);
  },
  /** The answer to a request: sent to the event's `replyTo`. */
  reply(payload: BytesLike, fields: Omit<OutputFields, 'reply'> = {}): Output {
    return Output.of(payload, { ...fields, reply: true });
  },
  /** The event's key, payload and headers, unchanged. */
  forward(event: Event): Output {
    return Output.of(event.payload, { key: event.key, headers: event.headers });
  },
};

// ---------------------------------------------------------------- state

// StarlingMonkey (componentize-js 0.23) aborts the instance when an s64
// argument is negative ("coreabi_from_bigint64 validation"), as a Number
// or a BigInt, signed or not. There a negative delta is applied as a read
// and a write of the same key: the same result, limits and errors (the
// event's reads and writes are tracked the same way).
function incrementByWrite(key: string, delta: number): number {
  const text = state.getText(key);
  if (text !== null && !/^[+-]?[0-9]+$/.test(text)) throw new StateError('not-a-counter');
  const next = BigInt(text ?? 0) + BigInt(delta);
  if (next < -(2n ** 63n) || next >= 2n ** 63n) throw new StateError('overflow');
  state.set(key, next.toString());
  return Number(next);
}

/** The WIT `state-error` cases. */
export type StateErrorKind =
  | 'key-too-long'
  | 'value-too-large'
  | 'too-many-writes'
  | 'too-many-reads'
  | 'not-a-counter'
  | 'overflow'
  | 'unavailable';
// Spelled out so that sluice.d.ts stands alone; tsc fails if the WIT's differ.
type StateErrorKindsMatch = [Within<StateErrorKind, hostState.StateError['tag']>, Within<hostState.StateError['tag'], StateErrorKind>];

/**
 * A state operation refused by the host: a HandlerError, so an uncaught one
 * fails the event the way the Rust SDK's `?` does: `unavailable` (the
 * backend cannot be reached) is retryable, every other kind rejects.
 * `kind` is the WIT case (`key-too-long`, `value-too-large`,
 * `too-many-writes`, `too-many-reads`, `not-a-counter`, `overflow`,
 * `unavailable`) and `detail` its payload (the limit, or the reason).
 */
export class StateError extends HandlerError {
  readonly kind: StateErrorKind;
  /** The limit (`key-too-long`…`too-many-reads`), the reason (`unavailable`), or null. */
  readonly detail: number | string | null;

  constructor(kind: StateErrorKind, detail?: number | string | null) {
    super(kind === 'unavailable' ? 'retryable' : 'reject', describeStateError(kind, detail));
    this.name = 'StateError';
    this.kind = kind;
    this.detail = detail ?? null;
  }
}

// The Rust SDK's wording (state::describe), so a dead letter reads the same.
function describeStateError(kind: StateErrorKind, detail: unknown): string {
  switch (kind) {
    case 'key-too-long': return `state key longer than the limit of ${detail} bytes`;
    case 'value-too-large': return `state value larger than the limit of ${detail} bytes`;
    case 'too-many-writes': return `an event may write at most ${detail} state keys`;
    case 'too-many-reads': return `an event may read at most ${detail} state keys and scans`;
    case 'not-a-counter': return 'state value is not a counter (ASCII decimal text)';
    case 'overflow': return 'state counter would overflow a signed 64-bit integer';
    case 'unavailable': return `state unavailable: ${detail}`;
    default: return `state error ${kind}`;
  }
}

// Calls a result-returning import, turning its WIT error variant into a
// `HostError` (StateError, CallError). Both engines throw the variant,
// StarlingMonkey wrapped in an Error whose `payload` is `{ tag, val }`.
function hostCall<K extends string, A extends unknown[], R>(
  HostError: new (kind: K, detail?: never) => HandlerError,
  f: (...args: A) => R,
  ...args: A
): R {
  try {
    return f(...args);
  } catch (e) {
    const err: unknown = e !== null && typeof e === 'object' && 'payload' in e ? e.payload : e;
    if (err !== null && typeof err === 'object' && 'tag' in err && typeof err.tag === 'string') {
      throw new HostError(err.tag as K, ('val' in err ? err.val : undefined) as never);
    }
    throw e;
  }
}

/** One page of `state.scan`. */
export interface StatePage {
  entries: Array<[key: string, value: Uint8Array]>;
  /** Pass as `after` for the next page; null: this was the last. */
  next: string | null;
}

/**
 * The pipeline's state: string keys, byte values, remembered between
 * events. What an event writes is seen by its own later reads at once and
 * by other events only once it concludes with its outputs accepted (a
 * retry, trap or dead letter leaves no trace). The pipeline must grant it
 * (`[pipelines.<name>.state]`). Every method throws a `StateError`.
 */
export const state = {
  /** The value of `key` (a Uint8Array), or null. */
  get(key: string): Uint8Array | null {
    const value = hostCall(StateError, hostState.get, String(key));
    return value == null ? null : asBytes(value);
  },
  /** The value of `key` as text, or null (also when it is not UTF-8). */
  getText(key: string): string | null {
    const value = state.get(key);
    if (value === null) return null;
    try {
      return utf8.decode(value);
    } catch {
      return null;
    }
  },
  /** The value of `key` parsed with `JSON.parse`, or null; a value that is not JSON rejects the event. */
  getJson<T = JsonValue>(key: string): T | null {
    const text = state.getText(key);
    return text === null ? null : parseJson<T>(text, `state key ${JSON.stringify(String(key))}`);
  },
  /** Sets `key` to `value` (bytes, or a string sent as UTF-8). */
  set(key: string, value: BytesLike): void {
    hostCall(StateError, hostState.set, String(key), bytes(value));
  },
  /** Sets `key` to `value` as compact JSON (`JSON.stringify`). */
  setJson(key: string, value: unknown): void {
    state.set(key, utf8.encode(stringifyJson(value)));
  },
  /** Removes `key` (no error if it has no value). */
  delete(key: string): void {
    hostCall(StateError, hostState.delete, String(key));
  },
  /**
   * Adds `delta` (default 1) to the counter at `key` (missing counts as 0)
   * and returns the new value as a Number (both engines pass s64 as a
   * Number: exact up to 2^53). Counters are ASCII decimal text: `getText`
   * reads one as "42".
   */
  increment(key: string, delta = 1): number {
    const n = Number(delta);
    if (nativeEncoder && n < 0) return incrementByWrite(String(key), n);
    return Number(hostCall(StateError, hostState.increment, String(key), wide(n)));
  },
  /**
   * One page of the keys starting with `prefix`, in order:
   * `{ entries: [[key, Uint8Array], …], next }`; pass `next` as `after` for
   * the following page (null: this was the last). `limit` defaults to 100
   * (the host caps it too).
   */
  scan(prefix: string, { after = null, limit = 100 }: { after?: string | null; limit?: number } = {}): StatePage {
    const page = hostCall(StateError, hostState.scan, String(prefix), (after ?? null) as string | undefined, limit);
    return { entries: page.entries.map(([k, v]): [string, Uint8Array] => [k, asBytes(v)]), next: page.next ?? null };
  },
  /** Every `[key, value]` under `prefix`, in key order, a page at a time. */
  *entries(prefix: string): Generator<[key: string, value: Uint8Array], void, undefined> {
    let after: string | null = null;
    do {
      const page: StatePage = state.scan(prefix, { after, limit: 256 });
      yield* page.entries;
      after = page.next;
    } while (after !== null);
  },
};

// ---------------------------------------------------------------- client

/** The WIT `call-error` cases. */
export type CallErrorKind =
  | 'unknown-destination'
  | 'not-allowed'
  | 'timeout'
  | 'no-responders'
  | 'service'
  | 'too-many-calls'
  | 'too-large'
  | 'unavailable';
type CallErrorKindsMatch = [Within<CallErrorKind, hostClient.CallError['tag']>, Within<hostClient.CallError['tag'], CallErrorKind>];

/** An error the service itself answered with (a NestJS `err`, a NATS `Nats-Service-Error`). */
export interface ServiceError {
  readonly code: string | null;
  readonly message: string;
  readonly payload: Uint8Array;
}

/**
 * A service call that got no answer: a HandlerError, so an uncaught one
 * fails the event the way the Rust SDK's `?` does: `timeout`,
 * `no-responders` and `unavailable` are retryable, every other kind
 * rejects. `kind` is the WIT case (`unknown-destination`, `not-allowed`,
 * `timeout`, `no-responders`, `service`, `too-many-calls`, `too-large`,
 * `unavailable`); for `service` (the service answered with an error),
 * `service` is `{ code, message, payload }` (code null when it gave none,
 * payload a Uint8Array).
 */
export class CallError extends HandlerError {
  readonly kind: CallErrorKind;
  /** The limit, the timeout in ms, the destination or the reason; null for `service` and `no-responders`. */
  readonly detail: number | string | null;
  /** What the service answered, for `service`; otherwise null. */
  readonly service: ServiceError | null;

  constructor(kind: CallErrorKind, detail?: unknown) {
    const transient = kind === 'timeout' || kind === 'no-responders' || kind === 'unavailable';
    super(transient ? 'retryable' : 'reject', describeCallError(kind, detail));
    this.name = 'CallError';
    this.kind = kind;
    this.detail = kind === 'service' ? null : ((detail ?? null) as number | string | null);
    const answered = detail as Partial<hostClient.ServiceError> | null | undefined;
    this.service = kind === 'service'
      ? { code: answered?.code ?? null, message: String(answered?.message ?? ''), payload: asBytes(answered?.payload ?? []) }
      : null;
  }
}

// The Rust SDK's wording (client::describe), so a dead letter reads the same.
function describeCallError(kind: CallErrorKind, detail: unknown): string {
  switch (kind) {
    case 'unknown-destination': return `no client destination named \`${detail}\` in the pipeline`;
    case 'not-allowed': return `call not allowed: ${detail}`;
    case 'timeout': return `no answer within ${detail} ms`;
    case 'no-responders': return 'nobody listens on the destination';
    case 'service': {
      const answered = detail as Partial<hostClient.ServiceError> | null | undefined;
      return answered?.code != null
        ? `the service answered with error ${answered.code}: ${answered.message}`
        : `the service answered with an error: ${answered?.message}`;
    }
    case 'too-many-calls': return `an event may make at most ${detail} calls to this destination`;
    case 'too-large': return `payload larger than the destination's limit of ${detail} bytes`;
    case 'unavailable': return `service unavailable: ${detail}`;
    default: return `service call error ${kind}`;
  }
}

/** Headers as an object or as `[key, value]` pairs. */
export type HeadersInit = Record<string, BytesLike> | ReadonlyArray<readonly [string, BytesLike]>;

function headerList(headers: HeadersInit | null | undefined): Header[] {
  const pairs: ReadonlyArray<readonly [string, BytesLike]> = Array.isArray(headers) ? headers : Object.entries(headers ?? {});
  return pairs.map(([key, value]) => ({ key: String(key), value: bytes(value) }));
}

/** A service's answer: `payload` (Uint8Array) and `headers`, with text and JSON views. */
export class Reply {
  readonly payload: Uint8Array;
  readonly headers: Header[];

  constructor(raw: { payload: Uint8Array; headers: Header[] }) {
    this.payload = asBytes(raw.payload);
    this.headers = raw.headers.map((h) => ({ key: h.key, value: asBytes(h.value) }));
  }
  /** The payload as UTF-8 text; invalid UTF-8 rejects the event. */
  text(): string {
    return utf8.decode(this.payload);
  }
  /** The payload parsed as JSON (with the NestJS codec: the `response` value); invalid JSON rejects the event. */
  json<T = JsonValue>(): T {
    return parseJson<T>(this.text(), 'the reply');
  }
}

export interface RequestOptions {
  headers?: HeadersInit;
  /** Default: the destination's `timeout`. */
  timeoutMs?: number | null;
  /** Send `payload` as JSON (`JSON.stringify`). */
  json?: boolean;
}

/**
 * Calls to other services, as a NestJS `ClientProxy` makes them: each
 * destination is a `[pipelines.<name>.clients.<destination>]` table
 * (transport, subject or topic, codec). Every method throws a `CallError`.
 */
export const client = {
  /**
   * Sends `payload` (bytes, a string, or with `json: true` any value sent as
   * JSON) to `destination` and waits for its answer: a `Reply`. Options:
   * `headers` (an object or `[key, value]` pairs), `timeoutMs` (default: the
   * destination's `timeout`). The host adds the event's correlation id, its
   * trace context and an `Idempotency-Key` that is the same on every retry.
   */
  request(destination: string, payload: unknown, { headers = [], timeoutMs = null, json = false }: RequestOptions = {}): Reply {
    const body = json ? utf8.encode(stringifyJson(payload)) : bytes(payload as BytesLike);
    const timeout = timeoutMs === null || timeoutMs === undefined ? null : Math.max(0, Math.floor(Number(timeoutMs)));
    return new Reply(hostCall(CallError, hostClient.request, String(destination), body, headerList(headers), timeout as number | undefined));
  },
  /** `request` with a JSON payload, returning the answer parsed as JSON. */
  requestJson<T = JsonValue>(destination: string, value: unknown, options: Omit<RequestOptions, 'json'> = {}): T {
    return client.request(destination, value, { ...options, json: true }).json<T>();
  },
  /**
   * Publishes `payload` to `destination` without waiting (a NestJS event).
   * An emit is an output of the event: published with its outputs if it
   * succeeds, dropped if the attempt fails.
   */
  emit(destination: string, payload: unknown, { headers = [], json = false }: { headers?: HeadersInit; json?: boolean } = {}): void {
    const body = json ? utf8.encode(stringifyJson(payload)) : bytes(payload as BytesLike);
    hostCall(CallError, hostClient.emit, String(destination), body, headerList(headers));
  },
  /** `emit` with a JSON payload. */
  emitJson(destination: string, value: unknown, options: { headers?: HeadersInit } = {}): void {
    client.emit(destination, value, { ...options, json: true });
  },
};

// ---------------------------------------------------------------- logging

/** Structured fields of a log line: an object or `[key, value]` pairs; values become text. */
export type LogFields = Record<string, unknown> | ReadonlyArray<readonly [string, unknown]>;

function textPairs(fields: LogFields | null | undefined): Array<[string, string]> {
  if (fields == null) return [];
  const pairs: ReadonlyArray<readonly [string, unknown]> = Array.isArray(fields) ? fields : Object.entries(fields);
  return pairs.map(([k, v]): [string, string] => [String(k), String(v)]);
}

function logAt(level: 'trace' | 'debug' | 'info' | 'warn' | 'error') {
  return (message: string, fields: LogFields = {}): void => {
    hostLog(level, String(message), textPairs(fields));
  };
}

/** Structured logging into the host's log stream: `log.info('msg', { key: 'value' })`. */
export const log = {
  trace: logAt('trace'),
  debug: logAt('debug'),
  info: logAt('info'),
  warn: logAt('warn'),
  error: logAt('error'),
};

// ---------------------------------------------------------------- metrics

/** Metric labels: `{ sku: 'a' }` or `[['sku', 'a']]`; values become text. */
export type MetricLabels = LogFields;

/**
 * The plugin's own metrics, on the host's `/metrics` as
 * `sluice_plugin_<name>` (counters `_total`) with the pipeline and plugin
 * as labels: `metrics.counter('orders', { sku }).add(1)`,
 * `metrics.gauge('depth').set(3)`, `metrics.histogram('bytes').observe(n)`.
 * Recording never fails the event: the host drops (and counts) what breaks
 * its rules (names `[a-zA-Z_][a-zA-Z0-9_]*`, one kind per name, at most
 * `max_series` label sets per metric, the rest folded into `other`). A
 * failed attempt's values stay.
 */
export const metrics = {
  /** Counter `name` with `labels`: `.add(n)` (a non-negative integer; anything else throws a TypeError), `.inc()`. */
  counter(name: string, labels?: MetricLabels): { add(value?: number): void; inc(): void } {
    const n = String(name);
    const pairs = textPairs(labels);
    return {
      add(value = 1) {
        const v = Number(value);
        if (!Number.isSafeInteger(v) || v < 0) throw new TypeError(`counter ${n}: add a non-negative integer, not ${value}`);
        hostMetrics.counterAdd(n, pairs, wide(v));
      },
      inc() {
        hostMetrics.counterAdd(n, pairs, wide(1));
      },
    };
  },
  /** Gauge `name` with `labels`: `.set(value)`. */
  gauge(name: string, labels?: MetricLabels): { set(value: number): void } {
    const n = String(name);
    const pairs = textPairs(labels);
    return {
      set(value) {
        hostMetrics.gaugeSet(n, pairs, Number(value));
      },
    };
  },
  /** Histogram `name` with `labels`: `.observe(value)` (the host's buckets: 0.001 to ~16 777, doubling). */
  histogram(name: string, labels?: MetricLabels): { observe(value: number): void } {
    const n = String(name);
    const pairs = textPairs(labels);
    return {
      observe(value) {
        hostMetrics.histogramObserve(n, pairs, Number(value));
      },
    };
  },
};

// ---------------------------------------------------------------- outbound HTTP

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
  interface URL {
    readonly href: string;
    readonly host: string;
    readonly hostname: string;
    readonly port: string;
    readonly protocol: string;
  }
  var URL: new (url: string) => URL;
  function fetch(input: string, init?: RequestInit): Promise<Response>;
}

/** Why an outbound HTTP request failed (see `HttpError`). */
export type HttpErrorKind = 'denied' | 'timeout' | 'too-large' | 'transport';

/**
 * A failed outbound HTTP request, as the other SDKs raise it: a
 * HandlerError, so an uncaught one fails the event as the Rust SDK's `?`
 * does. `kind`: `denied` (rejects: the pipeline's `plugin.http.allow`, or
 * `plugin test --http-replies` without a rule, does not change on retry),
 * `timeout`, `too-large` or `transport` (retryable). `code` is the
 * `wasi:http` error-code's case (`HTTP-request-denied`…), `host` the URL's
 * (with its port if not the default).
 */
export class HttpError extends HandlerError {
  readonly kind: HttpErrorKind;
  readonly host: string;
  readonly code: string;

  constructor(kind: HttpErrorKind, host: string, code: string, message: string) {
    super(kind === 'denied' ? 'reject' : 'retryable', message);
    this.name = 'HttpError';
    this.kind = kind;
    this.host = host;
    this.code = code;
  }
}

const DENIED_PREFIX = 'denied: ';
const TIMEOUTS = ['connection-timeout', 'connection-read-timeout', 'HTTP-response-timeout'];

// The Rust SDK's wording (http::Error's Display), so a dead letter reads the same.
function httpError(host: string, failure: { code: string; detail?: string | null }): HttpError {
  const detail = failure.detail ?? null;
  if (failure.code === 'HTTP-request-denied') {
    return new HttpError('denied', host, failure.code, `HTTP request to ${host} denied: not in the pipeline's plugin.http.allow`);
  }
  if (failure.code === 'internal-error' && detail !== null && detail.startsWith(DENIED_PREFIX)) {
    return new HttpError('denied', host, failure.code, `HTTP request to ${host} denied: ${detail.slice(DENIED_PREFIX.length)}`);
  }
  if (TIMEOUTS.includes(failure.code)) return new HttpError('timeout', host, failure.code, `HTTP request to ${host} timed out`);
  if (failure.code === 'HTTP-response-body-size') return new HttpError('too-large', host, failure.code, 'HTTP response body over the limit');
  const code = detail === null ? failure.code : `${failure.code}(${detail})`;
  return new HttpError('transport', host, failure.code, `HTTP request to ${host} failed: ${code}`);
}

// `host:port` as the host names a request's target (a default port added).
function targetOf(url: URL): string {
  return `${url.hostname}:${url.port || (url.protocol === 'http:' ? '80' : '443')}`;
}

/**
 * The engine's `fetch` (StarlingMonkey; build.sh picks it when a plugin
 * calls `fetch`), with its failures told apart: the engine rejects every
 * one with the same `TypeError` ("NetworkError when attempting to fetch
 * resource"), dropping the `wasi:http` error-code, so this asks the host
 * (`sluice:plugin/http-failure`) how the request failed and rejects with
 * an `HttpError` instead: a denial rejects the event, a timeout or a
 * transport failure retries it, worded as the other SDKs word them. A
 * rejection the host has no failure for (a bad URL, which never reached
 * it) is the engine's, as it is. Import it to shadow the global:
 * `import { fetch } from 'sluice'`.
 */
export async function fetch(input: string | URL | { url: string }, init?: RequestInit): Promise<Response> {
  try {
    return await globalThis.fetch(input as string, init);
  } catch (e) {
    let url: URL;
    try {
      url = new URL(typeof input === 'string' ? input : 'href' in input ? input.href : input.url);
    } catch {
      throw e;
    }
    const failure = lastHttpFailure();
    if (failure === undefined || failure === null || failure.target !== targetOf(url)) throw e;
    throw httpError(url.host, failure);
  }
}

// ---------------------------------------------------------------- the export

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

/** One event's result in a batch, as the WIT `result<list<output>, handler-error>`. */
export type BatchResult = { tag: 'ok'; val: Output[] } | { tag: 'err'; val: { disposition: Disposition; message: string } };

/** The `handler` export the component model expects. */
export interface Handler {
  init(pairs: Array<[string, string]>): void;
  handle(raw: RawEvent): Output[] | Promise<Output[]>;
  handleBatch(raws: RawEvent[]): BatchResult[] | Promise<BatchResult[]>;
  /** The plugin's `accepts`, as the `manifest` export. */
  readonly manifest: Manifest;
}

function isThenable<T>(value: unknown): value is PromiseLike<T> {
  return value !== null && typeof value === 'object' && typeof (value as { then?: unknown }).then === 'function';
}

/**
 * Builds the `handler` export from `{ init(config) -> state, handle(state, event) -> outputs }`:
 * `export const handler = plugin({ init, handle })`.
 *
 * - `init` may return anything (kept as `state`) and refuses the config by
 *   throwing: a string, or an Error whose message is used.
 * - `handle` returns an array of outputs (empty filters the event out) and
 *   fails by throwing a `HandlerError`. Anything else thrown is a bug: the
 *   call traps, the host counts it as retryable and replaces the instance;
 *   the stack goes to stderr, which the host adds to the trap message.
 * - `accepts(state)` (optional) lists the event versions the plugin handles
 *   (`order-created@2`, `order-created@*`, `*`; default `['*']`). The
 *   returned handler's `manifest` is the `manifest` export: a module that
 *   exports it (`export const manifest = handler.manifest`) is built for
 *   world `plugin-with-manifest` (build.sh sees the export).
 */
export function plugin<State>(impl: Plugin<State>): Handler {
  let state: State;
  let ready = false;

  function checked(outputs: unknown): Output[] {
    if (!Array.isArray(outputs)) throw new TypeError(`handle must return an array of outputs, got ${typeof outputs}`);
    return outputs;
  }

  function bug(e: unknown): never {
    if (!(e instanceof HandlerError) && engine.console) {
      engine.console.error(`plugin bug: ${e instanceof Error && e.stack ? `${e}\n${e.stack}` : e}`);
    }
    throw e;
  }

  // The outputs, or (an `async handle`, e.g. one that awaits `fetch`) a
  // promise of them: the engine runs the event loop until it settles.
  function handleOne(raw: RawEvent): Output[] | Promise<Output[]> {
    if (!ready) throw HandlerError.retryable('plugin not initialised');
    let result: Output[] | Promise<Output[]>;
    try {
      result = impl.handle(state, new Event(raw));
    } catch (e) {
      return bug(e);
    }
    if (isThenable<Output[]>(result)) return result.then(checked, bug) as Promise<Output[]>;
    try {
      return checked(result);
    } catch (e) {
      return bug(e);
    }
  }

  // Nested results need explicit { tag, val }; the `payload` unwrapping of
  // top-level throws does not happen there, so it is done by hand.
  function resultOf(e: unknown): BatchResult {
    if (e instanceof HandlerError) return { tag: 'err', val: e.payload };
    throw e;
  }

  // The rest of a batch once one event's handling turned out async: each
  // event after the other, in order.
  async function finishBatch(raws: RawEvent[], from: number, pending: Promise<Output[]>, results: BatchResult[]): Promise<BatchResult[]> {
    for (let i = from; i < raws.length; i++) {
      try {
        results.push({ tag: 'ok', val: await (i === from ? pending : handleOne(raws[i])) });
      } catch (e) {
        results.push(resultOf(e));
      }
    }
    return results;
  }

  const manifest: Manifest = {
    // Nothing before a successful init, as in the Rust SDK.
    accepts() {
      if (!ready) return [];
      return impl.accepts ? impl.accepts(state) : ['*'];
    },
  };

  const handler = {
    init(pairs: Array<[string, string]>): void {
      try {
        state = impl.init ? impl.init(new Config(pairs)) : (undefined as State);
        ready = true;
      } catch (e) {
        // A refused config: the same outcome on both engines (StarlingMonkey
        // would trap on a thrown Error in a result<_, string> export).
        throw typeof e === 'string' ? e : e instanceof Error ? e.message : String(e);
      }
    },
    handle(raw: RawEvent): Output[] | Promise<Output[]> {
      return handleOne(raw);
    },
    handleBatch(raws: RawEvent[]): BatchResult[] | Promise<BatchResult[]> {
      const results: BatchResult[] = [];
      for (let i = 0; i < raws.length; i++) {
        let outputs: Output[] | Promise<Output[]>;
        try {
          outputs = handleOne(raws[i]);
        } catch (e) {
          results.push(resultOf(e));
          continue;
        }
        if (isThenable<Output[]>(outputs)) return finishBatch(raws, i, outputs, results);
        results.push({ tag: 'ok', val: outputs });
      }
      return results;
    },
  };
  // Not enumerable: the `handler` export has exactly its three functions.
  Object.defineProperty(handler, 'manifest', { value: manifest });
  return handler as Handler;
}
