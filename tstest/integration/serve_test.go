package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/tstest"
)

// TestServeFirstStart checks the out-of-the-box experience: a development
// PKI with the documented files, a server certificate that verifies against
// root-ca.crt for localhost and 127.0.0.1, and an admin token printed once.
func TestServeFirstStart(t *testing.T) {
	needTool(t, "openssl")
	data := t.TempDir()
	cmd := exec.Command(binary, "serve", "--data", data, "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "THINGLINE_ADMIN_TOKEN=")
	out := runUntilListening(t, cmd)
	for _, f := range []string{"root-ca.crt", "device-ca.crt", "device-ca.key", "server.crt", "server.key"} {
		if _, err := os.Stat(filepath.Join(data, "pki", f)); err != nil {
			t.Errorf("development PKI: %v", err)
		}
	}
	if !strings.Contains(out, filepath.Join(data, "pki")) {
		t.Errorf("first start does not say where the PKI is:\n%s", out)
	}
	if !strings.Contains(out, "admin API token") {
		t.Errorf("first start printed no admin token:\n%s", out)
	}
	for _, host := range []string{"127.0.0.1", "localhost"} {
		flag := "-verify_ip"
		if host == "localhost" {
			flag = "-verify_hostname"
		}
		v := exec.Command("openssl", "verify", "-CAfile", filepath.Join(data, "pki", "root-ca.crt"), flag, host, filepath.Join(data, "pki", "server.crt"))
		if b, err := v.CombinedOutput(); err != nil {
			t.Errorf("openssl verify server.crt for %s: %v\n%s", host, err, b)
		}
	}
	// Second start: same PKI, no new token.
	cmd2 := exec.Command(binary, "serve", "--data", data, "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	cmd2.Env = append(os.Environ(), "THINGLINE_ADMIN_TOKEN=")
	out2 := runUntilListening(t, cmd2)
	if strings.Contains(out2, "admin API token") || strings.Contains(out2, "created a development PKI") {
		t.Errorf("second start made a new token or PKI:\n%s", out2)
	}
}

// runUntilListening starts cmd, waits for its listening line, stops it and
// returns everything it printed.
func runUntilListening(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var buf syncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, buf.String())
		default:
		}
		if !addrLine.MatchString(buf.String()) {
			return fmt.Errorf("not listening yet")
		}
		return nil
	})
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Errorf("serve did not stop on SIGINT")
	}
	return buf.String()
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAPIAuthAndErrors: no token → 401; unknown device → 404 with a JSON
// error; RPC to an offline device → 409.
func TestAPIAuthAndErrors(t *testing.T) {
	s := startServer(t, t.TempDir())
	resp, err := http.Get("http://" + s.httpAddr + "/api/v1/devices")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no token: %d, want 401", resp.StatusCode)
	}
	var e struct{ Error string }
	if code := s.api("GET", "/api/v1/devices/SN-nope", "", &e); code != 404 || e.Error == "" {
		t.Errorf("unknown device: %d %+v, want 404 with error", code, e)
	}
	resp, err = http.Get("http://" + s.httpAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("healthz: %d", resp.StatusCode)
	}
	// A device that connected once and left is offline: RPC answers 409.
	ca := s.deviceCA()
	dev := pkitest.IssueDevice(t, ca, "SN-OFF", pkitest.Opts{})
	c, err := s.connect(dev.CertPath, dev.KeyPath, "SN-OFF")
	if err != nil {
		t.Fatal(err)
	}
	// The CONNACK comes before the session is recorded online: wait for
	// that, or "offline" below could be the state from before it.
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		var d struct{ Online bool }
		if code := s.api("GET", "/api/v1/devices/SN-OFF", "", &d); code != 200 || !d.Online {
			return fmt.Errorf("device: %d online=%v", code, d.Online)
		}
		return nil
	})
	c.Disconnect(100)
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		var d struct{ Online bool }
		if code := s.api("GET", "/api/v1/devices/SN-OFF", "", &d); code != 200 || d.Online {
			return fmt.Errorf("device: %d online=%v", code, d.Online)
		}
		return nil
	})
	if code := s.api("POST", "/api/v1/devices/SN-OFF/rpc", `{"method":"getState","params":{},"timeoutMs":1000}`, &e); code != 409 {
		t.Errorf("rpc to offline device: %d %+v, want 409", code, e)
	}
}

// TestDeviceLifeThroughAPI: auto-provisioning on first connection,
// telemetry visible with its types, shared attributes pushed at once, and
// two-way RPC answered by the device.
func TestDeviceLifeThroughAPI(t *testing.T) {
	s := startServer(t, t.TempDir())
	dev := pkitest.IssueDevice(t, s.deviceCA(), "SN-000042", pkitest.Opts{})
	c, err := s.connect(dev.CertPath, dev.KeyPath, "esp32")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)

	attrs := make(chan string, 4)
	subscribeDevice(t, c, attrs)

	tok := c.Publish("v1/devices/me/telemetry", 1, false, `{"temperature":23.5,"humidity":56,"door":"open","ok":true}`)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	// Acknowledged means stored: no waiting needed.
	var latest map[string]struct {
		TS    int64           `json:"ts"`
		Value json.RawMessage `json:"value"`
	}
	if code := s.api("GET", "/api/v1/devices/SN-000042/telemetry/latest", "", &latest); code != 200 {
		t.Fatalf("latest: %d", code)
	}
	want := map[string]string{"temperature": "23.5", "humidity": "56", "door": `"open"`, "ok": "true"}
	for k, v := range want {
		if string(latest[k].Value) != v || latest[k].TS == 0 {
			t.Errorf("latest %s = %s at %d, want %s", k, latest[k].Value, latest[k].TS, v)
		}
	}
	var dev1 struct {
		Name   string `json:"name"`
		Online bool   `json:"online"`
	}
	if code := s.api("GET", "/api/v1/devices/SN-000042", "", &dev1); code != 200 || dev1.Name != "SN-000042" || !dev1.Online {
		t.Errorf("device: %d %+v", code, dev1)
	}

	var pushed struct{ Pushed bool }
	if code := s.api("POST", "/api/v1/devices/SN-000042/attributes", `{"interval":500,"mode":"eco"}`, &pushed); code != 200 || !pushed.Pushed {
		t.Errorf("set shared attributes: %d %+v", code, pushed)
	}
	select {
	case got := <-attrs:
		var m map[string]any
		if json.Unmarshal([]byte(got), &m) != nil || m["mode"] != "eco" || m["interval"] != float64(500) {
			t.Errorf("device got attribute push %s", got)
		}
	case <-time.After(10 * time.Second):
		t.Error("device got no attribute push")
	}

	var reply map[string]any
	if code := s.api("POST", "/api/v1/devices/SN-000042/rpc", `{"method":"setGpio","params":{"pin":23,"value":1},"timeoutMs":5000}`, &reply); code != 200 {
		t.Fatalf("rpc: %d %v", code, reply)
	}
	if reply["method"] != "setGpio" || reply["ok"] != true {
		t.Errorf("rpc reply %v", reply)
	}

	var evs struct {
		Events []struct{ Kind, Device string }
	}
	s.api("GET", "/api/v1/events?device=SN-000042", "", &evs)
	kinds := map[string]bool{}
	for _, e := range evs.Events {
		kinds[e.Kind] = true
	}
	for _, k := range []string{"provisioned", "connect"} {
		if !kinds[k] {
			t.Errorf("no %q event for SN-000042 in %+v", k, evs.Events)
		}
	}
}

// TestKill9LosesNoAcknowledgedMessage: devices stream QoS 1 telemetry; the
// server is killed with SIGKILL mid-stream; after a restart every message
// that had been acknowledged is there.
func TestKill9LosesNoAcknowledgedMessage(t *testing.T) {
	data := t.TempDir()
	s := startServer(t, data)
	ca := s.deviceCA()
	const devices = 8
	var (
		mu    sync.Mutex
		acked = map[string][]int64{}
		total atomic.Int64
		wg    sync.WaitGroup
	)
	base := time.Now().Add(-time.Hour).UnixMilli()
	for i := 0; i < devices; i++ {
		name := fmt.Sprintf("SN-K%03d", i)
		dev := pkitest.IssueDevice(t, ca, name, pkitest.Opts{})
		c, err := s.connect(dev.CertPath, dev.KeyPath, name)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := int64(0); ; seq++ {
				msg := fmt.Sprintf(`{"ts":%d,"values":{"seq":%d}}`, base+seq, seq)
				tok := c.Publish("v1/devices/me/telemetry", 1, false, msg)
				if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					return // the server is gone
				}
				mu.Lock()
				acked[name] = append(acked[name], seq)
				mu.Unlock()
				total.Add(1)
			}
		}()
	}
	tstest.CheckFor(t, 60*time.Second, 10*time.Millisecond, func() error {
		if n := total.Load(); n < 3000 {
			return fmt.Errorf("only %d acknowledged so far", n)
		}
		return nil
	})
	s.kill()
	wg.Wait()

	s2 := startServer(t, data)
	mu.Lock()
	defer mu.Unlock()
	for name, seqs := range acked {
		var got map[string][]struct {
			TS    int64           `json:"ts"`
			Value json.RawMessage `json:"value"`
		}
		path := fmt.Sprintf("/api/v1/devices/%s/telemetry?keys=seq&from=%d&to=%d&limit=10000&order=asc", name, base, base+1_000_000)
		if code := s2.api("GET", path, "", &got); code != 200 {
			t.Fatalf("%s: query %d", name, code)
		}
		have := map[string]bool{}
		for _, p := range got["seq"] {
			have[string(p.Value)] = true
		}
		missing := 0
		for _, seq := range seqs {
			if !have[fmt.Sprint(seq)] {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%s: %d of %d acknowledged messages lost", name, missing, len(seqs))
		}
	}
	t.Logf("%d messages acknowledged before SIGKILL, all found after restart", total.Load())
}
