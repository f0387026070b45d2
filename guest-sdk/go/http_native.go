//go:build !wasip1

package plugin

// Native builds (go test): requests go to the responder set with
// HTTP.Respond (none: a Transport error) and are kept for HTTP.Requests.
var (
	nativeHTTPResponder func(HTTPRequest) (*HTTPResponse, error)
	nativeHTTPRequests  []HTTPRequest
)

// Respond answers every request of a native build with respond (native
// builds only). Its requests have Method set ("GET" for "").
func (httpAPI) Respond(respond func(HTTPRequest) (*HTTPResponse, error)) {
	nativeHTTPResponder = respond
}

// Requests returns the requests sent so far and forgets them (native
// builds only).
func (httpAPI) Requests() []HTTPRequest {
	out := nativeHTTPRequests
	nativeHTTPRequests = nil
	return out
}

func httpSend(req *HTTPRequest, url httpURL) (*HTTPResponse, *HTTPError) {
	sent := *req
	sent.Headers = append([]Header(nil), req.Headers...)
	sent.Body = append([]byte(nil), req.Body...)
	nativeHTTPRequests = append(nativeHTTPRequests, sent)
	if nativeHTTPResponder == nil {
		return nil, &HTTPError{Kind: HTTPTransport, Host: url.authority, Code: "no responder in this native build (see HTTP.Respond)"}
	}
	resp, err := nativeHTTPResponder(sent)
	if err != nil {
		if he, ok := asHTTPError(err); ok {
			return nil, he
		}
		return nil, &HTTPError{Kind: HTTPTransport, Host: url.authority, Code: err.Error()}
	}
	return resp, nil
}
