//go:build !wasip1

package plugin

import (
	"errors"
	"testing"
)

func TestCallErrorsReadAsTheRustSDKsAndTakeTheirDisposition(t *testing.T) {
	timeout := &CallError{Kind: CallTimeout, Limit: 300}
	if timeout.Error() != "no answer within 300 ms" || timeout.Disposition() != Retryable {
		t.Fatalf("timeout: %q %v", timeout.Error(), timeout.Disposition())
	}
	service := &CallError{Kind: CallService, Service: &ServiceError{Code: "409", HasCode: true, Message: "out of stock"}}
	if service.Error() != "the service answered with error 409: out of stock" || service.Disposition() != Rejected {
		t.Fatalf("service: %q %v", service.Error(), service.Disposition())
	}
	wrapped := asHandlerError(errors.Join(errors.New("reserving"), service))
	if wrapped.Disposition != Rejected {
		t.Fatalf("a wrapped call error keeps its disposition: %v", wrapped.Disposition)
	}
}

func TestNativeBuildsAnswerFromTheResponderAndRecordEmits(t *testing.T) {
	if _, err := Client.Request("inventory", []byte("a"), nil); err == nil {
		t.Fatal("no responder: an error")
	}
	Client.Respond(func(destination string, payload []byte) (Reply, error) {
		return Reply{Payload: append([]byte(destination+":"), payload...)}, nil
	})
	reply, err := Client.Request("inventory", []byte("a"), &CallOptions{TimeoutMs: 5})
	if err != nil || string(reply.Payload) != "inventory:a" {
		t.Fatalf("reply %q, err %v", reply.Payload, err)
	}
	if err := Client.Emit("audit", []byte("x")); err != nil {
		t.Fatal(err)
	}
	emitted := Client.Emitted()
	if len(emitted) != 1 || emitted[0].Destination != "audit" || string(emitted[0].Payload) != "x" {
		t.Fatalf("emitted %v", emitted)
	}
}
