"""`{{name}}`: forwards every event with a header `x-tag` (config `tag`,
default `{{name}}`); an empty payload is rejected.
{{#state}}
- state: counts the events of each key (`seen:<key>` in the pipeline's
  state) and puts the count in a header `x-seen`.{{/state}}{{#http}}
- HTTP: POSTs the payload to config `url` (default
  `https://api.example.com/lookup`) and puts the answer in `x-lookup`; a
  4xx rejects the event, a 5xx or a failed request retries it.{{/http}}{{#client}}
- service call: asks the destination config `service` (default `lookup`)
  about the payload and puts the answer in `x-answer`.{{/client}}{{#metrics}}
- metrics: counts the events per tag (`sluice_plugin_events_total`) and
  records payload sizes (`sluice_plugin_payload_bytes`).{{/metrics}}
"""

from sluice_plugin import Config, Event, HandlerError, Output, Plugin, export{{#state}}, state{{/state}}{{#http}}, http{{/http}}{{#client}}, client{{/client}}{{#metrics}}, metrics{{/metrics}}


class Tagger(Plugin):
    def __init__(self, config: Config):
        self.tag = config.get("tag", "{{name}}")
{{#http}}        self.url = config.get("url", "https://api.example.com/lookup")
{{/http}}{{#client}}        self.service = config.get("service", "lookup")
{{/client}}
    @classmethod
    def init(cls, config: Config) -> "Tagger":
        config.deny_unknown([{{config_keys}}])
        return cls(config)

    def handle(self, event: Event) -> list:
        if not event.payload:
            raise HandlerError.reject("empty payload")
        headers = [*event.headers, ("x-tag", self.tag)]
{{#metrics}}        # Recorded on every attempt, never fails the event.
        metrics.counter("events", tag=self.tag).inc()
        metrics.histogram("payload_bytes").observe(len(event.payload))
{{/metrics}}{{#state}}        # Kept only if the event succeeds (a failed attempt's writes are dropped).
        key = event.key.decode("utf-8", "replace") if event.key is not None else ""
        headers.append(("x-seen", str(state.increment(f"seen:{key}", 1))))
{{/state}}{{#http}}        # The host adds `Idempotency-Key: <event id>:<n>` (the same on every
        # retry) and the event's `traceparent`. Uncaught, `http.HttpError`
        # rejects when denied and retries a timeout or a transport failure.
        response = http.post(self.url, event.payload)
        if 400 <= response.status < 500:
            raise HandlerError.reject(f"{self.url} answered {response.status}")
        if not 200 <= response.status < 300:
            raise HandlerError.retryable(f"{self.url} answered {response.status}")
        headers.append(("x-lookup", response.text()))
{{/http}}{{#client}}        # Uncaught, `client.CallError` rejects a service error and retries a
        # timeout or no responders.
        reply = client.request(self.service, event.payload)
        headers.append(("x-answer", reply.text()))
{{/client}}        return [Output.of(event.payload, key=event.key, headers=headers)]


Handler = export(Tagger)
