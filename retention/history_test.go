package retention

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest/stores"
)

// TestPassHistory: cleared alarms, finished RPC calls and OTA history
// older than their ages go, in steps; active alarms and unfinished calls
// stay however old, and so does everything younger. On SQLite and
// PostgreSQL.
func TestPassHistory(t *testing.T) { stores.Each(t, "retention", testPassHistory) }

func testPassHistory(t *testing.T, st store.Store) {
	ctx := context.Background()
	now := time.Now()
	old, young := now.Add(-72*time.Hour), now.Add(-time.Hour)
	p, err := st.CreateOTAPackage(ctx, store.OTAPackage{Title: "fw", Version: "1"}, []byte("fw"))
	if err != nil {
		t.Fatal(err)
	}
	const devices = 3
	for i := range devices {
		d, _, _, err := st.EnsureDevice(ctx, store.Device{Name: fmt.Sprint("SN-", i), Profile: "default"}, store.Credential{SHA256: fmt.Sprintf("%064x", i+1)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Per device: an alarm cleared long ago, one cleared recently, one
		// raised long ago and still active.
		for typ, cleared := range map[string]time.Time{"old": old, "young": young, "active": {}} {
			a, _, err := st.RaiseAlarm(ctx, store.AlarmRaise{DeviceID: d.ID, Device: d.Name, Type: typ, Severity: store.SeverityMajor, Time: old.Add(-time.Hour)})
			if err != nil {
				t.Fatal(err)
			}
			if !cleared.IsZero() {
				if _, _, err := st.ClearAlarm(ctx, a.ID, "test", cleared); err != nil {
					t.Fatal(err)
				}
			}
		}
		// A call finished long ago, one finished recently, one still
		// queued from long ago.
		for _, finished := range []time.Time{old, young, {}} {
			r, err := st.CreateRPC(ctx, store.RPC{DeviceID: d.ID, Device: d.Name, Method: "m", Params: json.RawMessage("{}"),
				TimeoutMs: 1000, CreatedAt: old.Add(-time.Hour), ExpiresAt: now.Add(time.Hour)})
			if err != nil {
				t.Fatal(err)
			}
			if !finished.IsZero() {
				if _, ok, err := st.TransitionRPC(ctx, store.RPCTransition{ID: r.ID, From: []store.RPCStatus{store.RPCQueued},
					Attempts: -1, To: store.RPCFailed, At: finished}); !ok || err != nil {
					t.Fatalf("TransitionRPC = %v, %v", ok, err)
				}
			}
		}
		// An old OTA state change and a young one.
		for _, at := range []time.Time{old, young} {
			if _, err := st.PutOTADevice(ctx, store.OTADevice{DeviceID: d.ID, PackageID: p.ID, Source: store.OTASourceDevice, State: store.OTAQueued, StateAt: at}); err != nil {
				t.Fatal(err)
			}
		}
	}
	e := &Engine{cfg: Config{Store: st, Alarms: 48 * time.Hour, RPCs: 48 * time.Hour, OTAHistory: 48 * time.Hour, Step: 2, Pause: time.Millisecond}}
	res, err := e.Pass(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if res.Alarms != devices || res.RPCs != devices || res.OTA != devices || res.Steps < 3 {
		t.Errorf("pass: %+v; want %d alarms, calls and OTA entries removed, in steps of 2", res, devices)
	}
	as, err := st.ListAlarms(ctx, store.AlarmQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if a.Type == "old" {
			t.Errorf("alarm cleared long ago kept: %+v", a)
		}
	}
	rs, err := st.ListRPCs(ctx, store.RPCQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Status.Final() && r.UpdatedAt.Before(now.Add(-48*time.Hour)) {
			t.Errorf("call finished long ago kept: %+v", r)
		}
	}
	if len(as) != 2*devices || len(rs) != 2*devices {
		t.Errorf("%d alarms and %d calls left; want %d of each (the young and the active ones)", len(as), len(rs), 2*devices)
	}
	for i := range devices {
		d, err := st.GetDevice(ctx, fmt.Sprint("SN-", i))
		if err != nil {
			t.Fatal(err)
		}
		if h, err := st.OTAHistory(ctx, d.ID, time.Time{}, 0); err != nil || len(h) != 1 || !h[0].Time.Equal(young) {
			t.Errorf("%s OTA history: %+v, %v; want the young entry only", d.Name, h, err)
		}
	}
	// A second pass finds nothing.
	if res, err := e.Pass(ctx, now); err != nil || res.Alarms != 0 || res.RPCs != 0 || res.OTA != 0 {
		t.Errorf("second pass: %+v, %v", res, err)
	}
}
