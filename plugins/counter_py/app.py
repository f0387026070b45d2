"""`counter_py`: the Python twin of plugins/counter (Rust): counts events per
key in the pipeline's state (the `state` capability) and outputs the new
count, with the same outputs and failures.

For each event, the key is the event's key (or, without one, its payload up
to the first `:`): `count:<key>` is incremented by one, and one output is
returned with the same key and the payload `<key>=<count>`.

Payload rules, to test that failed attempts leave no trace (each increments
first, then fails):
- `...:retry-once`: a retryable error on the first attempt;
- `...:reject`: rejected (dead-lettered).

Metrics, recorded on every attempt before it can fail (a retried event
counts twice): counter `counted` labelled `key`, and histogram
`payload_bytes` of each payload's size.

Config: `prefix` (optional, default `count:`): the state key prefix.
"""

from typing import List

from sluice_plugin import Config, Event, HandlerError, Output, Plugin, export, metrics, state


class Counter(Plugin):
    def __init__(self, prefix: str):
        self.prefix = prefix

    @classmethod
    def init(cls, config: Config) -> "Counter":
        config.deny_unknown(["prefix"])
        return cls(config.get("prefix", "count:"))

    def handle(self, event: Event) -> List:
        text = event.text().rstrip()
        key = event.key.decode("utf-8", "replace") if event.key is not None else text.split(":")[0]
        metrics.counter("counted", key=key).inc()
        metrics.histogram("payload_bytes").observe(len(event.payload))
        count = state.increment(self.prefix + key, 1)
        if text.endswith(":retry-once") and event.attempt == 1:
            raise HandlerError.retryable(f"first attempt fails after counting {key} to {count}")
        if text.endswith(":reject"):
            raise HandlerError.reject(f"rejected after counting {key} to {count}")
        return [Output.of(f"{key}={count}", key=key)]


Handler = export(Counter)
