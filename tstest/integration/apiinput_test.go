package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/pki/pkitest"
)

// TestAPIRejectsBadInput: trailing data after a JSON body, unknown,
// repeated or mistyped query parameters, bodies too large and bodies
// trickled in too slowly are refused with a clear status, and nothing is
// changed by a refused request.
func TestAPIRejectsBadInput(t *testing.T) {
	s := startServer(t, t.TempDir())
	dev := pkitest.IssueDevice(t, s.deviceCA(), "SN-IN", pkitest.Opts{})
	c, err := s.connect(dev.CertPath, dev.KeyPath, "SN-IN")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)

	for _, tc := range []struct {
		method, path, body string
		want               int
		msg                string
	}{
		{"POST", "/api/v1/devices/SN-IN/attributes", `{"a":1} {"b":2}`, 400, "data after the JSON value"},
		{"POST", "/api/v1/devices/SN-IN/attributes", `{"a":1}garbage`, 400, "malformed JSON"},
		{"POST", "/api/v1/devices/SN-IN/attributes", `{"a":1}` + "\n\t ", 200, ""},
		{"GET", "/api/v1/devices?limt=5", "", 400, `unknown query parameter "limt"`},
		{"GET", "/api/v1/devices?limit=5&limit=6", "", 400, "given 2 times"},
		{"GET", "/api/v1/devices?limit=five", "", 400, "must be an integer"},
		{"GET", "/api/v1/devices?limit=5&after=", "", 200, ""},
		{"GET", "/api/v1/devices/SN-IN?verbose=1", "", 400, "takes none"},
		{"GET", "/api/v1/devices/SN-IN/telemetry?order=sideways", "", 400, "order"},
		{"GET", "/api/v1/devices/SN-IN/telemetry?from=1&to=2&keys=a&limit=3&order=asc", "", 200, ""},
		{"GET", "/api/v1/events?%zz=1", "", 400, "malformed query"},
		{"POST", "/api/v1/devices/SN-IN/attributes", `{"big":"` + strings.Repeat("x", 2<<20) + `"}`, 413, "larger than"},
	} {
		var e struct{ Error string }
		code := s.api(tc.method, tc.path, tc.body, &e)
		if code != tc.want || !strings.Contains(e.Error, tc.msg) {
			t.Errorf("%s %s %.40q: %d %q, want %d with %q", tc.method, tc.path, tc.body, code, e.Error, tc.want, tc.msg)
		}
	}
	var attrs map[string]map[string]any
	s.api("GET", "/api/v1/devices/SN-IN/attributes?scope=shared", "", &attrs)
	if _, ok := attrs["shared"]["b"]; ok {
		t.Errorf("a refused body was applied: %v", attrs)
	}
	if _, ok := attrs["shared"]["a"]; !ok {
		t.Errorf("the good body was not applied: %v", attrs)
	}
}

// TestAPISlowBodyCut: a request body trickled in more slowly than the
// API's body deadline is cut, and the server keeps answering others.
func TestAPISlowBodyCut(t *testing.T) {
	s := startServer(t, t.TempDir(), "--api-body-timeout", "2s")
	conn, err := net.Dial("tcp", s.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/v1/factory/units HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{", testToken)
	start := time.Now()
	done := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(conn)
		done <- string(b)
	}()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case out := <-done:
			if el := time.Since(start); el < 2*time.Second || el > 20*time.Second {
				t.Errorf("slow body cut after %v, want about 2 s", el)
			}
			if out != "" && !strings.HasPrefix(out, "HTTP/1.1 408") && !strings.HasPrefix(out, "HTTP/1.1 400") {
				t.Errorf("slow body answered %q", out)
			}
			resp, err := http.Get("http://" + s.httpAddr + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(b), `thingline_api_requests_refused_total{reason="slow-body"} 1`) {
				t.Errorf("slow body not counted in /metrics")
			}
			return
		case <-tick.C:
			if time.Since(start) > 60*time.Second {
				t.Fatal("slow body not cut within 60 s")
			}
			conn.Write([]byte(" "))
		}
	}
}
