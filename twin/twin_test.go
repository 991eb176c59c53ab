package twin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
)

// runTwin starts tw.Run and stops it at the end of the test.
func runTwin(t *testing.T, tw *Twin) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("twin did not stop")
		}
	})
}

func provisionedTwin(t *testing.T, p *testPKI, broker string) (*Twin, string) {
	t.Helper()
	unit := filepath.Join(t.TempDir(), "SN-000001")
	writeUnit(t, unit, p.unitFiles(t, "SN-000001", "abcd1234"))
	state := t.TempDir()
	if err := SaveState(state, State{WiFi: &WiFiCredentials{SSID: "home", Passphrase: "secret123"}}); err != nil {
		t.Fatal(err)
	}
	tw, err := New(Config{Files: DirReader(unit), StateDir: state, Broker: broker, Prov: ProvNone,
		Interval: 50 * time.Millisecond, BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		AttrEvery: 200 * time.Millisecond, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	return tw, state
}

func TestTwinStreamsTelemetry(t *testing.T) {
	p := newTestPKI(t)
	b := startBroker(t, p, "127.0.0.1:0")
	tw, _ := provisionedTwin(t, p, "mqtts://"+b.addr)
	runTwin(t, tw)

	tele := b.waitFor(t, "SN-000001", TopicTelemetry, 6)
	for _, m := range tele {
		if bytes.Contains(m.payload, []byte(`"current_fw_version"`)) {
			continue // the firmware report on connect (twin/ota.go)
		}
		var v map[string]json.Number
		if err := json.Unmarshal(m.payload, &v); err != nil {
			t.Fatalf("telemetry %s: %v", m.payload, err)
		}
		if len(v) != 2 || !strings.Contains(v["temperature"].String(), ".") || strings.Contains(v["humidity"].String(), ".") {
			t.Fatalf("telemetry %s: want a decimal temperature and an integer humidity", m.payload)
		}
	}
	attrs := b.waitFor(t, "SN-000001", TopicAttributes, 2)
	var first map[string]any
	if err := json.Unmarshal(attrs[0].payload, &first); err != nil {
		t.Fatal(err)
	}
	if first["sn"] != "SN-000001" || first["fw_title"] != FirmwareTitle || first["fw_version"] != DefaultFirmwareVersion {
		t.Fatalf("connect attributes %s", attrs[0].payload)
	}
	if !strings.Contains(string(attrs[1].payload), `"uptime"`) {
		t.Fatalf("periodic attributes %s: no uptime", attrs[1].payload)
	}
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if s := tw.Stats(); s.Acked.Load() < 5 {
			return fmt.Errorf("%d acked", s.Acked.Load())
		}
		return nil
	})
}

// rpc sends one server-side RPC through the broker and waits for the answer.
func rpc(t *testing.T, b *testBroker, cn string, id int, req string) map[string]any {
	t.Helper()
	topic := fmt.Sprintf("%s%d", TopicRPCResponse, id)
	if err := b.srv.Publish(fmt.Sprintf("%s%d", TopicRPCRequest, id), []byte(req), false, 1); err != nil {
		t.Fatal(err)
	}
	got := b.waitFor(t, cn, topic, 1)
	var out map[string]any
	if err := json.Unmarshal(got[0].payload, &out); err != nil {
		t.Fatalf("rpc answer %s: %v", got[0].payload, err)
	}
	return out
}

func TestTwinRPC(t *testing.T) {
	p := newTestPKI(t)
	b := startBroker(t, p, "127.0.0.1:0")
	tw, state := provisionedTwin(t, p, "mqtts://"+b.addr)
	runTwin(t, tw)
	b.waitFor(t, "SN-000001", TopicTelemetry, 1)

	st := rpc(t, b, "SN-000001", 1, `{"method":"getState","params":{}}`)
	if st["sn"] != "SN-000001" || st["ssid"] != "home" || st["interval_ms"] != 50.0 || st["connected"] != true {
		t.Fatalf("getState = %v", st)
	}
	if _, ok := st["passphrase"]; ok {
		t.Fatalf("getState leaks the passphrase: %v", st)
	}

	if got := rpc(t, b, "SN-000001", 2, `{"method":"setInterval","params":{"ms":120}}`); got["ok"] != true {
		t.Fatalf("setInterval = %v", got)
	}
	if got := rpc(t, b, "SN-000001", 3, `{"method":"setInterval","params":1}`); got["error"] == nil {
		t.Fatalf("setInterval 1 ms accepted: %v", got)
	}
	saved, err := LoadState(state)
	if err != nil || saved.IntervalMs != 120 {
		t.Fatalf("persisted interval = %d, %v; want 120", saved.IntervalMs, err)
	}
	if got := rpc(t, b, "SN-000001", 4, `{"method":"nope"}`); got["error"] == nil {
		t.Fatalf("unknown method answered %v", got)
	}

	// A shared attribute update changes the interval as setInterval does.
	if err := b.srv.Publish(TopicAttributes, []byte(`{"interval":90,"color":"red"}`), false, 1); err != nil {
		t.Fatal(err)
	}
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if s := tw.State(); s.IntervalMs != 90 {
			return fmt.Errorf("interval %d, want 90", s.IntervalMs)
		}
		return nil
	})

	boots := tw.State().BootCount
	if got := rpc(t, b, "SN-000001", 5, `{"method":"reboot"}`); got["ok"] != true {
		t.Fatalf("reboot = %v", got)
	}
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if s := tw.State(); s.BootCount != boots+1 {
			return fmt.Errorf("boot count %d, want %d", s.BootCount, boots+1)
		}
		if !tw.View().Connected {
			return errors.New("not reconnected")
		}
		return nil
	})
	if tw.State().IntervalMs != 90 {
		t.Fatalf("reboot lost the interval: %+v", tw.State())
	}
}

func TestTwinFactoryResetByRPC(t *testing.T) {
	p := newTestPKI(t)
	b := startBroker(t, p, "127.0.0.1:0")
	tw, state := provisionedTwin(t, p, "mqtts://"+b.addr)
	sn := tw.Identity().SN
	runTwin(t, tw)
	b.waitFor(t, sn, TopicTelemetry, 1)
	rpc(t, b, sn, 7, `{"method":"setInterval","params":{"ms":70}}`)
	if got := rpc(t, b, sn, 8, `{"method":"factoryReset"}`); got["ok"] != true {
		t.Fatalf("factoryReset = %v", got)
	}
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		s, err := LoadState(state)
		if err != nil {
			return err
		}
		if s.WiFi != nil || s.IntervalMs != 0 {
			return fmt.Errorf("state after reset: %+v", s)
		}
		return nil
	})
	// With --prov none the reset twin comes back at once, with the same
	// identity: the SPIFFS image was not touched.
	n := len(b.find(sn, TopicTelemetry))
	b.waitFor(t, sn, TopicTelemetry, n+2)
	if tw.Identity().SN != sn {
		t.Fatalf("identity changed to %s", tw.Identity().SN)
	}
}

func TestTwinReconnectsAfterServerRestart(t *testing.T) {
	p := newTestPKI(t)
	b := startBroker(t, p, "127.0.0.1:0")
	addr := b.addr
	tw, _ := provisionedTwin(t, p, "mqtts://"+addr)
	runTwin(t, tw)
	b.waitFor(t, "SN-000001", TopicTelemetry, 2)
	b.close()
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if tw.Stats().Connected.Load() != 0 {
			return errors.New("still connected")
		}
		return nil
	})
	var b2 *testBroker
	// The port may be taken for a moment by the old listener's teardown.
	tstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%v", r)
			}
		}()
		b2 = startBrokerErr(t, p, addr)
		if b2 == nil {
			return errors.New("port busy")
		}
		return nil
	})
	b2.waitFor(t, "SN-000001", TopicTelemetry, 2)
	if c := tw.Stats().Connects.Load(); c < 2 {
		t.Fatalf("%d connects, want 2", c)
	}
}

func TestTwinRefusesUntrustedServer(t *testing.T) {
	p := newTestPKI(t)
	other := newTestPKI(t)
	// The broker's certificate comes from another root than the chain in
	// the image: the twin must not talk to it.
	b := startBroker(t, &testPKI{root: p.root, server: other.server}, "127.0.0.1:0")
	tw, _ := provisionedTwin(t, p, "mqtts://"+b.addr)
	runTwin(t, tw)
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if tw.Stats().Errors.Load() < 2 {
			return errors.New("no failed attempt yet")
		}
		return nil
	})
	if tw.Stats().Connects.Load() != 0 {
		t.Fatal("connected to an untrusted server")
	}
}

func TestTwinKeepsIdleSessionAlive(t *testing.T) {
	p := newTestPKI(t)
	b := startBroker(t, p, "127.0.0.1:0")
	unit := filepath.Join(t.TempDir(), "SN-000009")
	writeUnit(t, unit, p.unitFiles(t, "SN-000009", "x"))
	state := t.TempDir()
	// Telemetry far apart and a 1 s keepalive: only PINGREQs keep the
	// session, which the broker drops after 1.5 s of silence.
	tw, err := New(Config{Files: DirReader(unit), StateDir: state, Broker: "mqtts://" + b.addr, Prov: ProvNone,
		Interval: time.Hour, Keepalive: time.Second, AttrEvery: time.Hour, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	runTwin(t, tw)
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if v := tw.View(); v.UptimeS < 2 {
			return fmt.Errorf("uptime %d s", v.UptimeS)
		}
		return nil
	})
	if s := tw.Stats(); s.Connects.Load() != 1 || s.Errors.Load() != 0 || !tw.View().Connected {
		t.Fatalf("connects %d, errors %d: the idle session was dropped", s.Connects.Load(), s.Errors.Load())
	}
}

func TestTwinStopsWhileServerIsSilent(t *testing.T) {
	// A server that accepts and never sends CONNACK must not hold up Ctrl-C
	// for the 10 s CONNECT timeout.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	p := newTestPKI(t)
	unit := filepath.Join(t.TempDir(), "SN-000010")
	writeUnit(t, unit, p.unitFiles(t, "SN-000010", "x"))
	tw, err := New(Config{Files: DirReader(unit), StateDir: t.TempDir(), Broker: "mqtt://" + ln.Addr().String(), Prov: ProvNone})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tw.Run(ctx) }()
	c := <-accepted
	defer c.Close()
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("stopping took %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("twin did not stop while waiting for CONNACK")
	}
}
