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
