//go:build !wasip1

package plugin

import (
	"errors"
	"fmt"
	"testing"
)

func TestNativeStateCountsAndPages(t *testing.T) {
	State.Clear()
	if n, err := State.Increment("n", 2); n != 2 || err != nil {
		t.Fatalf("increment: %d %v", n, err)
	}
	if n, _ := State.Increment("n", -5); n != -3 {
		t.Fatalf("increment: %d", n)
	}
	if v, ok, _ := State.GetString("n"); !ok || v != "-3" {
		t.Fatalf("counters are decimal text: %q %v", v, ok)
	}
	_ = State.SetString("t", "text")
	_, err := State.Increment("t", 1)
	var se *StateError
	if !errors.As(err, &se) || se.Kind != StateNotACounter {
		t.Fatalf("not a counter: %v", err)
	}
	// Returned from Handle, even wrapped, it rejects the event.
	if he := asHandlerError(fmt.Errorf("counting: %w", err)); he.Disposition != Rejected {
		t.Fatalf("disposition %v", he.Disposition)
	}
	if he := asHandlerError(&StateError{Kind: StateUnavailable, Reason: "down"}); he.Disposition != Retryable || he.Message != "state unavailable: down" {
		t.Fatalf("unavailable: %+v", he)
	}
	for i := 0; i < 600; i++ {
		_ = State.SetString(fmt.Sprintf("sku:%04d", i), "x")
	}
	count, last := 0, ""
	if err := State.Entries("sku:", func(e StateEntry) bool {
		if e.Key <= last {
			t.Fatalf("out of order: %s after %s", e.Key, last)
		}
		count, last = count+1, e.Key
		return true
	}); err != nil || count != 600 {
		t.Fatalf("entries: %d %v", count, err)
	}
	_ = State.Delete("sku:0000")
	if _, ok, _ := State.Get("sku:0000"); ok {
		t.Fatal("deleted")
	}
}
