//go:build wasip1

// The `client` import of sluice:plugin@0.2.0, by hand like abi.go (see
// there for the memory rules, and abi_state.go for why the arena is given
// room before a call that returns bytes):
//
//   header      16 B: key ptr @0, len @4, value ptr @8, len @12
//   request     flat: destination, payload, headers (ptr, len each),
//               option<u32> timeout (tag, value), return area
//   result      40 B (align 4): tag u8 @0; ok: reply payload ptr @4, len
//               @8, headers ptr @12, len @16; err: call-error @4
//   call-error  case u8 @0, payload @4: a string (ptr @4, len @8), a u32
//               @4, or service-error: code option<string> (tag @4, ptr @8,
//               len @12), message (ptr @16, len @20), payload (ptr @24,
//               len @28)

package plugin

//go:wasmimport sluice:plugin/client@0.2.0 request
func hostClientRequest(destPtr, destLen, payPtr, payLen, hdrPtr, hdrLen, timeoutTag, timeout, ret uint32)

//go:wasmimport sluice:plugin/client@0.2.0 emit
func hostClientEmit(destPtr, destLen, payPtr, payLen, hdrPtr, hdrLen, ret uint32)

// readCallError reads the variant at a.
func readCallError(a uint32) *CallError {
	e := &CallError{Kind: CallErrorKind(u8(a))}
	switch e.Kind {
	case CallUnknownDestination, CallNotAllowed, CallUnavailable:
		e.Reason = str(u32(a+4), u32(a+8))
	case CallTimeout, CallTooManyCalls, CallTooLarge:
		e.Limit = u32(a + 4)
	case CallService:
		s := &ServiceError{Message: str(u32(a+16), u32(a+20)), Payload: byts(u32(a+24), u32(a+28))}
		if u8(a+4) != 0 {
			s.Code, s.HasCode = str(u32(a+8), u32(a+12)), true
		}
		e.Service = s
	}
	return e
}

func clientRequest(destination string, payload []byte, headers []Header, timeoutMs uint32) (Reply, error) {
	dp, dl := lower([]byte(destination))
	pp, pl := lower(payload)
	hp, hl := lowerHeaders(headers)
	var tag uint32
	if timeoutMs > 0 {
		tag = 1
	}
	ret := alloc(40, 4)
	reserveArena(stateReserve)
	hostClientRequest(dp, dl, pp, pl, hp, hl, tag, timeoutMs, ret)
	if u8(ret) != 0 {
		return Reply{}, readCallError(ret + 4)
	}
	return Reply{Payload: byts(u32(ret+4), u32(ret+8)), Headers: readHeaders(u32(ret+12), u32(ret+16))}, nil
}

func clientEmit(destination string, payload []byte, headers []Header) error {
	dp, dl := lower([]byte(destination))
	pp, pl := lower(payload)
	hp, hl := lowerHeaders(headers)
	ret := alloc(40, 4)
	reserveArena(stateReserve)
	hostClientEmit(dp, dl, pp, pl, hp, hl, ret)
	if u8(ret) != 0 {
		return readCallError(ret + 4)
	}
	return nil
}
