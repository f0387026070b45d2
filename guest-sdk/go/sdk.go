// Package plugin is the Sluice plugin SDK for Go (sluice:plugin@0.2.0,
// world `plugin`): the Go counterpart of the Rust SDK in guest-sdk/rust.
//
// A plugin registers a constructor in an init function; the constructor
// receives the `init` config and returns the handler:
//
//	func init() {
//		plugin.Register(func(c plugin.Config) (plugin.Handler, error) {
//			if err := c.DenyUnknown(); err != nil {
//				return nil, err
//			}
//			return upper{}, nil
//		})
//	}
//
//	func (upper) Handle(ev *plugin.Event) ([]plugin.Output, error) {
//		return []plugin.Output{{Payload: bytes.ToUpper(ev.Payload)}}, nil
//	}
//
// Build it with the standard Go toolchain for wasip1 (`build.sh`), which
// wraps the module into a component.
package plugin

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Header is one message header; names may repeat.
type Header struct {
	Key   string
	Value []byte
}

// Event is the event handed to the plugin (see wit/sluice.wit).
type Event struct {
	ID          string
	Source      string
	Key         []byte // nil: no key
	Payload     []byte
	Headers     []Header
	TimestampMs uint64
	Attempt     uint32
	ReplyTo     *string
}

// Header returns the first header named `name` (case-sensitive).
func (e *Event) Header(name string) ([]byte, bool) {
	for _, h := range e.Headers {
		if h.Key == name {
			return h.Value, true
		}
	}
	return nil, false
}

// Text is the payload as a string; invalid UTF-8 rejects the event.
func (e *Event) Text() (string, error) {
	if !utf8.Valid(e.Payload) {
		return "", Reject("payload is not valid UTF-8")
	}
	return string(e.Payload), nil
}

// Output is a message to publish.
type Output struct {
	Destination *string // nil: the pipeline's default route
	Key         []byte  // nil: no key
	Payload     []byte
	Headers     []Header
	Reply       bool // the answer to a request, sent to the event's ReplyTo
}

// WithHeader appends a header.
func (o Output) WithHeader(key, value string) Output {
	o.Headers = append(o.Headers, Header{Key: key, Value: []byte(value)})
	return o
}

// Disposition says what the host does with a failed event.
type Disposition uint8

const (
	// Retryable: try again with backoff, up to the pipeline's max_attempts.
	Retryable Disposition = 0
	// Rejected: dead-letter now, no retry.
	Rejected Disposition = 1
)

// HandlerError is a handler failure with its disposition.
type HandlerError struct {
	Disposition Disposition
	Message     string
}

func (e *HandlerError) Error() string { return e.Message }

// Retry makes a retryable error.
func Retry(format string, args ...any) *HandlerError {
	return &HandlerError{Retryable, fmt.Sprintf(format, args...)}
}

// Reject makes a reject error (dead letter at once).
func Reject(format string, args ...any) *HandlerError {
	return &HandlerError{Rejected, fmt.Sprintf(format, args...)}
}

// asHandlerError maps any error to the WIT handler-error: a *HandlerError
// keeps its disposition, a *StateError, *CallError or *HTTPError (or an
// error wrapping one) takes its own (see their Disposition), anything else
// is retryable.
func asHandlerError(err error) *HandlerError {
	if he, ok := err.(*HandlerError); ok {
		return he
	}
	if se, ok := asStateError(err); ok {
		return &HandlerError{se.Disposition(), err.Error()}
	}
	if ce, ok := asCallError(err); ok {
		return &HandlerError{ce.Disposition(), err.Error()}
	}
	if he, ok := asHTTPError(err); ok {
		return &HandlerError{he.Disposition(), err.Error()}
	}
	return &HandlerError{Retryable, err.Error()}
}

// Config is the `init` configuration: string pairs in the host's order.
type Config struct{ Pairs [][2]string }

// Get returns the value of `key`.
func (c Config) Get(key string) (string, bool) {
	for _, p := range c.Pairs {
		if p[0] == key {
			return p[1], true
		}
	}
	return "", false
}

// Require returns the value of `key` or an error naming it.
func (c Config) Require(key string) (string, error) {
	if v, ok := c.Get(key); ok {
		return v, nil
	}
	return "", fmt.Errorf("missing required config key `%s`", key)
}

// WithPrefix returns the pairs whose key starts with prefix, prefix stripped.
func (c Config) WithPrefix(prefix string) [][2]string {
	var out [][2]string
	for _, p := range c.Pairs {
		if rest, ok := strings.CutPrefix(p[0], prefix); ok {
			out = append(out, [2]string{rest, p[1]})
		}
	}
	return out
}

// DenyUnknown refuses any key not listed; "prefix*" accepts a family. Same
// message as the Rust SDK.
func (c Config) DenyUnknown(known ...string) error {
	for _, p := range c.Pairs {
		ok := false
		for _, k := range known {
			if prefix, fam := strings.CutSuffix(k, "*"); fam && strings.HasPrefix(p[0], prefix) || k == p[0] {
				ok = true
				break
			}
		}
		if !ok {
			if len(known) == 0 {
				return fmt.Errorf("unknown config key `%s` (this plugin takes no configuration)", p[0])
			}
			return fmt.Errorf("unknown config key `%s` (expected one of: %s)", p[0], strings.Join(known, ", "))
		}
	}
	return nil
}

// Handler handles events. Return no outputs to filter an event out; return
// a *HandlerError to fail it (any other error is retryable). A panic traps:
// the host counts it as retryable and replaces the instance.
type Handler interface {
	Handle(ev *Event) ([]Output, error)
}

// Accepter is implemented by a Handler that declares the event types and
// versions it handles (the `manifest` export): selectors such as
// `order-created@2`, `order-created@*` (any version) and `*` (every event).
// The host reads them once per loaded version, after the Factory ran, and
// dead-letters events they do not cover as `unsupported` without calling
// Handle. A Handler without it accepts every event (`*`).
type Accepter interface {
	Accepts() []string
}

// Factory builds the handler from the config; an error refuses the config.
type Factory func(Config) (Handler, error)

var (
	factory Factory
	handler Handler
)

// Register sets the plugin's constructor. Call it from an init function.
func Register(f Factory) { factory = f }

func initPlugin(pairs [][2]string) error {
	if factory == nil {
		return fmt.Errorf("no plugin registered: call plugin.Register in an init function")
	}
	h, err := factory(Config{Pairs: pairs})
	if err != nil {
		return err
	}
	handler = h
	return nil
}

// accepts is what the handler declares: nothing before a successful init
// (as in the Rust SDK), `*` when it is no Accepter.
func accepts() []string {
	if handler == nil {
		return nil
	}
	if a, ok := handler.(Accepter); ok {
		return a.Accepts()
	}
	return []string{"*"}
}

func handleOne(ev *Event) ([]Output, error) {
	if handler == nil {
		return nil, Retry("plugin not initialised")
	}
	return handler.Handle(ev)
}

// Level is a log severity.
type Level uint32

const (
	Trace Level = iota
	Debug
	Info
	Warn
	Error
)

// Log emits one line into the host's log stream; fields are key/value pairs.
func Log(level Level, message string, fields ...[2]string) { logImpl(level, message, fields) }
