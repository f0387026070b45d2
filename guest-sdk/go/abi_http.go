//go:build wasip1

// wasi:http/outgoing-handler@0.2.12 (and the wasi:http/types, wasi:io
// functions a request needs), by hand like abi.go (see there for the memory
// rules, and abi_state.go for why the arena is given room before a call
// that returns bytes). The call sequence is the Rust SDK's (http.rs,
// imp::send). Resources are i32 handles; every handle this side owns is
// dropped (`[resource-drop]…`, children before their parents) or handed
// on (outgoing-request.new takes the fields, handle takes the request and
// its options, finish takes a body), so a call leaks nothing.
//
// Return areas (wasm32; error-code has align 8, 32 B: case u8 @0,
// payload @8):
//
//   result<own<T>>                 8 B: tag @0, handle @4
//   result<_, header-error>        2 B: tag @0, case @1
//   result<own<T>, error-code>    40 B: tag @0, handle or error-code @8
//   result<_, error-code>         40 B: tag @0, error-code @8
//   option<error-code>            40 B: tag @0, error-code @8
//   future-incoming-response.get  56 B: option tag @0, result tag @8
//                                 (err: taken twice), result tag @16,
//                                 response handle or error-code @24
//   result<list<u8>, stream-error> 12 B: tag @0, list @4 (ptr, len);
//                                 err: case @4 (0: last-operation-failed
//                                 with an error handle @8, 1: closed)
//   fields.entries                 8 B: list of 16 B (name, value) pairs

package plugin

import (
	"fmt"
	"strconv"
	"strings"
	"unsafe"
)

//go:wasmimport wasi:http/types@0.2.12 [constructor]fields
func wasiFieldsNew() uint32

//go:wasmimport wasi:http/types@0.2.12 [method]fields.append
func wasiFieldsAppend(self, namePtr, nameLen, valuePtr, valueLen, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]fields.entries
func wasiFieldsEntries(self, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]fields
func wasiFieldsDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [constructor]outgoing-request
func wasiOutgoingRequestNew(headers uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-request.set-method
func wasiSetMethod(self, method, otherPtr, otherLen uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-request.set-scheme
func wasiSetScheme(self, someTag, scheme, otherPtr, otherLen uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-request.set-authority
func wasiSetAuthority(self, someTag, ptr, n uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-request.set-path-with-query
func wasiSetPathWithQuery(self, someTag, ptr, n uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-request.body
func wasiOutgoingRequestBody(self, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]outgoing-request
func wasiOutgoingRequestDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [constructor]request-options
func wasiRequestOptionsNew() uint32

//go:wasmimport wasi:http/types@0.2.12 [method]request-options.set-connect-timeout
func wasiSetConnectTimeout(self, someTag uint32, nanos uint64) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]request-options.set-first-byte-timeout
func wasiSetFirstByteTimeout(self, someTag uint32, nanos uint64) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]outgoing-body.write
func wasiOutgoingBodyWrite(self, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [static]outgoing-body.finish
func wasiOutgoingBodyFinish(this, trailersTag, trailers, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]outgoing-body
func wasiOutgoingBodyDrop(self uint32)

//go:wasmimport wasi:http/outgoing-handler@0.2.12 handle
func wasiHandle(request, optionsTag, options, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]future-incoming-response.subscribe
func wasiFutureResponseSubscribe(self uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]future-incoming-response.get
func wasiFutureResponseGet(self, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]future-incoming-response
func wasiFutureResponseDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-response.status
func wasiResponseStatus(self uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-response.headers
func wasiResponseHeaders(self uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-response.consume
func wasiResponseConsume(self, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]incoming-response
func wasiResponseDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [method]incoming-body.stream
func wasiIncomingBodyStream(self, ret uint32)

//go:wasmimport wasi:http/types@0.2.12 [static]incoming-body.finish
func wasiIncomingBodyFinish(this uint32) uint32

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]incoming-body
func wasiIncomingBodyDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 [resource-drop]future-trailers
func wasiFutureTrailersDrop(self uint32)

//go:wasmimport wasi:http/types@0.2.12 http-error-code
func wasiHTTPErrorCode(err, ret uint32)

//go:wasmimport wasi:io/poll@0.2.12 [method]pollable.block
func wasiPollableBlock(self uint32)

//go:wasmimport wasi:io/poll@0.2.12 [resource-drop]pollable
func wasiPollableDrop(self uint32)

//go:wasmimport wasi:io/streams@0.2.12 [method]input-stream.blocking-read
func wasiBlockingRead(self uint32, n uint64, ret uint32)

//go:wasmimport wasi:io/streams@0.2.12 [resource-drop]input-stream
func wasiInputStreamDrop(self uint32)

//go:wasmimport wasi:io/streams@0.2.12 [method]output-stream.blocking-write-and-flush
func wasiBlockingWriteAndFlush(self, ptr, n, ret uint32)

//go:wasmimport wasi:io/streams@0.2.12 [resource-drop]output-stream
func wasiOutputStreamDrop(self uint32)

//go:wasmimport wasi:io/error@0.2.12 [method]error.to-debug-string
func wasiErrorDebugString(self, ret uint32)

//go:wasmimport wasi:io/error@0.2.12 [resource-drop]error
func wasiErrorDrop(self uint32)

const (
	// httpWriteChunk: the most blocking-write-and-flush takes at once.
	httpWriteChunk = 4096
	// httpReadChunk: the most one blocking-read asks for.
	httpReadChunk = 64 << 10
	// httpSmallReserve: arena room before a call that may return an
	// error-code's or an io error's text.
	httpSmallReserve = 16 << 10
)

// wasiMethods are the `method` cases before `other(string)`.
var wasiMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// ptrOf is the address of b's first byte (b is alive, and Go's collector
// does not move memory, for the length of the import call).
func ptrOf(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(&b[0]))) }

// scratchRead runs an import that returns up to `room` bytes through
// cabi_realloc, then frees the arena room it used: read copies what it
// needs out before returning.
func scratchRead(room uint32, call func(), read func()) {
	reserveArena(room)
	mark := arenaUsed
	call()
	read()
	arenaUsed = mark
}

func httpSend(req *HTTPRequest, url httpURL) (*HTTPResponse, *HTTPError) {
	host := url.authority
	headers := wasiFieldsNew()
	appendHeader := func(name string, value []byte) bool {
		np, nl := lower([]byte(name))
		vp, vl := lower(value)
		ret := alloc(2, 1)
		wasiFieldsAppend(headers, np, nl, vp, vl, ret)
		return u8(ret) == 0
	}
	hasLength := false
	for _, h := range req.Headers {
		hasLength = hasLength || strings.EqualFold(h.Key, "content-length")
		if !appendHeader(h.Key, h.Value) {
			wasiFieldsDrop(headers)
			return nil, &HTTPError{Kind: HTTPInvalidHeader, Code: h.Key}
		}
	}
	if len(req.Body) > 0 && !hasLength && !appendHeader("content-length", []byte(strconv.Itoa(len(req.Body)))) {
		wasiFieldsDrop(headers)
		return nil, &HTTPError{Kind: HTTPInvalidHeader, Code: "content-length"}
	}
	request := wasiOutgoingRequestNew(headers)
	if !setRequestLine(request, req.Method, url) {
		wasiOutgoingRequestDrop(request)
		return nil, &HTTPError{Kind: HTTPInvalidURL, Code: req.URL}
	}
	var body uint32
	hasBody := len(req.Body) > 0
	if hasBody {
		ret := alloc(8, 4)
		wasiOutgoingRequestBody(request, ret)
		if u8(ret) != 0 {
			wasiOutgoingRequestDrop(request)
			return nil, &HTTPError{Kind: HTTPBody, Code: "cannot open the request body"}
		}
		body = u32(ret + 4)
	}
	var optionsTag, options uint32
	if req.Timeout > 0 {
		options, optionsTag = wasiRequestOptionsNew(), 1
		wasiSetConnectTimeout(options, 1, uint64(req.Timeout))
		wasiSetFirstByteTimeout(options, 1, uint64(req.Timeout))
	}
	ret := alloc(40, 8)
	reserveArena(httpSmallReserve)
	wasiHandle(request, optionsTag, options, ret) // takes request and options
	if u8(ret) != 0 {
		if hasBody {
			wasiOutgoingBodyDrop(body)
		}
		return nil, httpErrorFromCode(ret+8, host)
	}
	future := u32(ret + 8)
	defer wasiFutureResponseDrop(future)
	if hasBody {
		if err := writeBody(body, req.Body, host); err != nil {
			wasiOutgoingBodyDrop(body)
			return nil, err
		}
		ret := alloc(40, 8)
		reserveArena(httpSmallReserve)
		wasiOutgoingBodyFinish(body, 0, 0, ret) // takes body
		if u8(ret) != 0 {
			return nil, httpErrorFromCode(ret+8, host)
		}
	}
	got := alloc(56, 8)
	for {
		reserveArena(httpSmallReserve)
		wasiFutureResponseGet(future, got)
		if u8(got) != 0 {
			break
		}
		pollable := wasiFutureResponseSubscribe(future)
		wasiPollableBlock(pollable)
		wasiPollableDrop(pollable)
	}
	if u8(got+8) != 0 {
		return nil, &HTTPError{Kind: HTTPTransport, Host: host, Code: "the response was taken twice"}
	}
	if u8(got+16) != 0 {
		return nil, httpErrorFromCode(got+24, host)
	}
	response := u32(got + 24)
	defer wasiResponseDrop(response)
	resp := &HTTPResponse{Status: int(wasiResponseStatus(response))}
	fields := wasiResponseHeaders(response)
	resp.Headers = fieldsEntries(fields)
	wasiFieldsDrop(fields)
	ret = alloc(8, 4)
	wasiResponseConsume(response, ret)
	if u8(ret) != 0 {
		return nil, &HTTPError{Kind: HTTPBody, Code: "cannot open the response body"}
	}
	incoming := u32(ret + 4)
	b, err := readBody(incoming, host)
	if err != nil {
		wasiIncomingBodyDrop(incoming)
		return nil, err
	}
	wasiFutureTrailersDrop(wasiIncomingBodyFinish(incoming))
	resp.Body = b
	return resp, nil
}

// setRequestLine sets the method, scheme, authority and path; false if
// the host refuses one.
func setRequestLine(request uint32, method string, url httpURL) bool {
	tag := uint32(len(wasiMethods))
	for i, m := range wasiMethods {
		if m == method {
			tag = uint32(i)
		}
	}
	var mp, ml uint32
	if tag == uint32(len(wasiMethods)) {
		mp, ml = lower([]byte(method))
	}
	scheme := uint32(0) // HTTP
	if url.https {
		scheme = 1
	}
	ap, al := lower([]byte(url.authority))
	pp, pl := lower([]byte(url.pathWithQuery))
	return wasiSetMethod(request, tag, mp, ml) == 0 &&
		wasiSetScheme(request, 1, scheme, 0, 0) == 0 &&
		wasiSetAuthority(request, 1, ap, al) == 0 &&
		wasiSetPathWithQuery(request, 1, pp, pl) == 0
}

// fieldsEntries reads the (name, value) pairs of a fields resource.
func fieldsEntries(fields uint32) []Header {
	var headers []Header
	ret := alloc(8, 4)
	scratchRead(stateReserve, func() { wasiFieldsEntries(fields, ret) }, func() {
		headers = readHeaders(u32(ret), u32(ret+4))
	})
	return headers
}

func writeBody(body uint32, bytes []byte, host string) *HTTPError {
	ret := alloc(8, 4)
	wasiOutgoingBodyWrite(body, ret)
	if u8(ret) != 0 {
		return &HTTPError{Kind: HTTPBody, Code: "cannot write the request body"}
	}
	stream := u32(ret + 4)
	defer wasiOutputStreamDrop(stream) // before finish: a child of the body
	for start := 0; start < len(bytes); start += httpWriteChunk {
		chunk := bytes[start:min(start+httpWriteChunk, len(bytes))]
		ret := alloc(12, 4)
		wasiBlockingWriteAndFlush(stream, ptrOf(chunk), uint32(len(chunk)), ret)
		if u8(ret) != 0 {
			return streamError(ret+4, host)
		}
	}
	return nil
}

func readBody(incoming uint32, host string) ([]byte, *HTTPError) {
	ret := alloc(12, 4)
	wasiIncomingBodyStream(incoming, ret)
	if u8(ret) != 0 {
		return nil, &HTTPError{Kind: HTTPBody, Code: "cannot read the response body"}
	}
	stream := u32(ret + 4)
	defer wasiInputStreamDrop(stream) // before the body: a child of it
	var body []byte
	for {
		scratchRead(httpReadChunk+64, func() { wasiBlockingRead(stream, httpReadChunk, ret) }, func() {
			if u8(ret) == 0 {
				body = append(body, mem(u32(ret+4), u32(ret+8))...)
			}
		})
		if u8(ret) == 0 {
			continue
		}
		if u8(ret+4) == 1 { // closed: the end of the body
			return body, nil
		}
		return nil, streamError(ret+4, host)
	}
}

// streamError reads the stream-error at a (and drops its io error).
func streamError(a uint32, host string) *HTTPError {
	if u8(a) == 1 {
		return &HTTPError{Kind: HTTPBody, Code: "the stream closed early"}
	}
	ioErr := u32(a + 4)
	defer wasiErrorDrop(ioErr)
	code := alloc(40, 8)
	reserveArena(httpSmallReserve)
	wasiHTTPErrorCode(ioErr, code)
	if u8(code) != 0 {
		return httpErrorFromCode(code+8, host)
	}
	text := alloc(8, 4)
	reserveArena(httpSmallReserve)
	wasiErrorDebugString(ioErr, text)
	return httpBodyError(str(u32(text), u32(text+4)), host)
}

// wasiErrorCodes are the `error-code` case names as the Rust SDK prints
// them (Debug), so a Transport error reads the same in every language.
var wasiErrorCodes = []string{
	"DnsTimeout", "DnsError", "DestinationNotFound", "DestinationUnavailable",
	"DestinationIpProhibited", "DestinationIpUnroutable", "ConnectionRefused",
	"ConnectionTerminated", "ConnectionTimeout", "ConnectionReadTimeout",
	"ConnectionWriteTimeout", "ConnectionLimitReached", "TlsProtocolError",
	"TlsCertificateError", "TlsAlertReceived", "HttpRequestDenied",
	"HttpRequestLengthRequired", "HttpRequestBodySize", "HttpRequestMethodInvalid",
	"HttpRequestUriInvalid", "HttpRequestUriTooLong", "HttpRequestHeaderSectionSize",
	"HttpRequestHeaderSize", "HttpRequestTrailerSectionSize", "HttpRequestTrailerSize",
	"HttpResponseIncomplete", "HttpResponseHeaderSectionSize", "HttpResponseHeaderSize",
	"HttpResponseBodySize", "HttpResponseTrailerSectionSize", "HttpResponseTrailerSize",
	"HttpResponseTransferCoding", "HttpResponseContentCoding", "HttpResponseTimeout",
	"HttpUpgradeFailed", "HttpProtocolError", "LoopDetected", "ConfigurationError",
	"InternalError",
}

const (
	codeConnectionTimeout     = 8
	codeConnectionReadTimeout = 9
	codeHTTPRequestDenied     = 15
	codeHTTPResponseBodySize  = 28
	codeHTTPResponseTimeout   = 33
	codeInternalError         = 38
)

// httpErrorFromCode reads the error-code at a (the Rust SDK's from_code).
func httpErrorFromCode(a uint32, host string) *HTTPError {
	switch c := u8(a); c {
	case codeHTTPRequestDenied:
		return &HTTPError{Kind: HTTPDenied, Host: host}
	case codeConnectionTimeout, codeConnectionReadTimeout, codeHTTPResponseTimeout:
		return &HTTPError{Kind: HTTPTimeout, Host: host}
	case codeHTTPResponseBodySize:
		e := &HTTPError{Kind: HTTPTooLarge}
		if u8(a+8) != 0 {
			e.Limit = u64(a + 16)
		}
		return e
	case codeInternalError:
		code := "InternalError(None)"
		if u8(a+8) != 0 {
			text := str(u32(a+12), u32(a+16))
			// A denial with its reason (`plugin test --http-replies` with no
			// rule for the request): see host/src/runtime/http/send.rs.
			if reason, ok := strings.CutPrefix(text, deniedPrefix); ok {
				return &HTTPError{Kind: HTTPDenied, Host: host, Code: reason}
			}
			code = fmt.Sprintf("InternalError(Some(%q))", text)
		}
		return &HTTPError{Kind: HTTPTransport, Host: host, Code: code}
	default:
		code := fmt.Sprintf("error-code %d", c)
		if int(c) < len(wasiErrorCodes) {
			code = wasiErrorCodes[c]
		}
		return &HTTPError{Kind: HTTPTransport, Host: host, Code: code}
	}
}
