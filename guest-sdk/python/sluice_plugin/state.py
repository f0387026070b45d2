"""The pipeline's state: string keys to byte values, remembered between events.

    from sluice_plugin import state

    count = state.increment(f"count:{key}")      # an int
    state.set("last", b"...")                    # bytes, or str (UTF-8)
    state.get("last")                            # bytes or None

A capability: the pipeline grants it with a `[pipelines.<name>.state]`
table. `guest-sdk/python/build.sh` makes the component import it only when
the plugin imports this module (`from sluice_plugin import state`, found by
`modulefinder`), so a stateless plugin needs no grant.

What an event writes is seen by its own later reads at once and by other
events only once it concludes with its outputs accepted: a failed attempt,
a retry or a dead letter leaves no trace (see the plugin guide's "State").

Every function raises `StateError`, a `HandlerError`: uncaught, it fails the
event as the Rust SDK's `?` does (`unavailable`, the backend cannot be
reached, is retryable; every other kind rejects the event).
"""

from __future__ import annotations

from typing import Any, Iterator, List, NamedTuple, Optional, Tuple, Union

from componentize_py_types import Err
from wit_world.imports import state as _host

from . import Disposition, HandlerError, dumps, loads

__all__ = ["StateError", "Page", "get", "get_str", "get_json", "set", "set_json", "delete", "increment", "scan", "entries"]

# The WIT cases, by their binding class.
_KINDS = {
    _host.StateError_KeyTooLong: "key-too-long",
    _host.StateError_ValueTooLarge: "value-too-large",
    _host.StateError_TooManyWrites: "too-many-writes",
    _host.StateError_TooManyReads: "too-many-reads",
    _host.StateError_NotACounter: "not-a-counter",
    _host.StateError_Overflow: "overflow",
    _host.StateError_Unavailable: "unavailable",
}


def _describe(kind: str, detail: Any) -> str:
    # The Rust SDK's wording (state::describe), so a dead letter reads the same.
    return {
        "key-too-long": f"state key longer than the limit of {detail} bytes",
        "value-too-large": f"state value larger than the limit of {detail} bytes",
        "too-many-writes": f"an event may write at most {detail} state keys",
        "too-many-reads": f"an event may read at most {detail} state keys and scans",
        "not-a-counter": "state value is not a counter (ASCII decimal text)",
        "overflow": "state counter would overflow a signed 64-bit integer",
        "unavailable": f"state unavailable: {detail}",
    }.get(kind, f"state error {kind}")


class StateError(HandlerError):
    """A state operation refused by the host. `kind` is the WIT case
    (`key-too-long`, `value-too-large`, `too-many-writes`, `too-many-reads`,
    `not-a-counter`, `overflow`, `unavailable`), `detail` its payload (the
    limit, the reason) or None."""

    def __init__(self, kind: str, detail: Any = None):
        disposition = Disposition.RETRYABLE if kind == "unavailable" else Disposition.REJECT
        super().__init__(disposition, _describe(kind, detail))
        self.kind = kind
        self.detail = detail


def _call(f: Any, *args: Any) -> Any:
    try:
        return f(*args)
    except Err as e:
        error = e.value
        raise StateError(_KINDS.get(type(error), type(error).__name__), getattr(error, "value", None)) from None


def _bytes(value: Union[bytes, bytearray, memoryview, str]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class Page(NamedTuple):
    """One page of `scan`: `(key, value)` entries in key order, and the key to
    pass as `after` for the next page (None: this was the last)."""

    entries: List[Tuple[str, bytes]]
    next: Optional[str]


def get(key: str) -> Optional[bytes]:
    """The value of `key`, or None."""
    return _call(_host.get, key)


def get_str(key: str) -> Optional[str]:
    """The value of `key` as text; None when it has none or it is not UTF-8."""
    value = get(key)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def get_json(key: str) -> Any:
    """The value of `key` parsed as JSON (`loads`), or None; a value that is not JSON rejects the event."""
    text = get_str(key)
    if text is None:
        return None
    try:
        return loads(text)
    except ValueError as e:
        raise HandlerError.reject(f"state key {key!r} does not hold JSON: {e}") from None


def set(key: str, value: Union[bytes, bytearray, memoryview, str]) -> None:
    """Sets `key` to `value` (str is stored as UTF-8)."""
    _call(_host.set, key, _bytes(value))


def set_json(key: str, value: Any) -> None:
    """Sets `key` to `value` as compact JSON (`dumps`: serde_json's format)."""
    set(key, dumps(value))


def delete(key: str) -> None:
    """Removes `key` (no error if it has no value)."""
    _call(_host.delete, key)


def increment(key: str, delta: int = 1) -> int:
    """Adds `delta` to the counter at `key` (missing counts as 0) and returns
    the new value. Counters are ASCII decimal text: `get_str` reads "42"."""
    return _call(_host.increment, key, delta)


def scan(prefix: str, after: Optional[str] = None, limit: int = 100) -> Page:
    """One page of the keys starting with `prefix`, in order, after `after`
    (exclusive), at most `limit` (the host caps it too)."""
    page = _call(_host.scan, prefix, after, limit)
    return Page(list(page.entries), page.next)


def entries(prefix: str) -> Iterator[Tuple[str, bytes]]:
    """Every `(key, value)` under `prefix`, in key order, a page at a time."""
    after: Optional[str] = None
    while True:
        page = scan(prefix, after, 256)
        yield from page.entries
        if page.next is None:
            return
        after = page.next
