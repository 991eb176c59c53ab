package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
	"github.com/thingline/thingline/twin"
)

// TestFailoverKill9 runs three nodes on PostgreSQL and NATS with device
// twins streaming telemetry, each twin given all three nodes, and kills
// one node with SIGKILL. The twins it held move to the survivors, every
// device is shown online on a surviving node within seconds, RPC reaches
// the moved twins through another node's API, and no telemetry the nodes
// acknowledged is missing.
func TestFailoverKill9(t *testing.T) {
	storeURL, natsURL := clusterStore(t)
	cluster := []string{"--store", storeURL, "--bus", natsURL}
	a := startServer(t, t.TempDir(), append(cluster, "--node-id", "fo-a")...)
	shared := []string{"--tls-cert", filepath.Join(a.pkiDir(), "server.crt"), "--tls-key", filepath.Join(a.pkiDir(), "server.key"),
		"--device-ca", filepath.Join(a.pkiDir(), "device-ca.crt")}
	b := startServer(t, t.TempDir(), append(append(cluster, "--node-id", "fo-b"), shared...)...)
	c := startServer(t, t.TempDir(), append(append(cluster, "--node-id", "fo-c"), shared...)...)

	const n = 9
	units := filepath.Join(t.TempDir(), "units")
	if out, err := thingline(t, "factory", "inject", "--ca-dir", a.pkiDir(), "--out", units, "--count", fmt.Sprint(n), "--quiet"); err != nil {
		t.Fatalf("factory inject: %v\n%s", err, out)
	}
	sim, err := twin.NewSim(twin.SimConfig{
		Units: units, Count: n,
		Broker:   fmt.Sprintf("mqtts://%s,mqtts://%s,mqtts://%s", a.mqttAddr, b.mqttAddr, c.mqttAddr),
		Interval: 200 * time.Millisecond, Ramp: 50, AttrEvery: time.Hour,
		Keepalive: 5 * time.Second, BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second, Timeout: 5 * time.Second,
		Logf: func(string, ...any) {},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	simDone := make(chan error, 1)
	go func() { simDone <- sim.Run(ctx) }()
	defer func() { stop(); <-simDone }()

	type dev struct {
		Name   string
		Online bool
		Node   string
	}
	devices := func(s *server) map[string]dev {
		var resp struct{ Devices []dev }
		if code := s.api("GET", "/api/v1/devices?limit=1000", "", &resp); code != 200 {
			t.Fatalf("list devices: %d", code)
		}
		m := map[string]dev{}
		for _, d := range resp.Devices {
			m[d.Name] = d
		}
		return m
	}
	onlineOn := func(s *server, allowed ...string) error {
		ds := devices(s)
		if len(ds) != n {
			return fmt.Errorf("%d devices, want %d", len(ds), n)
		}
		for _, d := range ds {
			ok := false
			for _, node := range allowed {
				ok = ok || (d.Online && d.Node == node)
			}
			if !ok {
				return fmt.Errorf("%s online=%v on %q, want online on one of %v", d.Name, d.Online, d.Node, allowed)
			}
		}
		return nil
	}
	tstest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error { return onlineOn(b, "fo-a", "fo-b", "fo-c") })
	var onA []string
	for name, d := range devices(b) {
		if d.Node == "fo-a" {
			onA = append(onA, name)
		}
	}
	if len(onA) == 0 {
		t.Fatal("no twin chose node a: the brokers list is not spread")
	}
	// Let them stream, then the power cut.
	acked := sim.Stats().Acked.Load()
	tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if got := sim.Stats().Acked.Load(); got < acked+3*n {
			return fmt.Errorf("%d acknowledged", got)
		}
		return nil
	})
	killed := time.Now()
	a.kill()
	tstest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error { return onlineOn(b, "fo-b", "fo-c") })
	moved := time.Since(killed)
	t.Logf("%d of %d twins were on the killed node; all online on the survivors %v after SIGKILL", len(onA), n, moved.Round(10*time.Millisecond))

	// RPC through node c's API reaches every moved twin, wherever it is now.
	for _, name := range onA {
		var reply map[string]any
		code := c.api("POST", "/api/v1/devices/"+name+"/rpc", `{"method":"getState","params":{},"timeoutMs":10000}`, &reply)
		if code != 200 {
			t.Errorf("rpc to moved twin %s: %d %v", name, code, reply)
		}
	}
	// Still streaming after the move.
	acked = sim.Stats().Acked.Load()
	tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if got := sim.Stats().Acked.Load(); got < acked+3*n {
			return fmt.Errorf("%d acknowledged", got)
		}
		return nil
	})
	stop()
	<-simDone
	simDone <- nil

	// Every acknowledged sample is stored. Acked counts every publish the
	// twins had acknowledged; besides its samples a twin publishes three
	// messages per session (its attributes, its firmware state as
	// telemetry without a temperature, an attribute request) and one per
	// RPC answered, so samples acknowledged are at least
	// Acked - 3·Connects - RPCs.
	st := sim.Stats()
	wantAtLeast := st.Acked.Load() - 3*st.Connects.Load() - st.RPCs.Load()
	var stored int64
	for name := range devices(b) {
		var pts map[string][]struct{ TS int64 }
		if code := b.api("GET", "/api/v1/devices/"+name+"/telemetry?keys=temperature&limit=10000", "", &pts); code != 200 {
			t.Fatalf("telemetry of %s: %d", name, code)
		}
		stored += int64(len(pts["temperature"]))
	}
	t.Logf("acknowledged %d publishes over %d sessions and %d RPCs: at least %d samples; %d stored", st.Acked.Load(), st.Connects.Load(), st.RPCs.Load(), wantAtLeast, stored)
	if stored < wantAtLeast {
		t.Errorf("%d samples stored, fewer than the %d acknowledged: acknowledged data lost", stored, wantAtLeast)
	}
	if moved > 30*time.Second {
		t.Errorf("twins took %v to be back online on the survivors", moved)
	}
}
