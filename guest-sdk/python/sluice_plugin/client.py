"""Calls to other services, as a NestJS `ClientProxy` makes them (`send` is
`request`, `emit` is `emit`):

    from sluice_plugin import client

    reply = client.request("inventory", b'{"sku": "a-1"}', timeout_ms=500)
    stock = client.request_json("inventory", {"sku": "a-1"})   # JSON in, JSON out
    client.emit_json("audit", {"event": event.id})             # sent only if the event succeeds

A capability: each destination is a `[pipelines.<name>.clients.<dest>]`
table (transport, subject or topic, codec). `guest-sdk/python/build.sh`
makes the component import it only when the plugin imports this module, so
a plugin that calls nothing needs no grant.

The host adds the event's correlation id, its `traceparent` and an
`Idempotency-Key: <event id>:<n>` (the same on every retry) to each
request, and lists every request in the event's dead letter. An emit is an
output of the event: published with its outputs if it succeeds, dropped
with a failed attempt.

Every function raises `CallError`, a `HandlerError`: uncaught, it fails the
event as the Rust SDK's `?` does (`timeout`, `no-responders` and
`unavailable` are retryable; every other kind rejects the event). Catch it
and look at `kind` (and `service` for an error the service answered with)
to decide otherwise.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

from componentize_py_types import Err
from wit_world.imports import client as _host

from . import Disposition, Header, HandlerError, dumps, loads

__all__ = ["CallError", "Reply", "ServiceError", "request", "request_json", "emit", "emit_json"]

_KINDS = {
    _host.CallError_UnknownDestination: "unknown-destination",
    _host.CallError_NotAllowed: "not-allowed",
    _host.CallError_Timeout: "timeout",
    _host.CallError_NoResponders: "no-responders",
    _host.CallError_Service: "service",
    _host.CallError_TooManyCalls: "too-many-calls",
    _host.CallError_TooLarge: "too-large",
    _host.CallError_Unavailable: "unavailable",
}

_TRANSIENT = {"timeout", "no-responders", "unavailable"}


class ServiceError(NamedTuple):
    """An error the service itself answered with (a NestJS `err`, a NATS
    `Nats-Service-Error`): its code (None when it gave none), message, and
    the error as sent."""

    code: Optional[str]
    message: str
    payload: bytes


def _describe(kind: str, detail: Any) -> str:
    # The Rust SDK's wording (client::describe), so a dead letter reads the same.
    if kind == "service":
        if detail.code is not None:
            return f"the service answered with error {detail.code}: {detail.message}"
        return f"the service answered with an error: {detail.message}"
    return {
        "unknown-destination": f"no client destination named `{detail}` in the pipeline",
        "not-allowed": f"call not allowed: {detail}",
        "timeout": f"no answer within {detail} ms",
        "no-responders": "nobody listens on the destination",
        "too-many-calls": f"an event may make at most {detail} calls to this destination",
        "too-large": f"payload larger than the destination's limit of {detail} bytes",
        "unavailable": f"service unavailable: {detail}",
    }.get(kind, f"service call error {kind}")


class CallError(HandlerError):
    """A service call that got no answer. `kind` is the WIT case
    (`unknown-destination`, `not-allowed`, `timeout`, `no-responders`,
    `service`, `too-many-calls`, `too-large`, `unavailable`); `detail` its
    payload (the limit, the timeout in ms, the reason) or None; `service`
    the `ServiceError` for `service`, else None."""

    def __init__(self, kind: str, detail: Any = None):
        service = None
        if kind == "service" and detail is not None:
            service = ServiceError(detail.code, detail.message, bytes(detail.payload))
            detail = None
        disposition = Disposition.RETRYABLE if kind in _TRANSIENT else Disposition.REJECT
        super().__init__(disposition, _describe(kind, service if kind == "service" else detail))
        self.kind = kind
        self.detail = detail
        self.service = service


class Reply(NamedTuple):
    """A service's answer: its payload (with the NestJS codec, the `response`
    value as JSON) and headers."""

    payload: bytes
    headers: List[Header]

    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        return loads(self.payload.decode("utf-8"))


HeadersLike = Union[Sequence[Tuple[str, Union[bytes, str]]], Sequence[Header], dict]


def _headers(headers: Optional[HeadersLike]) -> List[Header]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    out = []
    for h in items:
        if isinstance(h, Header):
            out.append(Header(h.key, bytes(h.value)))
        else:
            key, value = h
            out.append(Header(str(key), value.encode("utf-8") if isinstance(value, str) else bytes(value)))
    return out


def _bytes(value: Union[bytes, bytearray, memoryview, str]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _call(f: Any, *args: Any) -> Any:
    try:
        return f(*args)
    except Err as e:
        error = e.value
        raise CallError(_KINDS.get(type(error), type(error).__name__), getattr(error, "value", None)) from None


def request(destination: str, payload: Union[bytes, str], headers: Optional[HeadersLike] = None, timeout_ms: Optional[int] = None) -> Reply:
    """Sends `payload` to `destination` and waits for its answer, at most
    `timeout_ms` (default: the destination's `timeout`)."""
    raw = _call(_host.request, destination, _bytes(payload), _headers(headers), timeout_ms)
    return Reply(bytes(raw.payload), list(raw.headers))


def request_json(destination: str, value: Any, headers: Optional[HeadersLike] = None, timeout_ms: Optional[int] = None) -> Any:
    """`request` with `value` sent as JSON, returning the answer parsed."""
    return request(destination, dumps(value), headers, timeout_ms).json()


def emit(destination: str, payload: Union[bytes, str], headers: Optional[HeadersLike] = None) -> None:
    """Publishes `payload` to `destination` without waiting (a NestJS event)."""
    _call(_host.emit, destination, _bytes(payload), _headers(headers))


def emit_json(destination: str, value: Any, headers: Optional[HeadersLike] = None) -> None:
    """`emit` with `value` sent as JSON."""
    emit(destination, dumps(value), headers)
