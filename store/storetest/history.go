package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// testHistoryPurge: the bounded removal of alarms, persistent RPC calls
// and OTA history, per device or for every device, sparing what is still
// under way when asked to (retention) and not otherwise (ownership wipe).
func testHistoryPurge(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "hist-dev")
	other := mustDevice(t, s, "hist-other")
	now := time.Now().Truncate(time.Millisecond)
	cut := now.Add(-time.Hour)
	purge := func(what string, del func(context.Context, store.HistoryPurge) (int64, bool, error), q store.HistoryPurge, wantN int64, wantMore bool) {
		t.Helper()
		n, more, err := del(ctx, q)
		if err != nil || n != wantN || more != wantMore {
			t.Fatalf("%s(%+v) = %d, %v, %v; want %d, %v", what, q, n, more, err, wantN, wantMore)
		}
	}

	// Alarms.
	alarm := func(dev store.Device, typ string, start, cleared time.Time) int64 {
		t.Helper()
		a, _, err := s.RaiseAlarm(ctx, store.AlarmRaise{DeviceID: dev.ID, Device: dev.Name, Type: typ, Severity: store.SeverityMinor, Time: start})
		if err != nil {
			t.Fatalf("RaiseAlarm: %v", err)
		}
		if !cleared.IsZero() {
			if _, _, err := s.ClearAlarm(ctx, a.ID, "test", cleared); err != nil {
				t.Fatalf("ClearAlarm: %v", err)
			}
		}
		return a.ID
	}
	alarm(d, "old-cleared", now.Add(-3*time.Hour), now.Add(-2*time.Hour))
	oldActive := alarm(d, "old-active", now.Add(-3*time.Hour), time.Time{})
	recent := alarm(d, "recent-cleared", now.Add(-3*time.Hour), now.Add(-10*time.Minute))
	alarm(other, "old-cleared", now.Add(-3*time.Hour), now.Add(-2*time.Hour))
	alarmIDs := func(dev store.Device) []int64 {
		t.Helper()
		as, err := s.ListAlarms(ctx, store.AlarmQuery{DeviceID: dev.ID})
		if err != nil {
			t.Fatalf("ListAlarms: %v", err)
		}
		var out []int64
		for _, a := range as {
			out = append(out, a.ID)
		}
		return out
	}
	dels := s.DeleteAlarmsBefore
	purge("DeleteAlarmsBefore", dels, store.HistoryPurge{DeviceID: d.ID, Before: cut, Finished: true, Limit: 1}, 1, true)
	purge("DeleteAlarmsBefore", dels, store.HistoryPurge{DeviceID: d.ID, Before: cut, Finished: true, Limit: 1}, 0, false)
	if got := alarmIDs(d); !sameIDs(got, recent, oldActive) {
		t.Fatalf("after the retention of cleared alarms: %v; want %v", got, []int64{recent, oldActive})
	}
	if got := alarmIDs(other); len(got) != 1 {
		t.Fatalf("the other device's alarms: %v; want its one, untouched", got)
	}
	purge("DeleteAlarmsBefore", dels, store.HistoryPurge{Before: cut, Finished: true}, 1, false)
	if got := alarmIDs(other); len(got) != 0 {
		t.Fatalf("after the retention of every device's cleared alarms: %v; want none", got)
	}
	// A wipe takes every alarm begun before the bound, active or not.
	purge("DeleteAlarmsBefore", dels, store.HistoryPurge{DeviceID: d.ID, Before: now.Add(-2 * time.Hour)}, 2, false)
	if got := alarmIDs(d); len(got) != 0 {
		t.Fatalf("after the wipe: %v; want none", got)
	}

	// Persistent RPC calls.
	call := func(dev store.Device, created time.Time, final bool) int64 {
		t.Helper()
		r, err := s.CreateRPC(ctx, store.RPC{DeviceID: dev.ID, Device: dev.Name, Method: "m", Params: raw(`{}`),
			TimeoutMs: 1000, CreatedAt: created, ExpiresAt: created.Add(24 * time.Hour)})
		if err != nil {
			t.Fatalf("CreateRPC: %v", err)
		}
		if final {
			if _, ok, err := s.TransitionRPC(ctx, store.RPCTransition{ID: r.ID, From: []store.RPCStatus{store.RPCQueued},
				Attempts: -1, To: store.RPCSuccessful, At: created.Add(time.Minute)}); !ok || err != nil {
				t.Fatalf("TransitionRPC = %v, %v", ok, err)
			}
		}
		return r.ID
	}
	call(d, now.Add(-3*time.Hour), true)
	oldQueued := call(d, now.Add(-3*time.Hour), false)
	fresh := call(d, now, true)
	otherCall := call(other, now.Add(-3*time.Hour), false)
	rpcIDs := func(dev store.Device) []int64 {
		t.Helper()
		rs, err := s.ListRPCs(ctx, store.RPCQuery{DeviceID: dev.ID})
		if err != nil {
			t.Fatalf("ListRPCs: %v", err)
		}
		return ids(rs)
	}
	delr := s.DeleteRPCsBefore
	purge("DeleteRPCsBefore", delr, store.HistoryPurge{Before: cut, Finished: true}, 1, false)
	if got := rpcIDs(d); !sameIDs(got, fresh, oldQueued) {
		t.Fatalf("after the retention of finished calls: %v; want %v", got, []int64{fresh, oldQueued})
	}
	purge("DeleteRPCsBefore", delr, store.HistoryPurge{DeviceID: d.ID, Before: cut}, 1, false)
	if got := rpcIDs(d); !sameIDs(got, fresh) {
		t.Fatalf("after the wipe: %v; want %v", got, []int64{fresh})
	}
	if got := rpcIDs(other); !sameIDs(got, otherCall) {
		t.Fatalf("the other device's calls: %v; want %v", got, []int64{otherCall})
	}

	// OTA history: old entries go, the device's current target stays.
	p, err := s.CreateOTAPackage(ctx, store.OTAPackage{Title: "hist-fw", Version: "1"}, []byte("fw"))
	if err != nil {
		t.Fatalf("CreateOTAPackage: %v", err)
	}
	for _, e := range []struct {
		dev store.Device
		at  time.Time
	}{{d, now.Add(-3 * time.Hour)}, {d, now}, {other, now.Add(-3 * time.Hour)}} {
		if _, err := s.PutOTADevice(ctx, store.OTADevice{DeviceID: e.dev.ID, PackageID: p.ID, Source: store.OTASourceDevice,
			State: store.OTAQueued, StateAt: e.at}); err != nil {
			t.Fatalf("PutOTADevice: %v", err)
		}
	}
	purge("DeleteOTAHistoryBefore", s.DeleteOTAHistoryBefore, store.HistoryPurge{DeviceID: d.ID, Before: cut}, 1, false)
	if h, err := s.OTAHistory(ctx, d.ID, time.Time{}, 0); err != nil || len(h) != 1 || !h[0].Time.Equal(now) {
		t.Fatalf("OTAHistory after the purge = %+v, %v; want the recent entry only", h, err)
	}
	if h, err := s.OTAHistory(ctx, other.ID, time.Time{}, 0); err != nil || len(h) != 1 {
		t.Fatalf("the other device's OTA history = %+v, %v; want its one entry", h, err)
	}
	if _, err := s.GetOTADevice(ctx, d.ID); err != nil {
		t.Fatalf("GetOTADevice after the purge: %v; want the target kept", err)
	}
}

// sameIDs tells whether got is exactly want, in order.
func sameIDs(got []int64, want ...int64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}
