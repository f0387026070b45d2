"""`ask_py`: the Python twin of plugins/ask (Rust): asks another service
about each event (the `client` capability) and outputs its answer, with the
same outputs and failures.

For each event, the payload is emitted to the `emit` destination (when
configured; an output of the event, published only if it succeeds), then
sent as a request to the `request` destination (when configured), whose
answer becomes the one output; without `request` the payload is the output.

Errors: a service error rejects the event with the service's message (it
would answer the same again); a timeout, no responders or an unreachable
broker is retryable (what an uncaught `CallError` does by itself).
`...:retry-once` fails retryably on the first attempt and `...:reject` is
rejected, each after its calls.

Config: `request`, `emit` (optional destinations), `timeout_ms` (optional;
default: the destination's `timeout`).
"""

from typing import List, Optional

from sluice_plugin import Config, Event, HandlerError, Output, Plugin, client, export


class Ask(Plugin):
    def __init__(self, request: Optional[str], emit: Optional[str], timeout_ms: Optional[int]):
        self.request = request
        self.emit = emit
        self.timeout_ms = timeout_ms

    @classmethod
    def init(cls, config: Config) -> "Ask":
        config.deny_unknown(["request", "emit", "timeout_ms"])
        timeout = config.get("timeout_ms")
        if timeout is not None and not timeout.isdigit():
            raise ValueError(f"timeout_ms: not a number of milliseconds: {timeout}")
        return cls(config.get("request"), config.get("emit"), int(timeout) if timeout is not None else None)

    def handle(self, event: Event) -> List:
        if self.emit is not None:
            client.emit(self.emit, event.payload)
        payload = event.payload
        if self.request is not None:
            try:
                payload = client.request(self.request, event.payload, timeout_ms=self.timeout_ms).payload
            except client.CallError as e:
                if e.kind == "service":
                    raise HandlerError.reject(e.message) from None
                raise
        text = event.text()
        if text.endswith(":retry-once") and event.attempt == 1:
            raise HandlerError.retryable("first attempt fails after its calls")
        if text.endswith(":reject"):
            raise HandlerError.reject("rejected after its calls")
        return [Output.of(payload)]


Handler = export(Ask)
