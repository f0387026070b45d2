// `abi_go`: a test plugin for the Go SDK's hand-written canonical ABI
// (guest-sdk/go/abi*.go; docs/plugins/go.md says why it is not generated).
// It sends back everything it was given and every kind of value the state
// interface returns, so tests/tests/languages.rs can check each WIT type
// the other Go plugins do not reach, decoded and encoded through the real
// host:
//
//   - output 1, the event as decoded: a JSON object with every field of
//     the event record (key and payload as base64, `key` and `reply_to`
//     null when absent, headers as [name, base64] pairs in order), sent
//     with the event's key and headers, to the destination named by the
//     header `to` (option<string> in an output) and as a reply when the
//     event has a `reply_to` (the output's bool);
//   - output 2, the state round trip: `get` of `abi:<id>` before and after
//     a `set` to the payload (option<list<u8>>), a `scan` of `abi:` one
//     entry per page (the page record: list<tuple<string, list<u8>>> and
//     option<string>), and for the event `drop`, a `delete` of `abi:first`
//     and a `get` of it after;
//   - an event whose payload is `fail:<kind>` asks `state` for what the
//     host refuses with that `state-error` case (`key-too-long`: a key over
//     the limit; `not-a-counter`: `increment` of a key holding text) and
//     returns the error (the variant, lifted).
package main

import (
	"encoding/json"
	"strings"

	"sluice/plugin"
)

type abi struct{}

func init() {
	plugin.Register(func(c plugin.Config) (plugin.Handler, error) {
		if err := c.DenyUnknown(); err != nil {
			return nil, err
		}
		return abi{}, nil
	})
}

// Decoded is the event as the SDK decoded it ([]byte as base64).
type Decoded struct {
	ID          string   `json:"id"`
	Source      string   `json:"source"`
	Key         []byte   `json:"key"`
	Payload     []byte   `json:"payload"`
	Headers     [][2]any `json:"headers"`
	TimestampMs uint64   `json:"timestamp_ms"`
	Attempt     uint32   `json:"attempt"`
	ReplyTo     *string  `json:"reply_to"`
}

// RoundTrip is what the state interface answered.
type RoundTrip struct {
	Before      *[]byte  `json:"before"`
	After       *[]byte  `json:"after"`
	Scanned     []string `json:"scanned"`
	Values      [][]byte `json:"values"`
	Pages       int      `json:"pages"`
	Deleted     bool     `json:"deleted"`
	AfterDelete *[]byte  `json:"after_delete"`
}

func get(key string) (*[]byte, error) {
	value, ok, err := plugin.State.Get(key)
	if err != nil || !ok {
		return nil, err
	}
	return &value, nil
}

func (abi) Handle(ev *plugin.Event) ([]plugin.Output, error) {
	switch string(ev.Payload) {
	case "fail:key-too-long":
		return nil, plugin.State.Set(strings.Repeat("k", 100_000), []byte("x"))
	case "fail:not-a-counter":
		if err := plugin.State.Set("abi:text", []byte("not a number")); err != nil {
			return nil, err
		}
		_, err := plugin.State.Increment("abi:text", 1)
		return nil, err
	}
	decoded := Decoded{ID: ev.ID, Source: ev.Source, Key: ev.Key, Payload: ev.Payload, Headers: [][2]any{},
		TimestampMs: ev.TimestampMs, Attempt: ev.Attempt, ReplyTo: ev.ReplyTo}
	for _, h := range ev.Headers {
		decoded.Headers = append(decoded.Headers, [2]any{h.Key, h.Value})
	}
	echo, err := json.Marshal(decoded)
	if err != nil {
		return nil, err
	}
	first := plugin.Output{Key: ev.Key, Payload: echo, Headers: ev.Headers, Reply: ev.ReplyTo != nil}
	if to, ok := ev.Header("to"); ok {
		destination := string(to)
		first.Destination = &destination
	}

	var trip RoundTrip
	key := "abi:" + ev.ID
	if trip.Before, err = get(key); err != nil {
		return nil, err
	}
	if err := plugin.State.Set(key, ev.Payload); err != nil {
		return nil, err
	}
	if trip.After, err = get(key); err != nil {
		return nil, err
	}
	trip.Scanned, trip.Values = []string{}, [][]byte{}
	for after := ""; ; trip.Pages++ {
		page, err := plugin.State.Scan("abi:", after, 1)
		if err != nil {
			return nil, err
		}
		for _, entry := range page.Entries {
			trip.Scanned = append(trip.Scanned, entry.Key)
			trip.Values = append(trip.Values, entry.Value)
		}
		if !page.More {
			trip.Pages++
			break
		}
		after = page.Next
	}
	if ev.ID == "drop" {
		if err := plugin.State.Delete("abi:first"); err != nil {
			return nil, err
		}
		trip.Deleted = true
		if trip.AfterDelete, err = get("abi:first"); err != nil {
			return nil, err
		}
	}
	report, err := json.Marshal(trip)
	if err != nil {
		return nil, err
	}
	return []plugin.Output{first, {Payload: report}}, nil
}

func main() {}
