"""`http_enrich_py`: the Python twin of plugins/http_enrich (Rust): calls an
HTTP API once per event with `sluice_plugin.http` and outputs its answer,
with the same outputs and failures. Importing `http` makes build.sh build
it against a world with wasi:http; the pipeline grants it with
`[plugin.http] allow`.

Each event's payload is sent (POST, or as configured) to `url`; the
response body becomes the output's payload, with the event's key and a
`http-status` header. The host adds `Idempotency-Key: <event id>:0` (the
same on every retry of the event) and the event's `traceparent`.

- 2xx and 3xx: the output;
- 4xx: the API refused this event; retrying will not help: rejected;
- 5xx: retryable; a request that got no response (an uncaught
  `http.HttpError`): denied or a bad URL rejects, a timeout or a transport
  failure retries.

Config: `url` (required), `method` (`POST` default, `PUT`, `GET`: no
body), `content_type` (default `application/json`).
"""

from typing import List

from sluice_plugin import Config, ConfigError, Event, HandlerError, Output, Plugin, export, http


class HttpEnrich(Plugin):
    def __init__(self, url: str, method: str, content_type: str):
        self.url = url
        self.method = method
        self.content_type = content_type

    @classmethod
    def init(cls, config: Config) -> "HttpEnrich":
        config.deny_unknown(["url", "method", "content_type"])
        url = config.require("url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"`url` must be an http:// or https:// URL, got `{url}`")
        method = config.get("method", "POST").upper()
        if method not in ("POST", "PUT", "GET"):
            raise ConfigError(f"`method` must be POST, PUT or GET, got `{method}`")
        return cls(url, method, config.get("content_type", "application/json"))

    def handle(self, event: Event) -> List:
        if self.method == "GET":
            response = http.get(self.url)
        else:
            headers = [("content-type", self.content_type)]
            response = http.request(self.method, self.url, headers, event.payload)
        if response.status < 400:
            return [Output.of(response.body, key=event.key, headers=[("http-status", str(response.status))])]
        if response.status < 500:
            raise HandlerError.reject(f"{self.url} answered {response.status}: {response.body.decode('utf-8', 'replace')}")
        raise HandlerError.retryable(f"{self.url} answered {response.status}")


Handler = export(HttpEnrich)
