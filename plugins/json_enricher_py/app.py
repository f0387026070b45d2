"""`json_enricher_py`: the Python twin of plugins/json_enricher (Rust), same
config, same outputs byte for byte on the same events (see docs/plugins/python.md
for where JSON number formatting can differ).

Filters and enriches JSON-object events. The object keeps its field order;
the output has the event's key and headers, with
`content-type: application/json` replacing any incoming `content-type`.
A payload that is not a JSON object is rejected (dead-lettered).

Config (all optional; any other key refuses the load):
- `require`: a field name; events without that field are dropped.
- `drop_if`: `field=value`; events whose `field` is the string `value` are dropped.
- `set.<field>`: adds `<field>` with this string value, or overwrites it.
- `event_id_field`: a field name that receives the event's id.
- `fail_on`: a field name; an event whose field is the string `retryable`,
  `reject` or `trap` fails that way (for testing error handling).
- `accepts`: comma-separated event versions the plugin declares it
  handles (`order-created@1,order-created@2`, `refund@*`); the host
  dead-letters the rest as `unsupported`. Default `*`.

Filters look at the incoming object, before any field is set.
"""

from typing import List, Optional, Tuple

from sluice_plugin import Config, ConfigError, Event, HandlerError, Output, Plugin, export, loads, Disposition


class JsonEnricher(Plugin):
    def __init__(self, require: Optional[str], drop_if: Optional[Tuple[str, str]],
                 set_fields: List[Tuple[str, str]], event_id_field: Optional[str], fail_on: Optional[str],
                 accepts: List[str]):
        self.require = require
        self.drop_if = drop_if
        self.set_fields = set_fields
        self.event_id_field = event_id_field
        self.fail_on = fail_on
        self.accepts_list = accepts

    @classmethod
    def init(cls, config: Config) -> "JsonEnricher":
        config.deny_unknown(["require", "drop_if", "set.*", "event_id_field", "fail_on", "accepts"])
        drop_if = None
        rule = config.get("drop_if")
        if rule is not None:
            field, eq, value = rule.partition("=")
            if not eq or not field:
                raise ConfigError(f"`drop_if` must be `field=value`, got `{rule}`")
            drop_if = (field, value)
        set_fields = []
        for field, value in config.with_prefix("set."):
            if not field:
                raise ConfigError("`set.` needs a field name, as in `set.team`")
            set_fields.append((field, value))
        accepts = [s.strip() for s in (config.get("accepts") or "*").split(",") if s.strip()]
        return cls(config.get("require"), drop_if, set_fields, config.get("event_id_field"), config.get("fail_on"),
                   accepts)

    def accepts(self) -> List[str]:
        return self.accepts_list

    def handle(self, event: Event) -> list:
        try:
            obj = loads(event.payload.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise HandlerError.reject(f"payload is not a JSON object: {e}") from None
        if not isinstance(obj, dict):
            raise HandlerError.reject(f"payload is not a JSON object: got {type(obj).__name__}")

        if self.fail_on is not None:
            how = obj.get(self.fail_on)
            if how == "retryable":
                raise HandlerError(Disposition.RETRYABLE, f"asked to fail (retryable) by field `{self.fail_on}`")
            if how == "reject":
                raise HandlerError(Disposition.REJECT, f"asked to fail (reject) by field `{self.fail_on}`")
            if how == "trap":
                raise RuntimeError(f"asked to trap by field `{self.fail_on}`")
        if self.require is not None and self.require not in obj:
            return []
        if self.drop_if is not None and obj.get(self.drop_if[0]) == self.drop_if[1]:
            return []
        for field, value in self.set_fields:
            obj[field] = value
        if self.event_id_field is not None:
            obj[self.event_id_field] = event.id

        headers = [h for h in event.headers if h.key != "content-type"]
        headers.append(("content-type", "application/json"))
        return [Output.json(obj, key=event.key, headers=headers)]


Handler = export(JsonEnricher)
# The `manifest` export: the versions `accepts` declares reach the host.
Manifest = Handler.Manifest
