// json_enricher_go: the Go twin of plugins/json_enricher (Rust), same config,
// same outputs byte for byte on the same events.
//
// Filters and enriches JSON-object events. The object keeps its field order;
// the output has the event's key and headers, with
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
	"fmt"
	"strings"

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
	v, err := plugin.ParseJSON(ev.Payload)
	if err != nil {
		return nil, plugin.Reject("payload is not a JSON object: %v", err)
	}
	if v.Kind != plugin.ObjectKind {
		return nil, plugin.Reject("payload is not a JSON object")
	}
	obj := v.Obj
	if e.failOn != nil {
		if how, ok := obj.Get(*e.failOn); ok && how.Kind == plugin.String {
			switch how.Str {
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
		if _, ok := obj.Get(*e.require); !ok {
			return nil, nil
		}
	}
	if e.dropIf != nil {
		if got, ok := obj.Get(e.dropIf[0]); ok && got.Kind == plugin.String && got.Str == e.dropIf[1] {
			return nil, nil
		}
	}
	for _, kv := range e.set {
		obj.Set(kv[0], plugin.Str(kv[1]))
	}
	if e.eventIDField != nil {
		obj.Set(*e.eventIDField, plugin.Str(ev.ID))
	}
	var headers []plugin.Header
	for _, h := range ev.Headers {
		if h.Key != "content-type" {
			headers = append(headers, h)
		}
	}
	out := plugin.Output{Key: ev.Key, Payload: plugin.AppendJSON(nil, v), Headers: headers}
	return []plugin.Output{out.WithHeader("content-type", "application/json")}, nil
}

func init() { plugin.Register(newEnricher) }

func main() {}
