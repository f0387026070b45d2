// {{name}}: forwards every event with a header `x-tag` (config `tag`,
// default `{{name}}`); an empty payload is rejected.
{{#state}}//   - state: counts the events of each key (`seen:<key>` in the pipeline's
//     state) and puts the count in a header `x-seen`.
{{/state}}{{#http}}//   - HTTP: POSTs the payload to config `url` (default
//     `https://api.example.com/lookup`) and puts the answer in `x-lookup`; a
//     4xx rejects the event, a 5xx or a failed request retries it.
{{/http}}{{#client}}//   - service call: asks the destination config `service` (default
//     `lookup`) about the payload and puts the answer in `x-answer`.
{{/client}}{{#metrics}}//   - metrics: counts the events per tag (`sluice_plugin_events_total`) and
//     records payload sizes (`sluice_plugin_payload_bytes`).
{{/metrics}}package main

import (
{{#state}}	"strconv"

{{/state}}	"sluice/plugin"
)

type tagger struct{ tag{{#http}}, url{{/http}}{{#client}}, service{{/client}} string }

func (t *tagger) Handle(ev *plugin.Event) ([]plugin.Output, error) {
	if len(ev.Payload) == 0 {
		return nil, plugin.Reject("empty payload")
	}
	out := plugin.Output{Key: ev.Key, Payload: ev.Payload, Headers: ev.Headers}.WithHeader("x-tag", t.tag)
{{#metrics}}	// Recorded on every attempt, never fails the event.
	plugin.Metrics.Counter("events", [2]string{"tag", t.tag}).Inc()
	plugin.Metrics.Histogram("payload_bytes").Observe(float64(len(ev.Payload)))
{{/metrics}}{{#state}}	// Kept only if the event succeeds (a failed attempt's writes are dropped).
	seen, err := plugin.State.Increment("seen:"+string(ev.Key), 1)
	if err != nil {
		return nil, err // unavailable retries, a broken limit rejects
	}
	out = out.WithHeader("x-seen", strconv.FormatInt(seen, 10))
{{/state}}{{#http}}	// The host adds `Idempotency-Key: <event id>:<n>` (the same on every
	// retry) and the event's `traceparent`.
	resp, err := plugin.HTTP.Post(t.url, "", ev.Payload)
	if err != nil {
		return nil, err // denied rejects, a timeout or a transport failure retries
	}
	switch {
	case resp.Status >= 400 && resp.Status < 500:
		return nil, plugin.Reject("%s answered %d", t.url, resp.Status)
	case resp.Status < 200 || resp.Status >= 300:
		return nil, plugin.Retry("%s answered %d", t.url, resp.Status)
	}
	out = out.WithHeader("x-lookup", string(resp.Body))
{{/http}}{{#client}}	reply, err := plugin.Client.Request(t.service, ev.Payload, nil)
	if err != nil {
		return nil, err // a service error rejects, a timeout or no responders retries
	}
	out = out.WithHeader("x-answer", string(reply.Payload))
{{/client}}	return []plugin.Output{out}, nil
}

func init() {
	plugin.Register(func(c plugin.Config) (plugin.Handler, error) {
		if err := c.DenyUnknown({{config_keys}}); err != nil {
			return nil, err
		}
		t := &tagger{tag: "{{name}}"{{#http}}, url: "https://api.example.com/lookup"{{/http}}{{#client}}, service: "lookup"{{/client}}}
		if tag, ok := c.Get("tag"); ok {
			t.tag = tag
		}
{{#http}}		if url, ok := c.Get("url"); ok {
			t.url = url
		}
{{/http}}{{#client}}		if service, ok := c.Get("service"); ok {
			t.service = service
		}
{{/client}}		return t, nil
	})
}

func main() {}
