"""Sluice plugin SDK for Python (sluice:plugin@0.2.0, world `plugin`), for componentize-py.

The Python counterpart of the Rust SDK (guest-sdk/rust): subclass `Plugin`,
write `init` (a classmethod returning the instance) and `handle`, then export
it under the name componentize-py looks for::

    from sluice_plugin import Plugin, Config, Event, Output, HandlerError, export

    class Upper(Plugin):
        @classmethod
        def init(cls, config: Config) -> "Upper":
            config.deny_unknown([])
            return cls()

        def handle(self, event: Event) -> list:
            return [Output.of(event.payload.upper(), key=event.key)]

    Handler = export(Upper)

`handle_batch` is derived from `handle`. `guest-sdk/python/build.sh` turns
the module into a component.

The pipeline's key/value state is the submodule `state` (`from sluice_plugin
import state`), kept apart so that a plugin imports the `state` capability
only when it uses it (see state.py). The plugin's own metrics are the
submodule `metrics` (`from sluice_plugin import metrics`), apart for the
same reason (see metrics.py), and so is outbound HTTP, `http` (`from
sluice_plugin import http`, see http.py).
"""

from __future__ import annotations

import json as _json
import re as _re
from itertools import accumulate as _accumulate
import math
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from componentize_py_types import Err, Ok
from wit_world import exports as _exports
try:
    from wit_world.imports import types as _t  # `types` would shadow the stdlib module
except ImportError:  # the world imports wasi:http/types too (http.py): the names are qualified
    from wit_world.imports import sluice_plugin_types as _t
from wit_world.imports.log import Level as _Level
from wit_world.imports.log import log as _host_log

Header = _t.Header
Disposition = _t.Disposition

__all__ = ["Config", "ConfigError", "Event", "Output", "Header", "HandlerError", "Plugin", "export", "log"]


class ConfigError(ValueError):
    """Raised by `init` to refuse the configuration; its message reaches the user."""


class HandlerError(Exception):
    """A handler failure with its disposition: `retryable(...)` or `reject(...)`."""

    def __init__(self, disposition: Disposition, message: str):
        super().__init__(message)
        self.disposition = disposition
        self.message = str(message)

    @classmethod
    def retryable(cls, message: str) -> "HandlerError":
        return cls(Disposition.RETRYABLE, message)

    @classmethod
    def reject(cls, message: str) -> "HandlerError":
        return cls(Disposition.REJECT, message)


class Config:
    """The `init` configuration: string pairs in the host's order (sorted by key)."""

    def __init__(self, pairs: Sequence[Tuple[str, str]]):
        self.pairs: List[Tuple[str, str]] = list(pairs)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        for k, v in self.pairs:
            if k == key:
                return v
        return default

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise ConfigError(f"missing required config key `{key}`")
        return value

    def keys(self) -> List[str]:
        return [k for k, _ in self.pairs]

    def with_prefix(self, prefix: str) -> List[Tuple[str, str]]:
        """`(rest, value)` for every key starting with `prefix`, prefix stripped."""
        return [(k[len(prefix):], v) for k, v in self.pairs if k.startswith(prefix)]

    def deny_unknown(self, known: Iterable[str]) -> None:
        """Refuses any key not listed; `prefix*` accepts a family. Same message as the Rust SDK."""
        known = list(known)

        def is_known(key: str) -> bool:
            return any(key.startswith(p[:-1]) if p.endswith("*") else key == p for p in known)

        for key in self.keys():
            if not is_known(key):
                if not known:
                    raise ConfigError(f"unknown config key `{key}` (this plugin takes no configuration)")
                raise ConfigError(f"unknown config key `{key}` (expected one of: {', '.join(known)})")


class Event:
    """The event (the WIT record's fields, snake_case) plus helpers."""

    __slots__ = ("id", "source", "key", "payload", "headers", "timestamp_ms", "attempt", "reply_to")

    def __init__(self, raw: _t.Event):
        self.id: str = raw.id
        self.source: str = raw.source
        self.key: Optional[bytes] = raw.key
        self.payload: bytes = raw.payload
        self.headers: List[Header] = raw.headers
        self.timestamp_ms: int = raw.timestamp_ms
        self.attempt: int = raw.attempt
        self.reply_to: Optional[str] = raw.reply_to

    def header(self, name: str) -> Optional[bytes]:
        """The first header `name` (case-sensitive), or None."""
        for h in self.headers:
            if h.key == name:
                return h.value
        return None

    def header_str(self, name: str) -> Optional[str]:
        value = self.header(name)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def text(self) -> str:
        """The payload as text; invalid UTF-8 rejects the event."""
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HandlerError.reject(f"payload is not valid UTF-8: {e}") from None

    def json(self) -> Any:
        """The payload parsed as strict JSON (no NaN/Infinity); invalid JSON rejects the event."""
        try:
            return loads(self.text())
        except ValueError as e:
            raise HandlerError.reject(f"payload is not valid JSON: {e}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1


def _parse_int(text: str) -> Any:
    # serde_json: integers within i64/u64 stay exact; `-0` and anything
    # wider become f64.
    n = int(text)
    if _I64_MIN <= n <= _U64_MAX and not (n == 0 and text.startswith("-")):
        return n
    return float(text)


def _parse_float(text: str) -> float:
    f = float(text)
    if math.isinf(f):
        raise ValueError(f"number out of range: {text}")
    return f


def loads(text: str) -> Any:
    """Strict JSON parsed the way serde_json parses it: no NaN/Infinity,
    integers exact within i64/u64 and f64 beyond, objects in field order (a
    repeated key keeps its first position and its last value)."""
    # serde_json refuses the 128th nested array or object; CPython's parser
    # would recurse on (and exhaust the wasm stack before its own limit).
    # Fewer brackets than that cannot nest so deep (str.count is cheap).
    if text.count("[") + text.count("{") >= 128 and _max_open(text) >= 128:
        raise ValueError("recursion limit exceeded")
    try:
        return _json.loads(text, parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float)
    except RecursionError:
        raise ValueError("recursion limit exceeded") from None


_STRING = _re.compile(r'"(?:[^"\\]|\\.)*"')


def _max_open(text: str) -> int:
    """The deepest nesting of arrays and objects in `text`, strings aside."""
    steps = (1 if c in "[{" else -1 for c in _STRING.sub("", text) if c in "[]{}")
    return max(_accumulate(steps), default=0)


def format_float(f: float) -> str:
    """`f` as serde_json (Rust's ryu) writes it: shortest round-trip digits,
    plain notation for magnitudes 1e-5..1e16, else an exponent; integral
    values get `.0` (1.5, 100000.0, 1e+16, 1.2e-7)."""
    if f == 0:
        return "-0.0" if math.copysign(1.0, f) < 0 else "0.0"
    if not math.isfinite(f):
        return "null"
    sign = "-" if f < 0 else ""
    mant, _, exp = repr(abs(f)).partition("e")
    whole, _, frac = mant.partition(".")
    digits = whole + frac
    kk = len(whole) + (int(exp) if exp else 0)  # the point sits after kk digits
    stripped = digits.lstrip("0")
    kk -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    length = len(digits)
    k = kk - length
    if k >= 0 and kk <= 16:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        text = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        text = "0." + "0" * -kk + digits
    else:
        exponent = f"e{kk - 1}" if kk - 1 < 0 else f"e+{kk - 1}"
        text = (digits if length == 1 else f"{digits[0]}.{digits[1:]}") + exponent
    return sign + text


_encode_str = _json.encoder.py_encode_basestring  # same escapes as serde_json


def _encode(value: Any, out: List[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value) if _I64_MIN <= value <= _U64_MAX else format_float(float(value)))
    elif isinstance(value, float):
        out.append(format_float(value))
    elif isinstance(value, str):
        out.append(_encode_str(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, (k, v) in enumerate(value.items()):
            if i:
                out.append(",")
            out.append(_encode_str(str(k)))
            out.append(":")
            _encode(v, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _encode(v, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8: the same bytes serde_json writes for the same value."""
    out: List[str] = []
    _encode(value, out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate from a `\ud800` escape
        raise HandlerError.reject(f"cannot encode output as JSON: {e}") from None


def _bytes(value: Any) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


class Output:
    """Builders for `sluice:plugin/types.output`. Payloads, keys and header values may be str (sent as UTF-8)."""

    @staticmethod
    def of(payload: Any, destination: Optional[str] = None, key: Any = None,
           headers: Iterable[Any] = (), reply: bool = False) -> _t.Output:
        hs = [h if isinstance(h, Header) else Header(str(h[0]), _bytes(h[1])) for h in headers]
        hs = [Header(h.key, _bytes(h.value)) for h in hs]
        return _t.Output(destination=destination, key=_bytes(key), payload=_bytes(payload), headers=hs, reply=reply)

    @staticmethod
    def json(value: Any, **fields: Any) -> _t.Output:
        return Output.of(dumps(value), **fields)

    @staticmethod
    def reply(payload: Any, **fields: Any) -> _t.Output:
        return Output.of(payload, reply=True, **fields)

    @staticmethod
    def forward(event: Event) -> _t.Output:
        return Output.of(event.payload, key=event.key, headers=event.headers)


class _Log:
    """Structured logging into the host's log stream: `log.info("msg", key="value")`."""

    @staticmethod
    def _emit(level: _Level, message: str, fields: dict) -> None:
        _host_log(level, str(message), [(str(k), str(v)) for k, v in fields.items()])

    def trace(self, message: str, **fields: Any) -> None:
        self._emit(_Level.TRACE, message, fields)

    def debug(self, message: str, **fields: Any) -> None:
        self._emit(_Level.DEBUG, message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit(_Level.INFO, message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit(_Level.WARN, message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit(_Level.ERROR, message, fields)


log = _Log()


class Plugin:
    """Subclass it: `init` builds the instance from the config, `handle` handles one event."""

    @classmethod
    def init(cls, config: Config) -> "Plugin":
        raise NotImplementedError

    def handle(self, event: Event) -> List[_t.Output]:
        raise NotImplementedError

    def accepts(self) -> List[str]:
        """The event types and versions this plugin handles, as selectors:
        `order-created@2`, `order-created@*` (any version), `*` (every event).

        Asked once per loaded version, after `init`; the host dead-letters
        what the list does not cover as `unsupported`. Takes effect when the
        app also exports `Manifest = Handler.Manifest` (build.sh then builds
        for world `plugin-with-manifest`).
        """
        return ["*"]


def export(plugin_class: type) -> type:
    """The `Handler` class componentize-py exports: `Handler = export(MyPlugin)`
    (and `Manifest = Handler.Manifest` for a plugin that overrides `accepts`).

    - `init` refuses the config with any exception (`ConfigError` is the
      idiomatic one): its message reaches the user.
    - `handle` fails an event with `HandlerError`; any other exception is a
      bug: the call traps (the traceback goes to stderr, which the host adds
      to the trap message), the host counts it as retryable and replaces the
      instance.
    """
    state: dict = {}

    def handle_one(raw: _t.Event) -> List[_t.Output]:
        plugin = state.get("plugin")
        if plugin is None:
            raise Err(_t.HandlerError(Disposition.RETRYABLE, "plugin not initialised"))
        try:
            outputs = plugin.handle(Event(raw))
        except HandlerError as e:
            raise Err(_t.HandlerError(e.disposition, e.message)) from None
        if not isinstance(outputs, list):
            raise TypeError(f"handle must return a list of outputs, got {type(outputs).__name__}")
        return outputs

    class Handler(_exports.Handler):
        def init(self, config: List[Tuple[str, str]]) -> None:
            try:
                state["plugin"] = plugin_class.init(Config(config))
            except Exception as e:  # a refused config, whatever the exception
                raise Err(str(e)) from None

        def handle(self, event: _t.Event) -> List[_t.Output]:
            return handle_one(event)

        def handle_batch(self, events: List[_t.Event]) -> list:
            out: list = []
            for event in events:
                try:
                    out.append(Ok(handle_one(event)))
                except Err as e:  # Err is both the exception and the result variant
                    out.append(e)
            return out

    class Manifest(getattr(_exports, "Manifest", object)):  # type: ignore[misc]
        def accepts(self) -> List[str]:
            plugin = state.get("plugin")
            # Nothing before a successful init, as in the Rust SDK.
            return [] if plugin is None else list(plugin.accepts())

    Handler.__name__ = "Handler"
    # The `manifest` export, for an app that declares `accepts`:
    # `Manifest = Handler.Manifest`.
    Handler.Manifest = Manifest  # type: ignore[attr-defined]
    return Handler
