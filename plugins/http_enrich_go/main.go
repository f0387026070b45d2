// http_enrich_go: the Go twin of plugins/http_enrich (Rust): calls an HTTP
// API once per event with plugin.HTTP and outputs its answer, with the same
// outputs and failures. The pipeline grants it with `[plugin.http] allow`.
//
// Each event's payload is sent (POST, or as configured) to `url`; the
// response body becomes the output's payload, with the event's key and a
// `http-status` header. The host adds `Idempotency-Key: <event id>:0` (the
// same on every retry of the event) and the event's `traceparent`.
//
//   - 2xx and 3xx: the output;
//   - 4xx: the API refused this event; retrying will not help: rejected;
//   - 5xx: retryable; a failed request (a returned *plugin.HTTPError):
//     denied or a bad URL rejects, a timeout or a transport failure retries.
//
// Config: `url` (required), `method` (`POST` default, `PUT`, `GET`: no
// body), `content_type` (default `application/json`).
package main

import (
	"fmt"
	"strings"

	"sluice/plugin"
)

type enrich struct {
	url, method, contentType string
}

func init() {
	plugin.Register(func(c plugin.Config) (plugin.Handler, error) {
		if err := c.DenyUnknown("url", "method", "content_type"); err != nil {
			return nil, err
		}
		url, err := c.Require("url")
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
			return nil, fmt.Errorf("`url` must be an http:// or https:// URL, got `%s`", url)
		}
		e := enrich{url: url, method: "POST", contentType: "application/json"}
		if m, ok := c.Get("method"); ok {
			e.method = strings.ToUpper(m)
		}
		if e.method != "POST" && e.method != "PUT" && e.method != "GET" {
			return nil, fmt.Errorf("`method` must be POST, PUT or GET, got `%s`", e.method)
		}
		if ct, ok := c.Get("content_type"); ok {
			e.contentType = ct
		}
		return e, nil
	})
}

func (e enrich) Handle(ev *plugin.Event) ([]plugin.Output, error) {
	req := plugin.HTTPRequest{Method: e.method, URL: e.url}
	if e.method != "GET" {
		req.Headers = []plugin.Header{{Key: "content-type", Value: []byte(e.contentType)}}
		req.Body = ev.Payload
	}
	resp, err := plugin.HTTP.Do(req)
	if err != nil {
		return nil, err // denied or a bad URL rejects, the rest retries
	}
	switch {
	case resp.Status < 400:
		out := plugin.Output{Key: ev.Key, Payload: resp.Body}
		return []plugin.Output{out.WithHeader("http-status", fmt.Sprint(resp.Status))}, nil
	case resp.Status < 500:
		return nil, plugin.Reject("%s answered %d: %s", e.url, resp.Status, resp.Body)
	default:
		return nil, plugin.Retry("%s answered %d", e.url, resp.Status)
	}
}

func main() {}
