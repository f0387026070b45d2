// `json_enricher_js`: the JavaScript twin of plugins/json_enricher (Rust),
// same config, same outputs on the same events (JSON compared parsed: this
// uses the engine's `JSON`, which writes `2000.0` as `2000` and puts
// integer-like keys first).
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
import { plugin, HandlerError, Output, utf8 } from 'sluice';

export const handler = plugin({
  init(config) {
    config.denyUnknown(['require', 'drop_if', 'set.*', 'event_id_field', 'fail_on', 'accepts']);
    let dropIf = null;
    const rule = config.get('drop_if');
    if (rule !== null) {
      const eq = rule.indexOf('=');
      if (eq <= 0) throw `\`drop_if\` must be \`field=value\`, got \`${rule}\``;
      dropIf = [rule.slice(0, eq), rule.slice(eq + 1)];
    }
    const set = config.withPrefix('set.').map(([field, value]) => {
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
  },

  handle(self, event) {
    let object;
    try {
      object = JSON.parse(utf8.decode(event.payload));
    } catch (e) {
      throw HandlerError.reject(`payload is not a JSON object: ${e.message}`);
    }
    if (object === null || typeof object !== 'object' || Array.isArray(object)) throw HandlerError.reject('payload is not a JSON object');

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
    headers.push({ key: 'content-type', value: 'application/json' });
    return [Output.json(object, { key: event.key, headers })];
  },

  accepts(self) {
    return self.accepts;
  },
});

// The `manifest` export: the versions `accepts` declares reach the host.
export const manifest = handler.manifest;
