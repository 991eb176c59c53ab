package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
)

func TestPlanWaves(t *testing.T) {
	raw := func(vs ...string) []json.RawMessage {
		var out []json.RawMessage
		for _, v := range vs {
			out = append(out, json.RawMessage(v))
		}
		return out
	}
	for _, c := range []struct {
		in    []json.RawMessage
		total int
		want  string
	}{
		{nil, 20, "[20]"},
		{raw("5"), 20, "[5 15]"},
		{raw(`"10%"`, `"50%"`), 20, "[2 10 8]"},
		{raw(`"10%"`), 5, "[1 4]"}, // rounded up: a wave is never empty
		{raw("5", `"100%"`), 20, "[5 15]"},
		{raw("30"), 20, "[20]"},
		{raw("1", "1", "1"), 2, "[1 1]"},
	} {
		got, err := planWaves(c.in, c.total)
		if err != nil || fmt.Sprint(got) != c.want {
			t.Errorf("planWaves(%s, %d) = %v, %v; want %s", c.in, c.total, got, err, c.want)
		}
	}
	for _, bad := range []string{"0", `"x"`, "-1", "1.5", `"120%"`, "{}"} {
		if _, err := planWaves(raw(bad), 10); err == nil {
			t.Errorf("wave %s accepted", bad)
		}
	}
}

// otaAPI is the API on a real SQLite store, for the OTA routes' answers.
func otaAPI(t *testing.T) (*httptest.Server, store.Store) {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	b := inproc.New()
	srv := httptest.NewServer(New(Config{Store: st, Bus: b, AdminTokenHash: HashToken("tok")}))
	t.Cleanup(func() { srv.Close(); b.Close(); st.Close() })
	return srv, st
}

func call(t *testing.T, srv *httptest.Server, method, path, ct string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer tok")
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestOTARoutes checks the answers to bad input and the package cycle.
func TestOTARoutes(t *testing.T) {
	srv, st := otaAPI(t)
	bin := "application/octet-stream"
	for _, c := range []struct {
		method, path, ct, body string
		want                   int
	}{
		{"POST", "/api/v1/ota/packages?title=fw", bin, "x", 400},                                  // no version
		{"POST", "/api/v1/ota/packages?title=fw&version=1", bin, "", 400},                         // empty image
		{"POST", "/api/v1/ota/packages?title=fw&version=1&checksumAlgorithm=sha1", bin, "x", 400}, // unknown algorithm
		{"POST", "/api/v1/ota/packages?title=fw&version=1", "application/json", "{}", 415},        // not a binary
		{"POST", "/api/v1/ota/packages?title=fw&version=1&checksumAlgorithm=crc32", bin, "123456789", 201},
		{"POST", "/api/v1/ota/packages?title=fw&version=1", bin, "again", 409},
		{"GET", "/api/v1/ota/packages/abc", "", "", 400},
		{"GET", "/api/v1/ota/packages/99", "", "", 404},
		{"POST", "/api/v1/ota/rollouts", "application/json", `{"package":99,"devices":["a"]}`, 404},
		{"POST", "/api/v1/ota/rollouts", "application/json", `{"package":1}`, 400},
		{"POST", "/api/v1/ota/rollouts", "application/json", `{"package":1,"devices":["nobody"]}`, 400},
		{"POST", "/api/v1/ota/rollouts", "application/json", `{"package":"x","devices":["a"]}`, 400},
		{"GET", "/api/v1/ota/rollouts/7", "", "", 404},
		{"POST", "/api/v1/ota/rollouts/7/resume", "", "", 404},
		{"PUT", "/api/v1/devices/nobody/ota", "application/json", `{"package":1}`, 404},
		{"DELETE", "/api/v1/ota/profiles/none", "", "", 404},
	} {
		code, body := call(t, srv, c.method, c.path, c.ct, []byte(c.body))
		if code != c.want {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, code, body, c.want)
		}
	}
	// The CRC32 is written as ThingsBoard writes it.
	code, body := call(t, srv, "GET", "/api/v1/ota/packages/1", "", nil)
	var p store.OTAPackage
	json.Unmarshal([]byte(body), &p)
	if code != 200 || p.Checksum != "2639f4cb" || p.ChecksumAlgorithm != "CRC32" || p.Size != 9 {
		t.Fatalf("package: %d %s", code, body)
	}
	if code, body := call(t, srv, "GET", "/api/v1/ota/packages/1/data", "", nil); code != 200 || body != "123456789" {
		t.Fatalf("download: %d %q", code, body)
	}

	// Assigned, it cannot be deleted; unassigned, it can.
	d, _, _, err := st.EnsureDevice(context.Background(), store.Device{Name: "SN-1", Profile: "default"}, store.Credential{Serial: "1", SHA256: "ab"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := call(t, srv, "PUT", "/api/v1/devices/SN-1/ota", "application/json", []byte(`{"package":"1"}`)); code != 200 {
		t.Fatalf("assign: %d %s", code, body)
	}
	if row, err := st.GetOTADevice(context.Background(), d.ID); err != nil || row.State != store.OTAQueued || row.Source != store.OTASourceDevice {
		t.Fatalf("assigned row %+v %v", row, err)
	}
	if code, _ := call(t, srv, "DELETE", "/api/v1/ota/packages/1", "", nil); code != 409 {
		t.Fatalf("deleting an assigned package: %d, want 409", code)
	}
	if code, _ := call(t, srv, "DELETE", "/api/v1/devices/SN-1/ota", "", nil); code != 204 {
		t.Fatalf("unassign: %d", code)
	}
	if code, _ := call(t, srv, "DELETE", "/api/v1/ota/packages/1", "", nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	if code, body := call(t, srv, "GET", "/api/v1/devices/SN-1/ota?since=yesterday", "", nil); code != 400 {
		t.Fatalf("bad since: %d %s", code, body)
	}
}
