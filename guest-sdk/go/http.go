package plugin

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// HTTP sends HTTP requests through the standard wasi:http/outgoing-handler,
// to the destinations the pipeline allows in `[pipelines.<name>.plugin.http]
// allow = [...]`. A capability: a plugin that never calls HTTP does not
// import wasi:http (Go's linker drops the unused imports), so it needs no
// grant.
//
// A call blocks until the whole response is read. The host adds an
// `Idempotency-Key: <event id>:<n>` (the same on every retry of the event)
// and the event's `traceparent` unless the request sets them, and lists
// every request in the event's dead letter. Plain `http://` and `https://`
// (the host's web PKI roots).
//
// Every method returns a *HTTPError when no response came; returned from
// Handle as is (or wrapped), it fails the event as the Rust SDK's `?` does:
// a bad URL or header and a destination the pipeline does not allow reject
// the event, everything else (a timeout, a refused connection, a cut-off
// body) is retryable. A response is no error, whatever its status:
//
//	resp, err := plugin.HTTP.Post(url, "application/json", ev.Payload)
//	if err != nil {
//		return nil, err
//	}
//	if resp.Status >= 400 && resp.Status < 500 {
//		return nil, plugin.Reject("%s answered %d", url, resp.Status)
//	}
//
// In native builds (go test) requests go to the function given to
// HTTP.Respond and are kept for HTTP.Requests.
var HTTP httpAPI

type httpAPI struct{}

// HTTPRequest is one request.
type HTTPRequest struct {
	// Method is "GET", "POST"…; "" is GET.
	Method string
	// URL is http(s)://host[:port][/path][?query].
	URL string
	// Headers to send (a name may repeat). Set `idempotency-key` or
	// `traceparent` to replace the ones the host adds.
	Headers []Header
	// Body is sent with a `content-length`; nil or empty: no body.
	Body []byte
	// Timeout bounds the connection and the wait for the response head;
	// 0: the pipeline's `plugin.http.timeout` (which applies anyway).
	Timeout time.Duration
}

// HTTPResponse is a response, its body read whole.
type HTTPResponse struct {
	Status int
	// Headers as received: names lowercase, a name may repeat.
	Headers []Header
	Body    []byte
}

// Header returns the first value of header name (case-insensitive), as
// text, and whether there is one.
func (r *HTTPResponse) Header(name string) (string, bool) {
	for _, h := range r.Headers {
		if strings.EqualFold(h.Key, name) {
			return string(h.Value), true
		}
	}
	return "", false
}

// HTTPErrorKind says why a request got no response (the Rust SDK's
// http::Error cases).
type HTTPErrorKind uint8

const (
	// HTTPInvalidURL: not an http:// or https:// URL with a host (Code is
	// the URL).
	HTTPInvalidURL HTTPErrorKind = iota
	// HTTPInvalidHeader: a header name or value the host refuses (Code is
	// the name).
	HTTPInvalidHeader
	// HTTPDenied: the host refused the request: the pipeline does not
	// allow this destination (`plugin.http.allow`), or `plugin test
	// --http-replies` has no rule for it (Code is then the reason).
	HTTPDenied
	// HTTPTimeout: no response within the timeout.
	HTTPTimeout
	// HTTPTooLarge: the response body passed `plugin.http.max_response_bytes`
	// (Limit, 0 when the host did not say).
	HTTPTooLarge
	// HTTPTransport: connection refused, TLS or DNS failure, a broken
	// response… (Code is the wasi:http error code).
	HTTPTransport
	// HTTPBody: the body could not be read (Code says why).
	HTTPBody
)

// HTTPError is a request that got no response.
type HTTPError struct {
	Kind HTTPErrorKind
	// Host is `host:port` as requested (Denied, Timeout, Transport).
	Host string
	// Code is the wasi:http error code (Transport), the host's reason
	// (Denied; empty: not in plugin.http.allow), the URL (InvalidURL),
	// the header name (InvalidHeader) or the reason (Body).
	Code string
	// Limit is the body cap in bytes (TooLarge; 0: not given).
	Limit uint64
}

// Error is the Rust SDK's wording (http::Error's Display), so dead letters
// read the same in every language.
func (e *HTTPError) Error() string {
	switch e.Kind {
	case HTTPInvalidURL:
		return "not an http(s) URL: " + e.Code
	case HTTPInvalidHeader:
		return fmt.Sprintf("invalid header `%s`", e.Code)
	case HTTPDenied:
		if e.Code != "" {
			return fmt.Sprintf("HTTP request to %s denied: %s", e.Host, e.Code)
		}
		return fmt.Sprintf("HTTP request to %s denied: not in the pipeline's plugin.http.allow", e.Host)
	case HTTPTimeout:
		return fmt.Sprintf("HTTP request to %s timed out", e.Host)
	case HTTPTooLarge:
		if e.Limit > 0 {
			return fmt.Sprintf("HTTP response body over the limit of %d bytes", e.Limit)
		}
		return "HTTP response body over the limit"
	case HTTPTransport:
		return fmt.Sprintf("HTTP request to %s failed: %s", e.Host, e.Code)
	case HTTPBody:
		return "HTTP response body: " + e.Code
	}
	return fmt.Sprintf("HTTP error %d", e.Kind)
}

// Disposition is what the event's failure becomes when the error is
// returned from Handle: a request that cannot succeed as written rejects,
// anything that may pass on a later attempt is retryable.
func (e *HTTPError) Disposition() Disposition {
	switch e.Kind {
	case HTTPInvalidURL, HTTPInvalidHeader, HTTPDenied:
		return Rejected
	}
	return Retryable
}

// deniedPrefix is how the host marks an internal-error that is a denial
// with its reason (host/src/runtime/http/send.rs).
const deniedPrefix = "denied: "

// asHTTPError finds a *HTTPError in err's chain.
func asHTTPError(err error) (*HTTPError, bool) {
	var he *HTTPError
	ok := errors.As(err, &he)
	return he, ok
}

// Do sends req and reads the whole response.
func (httpAPI) Do(req HTTPRequest) (*HTTPResponse, error) {
	req.Method = strings.ToUpper(req.Method)
	if req.Method == "" {
		req.Method = "GET"
	}
	url, err := parseURL(req.URL)
	if err != nil {
		return nil, err
	}
	resp, herr := httpSend(&req, url)
	if herr != nil {
		return nil, herr // not a typed nil in the interface
	}
	return resp, nil
}

// Get sends `GET url`.
func (h httpAPI) Get(url string) (*HTTPResponse, error) {
	return h.Do(HTTPRequest{Method: "GET", URL: url})
}

// Post sends `POST url` with body, of contentType ("": no content-type).
func (h httpAPI) Post(url, contentType string, body []byte) (*HTTPResponse, error) {
	req := HTTPRequest{Method: "POST", URL: url, Body: body}
	if contentType != "" {
		req.Headers = []Header{{Key: "content-type", Value: []byte(contentType)}}
	}
	return h.Do(req)
}

// httpURL is the parts of a URL a request needs.
type httpURL struct {
	https         bool
	authority     string
	pathWithQuery string
}

// parseURL splits url as the Rust SDK does (http::Url::parse).
func parseURL(url string) (httpURL, error) {
	invalid := &HTTPError{Kind: HTTPInvalidURL, Code: url}
	scheme, rest, ok := strings.Cut(url, "://")
	if !ok {
		return httpURL{}, invalid
	}
	var u httpURL
	switch strings.ToLower(scheme) {
	case "https":
		u.https = true
	case "http":
	default:
		return httpURL{}, invalid
	}
	rest, _, _ = strings.Cut(rest, "#")
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	u.authority, u.pathWithQuery = rest[:end], rest[end:]
	if u.authority == "" {
		return httpURL{}, invalid
	}
	if u.pathWithQuery == "" {
		u.pathWithQuery = "/"
	}
	return u, nil
}

// httpBodyError reads a body error that came without a wasi:http
// error-code (wasmtime passes its own error there, as text): the cap and
// the deadline are still told apart (the Rust SDK's body_error).
func httpBodyError(text, host string) *HTTPError {
	switch {
	case strings.Contains(text, "body size exceeds limit"):
		e := &HTTPError{Kind: HTTPTooLarge}
		if i := strings.LastIndex(text, ": "); i >= 0 {
			e.Limit, _ = strconv.ParseUint(strings.TrimSuffix(text[i+2:], " bytes"), 10, 64)
		}
		return e
	case strings.Contains(text, "timeout") || strings.Contains(text, "timed out"):
		return &HTTPError{Kind: HTTPTimeout, Host: host}
	}
	return &HTTPError{Kind: HTTPBody, Code: text}
}
