//go:build !wasip1

package plugin

// Native builds (go test): requests go to the responder set with
// Client.Respond (none: CallUnavailable), emits are kept for
// Client.Emitted.
var (
	nativeResponder func(destination string, payload []byte) (Reply, error)
	nativeEmitted   []Emitted
)

// Emitted is one emit recorded in a native build.
type Emitted struct {
	Destination string
	Payload     []byte
}

// Respond answers every request of a native build with respond (native
// builds only).
func (clientAPI) Respond(respond func(destination string, payload []byte) (Reply, error)) {
	nativeResponder = respond
}

// Emitted returns the emits recorded so far and forgets them (native
// builds only).
func (clientAPI) Emitted() []Emitted {
	out := nativeEmitted
	nativeEmitted = nil
	return out
}

func clientRequest(destination string, payload []byte, headers []Header, timeoutMs uint32) (Reply, error) {
	if nativeResponder == nil {
		return Reply{}, &CallError{Kind: CallUnavailable, Reason: "no responder in this native build (see Client.Respond)"}
	}
	return nativeResponder(destination, append([]byte(nil), payload...))
}

func clientEmit(destination string, payload []byte, headers []Header) error {
	nativeEmitted = append(nativeEmitted, Emitted{destination, append([]byte(nil), payload...)})
	return nil
}
