"""Outbound HTTP through the standard `wasi:http/outgoing-handler`:

    from sluice_plugin import http

    response = http.post("https://api.example.com/v1/score", event.payload, content_type="application/json")
    if 400 <= response.status < 500:
        raise HandlerError.reject(f"the API refused the order: {response.text()}")
    score = response.json()["score"]

A capability: the pipeline lists the destinations a plugin may call in
`[pipelines.<name>.plugin.http] allow = [...]`. `guest-sdk/python/build.sh`
makes the component import wasi:http only when the plugin imports this
module, so a plugin that calls nothing needs no grant.

A call blocks until the whole response is read. The host adds an
`Idempotency-Key: <event id>:<n>` (the same on every retry of the event)
and the event's `traceparent` unless the request sets them, and lists every
request in the event's dead letter. Plain `http://` and `https://` (the
host's web PKI roots).

A response is no error, whatever its status. A request that gets no
response raises `HttpError`, a `HandlerError`: uncaught, it fails the event
as the Rust SDK's `?` does (`invalid-url`, `invalid-header` and `denied`
reject the event, since they would fail the same way again; `timeout`,
`too-large`, `transport` and `body` are retryable). Catch it and look at
`kind` to decide otherwise.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from componentize_py_types import Err
from wit_world.imports import outgoing_handler as _handler
from wit_world.imports import streams as _streams
from wit_world.imports import wasi_http_types as _h

from . import Disposition, HandlerError, loads

__all__ = ["HttpError", "Response", "request", "get", "post"]

# Bytes per write into the request body: the most `blocking-write-and-flush`
# takes at once.
_WRITE_CHUNK = 4096
# The most one `blocking-read` asks for.
_READ_CHUNK = 64 * 1024

_REJECTED = {"invalid-url", "invalid-header", "denied"}
# Why a request is denied when the host gives no reason.
_NOT_ALLOWED = "not in the pipeline's plugin.http.allow"
# How the host marks an internal-error that is a denial with its reason.
_DENIED_PREFIX = "denied: "

_METHODS = {
    "GET": _h.Method_Get,
    "HEAD": _h.Method_Head,
    "POST": _h.Method_Post,
    "PUT": _h.Method_Put,
    "DELETE": _h.Method_Delete,
    "CONNECT": _h.Method_Connect,
    "OPTIONS": _h.Method_Options,
    "TRACE": _h.Method_Trace,
    "PATCH": _h.Method_Patch,
}


class HttpError(HandlerError):
    """A request that got no response. `kind` is one of `invalid-url`,
    `invalid-header`, `denied`, `timeout`, `too-large`, `transport`, `body`
    (the Rust SDK's `http::Error` cases); `host` is `host:port` as requested
    (`denied`, `timeout`, `transport`; else None); `detail` the URL
    (`invalid-url`), the host's reason (`denied`; None: not in the
    pipeline's `plugin.http.allow`), the header name (`invalid-header`), the wasi:http error
    code (`transport`), the reason (`body`) or the body cap in bytes
    (`too-large`, None when the host did not say)."""

    def __init__(self, kind: str, host: Optional[str] = None, detail: Any = None):
        disposition = Disposition.REJECT if kind in _REJECTED else Disposition.RETRYABLE
        super().__init__(disposition, _describe(kind, host, detail))
        self.kind = kind
        self.host = host
        self.detail = detail


def _describe(kind: str, host: Optional[str], detail: Any) -> str:
    # The Rust SDK's wording (http::Error's Display), so a dead letter reads the same.
    if kind == "too-large":
        return "HTTP response body over the limit" + (f" of {detail} bytes" if detail is not None else "")
    return {
        "invalid-url": f"not an http(s) URL: {detail}",
        "invalid-header": f"invalid header `{detail}`",
        "denied": f"HTTP request to {host} denied: {detail or _NOT_ALLOWED}",
        "timeout": f"HTTP request to {host} timed out",
        "transport": f"HTTP request to {host} failed: {detail}",
        "body": f"HTTP response body: {detail}",
    }.get(kind, f"HTTP error {kind}")


class Response(NamedTuple):
    """A response, its body read whole. Header names are lowercase; a name
    may repeat."""

    status: int
    headers: List[Tuple[str, bytes]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (case-insensitive), as text."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("utf-8", "replace")
        return None

    def text(self) -> str:
        """The body as UTF-8 text."""
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError("body", detail="the body is not UTF-8") from None

    def json(self) -> Any:
        """The body parsed as JSON."""
        try:
            return loads(self.text())
        except ValueError as e:
            raise HttpError("body", detail=f"the body is not the JSON expected: {e}") from None


HeadersLike = Union[Sequence[Tuple[str, Union[bytes, str]]], Dict[str, Union[bytes, str]]]


def _bytes(value: Union[bytes, bytearray, memoryview, str]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _split_url(url: str) -> Tuple[bool, str, str]:
    """(https, authority, path with query), as the Rust SDK's Url::parse."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise HttpError("invalid-url", detail=url)
    rest = rest.split("#", 1)[0]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    if not authority:
        raise HttpError("invalid-url", detail=url)
    return scheme.lower() == "https", authority, path or "/"


def request(
    method: str,
    url: str,
    headers: Optional[HeadersLike] = None,
    body: Union[bytes, str] = b"",
    timeout: Optional[float] = None,
) -> Response:
    """Sends `method url` with `headers` (pairs or a dict; set
    `idempotency-key` or `traceparent` to replace the host's) and `body`
    (sent with a `content-length`), waits at most `timeout` seconds for the
    connection and the response head (default: the pipeline's
    `plugin.http.timeout`, which applies anyway), and reads the whole
    response."""
    https, authority, path = _split_url(url)
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    pairs = [(str(k), _bytes(v)) for k, v in items]
    body = _bytes(body)
    if body and not any(k.lower() == "content-length" for k, _ in pairs):
        pairs.append(("content-length", str(len(body)).encode()))
    return _send(method.upper() or "GET", url, https, authority, path, pairs, body, timeout)


def get(url: str, headers: Optional[HeadersLike] = None, timeout: Optional[float] = None) -> Response:
    """`GET url`."""
    return request("GET", url, headers, timeout=timeout)


def post(
    url: str,
    body: Union[bytes, str],
    content_type: Optional[str] = None,
    headers: Optional[HeadersLike] = None,
    timeout: Optional[float] = None,
) -> Response:
    """`POST url` with `body` (and `content-type: content_type` when given)."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if content_type is not None:
        items.append(("content-type", content_type))
    return request("POST", url, items, body, timeout)


def _send(
    method: str, url: str, https: bool, authority: str, path: str, pairs: List[Tuple[str, bytes]], body: bytes, timeout: Optional[float]
) -> Response:
    # Every resource is dropped by its `with` (children before parents), or
    # handed on: the request constructor takes the fields, `handle` the
    # request and its options, `finish` a body.
    fields = _h.Fields()
    for name, value in pairs:
        try:
            fields.append(name, value)
        except Err:
            fields.__exit__(None, None, None)
            raise HttpError("invalid-header", detail=name) from None
    outgoing = _h.OutgoingRequest(fields)
    try:
        outgoing.set_method(_METHODS[method]() if method in _METHODS else _h.Method_Other(method))
        outgoing.set_scheme(_h.Scheme_Https() if https else _h.Scheme_Http())
        outgoing.set_authority(authority)
        outgoing.set_path_with_query(path)
        outgoing_body = outgoing.body() if body else None
    except Err:
        outgoing.__exit__(None, None, None)
        raise HttpError("invalid-url", detail=url) from None
    options = None
    if timeout is not None:
        options = _h.RequestOptions()
        nanos = max(0, int(timeout * 1e9))
        for setter in (options.set_connect_timeout, options.set_first_byte_timeout):
            try:
                setter(nanos)
            except Err:
                pass
    try:
        pending = _handler.handle(outgoing, options)
    except Err as e:
        if outgoing_body is not None:
            outgoing_body.__exit__(None, None, None)
        raise _from_code(e.value, authority) from None
    with pending:
        if outgoing_body is not None:
            _write_body(outgoing_body, body, authority)
            try:
                _h.OutgoingBody.finish(outgoing_body, None)
            except Err as e:
                raise _from_code(e.value, authority) from None
        result = pending.get()
        while result is None:
            with pending.subscribe() as pollable:
                pollable.block()
            result = pending.get()
        # result<result<incoming-response, error-code>>: the outer one errs
        # when the response was taken already.
        if isinstance(result, Err):
            raise HttpError("transport", authority, "the response was taken twice")
        if isinstance(result.value, Err):
            raise _from_code(result.value.value, authority)
        return _read_response(result.value.value, authority)


def _read_response(response: Any, host: str) -> Response:
    with response:
        status = response.status()
        with response.headers() as fields:
            headers = [(k, bytes(v)) for k, v in fields.entries()]
        try:
            incoming = response.consume()
        except Err:
            raise HttpError("body", detail="cannot open the response body") from None
        try:
            body = _read_body(incoming, host)
        except BaseException:
            incoming.__exit__(None, None, None)
            raise
        with _h.IncomingBody.finish(incoming):
            pass
    return Response(status, headers, body)


def _write_body(outgoing_body: Any, body: bytes, host: str) -> None:
    try:
        stream = outgoing_body.write()
    except Err:
        outgoing_body.__exit__(None, None, None)
        raise HttpError("body", detail="cannot write the request body") from None
    try:
        with stream:
            for start in range(0, len(body), _WRITE_CHUNK):
                try:
                    stream.blocking_write_and_flush(body[start : start + _WRITE_CHUNK])
                except Err as e:
                    raise _stream_error(e.value, host) from None
    except BaseException:
        outgoing_body.__exit__(None, None, None)
        raise


def _read_body(incoming: Any, host: str) -> bytes:
    try:
        stream = incoming.stream()
    except Err:
        raise HttpError("body", detail="cannot read the response body") from None
    chunks = []
    with stream:
        while True:
            try:
                chunks.append(bytes(stream.blocking_read(_READ_CHUNK)))
            except Err as e:
                if isinstance(e.value, _streams.StreamError_Closed):
                    return b"".join(chunks)
                raise _stream_error(e.value, host) from None


def _stream_error(error: Any, host: str) -> HttpError:
    if isinstance(error, _streams.StreamError_Closed):
        return HttpError("body", detail="the stream closed early")
    with error.value as io_error:
        code = _h.http_error_code(io_error)
        if code is not None:
            return _from_code(code, host)
        return _body_error(io_error.to_debug_string(), host)


def _body_error(text: str, host: str) -> HttpError:
    # A body error without an error-code (wasmtime passes its own error
    # there, as text): the cap and the deadline are still told apart.
    if "body size exceeds limit" in text:
        tail = text.rsplit(": ", 1)[-1].removesuffix(" bytes")
        return HttpError("too-large", detail=int(tail) if tail.isdigit() else None)
    if "timeout" in text or "timed out" in text:
        return HttpError("timeout", host)
    return HttpError("body", detail=text)


def _from_code(code: Any, host: str) -> HttpError:
    if isinstance(code, _h.ErrorCode_HttpRequestDenied):
        return HttpError("denied", host)
    if isinstance(code, _h.ErrorCode_InternalError) and code.value is not None and code.value.startswith(_DENIED_PREFIX):
        # A denial with its reason (`plugin test --http-replies` with no rule
        # for the request): see host/src/runtime/http/send.rs.
        return HttpError("denied", host, code.value[len(_DENIED_PREFIX):])
    if isinstance(code, (_h.ErrorCode_ConnectionTimeout, _h.ErrorCode_ConnectionReadTimeout, _h.ErrorCode_HttpResponseTimeout)):
        return HttpError("timeout", host)
    if isinstance(code, _h.ErrorCode_HttpResponseBodySize):
        return HttpError("too-large", detail=code.value)
    # The case's name as the Rust SDK prints it (Debug).
    name = type(code).__name__.removeprefix("ErrorCode_")
    if isinstance(code, _h.ErrorCode_InternalError):
        name += f'(Some("{code.value}"))' if code.value is not None else "(None)"
    return HttpError("transport", host, name)
