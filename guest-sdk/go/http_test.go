//go:build !wasip1

package plugin

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestURLsSplitIntoSchemeAuthorityAndPath(t *testing.T) {
	cases := map[string]httpURL{
		"https://api.example.com/v1/x?q=1#frag": {true, "api.example.com", "/v1/x?q=1"},
		"http://127.0.0.1:8080":                 {false, "127.0.0.1:8080", "/"},
		"HTTP://h?x":                            {false, "h", "?x"},
	}
	for url, want := range cases {
		if got, err := parseURL(url); err != nil || got != want {
			t.Errorf("%s: %+v, %v", url, got, err)
		}
	}
	for _, url := range []string{"ftp://x", "https:///path", "example.com"} {
		if _, err := HTTP.Get(url); err == nil || err.(*HTTPError).Kind != HTTPInvalidURL || err.Error() != "not an http(s) URL: "+url {
			t.Errorf("%s: %v", url, err)
		}
	}
	if got := HTTP.Requests(); len(got) != 0 {
		t.Errorf("an invalid URL is never sent: %v", got)
	}
}

func TestHTTPErrorsReadAsTheRustSDKsAndTakeTheirDisposition(t *testing.T) {
	cases := []struct {
		err         *HTTPError
		text        string
		disposition Disposition
	}{
		{&HTTPError{Kind: HTTPDenied, Host: "x:443"}, "HTTP request to x:443 denied: not in the pipeline's plugin.http.allow", Rejected},
		{&HTTPError{Kind: HTTPDenied, Host: "x:443", Code: "no rule in http.json matches GET https://x/"}, "HTTP request to x:443 denied: no rule in http.json matches GET https://x/", Rejected},
		{&HTTPError{Kind: HTTPInvalidHeader, Code: "bad name"}, "invalid header `bad name`", Rejected},
		{&HTTPError{Kind: HTTPTimeout, Host: "x:443"}, "HTTP request to x:443 timed out", Retryable},
		{&HTTPError{Kind: HTTPTooLarge, Limit: 1024}, "HTTP response body over the limit of 1024 bytes", Retryable},
		{&HTTPError{Kind: HTTPTooLarge}, "HTTP response body over the limit", Retryable},
		{&HTTPError{Kind: HTTPTransport, Host: "x:80", Code: "ConnectionRefused"}, "HTTP request to x:80 failed: ConnectionRefused", Retryable},
		{&HTTPError{Kind: HTTPBody, Code: "reset"}, "HTTP response body: reset", Retryable},
	}
	for _, c := range cases {
		if c.err.Error() != c.text || c.err.Disposition() != c.disposition {
			t.Errorf("%q %v, want %q %v", c.err.Error(), c.err.Disposition(), c.text, c.disposition)
		}
		wrapped := asHandlerError(fmt.Errorf("enriching: %w", c.err))
		if wrapped.Disposition != c.disposition {
			t.Errorf("a wrapped %v keeps its disposition: %v", c.err, wrapped.Disposition)
		}
	}
}

func TestBodyErrorsAreToldApartByTheirText(t *testing.T) {
	if e := httpBodyError("HTTP response body size exceeds limit: 1024 bytes", "h"); e.Kind != HTTPTooLarge || e.Limit != 1024 {
		t.Errorf("%+v", e)
	}
	if e := httpBodyError("HTTP response timeout", "h:80"); e.Kind != HTTPTimeout || e.Host != "h:80" {
		t.Errorf("%+v", e)
	}
	if e := httpBodyError("reset", "h"); e.Kind != HTTPBody || e.Code != "reset" {
		t.Errorf("%+v", e)
	}
}

func TestNativeBuildsAnswerFromTheResponderAndRecordRequests(t *testing.T) {
	defer HTTP.Respond(nil)
	if _, err := HTTP.Get("http://api/x"); err == nil || err.(*HTTPError).Kind != HTTPTransport {
		t.Fatalf("no responder: a transport error, got %v", err)
	}
	HTTP.Requests()
	HTTP.Respond(func(req HTTPRequest) (*HTTPResponse, error) {
		if req.URL == "http://api/down" {
			return nil, &HTTPError{Kind: HTTPTimeout, Host: "api:80"}
		}
		if req.URL == "http://api/broken" {
			return nil, errors.New("boom")
		}
		return &HTTPResponse{Status: 201, Headers: []Header{{Key: "content-type", Value: []byte("text/plain")}}, Body: append([]byte(req.Method+" "), req.Body...)}, nil
	})
	resp, err := HTTP.Post("http://api/orders", "application/json", []byte(`{"a":1}`))
	if err != nil || resp.Status != 201 || string(resp.Body) != `POST {"a":1}` {
		t.Fatalf("%+v %v", resp, err)
	}
	if ct, ok := resp.Header("Content-Type"); !ok || ct != "text/plain" {
		t.Errorf("header lookup is case-insensitive: %q %v", ct, ok)
	}
	if _, ok := resp.Header("etag"); ok {
		t.Error("no etag")
	}
	if resp, err := HTTP.Do(HTTPRequest{URL: "http://api/x", Timeout: time.Second}); err != nil || string(resp.Body) != "GET " {
		t.Errorf("an empty method is GET: %+v %v", resp, err)
	}
	if _, err := HTTP.Get("http://api/down"); asHandlerError(err).Disposition != Retryable || err.Error() != "HTTP request to api:80 timed out" {
		t.Errorf("the responder's HTTPError as is: %v", err)
	}
	if _, err := HTTP.Get("http://api/broken"); err == nil || err.(*HTTPError).Kind != HTTPTransport {
		t.Errorf("another error becomes Transport: %v", err)
	}
	sent := HTTP.Requests()
	if len(sent) != 4 || sent[0].Method != "POST" || string(sent[0].Headers[0].Value) != "application/json" || sent[1].Timeout != time.Second {
		t.Errorf("requests %+v", sent)
	}
	if HTTP.Requests() != nil {
		t.Error("Requests forgets what it returned")
	}
}
