package plugin

import (
	"errors"
	"fmt"
)

// Client calls other services as a NestJS ClientProxy does (`send` is
// Request, `emit` is Emit), to the destinations the pipeline configures in
// `[pipelines.<name>.clients.<destination>]` tables. A capability: a plugin
// that never calls Client does not import it (Go's linker drops the unused
// imports), so it needs no grant.
//
// The host adds the event's correlation id, its traceparent and an
// `Idempotency-Key: <event id>:<n>` (the same on every retry) to each
// request, and lists every request in the event's dead letter. An emit is
// an output of the event: published with its outputs only if it succeeds.
//
// Every method returns a *CallError on failure; returned from Handle as is
// (or wrapped), it fails the event as the Rust SDK's `?` does: a timeout,
// no responders or an unreachable broker is retryable, every other kind
// rejects the event.
//
//	reply, err := plugin.Client.Request("inventory", body, nil)
//	if err != nil {
//		return nil, err
//	}
//
// In native builds (go test) requests go to the function given to
// Client.Respond, and emits are kept for Client.Emitted.
var Client clientAPI

type clientAPI struct{}

// CallErrorKind is the WIT `call-error` case.
type CallErrorKind uint8

const (
	// CallUnknownDestination: no client destination by that name (Reason).
	CallUnknownDestination CallErrorKind = iota
	// CallNotAllowed: the destination does not allow this use (Reason).
	CallNotAllowed
	// CallTimeout: no answer within Limit milliseconds.
	CallTimeout
	// CallNoResponders: nobody listens on the destination.
	CallNoResponders
	// CallService: the service answered with an error (Service).
	CallService
	// CallTooManyCalls: this event made Limit calls to the destination.
	CallTooManyCalls
	// CallTooLarge: the payload is larger than Limit bytes.
	CallTooLarge
	// CallUnavailable: the broker cannot be reached (Reason).
	CallUnavailable
)

// ServiceError is an error the service itself answered with (a NestJS
// `err`, a NATS `Nats-Service-Error`).
type ServiceError struct {
	// Code is the error code; HasCode is false when the service gave none.
	Code    string
	HasCode bool
	Message string
	// Payload is the error as sent (NestJS: the `err` value as JSON).
	Payload []byte
}

// CallError is a service call that got no answer.
type CallError struct {
	Kind CallErrorKind
	// Limit is the timeout in ms or the limit broken.
	Limit uint32
	// Reason names the destination or says why (the string cases).
	Reason string
	// Service is what the service answered (CallService).
	Service *ServiceError
}

// Error is the Rust SDK's wording (client::describe), so dead letters read
// the same in every language.
func (e *CallError) Error() string {
	switch e.Kind {
	case CallUnknownDestination:
		return fmt.Sprintf("no client destination named `%s` in the pipeline", e.Reason)
	case CallNotAllowed:
		return "call not allowed: " + e.Reason
	case CallTimeout:
		return fmt.Sprintf("no answer within %d ms", e.Limit)
	case CallNoResponders:
		return "nobody listens on the destination"
	case CallService:
		if e.Service != nil && e.Service.HasCode {
			return fmt.Sprintf("the service answered with error %s: %s", e.Service.Code, e.Service.Message)
		}
		message := ""
		if e.Service != nil {
			message = e.Service.Message
		}
		return "the service answered with an error: " + message
	case CallTooManyCalls:
		return fmt.Sprintf("an event may make at most %d calls to this destination", e.Limit)
	case CallTooLarge:
		return fmt.Sprintf("payload larger than the destination's limit of %d bytes", e.Limit)
	case CallUnavailable:
		return "service unavailable: " + e.Reason
	}
	return fmt.Sprintf("service call error %d", e.Kind)
}

// Disposition is what the event's failure becomes when the error is
// returned from Handle: transient failures are retried, the rest would
// fail the same way again.
func (e *CallError) Disposition() Disposition {
	switch e.Kind {
	case CallTimeout, CallNoResponders, CallUnavailable:
		return Retryable
	}
	return Rejected
}

// asCallError finds a *CallError in err's chain.
func asCallError(err error) (*CallError, bool) {
	var ce *CallError
	ok := errors.As(err, &ce)
	return ce, ok
}

// Reply is a service's answer (with the NestJS codec, Payload is the
// `response` value as JSON).
type Reply struct {
	Payload []byte
	Headers []Header
}

// CallOptions are a request's optional settings.
type CallOptions struct {
	Headers []Header
	// TimeoutMs is how long to wait; 0: the destination's `timeout`.
	TimeoutMs uint32
}

// Request sends payload to destination and waits for the answer. opts may
// be nil.
func (clientAPI) Request(destination string, payload []byte, opts *CallOptions) (Reply, error) {
	if opts == nil {
		opts = &CallOptions{}
	}
	return clientRequest(destination, payload, opts.Headers, opts.TimeoutMs)
}

// Emit publishes payload to destination without waiting (a NestJS event).
func (clientAPI) Emit(destination string, payload []byte, headers ...Header) error {
	return clientEmit(destination, payload, headers)
}
