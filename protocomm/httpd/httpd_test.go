package httpd_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/thingline/thingline/protocomm"
	"github.com/thingline/thingline/protocomm/httpd"
	"github.com/thingline/thingline/protocomm/security"
)

func serve(t *testing.T, pc *protocomm.Protocomm) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- httpd.NewServer(pc, nil).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String()
}

func newPC() *protocomm.Protocomm {
	pc := protocomm.New(security.NewSec1([]byte("pop")))
	pc.SetVersion(`{"prov":{"ver":"v1.1","sec_ver":1}}`)
	pc.AddEndpoint("echo", func(_ uint32, req []byte) ([]byte, error) { return req, nil })
	return pc
}

// rawClient keeps one connection and never echoes cookies unless told,
// like esp_prov before cookies existed.
type rawClient struct {
	hc   *http.Client
	base string
}

func newRaw(addr string) *rawClient {
	return &rawClient{base: "http://" + addr, hc: &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}}
}

func (c *rawClient) post(t *testing.T, ep string, body []byte, cookie string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.base+"/"+ep, bytes.NewReader(body))
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestSessionCookieRules(t *testing.T) {
	addr := serve(t, newPC())
	a := newRaw(addr)
	r, body := a.post(t, "proto-ver", []byte("---"), "")
	cookie := r.Header.Get("Set-Cookie")
	if r.StatusCode != 200 || !strings.HasPrefix(cookie, "session=") || !strings.Contains(string(body), `"sec_ver":1`) {
		t.Fatalf("first request: %d %q %q", r.StatusCode, cookie, body)
	}
	if r, _ := a.post(t, "proto-ver", []byte("none"), ""); r.Header.Get("Set-Cookie") != "" {
		t.Fatal("same connection without cookie started a new session")
	}
	b := newRaw(addr)
	if r, _ := b.post(t, "proto-ver", []byte("x"), cookie); r.Header.Get("Set-Cookie") != "" {
		t.Fatal("matching cookie on another connection started a new session")
	}
	r, _ = b.post(t, "proto-ver", []byte("x"), "session=1")
	if c2 := r.Header.Get("Set-Cookie"); c2 == "" || c2 == cookie {
		t.Fatalf("stale cookie kept the session: %q", c2)
	}
}

func TestRequestLimits(t *testing.T) {
	addr := serve(t, newPC())
	c := newRaw(addr)
	for _, tc := range []struct {
		ep   string
		body []byte
		want int
	}{
		{"proto-ver", nil, http.StatusBadRequest},
		{"proto-ver", make([]byte, httpd.MaxBody+1), http.StatusRequestEntityTooLarge},
		{"proto-ver", make([]byte, httpd.MaxBody), http.StatusOK},
		{"nope", []byte("x"), http.StatusNotFound},
		{"echo", []byte("no session yet"), http.StatusInternalServerError},
		{"prov-session", []byte{0xff, 0x00}, http.StatusInternalServerError},
	} {
		if r, _ := c.post(t, tc.ep, tc.body, ""); r.StatusCode != tc.want {
			t.Errorf("%s with %d bytes: %d, want %d", tc.ep, len(tc.body), r.StatusCode, tc.want)
		}
	}
	resp, err := http.Get("http://" + addr + "/proto-ver")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", resp.StatusCode)
	}
}

// transport adapts rawClient to protocomm.Transport, cookies off.
type transport struct {
	t *testing.T
	c *rawClient
}

func (tr transport) Do(_ context.Context, ep string, req []byte) ([]byte, error) {
	r, b := tr.c.post(tr.t, ep, req, "")
	if r.StatusCode != 200 {
		return nil, &statusError{r.StatusCode}
	}
	return b, nil
}

type statusError struct{ code int }

func (e *statusError) Error() string { return http.StatusText(e.code) }

// A client without cookies keeps its session by its connection; a second
// client takes the device over and the first session is gone.
func TestConnectionSessions(t *testing.T) {
	pc := newPC()
	addr := serve(t, pc)
	ctx := context.Background()
	first := transport{t, newRaw(addr)}
	s1, err := protocomm.Dial(ctx, first, security.NewClient1([]byte("pop")))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s1.Call(ctx, "echo", []byte("one")); err != nil || string(got) != "one" {
		t.Fatalf("echo: %q %v", got, err)
	}
	// The cookie-echoing client of this package, on its own connection.
	hc := httpd.NewClient(addr)
	defer hc.Close()
	s2, err := protocomm.Dial(ctx, hc, security.NewClient1([]byte("pop")))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s2.Call(ctx, "echo", []byte("two")); err != nil || string(got) != "two" {
		t.Fatalf("echo: %q %v", got, err)
	}
	if _, err := s1.Call(ctx, "echo", []byte("stale")); err == nil {
		t.Fatal("the first session survived the second client")
	}
}

// FuzzServeHTTP throws arbitrary paths, cookies and bodies at the handler.
func FuzzServeHTTP(f *testing.F) {
	f.Add("proto-ver", "", []byte("---"))
	f.Add("prov-session", "session=1", []byte{0x10, 0x01, 0x5a, 0x02, 0xa2, 0x01, 0x00})
	f.Add("echo", "session=x; other=y", []byte("abc"))
	f.Fuzz(func(t *testing.T, ep, cookie string, body []byte) {
		s := httpd.NewServer(newPC(), nil)
		req := httptest.NewRequest(http.MethodPost, "/x", bytes.NewReader(body))
		req.URL.Path = "/" + ep
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code == http.StatusOK && len(body) == 0 {
			t.Fatal("empty body accepted")
		}
	})
}
