// json_enricher_go: the Go twin of plugins/json_enricher (Rust), same config,
// the same outputs on the same events (JSON compared parsed).
//
// Filters and enriches JSON-object events, with the standard encoding/json:
// the output object's fields are sorted by name (Go maps have no order).
// The output has the event's key and headers, with
// `content-type: application/json` replacing any incoming `content-type`.
// A payload that is not a JSON object is rejected (dead-lettered).
//
// Config (all optional; any other key refuses the load):
//   - `require`: a field name; events without that field are dropped.
//   - `drop_if`: `field=value`; events whose `field` is the string `value` are dropped.
//   - `set.<field>`: adds `<field>` with this string value, or overwrites it.
//   - `event_id_field`: a field name that receives the event's id.
//   - `fail_on`: a field name; an event whose field is the string `retryable`,
//     `reject` or `trap` fails that way (for testing error handling).
//   - `accepts`: comma-separated event versions the plugin declares it
//     handles (`order-created@1,order-created@2`, `refund@*`); the host
//     dead-letters the rest as `unsupported`. Default `*`.
//
// Filters look at the incoming object, before any field is set.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"sluice/plugin"
)

type enricher struct {
	require      *string
	dropIf       *[2]string
	set          [][2]string
	eventIDField *string
	failOn       *string
	accepts      []string
}

func optional(c plugin.Config, key string) *string {
	if v, ok := c.Get(key); ok {
		return &v
	}
	return nil
}

func newEnricher(c plugin.Config) (plugin.Handler, error) {
	if err := c.DenyUnknown("require", "drop_if", "set.*", "event_id_field", "fail_on", "accepts"); err != nil {
		return nil, err
	}
	e := &enricher{
		require:      optional(c, "require"),
		eventIDField: optional(c, "event_id_field"),
		failOn:       optional(c, "fail_on"),
		accepts:      []string{},
	}
	list, ok := c.Get("accepts")
	if !ok {
		list = "*"
	}
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			e.accepts = append(e.accepts, s)
		}
	}
	if rule, ok := c.Get("drop_if"); ok {
		field, value, found := strings.Cut(rule, "=")
		if !found || field == "" {
			return nil, fmt.Errorf("`drop_if` must be `field=value`, got `%s`", rule)
		}
		e.dropIf = &[2]string{field, value}
	}
	for _, kv := range c.WithPrefix("set.") {
		if kv[0] == "" {
			return nil, fmt.Errorf("`set.` needs a field name, as in `set.team`")
		}
		e.set = append(e.set, kv)
	}
	return e, nil
}

// Accepts makes the enricher a plugin.Accepter: the `manifest` export.
func (e *enricher) Accepts() []string { return e.accepts }

func (e *enricher) Handle(ev *plugin.Event) ([]plugin.Output, error) {
	obj, err := parseObject(ev.Payload)
	if err != nil {
		return nil, plugin.Reject("payload is not a JSON object: %v", err)
	}
	if e.failOn != nil {
		if how, ok := obj[*e.failOn].(string); ok {
			switch how {
			case "retryable":
				return nil, plugin.Retry("asked to fail (retryable) by field `%s`", *e.failOn)
			case "reject":
				return nil, plugin.Reject("asked to fail (reject) by field `%s`", *e.failOn)
			case "trap":
				panic(fmt.Sprintf("asked to trap by field `%s`", *e.failOn))
			}
		}
	}
	if e.require != nil {
		if _, ok := obj[*e.require]; !ok {
			return nil, nil
		}
	}
	if e.dropIf != nil {
		if got, ok := obj[e.dropIf[0]].(string); ok && got == e.dropIf[1] {
			return nil, nil
		}
	}
	for _, kv := range e.set {
		obj[kv[0]] = kv[1]
	}
	if e.eventIDField != nil {
		obj[*e.eventIDField] = ev.ID
	}
	// An Encoder, to keep `<`, `>` and `&` as they are (Marshal escapes
	// them for HTML); Encode ends the document with a newline.
	var payload bytes.Buffer
	enc := json.NewEncoder(&payload)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(obj); err != nil {
		return nil, plugin.Reject("cannot write the object: %v", err)
	}
	var headers []plugin.Header
	for _, h := range ev.Headers {
		if h.Key != "content-type" {
			headers = append(headers, h)
		}
	}
	out := plugin.Output{Key: ev.Key, Payload: bytes.TrimSuffix(payload.Bytes(), []byte("\n")), Headers: headers}
	return []plugin.Output{out.WithHeader("content-type", "application/json")}, nil
}

// parseObject reads a payload that must be one JSON object. Numbers stay
// json.Number (their text), so integers beyond 2^53 survive the round
// trip; invalid UTF-8 is refused (encoding/json would replace it).
func parseObject(payload []byte) (map[string]any, error) {
	if !utf8.Valid(payload) {
		return nil, errors.New("invalid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, err
	}
	if obj == nil {
		return nil, errors.New("null")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing characters after the object")
	}
	return obj, nil
}

func init() { plugin.Register(newEnricher) }

func main() {}
