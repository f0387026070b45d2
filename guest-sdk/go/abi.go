//go:build wasip1

// The canonical ABI of sluice:plugin@0.2.0, written by hand: the exports of
// `handler` (init, handle, handle-batch, their post-return functions and
// cabi_realloc) and the `log` import, as `go:wasmexport`/`go:wasmimport`
// functions of a wasip1 reactor. `build.sh` embeds the WIT and wraps the
// module into a component with the WASI preview1 reactor adapter.
//
// Memory: the host writes arguments into an arena through cabi_realloc
// (see there: no Go allocation may happen outside an export call) and
// reads results from buffers this side allocates during the call. All are
// Go byte slices kept alive (Go's collector does not move memory) until
// the call's post-return, when the host is done reading.
//
// Layouts (wasm32, see the Component Model's CanonicalABI.md):
//   string, list<T>        8 B: ptr u32, len u32
//   tuple<string,string>  16 B
//   header                16 B: key @0, value @8
//   option<list|string>   12 B: tag u8 @0, ptr @4, len @8
//   event                 72 B (align 8): id @0, source @8, key @16,
//                         payload @28, headers @36, timestamp-ms u64 @48,
//                         attempt @56, reply-to @60
//   output                44 B: destination @0, key @12, payload @24,
//                         headers @32, reply u8 @40
//   result<list<output>, handler-error>  16 B: tag u8 @0; ok: list @4;
//                         err: disposition u8 @4, message @8

package plugin

import "unsafe"

var pinned [][]byte

func alloc(size, align uint32) uint32 {
	if size == 0 {
		return align
	}
	buf := make([]byte, size+align)
	pinned = append(pinned, buf)
	p := uint32(uintptr(unsafe.Pointer(&buf[0])))
	return (p + align - 1) &^ (align - 1)
}

func mem(ptr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), n)
}

func u8(a uint32) uint8        { return *(*uint8)(unsafe.Pointer(uintptr(a))) }
func u32(a uint32) uint32      { return *(*uint32)(unsafe.Pointer(uintptr(a))) }
func u64(a uint32) uint64      { return *(*uint64)(unsafe.Pointer(uintptr(a))) }
func put8(a uint32, v uint8)   { *(*uint8)(unsafe.Pointer(uintptr(a))) = v }
func put32(a, v uint32)        { *(*uint32)(unsafe.Pointer(uintptr(a))) = v }
func str(ptr, n uint32) string { return string(mem(ptr, n)) }
func byts(ptr, n uint32) []byte {
	out := make([]byte, n)
	copy(out, mem(ptr, n))
	return out
}

// lower copies bytes into a pinned buffer: (ptr, len).
func lower(b []byte) (uint32, uint32) {
	n := uint32(len(b))
	p := alloc(n, 1)
	if n > 0 {
		copy(mem(p, n), b)
	}
	return p, n
}

// The host calls cabi_realloc between calls, where the instance may not
// call imports; a Go heap allocation there can start a GC, which reads the
// clock through WASI and traps ("cannot leave component instance"). So
// arguments go into an arena allocated beforehand: a bump pointer, reset
// when the call's post-return runs. An argument list larger than what is
// left falls back to the heap once, and the arena is grown (inside the
// next export call, where allocating is safe) to fit it from then on.
var (
	arena     = make([]byte, 64<<10)
	arenaUsed uint32
	arenaPeak uint32
)

//go:wasmexport cabi_realloc
func cabiRealloc(old, oldSize, align, newSize uint32) uint32 {
	if newSize == 0 {
		return align
	}
	base := uint32(uintptr(unsafe.Pointer(&arena[0])))
	start := (base + arenaUsed + align - 1) &^ (align - 1)
	var p uint32
	if start+newSize <= base+uint32(len(arena)) {
		arenaUsed = start + newSize - base
		p = start
	} else {
		arenaPeak = max(arenaPeak, arenaUsed+newSize+align)
		p = alloc(newSize, align)
	}
	if old != 0 && oldSize > 0 {
		copy(mem(p, newSize), mem(old, min(oldSize, newSize)))
	}
	return p
}

// growArena runs at the start of each export call: if the last arguments
// did not fit, the next ones will. The old arena stays pinned until this
// call's post-return (this call's arguments may be in it).
func growArena() {
	if arenaPeak > uint32(len(arena)) {
		pinned = append(pinned, arena)
		arena = make([]byte, 2*arenaPeak)
		arenaPeak = 0
	}
}

// release runs at post-return: the host has read the results and is done
// with the arguments. No allocation here either.
func release() {
	pinned = nil
	arenaUsed = 0
}

func readPairs(ptr, n uint32) [][2]string {
	pairs := make([][2]string, n)
	for i := uint32(0); i < n; i++ {
		a := ptr + 16*i
		pairs[i] = [2]string{str(u32(a), u32(a+4)), str(u32(a+8), u32(a+12))}
	}
	return pairs
}

func readHeaders(ptr, n uint32) []Header {
	hs := make([]Header, n)
	for i := uint32(0); i < n; i++ {
		a := ptr + 16*i
		hs[i] = Header{Key: str(u32(a), u32(a+4)), Value: byts(u32(a+8), u32(a+12))}
	}
	return hs
}

func readEvent(a uint32) *Event {
	ev := &Event{
		ID:          str(u32(a), u32(a+4)),
		Source:      str(u32(a+8), u32(a+12)),
		Payload:     byts(u32(a+28), u32(a+32)),
		Headers:     readHeaders(u32(a+36), u32(a+40)),
		TimestampMs: u64(a + 48),
		Attempt:     u32(a + 56),
	}
	if u8(a+16) != 0 {
		ev.Key = byts(u32(a+20), u32(a+24))
	}
	if u8(a+60) != 0 {
		rt := str(u32(a+64), u32(a+68))
		ev.ReplyTo = &rt
	}
	return ev
}

func writeOption(a uint32, present bool, b []byte) {
	if !present {
		put8(a, 0)
		return
	}
	put8(a, 1)
	p, n := lower(b)
	put32(a+4, p)
	put32(a+8, n)
}

// lowerPairList lowers n key/value byte pairs as a list of 16-byte records
// (key ptr @0, len @4, value ptr @8, len @12): the layout of a header, a
// log field and a metric label alike.
func lowerPairList(n int, pair func(i int) (key, value []byte)) (uint32, uint32) {
	base := alloc(16*uint32(n), 4)
	for i := 0; i < n; i++ {
		a := base + 16*uint32(i)
		key, value := pair(i)
		kp, kl := lower(key)
		vp, vl := lower(value)
		put32(a, kp)
		put32(a+4, kl)
		put32(a+8, vp)
		put32(a+12, vl)
	}
	return base, uint32(n)
}

// lowerHeaders lowers a list<header>.
func lowerHeaders(headers []Header) (uint32, uint32) {
	return lowerPairList(len(headers), func(i int) ([]byte, []byte) { return []byte(headers[i].Key), headers[i].Value })
}

// lowerPairs lowers a list<tuple<string, string>>.
func lowerPairs(pairs [][2]string) (uint32, uint32) {
	return lowerPairList(len(pairs), func(i int) ([]byte, []byte) { return []byte(pairs[i][0]), []byte(pairs[i][1]) })
}

// lowerStrings writes a list<string>: 8 B per element (ptr, len).
func lowerStrings(list []string) (uint32, uint32) {
	n := uint32(len(list))
	base := alloc(8*n, 4)
	for i, s := range list {
		p, l := lower([]byte(s))
		put32(base+8*uint32(i), p)
		put32(base+8*uint32(i)+4, l)
	}
	return base, n
}

func writeOutputs(outs []Output) (uint32, uint32) {
	n := uint32(len(outs))
	base := alloc(44*n, 4)
	for i, o := range outs {
		a := base + 44*uint32(i)
		if o.Destination != nil {
			writeOption(a, true, []byte(*o.Destination))
		} else {
			writeOption(a, false, nil)
		}
		writeOption(a+12, o.Key != nil, o.Key)
		p, l := lower(o.Payload)
		put32(a+24, p)
		put32(a+28, l)
		hb, hl := lowerHeaders(o.Headers)
		put32(a+32, hb)
		put32(a+36, hl)
		if o.Reply {
			put8(a+40, 1)
		} else {
			put8(a+40, 0)
		}
	}
	return base, n
}

// writeResult lowers one handle result into the 16-byte slot at a.
func writeResult(a uint32, outs []Output, err error) {
	if err == nil {
		put8(a, 0)
		p, n := writeOutputs(outs)
		put32(a+4, p)
		put32(a+8, n)
		return
	}
	he := asHandlerError(err)
	put8(a, 1)
	put8(a+4, uint8(he.Disposition))
	p, n := lower([]byte(he.Message))
	put32(a+8, p)
	put32(a+12, n)
}

//go:wasmexport sluice:plugin/handler@0.2.0#init
func wasmInit(ptr, n uint32) uint32 {
	growArena()
	ret := alloc(12, 4)
	if err := initPlugin(readPairs(ptr, n)); err != nil {
		put8(ret, 1)
		p, l := lower([]byte(err.Error()))
		put32(ret+4, p)
		put32(ret+8, l)
	} else {
		put8(ret, 0)
	}
	return ret
}

//go:wasmexport sluice:plugin/handler@0.2.0#handle
func wasmHandle(idPtr, idLen, srcPtr, srcLen, keyTag, keyPtr, keyLen, payPtr, payLen, hdrPtr, hdrLen uint32,
	ts uint64, attempt, rtTag, rtPtr, rtLen uint32) uint32 {
	growArena()
	ev := &Event{
		ID:          str(idPtr, idLen),
		Source:      str(srcPtr, srcLen),
		Payload:     byts(payPtr, payLen),
		Headers:     readHeaders(hdrPtr, hdrLen),
		TimestampMs: ts,
		Attempt:     attempt,
	}
	if keyTag != 0 {
		ev.Key = byts(keyPtr, keyLen)
	}
	if rtTag != 0 {
		rt := str(rtPtr, rtLen)
		ev.ReplyTo = &rt
	}
	ret := alloc(16, 4)
	outs, err := handleOne(ev)
	writeResult(ret, outs, err)
	return ret
}

//go:wasmexport sluice:plugin/handler@0.2.0#handle-batch
func wasmHandleBatch(ptr, n uint32) uint32 {
	growArena()
	results := alloc(16*n, 4)
	for i := uint32(0); i < n; i++ {
		outs, err := handleOne(readEvent(ptr + 72*i))
		writeResult(results+16*i, outs, err)
	}
	ret := alloc(8, 4)
	put32(ret, results)
	put32(ret+4, n)
	return ret
}

// The host has read the results: every buffer of the call can go.

// manifest.accepts: () -> list<string>, returned through a pointer to
// (ptr, len) as the handler's results are.
//
//go:wasmexport sluice:plugin/manifest@0.2.0#accepts
func wasmAccepts() uint32 {
	growArena()
	ret := alloc(8, 4)
	p, l := lowerStrings(accepts())
	put32(ret, p)
	put32(ret+4, l)
	return ret
}

//go:wasmexport cabi_post_sluice:plugin/manifest@0.2.0#accepts
func postAccepts(uint32) { release() }

//go:wasmexport cabi_post_sluice:plugin/handler@0.2.0#init
func postInit(uint32) { release() }

//go:wasmexport cabi_post_sluice:plugin/handler@0.2.0#handle
func postHandle(uint32) { release() }

//go:wasmexport cabi_post_sluice:plugin/handler@0.2.0#handle-batch
func postHandleBatch(uint32) { release() }

//go:wasmimport sluice:plugin/log@0.2.0 log
func hostLog(level, msgPtr, msgLen, fieldsPtr, fieldsLen uint32)

func logImpl(level Level, message string, fields [][2]string) {
	mp, ml := lower([]byte(message))
	fp, fl := lowerPairs(fields)
	hostLog(uint32(level), mp, ml, fp, fl)
}
