package factory

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/store"
)

// fakeTelemetry implements GET /api/v1/devices/{name}/telemetry/latest as
// the API contract says: 401 without the token, 404 for an unknown device,
// 200 with a (possibly empty) object of the latest point per key.
type fakeTelemetry struct {
	token    string
	calls    atomic.Int32
	notFound int32 // the first calls answer 404 (not provisioned yet)
	empty    int32 // then these answer {} (provisioned, no telemetry)
	never    bool  // never provisioned
}

func (f *fakeTelemetry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/devices/{name}/telemetry/latest", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+f.token {
			http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
			return
		}
		n := f.calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case f.never || n <= f.notFound:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"error":"device not found"}`)
		case n <= f.notFound+f.empty:
			fmt.Fprint(w, `{}`)
		default:
			fmt.Fprintf(w, `{"temperature":{"ts":%d,"value":21.5}}`, time.Now().UnixMilli())
		}
	})
	mux.ServeHTTP(w, r)
}

func injectedLedger(t *testing.T) (*Ledger, string) {
	t.Helper()
	out := t.TempDir()
	units, err := Inject(context.Background(), InjectOptions{CADir: devCA(t), Out: out})
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLedger(filepath.Join(out, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, units[0].SN
}

func TestStationTestPass(t *testing.T) {
	l, sn := injectedLedger(t)
	f := &fakeTelemetry{token: "tok", notFound: 2, empty: 1}
	srv := httptest.NewServer(f)
	defer srv.Close()
	c, err := NewClient(srv.URL, "tok", "")
	if err != nil {
		t.Fatal(err)
	}
	err = c.TestUnit(context.Background(), l, TestOptions{SN: sn, Timeout: 10 * time.Second, Interval: 20 * time.Millisecond, Operator: "eve"})
	if err != nil {
		t.Fatal(err)
	}
	if n := f.calls.Load(); n != 4 {
		t.Errorf("%d polls, want 4 (2 not found, 1 empty, 1 with telemetry)", n)
	}
	ev, _ := l.Traveller(context.Background(), sn)
	last := ev[len(ev)-1]
	if last.Station != StationTest || last.Result != Pass || last.Operator != "eve" {
		t.Errorf("last event %+v", last)
	}
}

func TestStationTestFailAndBadToken(t *testing.T) {
	l, sn := injectedLedger(t)
	f := &fakeTelemetry{token: "tok", never: true}
	srv := httptest.NewServer(f)
	defer srv.Close()
	c, _ := NewClient(srv.URL, "tok", "")
	start := time.Now()
	err := c.TestUnit(context.Background(), l, TestOptions{SN: sn, Timeout: 300 * time.Millisecond, Interval: 50 * time.Millisecond})
	if !errors.Is(err, ErrTestFailed) {
		t.Fatalf("err = %v, want ErrTestFailed", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeout of 300ms took %v", d)
	}
	u, _ := l.Unit(context.Background(), sn)
	if u.LastStation != StationTest || u.LastResult != Fail {
		t.Errorf("unit %+v, want test fail recorded", u)
	}
	// A wrong token is not the unit's fault: nothing is recorded.
	bad, _ := NewClient(srv.URL, "wrong", "")
	err = bad.TestUnit(context.Background(), l, TestOptions{SN: sn, Timeout: 5 * time.Second, Interval: 10 * time.Millisecond})
	if err == nil || errors.Is(err, ErrTestFailed) {
		t.Fatalf("bad token: err = %v", err)
	}
	ev, _ := l.Traveller(context.Background(), sn)
	if len(ev) != 2 {
		t.Errorf("%d events after a refused token, want 2", len(ev))
	}
	// An SN the line never made is refused before polling.
	if err := c.TestUnit(context.Background(), l, TestOptions{SN: "SN-999999"}); !errors.Is(err, ErrUnknownUnit) {
		t.Errorf("unknown SN: %v", err)
	}
}

func TestStationTestHTTPSWithDevRoot(t *testing.T) {
	l, sn := injectedLedger(t)
	dir := pkitest.DevPKI(t, "127.0.0.1")
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, pki.ServerCertFile), filepath.Join(dir, pki.ServerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(&fakeTelemetry{token: "tok"})
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted case's handshake errors are expected
	srv.StartTLS()
	defer srv.Close()
	c, err := NewClient(srv.URL, "tok", filepath.Join(dir, pki.RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.TestUnit(context.Background(), l, TestOptions{SN: sn, Timeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	// Without the root the server is not trusted, and the test fails.
	c2, _ := NewClient(srv.URL, "tok", "")
	if err := c2.TestUnit(context.Background(), l, TestOptions{SN: sn, Timeout: 200 * time.Millisecond, Interval: 50 * time.Millisecond}); !errors.Is(err, ErrTestFailed) {
		t.Errorf("untrusted server: %v", err)
	}
}

func TestPush(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	l, err := OpenLedger(filepath.Join(dir, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// 1,100 units recorded straight into the ledger: push reads only it.
	r, err := l.startRun()
	if err != nil {
		t.Fatal(err)
	}
	rs, err := l.reserveNext(ctx, r, 1100, DefaultSNFormat, dir, "op", "B2")
	if err != nil {
		t.Fatal(err)
	}
	na := time.Date(2029, 11, 20, 0, 0, 0, 0, time.UTC)
	var cs []completion
	for i, x := range rs {
		cs = append(cs, completion{sn: x.sn, certSerial: fmt.Sprintf("%x", i+1), sha256: fmt.Sprintf("%064x", i), notAfter: na, batch: "B2"})
	}
	if err := l.complete(ctx, cs); err != nil {
		t.Fatal(err)
	}
	l.endRun(ctx, r)
	l.RecordStation(ctx, "SN-000002", StationTest, Fail, "", "")
	l.RecordStation(ctx, "SN-000003", StationTest, Pass, "", "")

	var mu sync.Mutex
	var posts [][]store.Unit
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/factory/units" || r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		var req struct {
			Units []store.Unit `json:"units"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Units) == 0 {
			http.Error(w, `{"error":"bad"}`, http.StatusBadRequest)
			return
		}
		mu.Lock()
		posts = append(posts, req.Units)
		mu.Unlock()
		json.NewEncoder(w).Encode(map[string]int{"accepted": len(req.Units)})
	}))
	defer srv.Close()
	c, _ := NewClient(srv.URL+"/", "tok", "")
	us, err := l.StoreUnits(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := c.Push(ctx, us)
	if err != nil || n != 1100 {
		t.Fatalf("pushed %d, err %v", n, err)
	}
	if len(posts) != 3 || len(posts[0]) != 500 || len(posts[1]) != 500 || len(posts[2]) != 100 {
		t.Fatalf("chunks %d", len(posts))
	}
	u := posts[0][1]
	if u.SN != "SN-000002" || u.Serial != "2" || u.Batch != "B2" || !u.NotAfter.Equal(na) || u.ProducedAt.IsZero() || u.TestPassed == nil || *u.TestPassed {
		t.Errorf("unit %+v", u)
	}
	if p := posts[0][2].TestPassed; p == nil || !*p {
		t.Errorf("SN-000003 testPassed = %v", p)
	}
	if posts[0][0].TestPassed != nil {
		t.Errorf("untested unit has testPassed")
	}
	// A refusing server stops the push with its answer.
	bad, _ := NewClient(srv.URL, "wrong", "")
	if _, err := bad.Push(ctx, us); err == nil {
		t.Error("refused push reported no error")
	}
}
