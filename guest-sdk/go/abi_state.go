//go:build wasip1

// The `state` import of sluice:plugin@0.2.0, by hand like abi.go (see there
// for the memory rules). Each function lowers its arguments, passes a
// return area (every result here is too large for one flat value) and
// reads the result from it:
//
//   state-error (variant, 12 B, align 4): case u8 @0, payload @4: the
//                limit (u32) or the `unavailable` reason (string)
//   get        16 B: tag u8 @0; ok: option tag @4, ptr @8, len @12; err @4
//   set/delete 16 B: tag u8 @0; err @4
//   increment  24 B (align 8): tag u8 @0; ok: s64 @8; err @8
//   scan       24 B: tag u8 @0; ok: page (entries ptr @4, len @8,
//                next option<string> tag @12, ptr @16, len @20); err @4
//   entry      16 B: key ptr @0, len @4, value ptr @8, len @12
//
// The host writes a value or a page into this module's memory through
// cabi_realloc while the call is under way, and that realloc must not
// allocate from Go's heap: the allocator may call into WASI (a collection
// reads the clock), which the component model forbids during a realloc
// (trap: "cannot leave component instance"; switching the collector off
// with debug.SetGCPercent(-1) was tried and still traps). So before Get
// and Scan the arena is given room for stateReserve bytes (the default
// `max_value_bytes`, 1 MiB, plus 64 KiB), here where allocating is safe. A
// value or a page larger than that still traps: see docs/plugins/go.md.

package plugin

import "unsafe"

//go:wasmimport sluice:plugin/state@0.2.0 get
func hostStateGet(keyPtr, keyLen, ret uint32)

//go:wasmimport sluice:plugin/state@0.2.0 set
func hostStateSet(keyPtr, keyLen, valuePtr, valueLen, ret uint32)

//go:wasmimport sluice:plugin/state@0.2.0 delete
func hostStateDelete(keyPtr, keyLen, ret uint32)

//go:wasmimport sluice:plugin/state@0.2.0 increment
func hostStateIncrement(keyPtr, keyLen uint32, delta int64, ret uint32)

//go:wasmimport sluice:plugin/state@0.2.0 scan
func hostStateScan(prefixPtr, prefixLen, afterTag, afterPtr, afterLen, limit, ret uint32)

// stateReserve is the arena room left before a call that returns bytes.
const stateReserve = 1<<20 + 64<<10

// reserveArena makes sure the arena has n free bytes, replacing it with one
// twice that size if not (the old one stays pinned until post-return: this
// call's arguments may be in it).
func reserveArena(n uint32) {
	if uint32(len(arena))-arenaUsed >= n {
		return
	}
	pinned = append(pinned, arena)
	arena = make([]byte, 2*n)
	arenaUsed = 0
}

func i64(a uint32) int64 { return *(*int64)(unsafe.Pointer(uintptr(a))) }

// readStateError reads the variant at a.
func readStateError(a uint32) *StateError {
	e := &StateError{Kind: StateErrorKind(u8(a))}
	switch e.Kind {
	case StateKeyTooLong, StateValueTooLarge, StateTooManyWrites, StateTooManyReads:
		e.Limit = u32(a + 4)
	case StateUnavailable:
		e.Reason = str(u32(a+4), u32(a+8))
	}
	return e
}

func stateGet(key string) ([]byte, bool, error) {
	kp, kl := lower([]byte(key))
	ret := alloc(16, 4)
	reserveArena(stateReserve)
	hostStateGet(kp, kl, ret)
	if u8(ret) != 0 {
		return nil, false, readStateError(ret + 4)
	}
	if u8(ret+4) == 0 {
		return nil, false, nil
	}
	return byts(u32(ret+8), u32(ret+12)), true, nil
}

func stateSet(key string, value []byte) error {
	kp, kl := lower([]byte(key))
	vp, vl := lower(value)
	ret := alloc(16, 4)
	hostStateSet(kp, kl, vp, vl, ret)
	if u8(ret) != 0 {
		return readStateError(ret + 4)
	}
	return nil
}

func stateDelete(key string) error {
	kp, kl := lower([]byte(key))
	ret := alloc(16, 4)
	hostStateDelete(kp, kl, ret)
	if u8(ret) != 0 {
		return readStateError(ret + 4)
	}
	return nil
}

func stateIncrement(key string, delta int64) (int64, error) {
	kp, kl := lower([]byte(key))
	ret := alloc(24, 8)
	hostStateIncrement(kp, kl, delta, ret)
	if u8(ret) != 0 {
		return 0, readStateError(ret + 8)
	}
	return i64(ret + 8), nil
}

func stateScan(prefix, after string, limit uint32) (StatePage, error) {
	pp, pl := lower([]byte(prefix))
	var at, ap, al uint32
	if after != "" {
		at = 1
		ap, al = lower([]byte(after))
	}
	ret := alloc(24, 4)
	reserveArena(stateReserve)
	hostStateScan(pp, pl, at, ap, al, limit, ret)
	if u8(ret) != 0 {
		return StatePage{}, readStateError(ret + 4)
	}
	base, n := u32(ret+4), u32(ret+8)
	page := StatePage{Entries: make([]StateEntry, n)}
	for i := uint32(0); i < n; i++ {
		a := base + 16*i
		page.Entries[i] = StateEntry{Key: str(u32(a), u32(a+4)), Value: byts(u32(a+8), u32(a+12))}
	}
	if u8(ret+12) != 0 {
		page.Next, page.More = str(u32(ret+16), u32(ret+20)), true
	}
	return page, nil
}
