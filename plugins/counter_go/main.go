// counter_go: the Go twin of plugins/counter (Rust): counts events per key
// in the pipeline's state (the `state` capability) and outputs the new
// count, with the same outputs and failures.
//
// For each event, the key is the event's key (or, without one, its payload
// up to the first `:`): `count:<key>` is incremented by one, and one output
// is returned with the same key and the payload `<key>=<count>`.
//
// Payload rules, to test that failed attempts leave no trace (each
// increments first, then fails):
//   - `...:retry-once`: a retryable error on the first attempt;
//   - `...:reject`: rejected (dead-lettered).
//
// Metrics, recorded on every attempt before it can fail (a retried event
// counts twice): counter `counted` labelled `key`, and histogram
// `payload_bytes` of each payload's size.
//
// Config: `prefix` (optional, default `count:`): the state key prefix.
package main

import (
	"fmt"
	"strings"
	"unicode"

	"sluice/plugin"
)

type counter struct{ prefix string }

func init() {
	plugin.Register(func(c plugin.Config) (plugin.Handler, error) {
		if err := c.DenyUnknown("prefix"); err != nil {
			return nil, err
		}
		prefix, ok := c.Get("prefix")
		if !ok {
			prefix = "count:"
		}
		return counter{prefix}, nil
	})
}

func (c counter) Handle(ev *plugin.Event) ([]plugin.Output, error) {
	text, err := ev.Text()
	if err != nil {
		return nil, err
	}
	text = strings.TrimRightFunc(text, unicode.IsSpace)
	key, _, _ := strings.Cut(text, ":")
	if ev.Key != nil {
		key = strings.ToValidUTF8(string(ev.Key), "\uFFFD")
	}
	plugin.Metrics.Counter("counted", [2]string{"key", key}).Inc()
	plugin.Metrics.Histogram("payload_bytes").Observe(float64(len(ev.Payload)))
	count, err := plugin.State.Increment(c.prefix+key, 1)
	if err != nil {
		return nil, err // unavailable: retried; a broken limit: rejected
	}
	if strings.HasSuffix(text, ":retry-once") && ev.Attempt == 1 {
		return nil, plugin.Retry("first attempt fails after counting %s to %d", key, count)
	}
	if strings.HasSuffix(text, ":reject") {
		return nil, plugin.Reject("rejected after counting %s to %d", key, count)
	}
	return []plugin.Output{{Key: []byte(key), Payload: []byte(fmt.Sprintf("%s=%d", key, count))}}, nil
}

func main() {}
