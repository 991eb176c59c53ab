package ota

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
)

// engineEnv is an engine on a real SQLite store and the in-process bus
// (ticking once an hour: tests sweep by hand), with device sn and a package.
func engineEnv(t *testing.T, sn string) (store.Store, *inproc.Bus, *Engine, store.Device, store.OTAPackage) {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	b := inproc.New()
	e, err := Start(Config{Store: st, Bus: b, Tick: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(); b.Close(); st.Close() })
	d, _, _, err := st.EnsureDevice(ctx, store.Device{Name: sn, Profile: "default"}, store.Credential{Serial: "1", SHA256: "a"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.CreateOTAPackage(ctx, store.OTAPackage{Title: "fw", Version: "2", Checksum: "x", ChecksumAlgorithm: "SHA256"}, []byte("image"))
	if err != nil {
		t.Fatal(err)
	}
	return st, b, e, d, p
}

// TestReconcileFromStoredTelemetry: a report the full queue dropped is
// not lost: the next sweep reads the stored fw_state and applies it.
func TestReconcileFromStoredTelemetry(t *testing.T) {
	ctx := context.Background()
	st, _, e, d, p := engineEnv(t, "SN-Q")
	at := time.Now().Add(-time.Minute)
	if _, err := st.PutOTADevice(ctx, store.OTADevice{DeviceID: d.ID, PackageID: p.ID, Source: store.OTASourceDevice,
		State: store.OTADownloading, StateAt: at, Deadline: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	val, _ := json.Marshal(store.OTAVerified)
	if err := st.AppendTelemetry(ctx, []store.Record{{DeviceID: d.ID, TS: time.Now().UnixMilli(), Values: []store.KV{{Key: "fw_state", Value: val}}}}); err != nil {
		t.Fatal(err)
	}
	e.missed.Store(true)
	e.sweep(ctx)
	row, err := st.GetOTADevice(ctx, d.ID)
	if err != nil || row.State != store.OTAVerified {
		t.Fatalf("after reconcile: %+v %v, want VERIFIED", row, err)
	}
	if e.missed.Load() {
		t.Error("still marked as missing reports")
	}
}

// TestReportFromTheBus: a gateway notice on bus.TopicOTAReport moves the
// device on, with the state in fw_state or, as older Arduino SDKs send
// it, current_fw_state; a notice not newer than the last is ignored.
func TestReportFromTheBus(t *testing.T) {
	ctx := context.Background()
	st, b, _, d, p := engineEnv(t, "SN-B")
	if _, err := st.PutOTADevice(ctx, store.OTADevice{DeviceID: d.ID, PackageID: p.ID, Source: store.OTASourceDevice,
		State: store.OTAInitiated, Deadline: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	wait := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			row, _ := st.GetOTADevice(ctx, d.ID)
			if row.State == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("state %s, want %s", row.State, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	now := time.Now().UnixNano()
	b.Publish(ctx, bus.TopicOTAReport, []byte(fmt.Sprintf(`{"device":"SN-B","ts":1,"at":%d,"values":{"current_fw_state":"DOWNLOADING"}}`, now)))
	wait(store.OTADownloading)
	b.Publish(ctx, bus.TopicOTAReport, []byte(fmt.Sprintf(`{"device":"SN-B","ts":1,"at":%d,"values":{"fw_state":"FAILED","fw_error":"late copy"}}`, now)))
	b.Publish(ctx, bus.TopicOTAReport, []byte(fmt.Sprintf(`{"device":"SN-B","ts":1,"at":%d,"values":{"fw_state":"VERIFIED","fw_error":""}}`, now+1)))
	wait(store.OTAVerified)
	if h, _ := st.OTAHistory(ctx, d.ID, time.Time{}, 0); len(h) != 3 {
		t.Errorf("history %+v: the stale FAILED must not be in it", h)
	}
}

// TestQueuedBehindAWaitingRollout: a device assigned directly starts at
// the next sweep even when more than a sweep's worth of queued devices
// (a paused rollout's, with lower ids) wait before it; and so does the
// current wave of a rollout whose later waves hold lower ids.
func TestQueuedBehindAWaitingRollout(t *testing.T) {
	ctx := context.Background()
	st, _, e, _, p := engineEnv(t, "SN-0")
	const n = 1100 // more than the 1000 queued rows one query reads
	var held, later []store.OTARolloutMember
	for i := range n {
		d, _, _, err := st.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("SN-H%04d", i)}, store.Credential{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, store.OTARolloutMember{DeviceID: d.ID})
		d, _, _, err = st.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("SN-L%04d", i)}, store.Credential{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		later = append(later, store.OTARolloutMember{DeviceID: d.ID, Wave: 1})
	}
	if _, err := st.CreateOTARollout(ctx, store.OTARollout{PackageID: p.ID, Status: store.RolloutPaused, PauseReason: "held",
		Waves: []int{n}, Total: n, SuccessPercent: 100, FailureMax: 1}, held); err != nil {
		t.Fatal(err)
	}
	first, _, _, err := st.EnsureDevice(ctx, store.Device{Name: "SN-FIRST"}, store.Credential{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	direct, _, _, err := st.EnsureDevice(ctx, store.Device{Name: "SN-DIRECT"}, store.Credential{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The second rollout's first wave is its newest device.
	r, err := st.CreateOTARollout(ctx, store.OTARollout{PackageID: p.ID, Status: store.RolloutRunning, Waves: []int{1, n},
		Total: n + 1, SuccessPercent: 100, FailureMax: 1}, append([]store.OTARolloutMember{{DeviceID: first.ID}}, later...))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutOTADevice(ctx, store.OTADevice{DeviceID: direct.ID, PackageID: p.ID, Source: store.OTASourceDevice,
		State: store.OTAQueued}); err != nil {
		t.Fatal(err)
	}
	e.sweep(ctx)
	for _, d := range []store.Device{direct, first} {
		if row, err := st.GetOTADevice(ctx, d.ID); err != nil || row.State != store.OTAInitiated {
			t.Errorf("%s after a sweep: %+v %v, want INITIATED", d.Name, row, err)
		}
	}
	if rows, err := st.ListOTADevices(ctx, store.OTADeviceQuery{RolloutID: r.ID, States: []string{store.OTAInitiated}}); err != nil || len(rows) != 1 {
		t.Errorf("rollout %d: %d devices initiated (%v), want only its first wave's", r.ID, len(rows), err)
	}
}
