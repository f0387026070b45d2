package plugin

import (
	"errors"
	"fmt"
)

// State is the pipeline's state: string keys to byte values, remembered
// between events (stock per SKU, a running total per account). A
// capability: the pipeline grants it with a `[pipelines.<name>.state]`
// table. A plugin that never calls State does not import it (Go's linker
// drops the unused imports), so it needs no grant.
//
// What an event writes is seen by its own later reads at once and by other
// events only once it concludes with its outputs accepted: a failed
// attempt, a retry or a dead letter leaves no trace.
//
// Every method returns a *StateError on failure; returned from Handle
// as is (or wrapped), it fails the event as the Rust SDK's `?` does:
// Unavailable is retryable, every other kind rejects the event.
//
//	n, err := plugin.State.Increment("count:"+key, 1)
//	if err != nil {
//		return nil, err
//	}
//
// In native builds (go test) State is an in-memory map, emptied by
// State.Clear, so stateful handlers can be tested as they are.
var State stateAPI

type stateAPI struct{}

// StateErrorKind is the WIT `state-error` case.
type StateErrorKind uint8

const (
	// StateKeyTooLong: the key is longer than Limit bytes.
	StateKeyTooLong StateErrorKind = iota
	// StateValueTooLarge: the value is larger than Limit bytes.
	StateValueTooLarge
	// StateTooManyWrites: this event already wrote Limit keys.
	StateTooManyWrites
	// StateTooManyReads: this event already read Limit keys and scans.
	StateTooManyReads
	// StateNotACounter: Increment on a value that is not ASCII decimal.
	StateNotACounter
	// StateOverflow: Increment would leave the int64 range.
	StateOverflow
	// StateUnavailable: the backend cannot be reached (Reason says why).
	StateUnavailable
)

// StateError is a state operation the host refused.
type StateError struct {
	Kind StateErrorKind
	// Limit is the limit broken (the first four kinds).
	Limit uint32
	// Reason is why the backend is unavailable (StateUnavailable).
	Reason string
}

// Error is the Rust SDK's wording (state::describe), so dead letters read
// the same in every language.
func (e *StateError) Error() string {
	switch e.Kind {
	case StateKeyTooLong:
		return fmt.Sprintf("state key longer than the limit of %d bytes", e.Limit)
	case StateValueTooLarge:
		return fmt.Sprintf("state value larger than the limit of %d bytes", e.Limit)
	case StateTooManyWrites:
		return fmt.Sprintf("an event may write at most %d state keys", e.Limit)
	case StateTooManyReads:
		return fmt.Sprintf("an event may read at most %d state keys and scans", e.Limit)
	case StateNotACounter:
		return "state value is not a counter (ASCII decimal text)"
	case StateOverflow:
		return "state counter would overflow a signed 64-bit integer"
	case StateUnavailable:
		return "state unavailable: " + e.Reason
	}
	return fmt.Sprintf("state error %d", e.Kind)
}

// Disposition is what the event's failure becomes when the error is
// returned from Handle: Unavailable is worth retrying, the rest would fail
// the same way again.
func (e *StateError) Disposition() Disposition {
	if e.Kind == StateUnavailable {
		return Retryable
	}
	return Rejected
}

// asStateError finds a *StateError in err's chain.
func asStateError(err error) (*StateError, bool) {
	var se *StateError
	ok := errors.As(err, &se)
	return se, ok
}

// StateEntry is one key and its value.
type StateEntry struct {
	Key   string
	Value []byte
}

// StatePage is one page of Scan: entries in key order, and the key to pass
// as `after` for the next page ("" with More false: this was the last).
type StatePage struct {
	Entries []StateEntry
	Next    string
	More    bool
}

// Get returns the value of key, and whether it has one.
func (stateAPI) Get(key string) ([]byte, bool, error) { return stateGet(key) }

// GetString returns the value of key as text (false when it has none).
func (s stateAPI) GetString(key string) (string, bool, error) {
	v, ok, err := s.Get(key)
	return string(v), ok, err
}

// Set sets key to value.
func (stateAPI) Set(key string, value []byte) error { return stateSet(key, value) }

// SetString sets key to value's bytes.
func (s stateAPI) SetString(key, value string) error { return s.Set(key, []byte(value)) }

// Delete removes key (no error if it has no value).
func (stateAPI) Delete(key string) error { return stateDelete(key) }

// Increment adds delta to the counter at key (a missing key counts as 0)
// and returns the new value. Counters are ASCII decimal text: GetString
// reads one as "42".
func (stateAPI) Increment(key string, delta int64) (int64, error) { return stateIncrement(key, delta) }

// Scan returns one page of the keys starting with prefix, in order, after
// `after` (exclusive; "" for the first page), at most limit of them (the
// host caps it too).
func (stateAPI) Scan(prefix, after string, limit uint32) (StatePage, error) {
	return stateScan(prefix, after, limit)
}

// Entries calls f on every entry under prefix, in key order, fetching a
// page at a time, until f returns false or an error occurs.
func (s stateAPI) Entries(prefix string, f func(StateEntry) bool) error {
	after := ""
	for {
		page, err := s.Scan(prefix, after, 256)
		if err != nil {
			return err
		}
		for _, e := range page.Entries {
			if !f(e) {
				return nil
			}
		}
		if !page.More {
			return nil
		}
		after = page.Next
	}
}
