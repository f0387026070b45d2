"""`{{name}}`: forwards every event with a header `x-tag` (config `tag`,
default `{{name}}`); an empty payload is rejected."""

from sluice_plugin import Config, Event, HandlerError, Output, Plugin, export


class Tagger(Plugin):
    def __init__(self, tag: str):
        self.tag = tag

    @classmethod
    def init(cls, config: Config) -> "Tagger":
        config.deny_unknown(["tag"])
        return cls(config.get("tag", "{{name}}"))

    def handle(self, event: Event) -> list:
        if not event.payload:
            raise HandlerError.reject("empty payload")
        return [Output.of(event.payload, key=event.key, headers=[*event.headers, ("x-tag", self.tag)])]


Handler = export(Tagger)
