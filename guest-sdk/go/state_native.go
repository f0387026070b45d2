//go:build !wasip1

package plugin

import (
	"math"
	"sort"
	"strconv"
	"strings"
)

// Native builds (go test): the state is an in-memory map with the host's
// counter rules, emptied by State.Clear.
var nativeState = map[string][]byte{}

// Clear empties the native test state (native builds only).
func (stateAPI) Clear() { nativeState = map[string][]byte{} }

func stateGet(key string) ([]byte, bool, error) {
	v, ok := nativeState[key]
	return append([]byte(nil), v...), ok, nil
}

func stateSet(key string, value []byte) error {
	nativeState[key] = append([]byte(nil), value...)
	return nil
}

func stateDelete(key string) error {
	delete(nativeState, key)
	return nil
}

func stateIncrement(key string, delta int64) (int64, error) {
	var n int64
	if v, ok := nativeState[key]; ok {
		parsed, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return 0, &StateError{Kind: StateNotACounter}
		}
		n = parsed
	}
	if (delta > 0 && n > math.MaxInt64-delta) || (delta < 0 && n < math.MinInt64-delta) {
		return 0, &StateError{Kind: StateOverflow}
	}
	n += delta
	nativeState[key] = []byte(strconv.FormatInt(n, 10))
	return n, nil
}

func stateScan(prefix, after string, limit uint32) (StatePage, error) {
	limit = max(limit, 1)
	var keys []string
	for k := range nativeState {
		if strings.HasPrefix(k, prefix) && (after == "" || k > after) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var page StatePage
	for i, k := range keys {
		if uint32(i) == limit {
			page.Next, page.More = page.Entries[len(page.Entries)-1].Key, true
			break
		}
		page.Entries = append(page.Entries, StateEntry{Key: k, Value: append([]byte(nil), nativeState[k]...)})
	}
	return page, nil
}
