// ask_go: the Go twin of plugins/ask (Rust): asks another service about
// each event (the `client` capability) and outputs its answer, with the
// same outputs and failures.
//
// For each event, the payload is emitted to the `emit` destination (when
// configured; an output of the event, published only if it succeeds), then
// sent as a request to the `request` destination (when configured), whose
// answer becomes the one output; without `request` the payload is the
// output.
//
// Errors: a service error rejects the event with the service's message; a
// timeout, no responders or an unreachable broker is retryable (what a
// returned *plugin.CallError does by itself). `...:retry-once` fails
// retryably on the first attempt and `...:reject` is rejected, each after
// its calls.
//
// Config: `request`, `emit` (optional destinations), `timeout_ms`
// (optional; default: the destination's `timeout`).
package main

import (
	"fmt"
	"strconv"
	"strings"

	"sluice/plugin"
)

type ask struct {
	request, emit string
	timeoutMs     uint32
}

func init() {
	plugin.Register(func(c plugin.Config) (plugin.Handler, error) {
		if err := c.DenyUnknown("request", "emit", "timeout_ms"); err != nil {
			return nil, err
		}
		a := ask{}
		a.request, _ = c.Get("request")
		a.emit, _ = c.Get("emit")
		if ms, ok := c.Get("timeout_ms"); ok {
			n, err := strconv.ParseUint(ms, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("timeout_ms: not a number of milliseconds: %s", ms)
			}
			a.timeoutMs = uint32(n)
		}
		return a, nil
	})
}

func (a ask) Handle(ev *plugin.Event) ([]plugin.Output, error) {
	if a.emit != "" {
		if err := plugin.Client.Emit(a.emit, ev.Payload); err != nil {
			return nil, err
		}
	}
	payload := ev.Payload
	if a.request != "" {
		reply, err := plugin.Client.Request(a.request, ev.Payload, &plugin.CallOptions{TimeoutMs: a.timeoutMs})
		if err != nil {
			return nil, err // a service error rejects, a timeout retries
		}
		payload = reply.Payload
	}
	text := string(ev.Payload)
	if strings.HasSuffix(text, ":retry-once") && ev.Attempt == 1 {
		return nil, plugin.Retry("first attempt fails after its calls")
	}
	if strings.HasSuffix(text, ":reject") {
		return nil, plugin.Reject("rejected after its calls")
	}
	return []plugin.Output{{Payload: payload}}, nil
}

func main() {}
