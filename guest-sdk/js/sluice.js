// Sluice plugin SDK for JavaScript (sluice:plugin@0.2.0, world `plugin`).
//
// The JavaScript counterpart of the Rust SDK (guest-sdk/rust): you write
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
// its own UTF-8 codec because QuickJS has no TextEncoder/TextDecoder.
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

// ---------------------------------------------------------------- errors

/** A handler failure with its disposition: `retryable` (retry with backoff) or `reject` (dead letter now). */
export class HandlerError extends Error {
  constructor(disposition, message) {
    super(message);
    this.name = 'HandlerError';
    // Both engines lower a thrown value's `payload` as the WIT `handler-error`.
    this.payload = { disposition, message: String(message) };
  }
  static retryable(message) {
    return new HandlerError('retryable', message);
  }
  static reject(message) {
    return new HandlerError('reject', message);
  }
  get disposition() {
    return this.payload.disposition;
  }
}

// ---------------------------------------------------------------- UTF-8

// The engine's own codecs where it has them (StarlingMonkey: TextEncoder,
// TextDecoder). QuickJS has neither, but its `encodeURIComponent` /
// `decodeURIComponent` are native UTF-8 codecs: a byte loop in the
// interpreter costs ~5× more. The loops below are kept for what the native
// ones refuse: lone surrogates (encoded as U+FFFD) and invalid UTF-8 (whose
// offset the error names).
const nativeEncoder = typeof TextEncoder === 'function' ? new TextEncoder() : null;
const nativeDecoder = typeof TextDecoder === 'function' ? new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }) : null;

function encodeSlow(s) {
  const out = [];
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

function decodeSlow(bytes) {
  let out = '';
  let chunk = [];
  const bad = (i) => {
    throw HandlerError.reject(`payload is not valid UTF-8: invalid byte at offset ${i}`);
  };
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let c;
    let n;
    if (b < 0x80) { c = b; n = 0; }
    else if (b >= 0xc2 && b < 0xe0) { c = b & 31; n = 1; }
    else if (b >= 0xe0 && b < 0xf0) { c = b & 15; n = 2; }
    else if (b >= 0xf0 && b < 0xf5) { c = b & 7; n = 3; }
    else bad(i);
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

// A Uint8Array over the same bytes. StarlingMonkey hands a list<u8> over
// as a typed array that is not an instance of this realm's Uint8Array.
function asBytes(value) {
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  return Uint8Array.from(value);
}

/** UTF-8 encoding and strict decoding (QuickJS has no TextEncoder). */
export const utf8 = {
  encode(text) {
    const s = String(text);
    if (nativeEncoder) return nativeEncoder.encode(s);
    let binary; // one char per UTF-8 byte
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
  decode(bytes) {
    const view = asBytes(bytes);
    try {
      if (nativeDecoder) return nativeDecoder.decode(view);
      let binary = '';
      for (let i = 0; i < view.length; i += 8192) binary += String.fromCharCode.apply(null, view.subarray(i, i + 8192));
      return decodeURIComponent(escape(binary));
    } catch {
      return decodeSlow(view); // throws, naming the first invalid byte
    }
  },
};

function bytes(value) {
  if (value == null) return value;
  if (typeof value === 'string') return utf8.encode(value);
  if (Array.isArray(value) || ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return asBytes(value);
  throw new TypeError(`expected bytes (Uint8Array, Array or string), got ${typeof value}`);
}

// ---------------------------------------------------------------- config

/** The `init` configuration: string pairs in the host's order (sorted by key). */
export class Config {
  constructor(pairs) {
    this.pairs = pairs.map(([k, v]) => [String(k), String(v)]);
  }
  get(key) {
    const hit = this.pairs.find(([k]) => k === key);
    return hit ? hit[1] : null;
  }
  /** Throws a message naming the missing key (which refuses the load). */
  require(key) {
    const value = this.get(key);
    if (value === null) throw `missing required config key \`${key}\``;
    return value;
  }
  keys() {
    return this.pairs.map(([k]) => k);
  }
  /** `[rest, value]` for every key starting with `prefix`, prefix stripped. */
  withPrefix(prefix) {
    return this.pairs.filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]);
  }
  /** Refuses any key not listed; `prefix*` accepts a family of keys. Same message as the Rust SDK. */
  denyUnknown(known) {
    const isKnown = (key) => known.some((p) => (p.endsWith('*') ? key.startsWith(p.slice(0, -1)) : key === p));
    const unknown = this.keys().find((k) => !isKnown(k));
    if (unknown === undefined) return;
    throw known.length === 0
      ? `unknown config key \`${unknown}\` (this plugin takes no configuration)`
      : `unknown config key \`${unknown}\` (expected one of: ${known.join(', ')})`;
  }
}

// ---------------------------------------------------------------- events and outputs

/**
 * The event as the plugin sees it: the WIT record (camelCase fields) with
 * `key`/`replyTo` `null` when absent and `timestampMs` a Number on both
 * engines, plus helpers.
 */
export class Event {
  constructor(raw) {
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
  header(name) {
    const h = this.headers.find((x) => x.key === name);
    return h ? h.value : null;
  }
  /** The first header `name` as text, or null (also when it is not UTF-8). */
  headerText(name) {
    const value = this.header(name);
    if (value === null) return null;
    try {
      return utf8.decode(value);
    } catch {
      return null;
    }
  }
  /** The payload as text; invalid UTF-8 rejects the event. */
  text() {
    return utf8.decode(this.payload);
  }
  /** The payload parsed with `Json.parse` (Maps, JsonNumbers); invalid JSON rejects the event. */
  json() {
    const text = this.text();
    try {
      return Json.parse(text);
    } catch (e) {
      throw HandlerError.reject(`payload is not valid JSON: ${e.message}`);
    }
  }
}

/** Builders for outputs. Payloads, keys and header values may be strings (sent as UTF-8). */
export const Output = {
  /** An output with this payload and optional fields: `{ destination, key, headers, reply }`. */
  of(payload, fields = {}) {
    return {
      destination: fields.destination ?? null,
      key: bytes(fields.key) ?? null,
      payload: bytes(payload),
      headers: (fields.headers ?? []).map((h) => ({ key: String(h.key), value: bytes(h.value) })),
      reply: Boolean(fields.reply),
    };
  },
  text(text, fields) {
    return Output.of(utf8.encode(text), fields);
  },
  /** `value` as compact JSON (`Json.stringify`: serde_json's format), UTF-8. */
  json(value, fields) {
    return Output.of(utf8.encode(Json.stringify(value)), fields);
  },
  /** The answer to a request: sent to the event's `replyTo`. */
  reply(payload, fields = {}) {
    return Output.of(payload, { ...fields, reply: true });
  },
  /** The event's key, payload and headers, unchanged. */
  forward(event) {
    return Output.of(event.payload, { key: event.key, headers: event.headers });
  },
};

// ---------------------------------------------------------------- JSON

/**
 * A JSON number, kept as serde_json would write it (integers exact within
 * i64/u64, anything else as the shortest f64), so no precision is lost in
 * a JS Number. `Number(n)` gives its value.
 */
export class JsonNumber {
  constructor(text) {
    this.text = text;
  }
  valueOf() {
    return Number(this.text);
  }
  toString() {
    return this.text;
  }
}

const I64_MIN = -(2n ** 63n);
const U64_MAX = 2n ** 64n - 1n;

/** `f` as serde_json writes it: 1.5, 100000.0, 1e+16, 1.2e-7, -0.0. */
export function formatFloat(f) {
  if (f === 0) return Object.is(f, -0) ? '-0.0' : '0.0';
  if (!Number.isFinite(f)) return 'null';
  const sign = f < 0 ? '-' : '';
  const [mant, exp] = Math.abs(f).toExponential().split('e'); // shortest round-trip digits
  const digits = mant.replace('.', '');
  const kk = Number(exp) + 1; // the point sits after kk digits
  const length = digits.length;
  const k = kk - length;
  let text;
  if (k >= 0 && kk <= 16) text = digits + '0'.repeat(k) + '.0';
  else if (kk > 0 && kk <= 16) text = `${digits.slice(0, kk)}.${digits.slice(kk)}`;
  else if (kk > -5 && kk <= 0) text = `0.${'0'.repeat(-kk)}${digits}`;
  else {
    const e = kk - 1 < 0 ? `e${kk - 1}` : `e+${kk - 1}`;
    text = length === 1 ? digits + e : `${digits[0]}.${digits.slice(1)}${e}`;
  }
  return sign + text;
}

function numberText(text) {
  if (text.indexOf('.') < 0 && text.indexOf('e') < 0 && text.indexOf('E') < 0) {
    // Up to 15 digits always fits i64: written as read (but `-0` is a float).
    if (text.length <= 16 && text !== '-0') return text;
    const n = BigInt(text);
    if (n >= I64_MIN && n <= U64_MAX && !(n === 0n && text[0] === '-')) return n.toString();
  }
  const f = Number(text);
  if (!Number.isFinite(f)) throw new SyntaxError(`number out of range: ${text}`);
  return formatFloat(f);
}

const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
// A backslash or a control character (JSON strings need neither escaped).
const SPECIAL = /[\\\x00-\x1f]/;
// A JSON number at `lastIndex`.
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;


/**
 * JSON that round-trips like serde_json in the Rust SDK, so a JS plugin can
 * give byte-for-byte the outputs of a Rust one:
 * - `Json.parse(text)`: objects become `Map`s (field order kept, including
 *   integer-like keys, which plain JS objects would move first; a repeated
 *   key keeps its first position and its last value), numbers `JsonNumber`s.
 * - `Json.stringify(value)`: compact, serde_json's escapes and number format.
 *   Accepts Maps, plain objects, arrays, strings, booleans, null, numbers,
 *   bigints and JsonNumbers.
 */
export const Json = {
  parse(text) {
    let i = 0;
    const n = text.length;
    const fail = (what) => {
      throw new SyntaxError(`${what} at character ${i}`);
    };
    // Without a backslash or a control character anywhere, every string
    // ends at the next quote: one native search instead of a loop.
    const plain = !SPECIAL.test(text);
    // Called where whitespace may be (the callers test for it first: most
    // JSON has none, and a call costs in QuickJS).
    const ws = () => {
      for (; i < n; i++) {
        const c = text.charCodeAt(i);
        if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return;
      }
    };
    const str = () => {
      i++;
      const end = text.indexOf('"', i);
      if (end >= 0 && (plain || !SPECIAL.test(text.slice(i, end)))) {
        const out = text.slice(i, end);
        i = end + 1;
        return out;
      }
      let out = '';
      for (;;) {
        if (i >= n) fail('EOF while parsing a string');
        const c = text.charCodeAt(i);
        if (c === 0x22) {
          i++;
          return out;
        }
        if (c < 0x20) fail('control character (\\u0000-\\u001F) found while parsing a string');
        if (c === 0x5c) {
          const e = text[i + 1];
          i += 2;
          if (e in ESCAPES) out += ESCAPES[e];
          else if (e === 'u') {
            const hex = (at) => {
              const h = text.slice(at, at + 4);
              if (!/^[0-9a-fA-F]{4}$/.test(h)) fail('invalid escape');
              return parseInt(h, 16);
            };
            const u = hex(i);
            i += 4;
            if (u >= 0xd800 && u <= 0xdfff) {
              if (u >= 0xdc00 || text[i] !== '\\' || text[i + 1] !== 'u') fail('lone leading surrogate in hex escape');
              const v = hex(i + 2);
              if (v < 0xdc00 || v > 0xdfff) fail('lone leading surrogate in hex escape');
              i += 6;
              out += String.fromCharCode(u, v);
            } else out += String.fromCharCode(u);
          } else fail('invalid escape');
        } else {
          let j = i;
          while (j < n) {
            const d = text.charCodeAt(j);
            if (d === 0x22 || d === 0x5c || d < 0x20) break;
            j++;
          }
          out += text.slice(i, j);
          i = j;
        }
      }
    };
    // The value at i, inside `depth` open arrays and objects. As in
    // serde_json, the 128th nested array or object is refused.
    const value = (depth) => {
      if (i >= n) fail('EOF while parsing a value');
      const c = text.charCodeAt(i);
      if ((c === 0x7b || c === 0x5b) && depth >= 127) fail('recursion limit exceeded');
      if (c === 0x7b) { // {
        i++;
        const map = new Map();
        if (text.charCodeAt(i) <= 0x20) ws();
        if (text.charCodeAt(i) === 0x7d) {
          i++;
          return map;
        }
        for (;;) {
          if (text.charCodeAt(i) <= 0x20) ws();
          if (text.charCodeAt(i) !== 0x22) fail('key must be a string');
          const key = str();
          if (text.charCodeAt(i) <= 0x20) ws();
          if (text.charCodeAt(i) !== 0x3a) fail('expected `:`');
          i++;
          if (text.charCodeAt(i) <= 0x20) ws();
          map.set(key, text.charCodeAt(i) === 0x22 ? str() : value(depth + 1));
          if (text.charCodeAt(i) <= 0x20) ws();
          const d = text.charCodeAt(i);
          if (d === 0x2c) i++;
          else if (d === 0x7d) {
            i++;
            return map;
          } else fail(i >= n ? 'EOF while parsing an object' : 'expected `,` or `}`');
        }
      }
      if (c === 0x5b) { // [
        i++;
        const arr = [];
        if (text.charCodeAt(i) <= 0x20) ws();
        if (text.charCodeAt(i) === 0x5d) {
          i++;
          return arr;
        }
        for (;;) {
          if (text.charCodeAt(i) <= 0x20) ws();
          arr.push(value(depth + 1));
          if (text.charCodeAt(i) <= 0x20) ws();
          const d = text.charCodeAt(i);
          if (d === 0x2c) i++;
          else if (d === 0x5d) {
            i++;
            return arr;
          } else fail(i >= n ? 'EOF while parsing a list' : 'expected `,` or `]`');
        }
      }
      if (c === 0x22) return str();
      if (c === 0x74 && text.startsWith('true', i)) {
        i += 4;
        return true;
      }
      if (c === 0x66 && text.startsWith('false', i)) {
        i += 5;
        return false;
      }
      if (c === 0x6e && text.startsWith('null', i)) {
        i += 4;
        return null;
      }
      NUMBER.lastIndex = i;
      const m = NUMBER.exec(text);
      if (!m) fail('expected value');
      i += m[0].length;
      return new JsonNumber(numberText(m[0]));
    };
    if (text.charCodeAt(i) <= 0x20) ws();
    const v = value(0);
    if (text.charCodeAt(i) <= 0x20) ws();
    if (i !== n) fail('trailing characters');
    return v;
  },

  stringify(value) {
    return stringifyValue(value);
  },
};

// One string per value, joined: in QuickJS a function call per member is
// what costs, so the common cases are handled inline.
function stringifyValue(v) {
  if (typeof v === 'string') return quote(v);
  if (v === null || v === undefined) return 'null';
  if (v === true || v === false) return String(v);
  if (v instanceof JsonNumber) return v.text;
  if (typeof v === 'bigint') return numberText(v.toString());
  if (typeof v === 'number') return Number.isSafeInteger(v) && !Object.is(v, -0) ? String(v) : formatFloat(v);
  if (Array.isArray(v)) {
    const items = [];
    for (let k = 0; k < v.length; k++) items.push(typeof v[k] === 'string' ? quote(v[k]) : stringifyValue(v[k]));
    return `[${items.join(',')}]`;
  }
  const members = [];
  const member = (x, k) => {
    members.push(`${quote(String(k))}:${typeof x === 'string' ? quote(x) : stringifyValue(x)}`);
  };
  if (v instanceof Map) v.forEach(member);
  else for (const k of Object.keys(v)) member(v[k], k);
  return `{${members.join(',')}}`;
}

const HEX = '0123456789abcdef';
// The engine's JSON.stringify escapes a string as serde_json does (`\"`,
// `\\`, `\b \f \n \r \t`, other controls as `\u00xx`, nothing else), except
// for a lone surrogate, which it writes as `\udxxx` where serde_json (whose
// strings are UTF-8) cannot have one: such strings (and any whose output
// merely contains `\ud`) take the loop, which leaves it to the encoder
// (U+FFFD).
function quote(text) {
  const quoted = JSON.stringify(text);
  return quoted.indexOf('\\ud') < 0 ? quoted : quoteSlow(text);
}

function quoteSlow(text) {
  let out = '"';
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    let esc = null;
    if (c === 0x22) esc = '\\"';
    else if (c === 0x5c) esc = '\\\\';
    else if (c < 0x20) {
      esc = { 8: '\\b', 9: '\\t', 10: '\\n', 12: '\\f', 13: '\\r' }[c] ?? `\\u00${HEX[c >> 4]}${HEX[c & 15]}`;
    }
    if (esc !== null) {
      out += text.slice(start, i) + esc;
      start = i + 1;
    }
  }
  return `${out + text.slice(start)}"`;
}

// ---------------------------------------------------------------- state

// StarlingMonkey (componentize-js 0.23) aborts the instance when an s64
// argument is negative ("coreabi_from_bigint64 validation"), as a Number
// or a BigInt, signed or not. There a negative delta is applied as a read
// and a write of the same key: the same result, limits and errors (the
// event's reads and writes are tracked the same way).
function incrementByWrite(key, delta) {
  const text = state.getText(key);
  if (text !== null && !/^[+-]?[0-9]+$/.test(text)) throw new StateError('not-a-counter');
  const next = BigInt(text ?? 0) + BigInt(delta);
  if (next < -(2n ** 63n) || next >= 2n ** 63n) throw new StateError('overflow');
  state.set(key, next.toString());
  return Number(next);
}

/**
 * A state operation refused by the host: a HandlerError, so an uncaught one
 * fails the event the way the Rust SDK's `?` does: `unavailable` (the
 * backend cannot be reached) is retryable, every other kind rejects.
 * `kind` is the WIT case (`key-too-long`, `value-too-large`,
 * `too-many-writes`, `too-many-reads`, `not-a-counter`, `overflow`,
 * `unavailable`) and `detail` its payload (the limit, or the reason).
 */
export class StateError extends HandlerError {
  constructor(kind, detail) {
    super(kind === 'unavailable' ? 'retryable' : 'reject', describeStateError(kind, detail));
    this.name = 'StateError';
    this.kind = kind;
    this.detail = detail ?? null;
  }
}

// The Rust SDK's wording (state::describe), so a dead letter reads the same.
function describeStateError(kind, detail) {
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
function hostCall(HostError, f, ...args) {
  try {
    return f(...args);
  } catch (e) {
    const err = e !== null && typeof e === 'object' && 'payload' in e ? e.payload : e;
    if (err !== null && typeof err === 'object' && typeof err.tag === 'string') throw new HostError(err.tag, err.val);
    throw e;
  }
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
  get(key) {
    const value = hostCall(StateError, hostState.get, String(key));
    return value == null ? null : asBytes(value);
  },
  /** The value of `key` as text, or null (also when it is not UTF-8). */
  getText(key) {
    const value = state.get(key);
    if (value === null) return null;
    try {
      return utf8.decode(value);
    } catch {
      return null;
    }
  },
  /** The value of `key` parsed with `Json.parse`, or null; a value that is not JSON rejects the event. */
  getJson(key) {
    const text = state.getText(key);
    if (text === null) return null;
    try {
      return Json.parse(text);
    } catch (e) {
      throw HandlerError.reject(`state key ${JSON.stringify(String(key))} does not hold JSON: ${e.message}`);
    }
  },
  /** Sets `key` to `value` (bytes, or a string sent as UTF-8). */
  set(key, value) {
    hostCall(StateError, hostState.set, String(key), bytes(value));
  },
  /** Sets `key` to `value` as compact JSON (`Json.stringify`). */
  setJson(key, value) {
    state.set(key, utf8.encode(Json.stringify(value)));
  },
  /** Removes `key` (no error if it has no value). */
  delete(key) {
    hostCall(StateError, hostState.delete, String(key));
  },
  /**
   * Adds `delta` (default 1) to the counter at `key` (missing counts as 0)
   * and returns the new value as a Number (both engines pass s64 as a
   * Number: exact up to 2^53). Counters are ASCII decimal text: `getText`
   * reads one as "42".
   */
  increment(key, delta = 1) {
    const n = Number(delta);
    if (nativeEncoder && n < 0) return incrementByWrite(String(key), n);
    return Number(hostCall(StateError, hostState.increment, String(key), n));
  },
  /**
   * One page of the keys starting with `prefix`, in order:
   * `{ entries: [[key, Uint8Array], …], next }`; pass `next` as `after` for
   * the following page (null: this was the last). `limit` defaults to 100
   * (the host caps it too).
   */
  scan(prefix, { after = null, limit = 100 } = {}) {
    const page = hostCall(StateError, hostState.scan, String(prefix), after ?? null, limit);
    return { entries: page.entries.map(([k, v]) => [k, asBytes(v)]), next: page.next ?? null };
  },
  /** Every `[key, value]` under `prefix`, in key order, a page at a time. */
  *entries(prefix) {
    let after = null;
    do {
      const page = state.scan(prefix, { after, limit: 256 });
      yield* page.entries;
      after = page.next;
    } while (after !== null);
  },
};

// ---------------------------------------------------------------- client

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
  constructor(kind, detail) {
    const transient = kind === 'timeout' || kind === 'no-responders' || kind === 'unavailable';
    super(transient ? 'retryable' : 'reject', describeCallError(kind, detail));
    this.name = 'CallError';
    this.kind = kind;
    this.detail = kind === 'service' ? null : (detail ?? null);
    this.service = kind === 'service'
      ? { code: detail?.code ?? null, message: String(detail?.message ?? ''), payload: asBytes(detail?.payload ?? []) }
      : null;
  }
}

// The Rust SDK's wording (client::describe), so a dead letter reads the same.
function describeCallError(kind, detail) {
  switch (kind) {
    case 'unknown-destination': return `no client destination named \`${detail}\` in the pipeline`;
    case 'not-allowed': return `call not allowed: ${detail}`;
    case 'timeout': return `no answer within ${detail} ms`;
    case 'no-responders': return 'nobody listens on the destination';
    case 'service': return detail?.code != null
      ? `the service answered with error ${detail.code}: ${detail.message}`
      : `the service answered with an error: ${detail?.message}`;
    case 'too-many-calls': return `an event may make at most ${detail} calls to this destination`;
    case 'too-large': return `payload larger than the destination's limit of ${detail} bytes`;
    case 'unavailable': return `service unavailable: ${detail}`;
    default: return `service call error ${kind}`;
  }
}

function headerList(headers) {
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers ?? {});
  return pairs.map(([key, value]) => ({ key: String(key), value: bytes(value) }));
}

/** A service's answer: `payload` (Uint8Array) and `headers`, with text and JSON views. */
export class Reply {
  constructor(raw) {
    this.payload = asBytes(raw.payload);
    this.headers = raw.headers.map((h) => ({ key: h.key, value: asBytes(h.value) }));
  }
  /** The payload as UTF-8 text. */
  text() {
    return utf8.decode(this.payload);
  }
  /** The payload parsed as JSON (with the NestJS codec: the `response` value). */
  json() {
    return Json.parse(this.text());
  }
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
  request(destination, payload, { headers = [], timeoutMs = null, json = false } = {}) {
    const body = json ? utf8.encode(Json.stringify(payload)) : bytes(payload);
    const timeout = timeoutMs === null || timeoutMs === undefined ? null : Math.max(0, Math.floor(Number(timeoutMs)));
    return new Reply(hostCall(CallError, hostClient.request, String(destination), body, headerList(headers), timeout));
  },
  /** `request` with a JSON payload, returning the answer parsed as JSON. */
  requestJson(destination, value, options = {}) {
    return client.request(destination, value, { ...options, json: true }).json();
  },
  /**
   * Publishes `payload` to `destination` without waiting (a NestJS event).
   * An emit is an output of the event: published with its outputs if it
   * succeeds, dropped if the attempt fails.
   */
  emit(destination, payload, { headers = [], json = false } = {}) {
    const body = json ? utf8.encode(Json.stringify(payload)) : bytes(payload);
    hostCall(CallError, hostClient.emit, String(destination), body, headerList(headers));
  },
  /** `emit` with a JSON payload. */
  emitJson(destination, value, options = {}) {
    client.emit(destination, value, { ...options, json: true });
  },
};

// ---------------------------------------------------------------- logging

function logAt(level) {
  return (message, fields = {}) => {
    const pairs = Array.isArray(fields) ? fields : Object.entries(fields);
    hostLog(level, String(message), pairs.map(([k, v]) => [String(k), String(v)]));
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

// Labels as an object (`{ sku: 'a' }`) or `[name, value]` pairs, as text.
function labelPairs(labels) {
  if (labels == null) return [];
  const pairs = Array.isArray(labels) ? labels : Object.entries(labels);
  return pairs.map(([k, v]) => [String(k), String(v)]);
}

/**
 * The plugin's own metrics, on the host's `/metrics` as
 * `sluice_plugin_<name>` with the pipeline and plugin as labels:
 * `metrics.counter('orders', { sku }).add(1)`,
 * `metrics.gauge('depth').set(3)`, `metrics.histogram('bytes').observe(n)`.
 * Recording never fails the event: the host drops (and counts) what breaks
 * its rules (names `[a-zA-Z_][a-zA-Z0-9_]*`, one kind per name, at most
 * `max_series` label sets per metric, the rest folded into `other`). A
 * failed attempt's values stay.
 */
export const metrics = {
  /** Counter `name` with `labels`: `.add(n)` (a non-negative integer), `.inc()`. */
  counter(name, labels) {
    const n = String(name);
    const pairs = labelPairs(labels);
    return {
      add(value = 1) {
        const v = Number(value);
        if (!Number.isSafeInteger(v) || v < 0) throw new TypeError(`counter ${n}: add a non-negative integer, not ${value}`);
        hostMetrics.counterAdd(n, pairs, v);
      },
      inc() {
        hostMetrics.counterAdd(n, pairs, 1);
      },
    };
  },
  /** Gauge `name` with `labels`: `.set(value)`. */
  gauge(name, labels) {
    const n = String(name);
    const pairs = labelPairs(labels);
    return {
      set(value) {
        hostMetrics.gaugeSet(n, pairs, Number(value));
      },
    };
  },
  /** Histogram `name` with `labels`: `.observe(value)` (the host's buckets: 0.001 to ~16 777, doubling). */
  histogram(name, labels) {
    const n = String(name);
    const pairs = labelPairs(labels);
    return {
      observe(value) {
        hostMetrics.histogramObserve(n, pairs, Number(value));
      },
    };
  },
};

// ---------------------------------------------------------------- outbound HTTP

/**
 * A failed outbound HTTP request, as the other SDKs raise it: a
 * HandlerError, so an uncaught one fails the event as the Rust SDK's `?`
 * does. `kind`: `denied` (rejects: the pipeline's `plugin.http.allow`, or
 * `plugin test --http-replies` without a rule, does not change on retry),
 * `timeout`, `too-large` or `transport` (retryable). `code` is the
 * `wasi:http` error-code's case (`HTTP-request-denied`…), `host` the URL's.
 */
export class HttpError extends HandlerError {
  constructor(kind, host, code, message) {
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
function httpError(host, failure) {
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
function targetOf(url) {
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
 * it) is the engine's, as it is.
 */
export async function fetch(input, init) {
  try {
    return await globalThis.fetch(input, init);
  } catch (e) {
    let url = null;
    try {
      url = new URL(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url);
    } catch {
      throw e;
    }
    const failure = lastHttpFailure();
    if (failure === undefined || failure === null || failure.target !== targetOf(url)) throw e;
    throw httpError(url.host, failure);
  }
}

// ---------------------------------------------------------------- the export

/**
 * Builds the `handler` export from `{ init(config) -> state, handle(state, event) -> outputs }`.
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
export function plugin(impl) {
  let state;
  let ready = false;

  function checked(outputs) {
    if (!Array.isArray(outputs)) throw new TypeError(`handle must return an array of outputs, got ${typeof outputs}`);
    return outputs;
  }

  function bug(e) {
    if (!(e instanceof HandlerError) && typeof console !== 'undefined') console.error(`plugin bug: ${e && e.stack ? `${e}\n${e.stack}` : e}`);
    throw e;
  }

  // The outputs, or (an `async handle`, e.g. one that awaits `fetch`) a
  // promise of them: the engine runs the event loop until it settles.
  function handleOne(raw) {
    if (!ready) throw HandlerError.retryable('plugin not initialised');
    let result;
    try {
      result = impl.handle(state, new Event(raw));
    } catch (e) {
      return bug(e);
    }
    if (isThenable(result)) return result.then(checked, bug);
    try {
      return checked(result);
    } catch (e) {
      return bug(e);
    }
  }

  // Nested results need explicit { tag, val }; the `payload` unwrapping of
  // top-level throws does not happen there, so it is done by hand.
  function resultOf(e) {
    if (e instanceof HandlerError) return { tag: 'err', val: e.payload };
    throw e;
  }

  // The rest of a batch once one event's handling turned out async: each
  // event after the other, in order.
  async function finishBatch(raws, from, pending, results) {
    for (let i = from; i < raws.length; i++) {
      try {
        results.push({ tag: 'ok', val: await (i === from ? pending : handleOne(raws[i])) });
      } catch (e) {
        results.push(resultOf(e));
      }
    }
    return results;
  }

  const manifest = {
    // Nothing before a successful init, as in the Rust SDK.
    accepts() {
      if (!ready) return [];
      return impl.accepts ? impl.accepts(state) : ['*'];
    },
  };

  const handler = {
    init(pairs) {
      try {
        state = impl.init ? impl.init(new Config(pairs)) : undefined;
        ready = true;
      } catch (e) {
        // A refused config: the same outcome on both engines (StarlingMonkey
        // would trap on a thrown Error in a result<_, string> export).
        throw typeof e === 'string' ? e : String(e && e.message !== undefined ? e.message : e);
      }
    },
    handle(raw) {
      return handleOne(raw);
    },
    handleBatch(raws) {
      const results = [];
      for (let i = 0; i < raws.length; i++) {
        let outputs;
        try {
          outputs = handleOne(raws[i]);
        } catch (e) {
          results.push(resultOf(e));
          continue;
        }
        if (isThenable(outputs)) return finishBatch(raws, i, outputs, results);
        results.push({ tag: 'ok', val: outputs });
      }
      return results;
    },
  };
  // Not enumerable: the `handler` export has exactly its three functions.
  Object.defineProperty(handler, 'manifest', { value: manifest });
  return handler;
}

function isThenable(value) {
  return value !== null && typeof value === 'object' && typeof value.then === 'function';
}
