package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
)

// rest is the test's own client of the demo's API: the assertions go
// through the same REST API a person would use.
type rest struct {
	t     *testing.T
	base  string
	token string
}

func (r rest) call(method, path, body string, v any) int {
	r.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, r.base+path, rd)
	if err != nil {
		r.t.Fatal(err)
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, v); err != nil {
			r.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}

type runResult struct {
	out *bytes.Buffer
	err error
}

// startDemo runs the demo in the background and returns once every unit
// streams; stop ends it and returns Run's error and output.
func startDemo(t *testing.T, opt Options) (Ready, func() runResult) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan Ready, 1)
	opt.Ready = func(r Ready) { readyc <- r }
	if opt.Interval == 0 {
		opt.Interval = 200 * time.Millisecond
	}
	opt.Tick = 200 * time.Millisecond
	opt.Timeout = 20 * time.Second
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opt, &out) }()
	stop := func() runResult {
		cancel()
		select {
		case err := <-done:
			return runResult{out: &out, err: err}
		case <-time.After(20 * time.Second):
			t.Fatal("demo did not stop within 20s of the cancellation")
		}
		return runResult{}
	}
	select {
	case r := <-readyc:
		return r, stop
	case err := <-done:
		t.Fatalf("demo ended before it was ready: %v\n%s", err, out.String())
	case <-time.After(50 * time.Second):
		cancel()
		t.Fatal("demo not ready within 50s")
	}
	return Ready{}, nil
}

func TestDemoWholeLife(t *testing.T) {
	begin := time.Now()
	dir := t.TempDir()
	r, stop := startDemo(t, Options{Dir: dir, Units: 5, HTTPListen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0"})
	api := rest{t: t, base: r.APIBase, token: r.AdminToken}

	want := []string{"SN-000001", "SN-000002", "SN-000003", "SN-000004", "SN-000005"}
	if strings.Join(r.Units, ",") != strings.Join(want, ",") {
		t.Fatalf("units %v, want %v", r.Units, want)
	}

	// Every unit exists in the cloud because its certificate made it so.
	var list struct {
		Devices []device `json:"devices"`
	}
	if code := api.call("GET", "/devices", "", &list); code != http.StatusOK {
		t.Fatalf("GET /devices: %d", code)
	}
	if len(list.Devices) != len(want) {
		t.Fatalf("%d devices in the cloud, want %d: %+v", len(list.Devices), len(want), list.Devices)
	}
	for i, d := range list.Devices {
		if d.Name != want[i] || !d.Online || d.Produced == nil || !*d.Produced {
			t.Errorf("device %+v: want %s, online, produced", d, want[i])
		}
		var evs struct {
			Events []event `json:"events"`
		}
		api.call("GET", "/events?kind=provisioned&device="+d.Name, "", &evs)
		if len(evs.Events) != 1 {
			t.Errorf("%s: %d provisioned events, want 1", d.Name, len(evs.Events))
		}
	}

	// Telemetry keeps arriving: each unit's latest timestamp moves on.
	first := map[string]int64{}
	for _, sn := range want {
		var pts map[string]point
		api.call("GET", "/devices/"+sn+"/telemetry/latest", "", &pts)
		if pts["temperature"].TS == 0 || pts["humidity"].TS == 0 {
			t.Fatalf("%s: latest telemetry %v", sn, pts)
		}
		first[sn] = pts["temperature"].TS
	}
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		for _, sn := range want {
			var pts map[string]point
			api.call("GET", "/devices/"+sn+"/telemetry/latest", "", &pts)
			if pts["temperature"].TS <= first[sn] {
				return fmt.Errorf("%s: latest ts still %d", sn, first[sn])
			}
		}
		return nil
	})

	// The RPC reaches the twin and its answer shows the provisioned Wi-Fi.
	var state map[string]any
	if code := api.call("POST", "/devices/SN-000003/rpc", `{"method":"getState"}`, &state); code != http.StatusOK {
		t.Fatalf("getState: %d", code)
	}
	if state["sn"] != "SN-000003" || state["ssid"] != DefaultSSID || state["connected"] != true {
		t.Fatalf("getState = %v", state)
	}
	// A second demo on the same directory is refused while this one runs.
	if err := Run(context.Background(), Options{Dir: dir, HTTPListen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0"}, io.Discard); err == nil || !strings.Contains(err.Error(), "in use by another running demo") {
		t.Errorf("concurrent demo on the same directory: %v", err)
	}
	// The printed token is what guards the API.
	if code := (rest{t: t, base: r.APIBase}).call("GET", "/devices", "", nil); code != http.StatusUnauthorized {
		t.Fatalf("GET /devices without a token: %d, want 401", code)
	}

	res := stop()
	if res.err != nil {
		t.Fatalf("Run: %v\n%s", res.err, res.out)
	}
	out := res.out.String()
	for _, s := range []string{
		`proto-ver: {"prov":`,
		"session established: security 1",
		`device reports: connected to "thingline-demo"`,
		"SN-000005    cloud  auto-provisioned",
		"curl -s -H 'Authorization: Bearer " + r.AdminToken + "' " + r.APIBase + "/devices\n",
		`"method":"getState"`,
		"5 twins stopped",
		"node stopped",
		"== summary",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	if c := strings.Count(out, "app    session established"); c != 5 {
		t.Errorf("%d sessions established, want 5", c)
	}
	// Stopped means stopped: nobody answers on the API's port any more.
	if c, err := net.DialTimeout("tcp", strings.TrimPrefix(strings.TrimSuffix(r.APIBase, "/api/v1"), "http://"), time.Second); err == nil {
		c.Close()
		t.Error("the API still listens after the demo stopped")
	}
	if d := time.Since(begin); d >= 60*time.Second {
		t.Errorf("the demo took %v, want < 60s", d)
	}

	// A second run on the same directory keeps the token and the units,
	// injects only the missing one with the next SN, and moves to another
	// port when the one asked for is taken.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r2, stop2 := startDemo(t, Options{Dir: dir, Units: 6, HTTPListen: busy.Addr().String(), MQTTListen: "127.0.0.1:0"})
	if r2.AdminToken != r.AdminToken {
		t.Error("the admin token changed between runs")
	}
	if strings.Contains(r2.APIBase, busy.Addr().String()) {
		t.Errorf("API on %s, which was taken", r2.APIBase)
	}
	if got := strings.Join(r2.Units, ","); got != strings.Join(append(want, "SN-000006"), ",") {
		t.Errorf("second run units %s", got)
	}
	api2 := rest{t: t, base: r2.APIBase, token: r2.AdminToken}
	var evs struct {
		Events []event `json:"events"`
	}
	api2.call("GET", "/events?kind=provisioned&device=SN-000001", "", &evs)
	if len(evs.Events) != 1 {
		t.Errorf("SN-000001 provisioned %d times, want once across runs", len(evs.Events))
	}
	res2 := stop2()
	if res2.err != nil {
		t.Fatalf("second Run: %v\n%s", res2.err, res2.out)
	}
	out2 := res2.out.String()
	if c := strings.Count(out2, " reused "); c != 5 {
		t.Errorf("%d units reused, want 5:\n%s", c, out2)
	}
	if !strings.Contains(out2, "SN-000006    injected") || !strings.Contains(out2, "is not available") {
		t.Errorf("second run output:\n%s", out2)
	}
}

func TestOptionsRefused(t *testing.T) {
	for _, o := range []Options{{Units: -1}, {Units: MaxUnits + 1}, {Duration: -time.Second}} {
		o.Dir = t.TempDir()
		err := Run(context.Background(), o, io.Discard)
		if err == nil || !strings.HasPrefix(err.Error(), "demo: ") {
			t.Errorf("Run(%+v) = %v, want a demo error", o, err)
		}
	}
}

func TestToken(t *testing.T) {
	p := filepath.Join(t.TempDir(), tokenFile)
	a, err := loadToken(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadToken(p)
	if err != nil || a != b || !strings.HasPrefix(a, "tl_") {
		t.Fatalf("tokens %q then %q (%v)", a, b, err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode: %v %v", fi.Mode(), err)
	}
	if err := os.WriteFile(p, []byte("two words\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadToken(p); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt token file: %v", err)
	}
}

func TestCancelDuringSetupIsAStop(t *testing.T) {
	// Ctrl-C before the fleet is up must stop cleanly, not fail.
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error, 1)
	w := &watchWriter{w: &out, seen: make(chan struct{}), want: "app    found"}
	go func() {
		done <- Run(ctx, Options{Dir: t.TempDir(), Units: 2, HTTPListen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0"}, w)
	}()
	select {
	case <-w.seen:
	case err := <-done:
		t.Fatalf("Run ended early: %v\n%s", err, out.String())
	case <-time.After(30 * time.Second):
		t.Fatal("provisioning never started")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not stop after cancel")
	}
}

// watchWriter signals once the output contains want.
type watchWriter struct {
	w    io.Writer
	buf  strings.Builder
	want string
	seen chan struct{}
	once bool
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if !w.once && strings.Contains(w.buf.String(), w.want) {
		w.once = true
		close(w.seen)
	}
	return w.w.Write(p)
}
