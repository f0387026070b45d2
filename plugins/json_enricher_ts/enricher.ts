// `json_enricher_ts`: the TypeScript twin of plugins/json_enricher (Rust)
// and of json_enricher_js, same config, same outputs on the same events (JSON
// compared parsed). Type-checked by build.sh against the SDK's generated sluice.d.ts.
//
// Filters and enriches JSON-object events. The object keeps its field order
// (but for integer-like keys, which JavaScript objects put first);
// the output has the event's key and headers, with
// `content-type: application/json` replacing any incoming `content-type`.
// A payload that is not a JSON object is rejected (dead-lettered).
//
// Config (all optional; any other key refuses the load):
// - `require`: a field name; events without that field are dropped.
// - `drop_if`: `field=value`; events whose `field` is the string `value` are dropped.
// - `set.<field>`: adds `<field>` with this string value, or overwrites it.
// - `event_id_field`: a field name that receives the event's id.
// - `fail_on`: a field name; an event whose field is the string `retryable`,
//   `reject` or `trap` fails that way (for testing error handling).
// - `accepts`: comma-separated event versions the plugin declares it
//   handles (`order-created@1,order-created@2`, `refund@*`); the host
//   dead-letters the rest as `unsupported`. Default `*`.
//
// Filters look at the incoming object, before any field is set.
import { plugin, HandlerError, Output, utf8, type Config, type Event, type JsonValue } from 'sluice';

interface Settings {
  require: string | null;
  dropIf: [field: string, value: string] | null;
  set: Array<[field: string, value: string]>;
  eventIdField: string | null;
  failOn: string | null;
  accepts: string[];
}

function init(config: Config): Settings {
  config.denyUnknown(['require', 'drop_if', 'set.*', 'event_id_field', 'fail_on', 'accepts']);
  let dropIf: Settings['dropIf'] = null;
  const rule = config.get('drop_if');
  if (rule !== null) {
    const eq = rule.indexOf('=');
    if (eq <= 0) throw `\`drop_if\` must be \`field=value\`, got \`${rule}\``;
    dropIf = [rule.slice(0, eq), rule.slice(eq + 1)];
  }
  const set = config.withPrefix('set.').map(([field, value]): [string, string] => {
    if (field === '') throw '`set.` needs a field name, as in `set.team`';
    return [field, value];
  });
  return {
    require: config.get('require'),
    dropIf,
    set,
    eventIdField: config.get('event_id_field'),
    failOn: config.get('fail_on'),
    accepts: (config.get('accepts') ?? '*')
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== ''),
  };
}

function handle(self: Settings, event: Event) {
  let parsed: JsonValue;
  try {
    parsed = JSON.parse(utf8.decode(event.payload)) as JsonValue;
  } catch (e) {
    throw HandlerError.reject(`payload is not a JSON object: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw HandlerError.reject('payload is not a JSON object');
  const object: { [field: string]: JsonValue } = parsed;

  if (self.failOn !== null) {
    const how = object[self.failOn];
    if (how === 'retryable' || how === 'reject') {
      throw new HandlerError(how, `asked to fail (${how}) by field \`${self.failOn}\``);
    }
    if (how === 'trap') throw new Error(`asked to trap by field \`${self.failOn}\``);
  }
  if (self.require !== null && !Object.hasOwn(object, self.require)) return [];
  if (self.dropIf !== null && object[self.dropIf[0]] === self.dropIf[1]) return [];
  for (const [field, value] of self.set) object[field] = value;
  if (self.eventIdField !== null) object[self.eventIdField] = event.id;

  const headers = event.headers.filter((h) => h.key !== 'content-type');
  return [Output.json(object, { key: event.key, headers: [...headers, { key: 'content-type', value: 'application/json' }] })];
}

export const handler = plugin({ init, handle, accepts: (self) => self.accepts });
// The `manifest` export: the versions `accepts` declares reach the host.
export const manifest = handler.manifest;
