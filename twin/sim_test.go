package twin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
)

func TestSim(t *testing.T) {
	p := newTestPKI(t)
	b := startBroker(t, p, "127.0.0.1:0")
	out := t.TempDir()
	const n = 12
	for i := range n {
		sn := fmt.Sprintf("SN-%06d", i+1)
		files := p.unitFiles(t, sn, "pop")
		dir := filepath.Join(out, sn)
		writeUnit(t, dir, files)
		if i%2 == 0 {
			// Half the units carry only the image, as a unit
			// directory whose loose files were cleaned up would.
			writeUnit(t, dir, map[string][]byte{"spiffs.bin": mustRead(t, buildImage(t, files))})
		}
	}
	writeUnit(t, filepath.Join(out, "SN-999999"), p.unitFiles(t, "SN-999999", "pop"))

	s, err := NewSim(SimConfig{Units: out, Count: n, Broker: "mqtts://" + b.addr, Interval: 50 * time.Millisecond,
		Ramp: 500, BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	for i := range n {
		b.waitFor(t, fmt.Sprintf("SN-%06d", i+1), TopicTelemetry, 3)
	}
	if got := b.find("SN-999999", TopicTelemetry); len(got) != 0 {
		t.Fatal("a unit beyond --count ran")
	}
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		st := s.Stats()
		if st.Connected.Load() != n || st.Acked.Load() < 3*n {
			return fmt.Errorf("connected %d, acked %d", st.Connected.Load(), st.Acked.Load())
		}
		return nil
	})
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("sim did not stop")
	}
	if c := s.Stats().Connected.Load(); c != 0 {
		t.Fatalf("%d sessions left after stop", c)
	}
	if _, err := NewSim(SimConfig{Units: out, Count: 100, Broker: "mqtts://" + b.addr}); err == nil {
		t.Fatal("count beyond the units accepted")
	}
}

func TestSchedulerRunsEachDeviceOnTime(t *testing.T) {
	// Devices with no connection still tick (their sensor drifts); the
	// scheduler must serve all of them from its one timer.
	cc := &cloudConfig{interval: 20 * time.Millisecond, keepalive: time.Minute, stats: new(Stats), logf: t.Logf, sched: newScheduler()}
	p := newTestPKI(t)
	files := p.unitFiles(t, "SN-000042", "x")
	id, err := LoadIdentity(func(name string) ([]byte, error) { return files[name], nil }, FileNames{})
	if err != nil {
		t.Fatal(err)
	}
	var devs []*device
	for range 50 {
		d := newDevice(id, cc, State{}, nil)
		devs = append(devs, d)
		cc.sched.schedule(d, time.Now())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go cc.sched.run(ctx, 2)
	start := time.Now()
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		for i, d := range devs {
			d.mu.Lock()
			next := d.nextTele
			d.mu.Unlock()
			if next.Before(start.Add(100 * time.Millisecond)) {
				return fmt.Errorf("device %d next due %v", i, next.Sub(start))
			}
		}
		return nil
	})
	cc.sched.remove(devs[0])
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOTAFailShare: a Sim told to fail updates on a share of its twins
// picks that many, spread over the fleet, and leaves the others updating.
func TestOTAFailShare(t *testing.T) {
	for _, tc := range []struct {
		n     int
		share float64
		want  int
	}{{10, 0.5, 5}, {100, 0.1, 10}, {7, 1, 7}, {3, 0.2, 0}, {1000, 0.25, 250}} {
		got, run, maxRun := 0, 0, 0
		for i := range tc.n {
			if otaFails(i, tc.share) {
				got++
				run++
				maxRun = max(maxRun, run)
			} else {
				run = 0
			}
		}
		if got != tc.want {
			t.Errorf("%d twins, share %v: %d fail; want %d", tc.n, tc.share, got, tc.want)
		}
		if tc.share < 1 && maxRun > 1 {
			t.Errorf("%d twins, share %v: %d failing twins in a row; want them spread", tc.n, tc.share, maxRun)
		}
	}

	p := newTestPKI(t)
	out := t.TempDir()
	const n = 6
	for i := range n {
		sn := fmt.Sprintf("SN-%06d", i+1)
		writeUnit(t, filepath.Join(out, sn), p.unitFiles(t, sn, "pop"))
	}
	s, err := NewSim(SimConfig{Units: out, Count: n, Broker: "mqtts://127.0.0.1:1", OTAFail: OTAFailVerify, OTAFailShare: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	var failing []string
	for _, d := range s.devs {
		switch d.otaFail {
		case OTAFailVerify:
			failing = append(failing, d.id.SN)
		case OTAFailNone:
		default:
			t.Errorf("%s: mode %q", d.id.SN, d.otaFail)
		}
	}
	if want := "SN-000002 SN-000004 SN-000006"; strings.Join(failing, " ") != want {
		t.Errorf("failing twins %v; want %s", failing, want)
	}
	for _, bad := range []SimConfig{{OTAFail: "sometimes"}, {OTAFail: OTAFailDownload, OTAFailShare: 1.5}} {
		bad.Units, bad.Count, bad.Broker = out, n, "mqtts://127.0.0.1:1"
		if _, err := NewSim(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
