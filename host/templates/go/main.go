// {{name}}: forwards every event with a header `x-tag` (config `tag`,
// default `{{name}}`); an empty payload is rejected.
package main

import "sluice/plugin"

type tagger struct{ tag string }

func (t *tagger) Handle(ev *plugin.Event) ([]plugin.Output, error) {
	if len(ev.Payload) == 0 {
		return nil, plugin.Reject("empty payload")
	}
	out := plugin.Output{Key: ev.Key, Payload: ev.Payload, Headers: ev.Headers}
	return []plugin.Output{out.WithHeader("x-tag", t.tag)}, nil
}

func init() {
	plugin.Register(func(c plugin.Config) (plugin.Handler, error) {
		if err := c.DenyUnknown("tag"); err != nil {
			return nil, err
		}
		tag, ok := c.Get("tag")
		if !ok {
			tag = "{{name}}"
		}
		return &tagger{tag}, nil
	})
}

func main() {}
