package storetest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

func testDeviceStates(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "stateful")
	e := mustDevice(t, s, "other")
	if _, err := s.GetDeviceState(ctx, d.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("state of a device never active: err %v; want ErrNotFound", err)
	}
	t0 := base
	woke, err := s.RecordActivity(ctx, []store.Activity{{DeviceID: d.ID, At: t0, Connect: true}, {DeviceID: e.ID, At: t0.Add(time.Hour)}})
	if err != nil || len(woke) != 0 {
		t.Fatalf("first activity: woke %v, err %v", woke, err)
	}
	st, err := s.GetDeviceState(ctx, d.ID)
	if err != nil || !st.Active || !st.LastActivity.Equal(t0) || !st.LastConnect.Equal(t0) || st.Device != "stateful" || st.Profile != "default" {
		t.Fatalf("state = %+v, %v", st, err)
	}
	// Activity never moves back; a disconnect only stamps its time.
	if _, err := s.RecordActivity(ctx, []store.Activity{{DeviceID: d.ID, At: t0.Add(-time.Minute)}, {DeviceID: d.ID, Disconnect: t0.Add(time.Second)}}); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.GetDeviceState(ctx, d.ID); !st.LastActivity.Equal(t0) || !st.LastDisconnect.Equal(t0.Add(time.Second)) || !st.Active {
		t.Fatalf("after older activity and disconnect: %+v", st)
	}
	stale, err := s.StaleDevices(ctx, t0.Add(time.Minute), 10)
	if err != nil || len(stale) != 1 || stale[0].DeviceID != d.ID {
		t.Fatalf("StaleDevices = %+v, %v; want only %s", stale, err, d.Name)
	}
	// A sweep that read an older activity loses.
	if ok, err := s.MarkInactive(ctx, d.ID, t0.Add(-time.Second), t0.Add(time.Minute)); err != nil || ok {
		t.Fatalf("MarkInactive with a stale activity: %v, %v; want false", ok, err)
	}
	if ok, err := s.MarkInactive(ctx, d.ID, t0, t0.Add(time.Minute)); err != nil || !ok {
		t.Fatalf("MarkInactive: %v, %v; want true", ok, err)
	}
	if ok, err := s.MarkInactive(ctx, d.ID, t0, t0.Add(time.Minute)); err != nil || ok {
		t.Fatalf("second MarkInactive: %v, %v; want false", ok, err)
	}
	if st, _ := s.GetDeviceState(ctx, d.ID); st.Active || !st.InactiveSince.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after MarkInactive: %+v", st)
	}
	if stale, _ := s.StaleDevices(ctx, t0.Add(time.Hour*2), 10); len(stale) != 1 || stale[0].DeviceID != e.ID {
		t.Fatalf("StaleDevices after MarkInactive = %+v; want only %s", stale, e.Name)
	}
	woke, err = s.RecordActivity(ctx, []store.Activity{{DeviceID: d.ID, At: t0.Add(2 * time.Minute)}})
	if err != nil || !slices.Equal(woke, []int64{d.ID}) {
		t.Fatalf("activity after inactivity: woke %v, err %v; want [%d]", woke, err, d.ID)
	}
	if err := s.DeleteDevice(ctx, "stateful"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetDeviceState(ctx, d.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("state of a deleted device: err %v", err)
	}
}

func testProfiles(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	if ps, err := s.ListProfileSettings(ctx); err != nil || len(ps) != 0 {
		t.Fatalf("settings of an empty store = %v, %v", ps, err)
	}
	p := store.ProfileSettings{Profile: "sensors", InactivityTimeout: store.Duration(time.Minute), TelemetryRetention: store.Duration(90 * 24 * time.Hour)}
	if err := s.PutProfileSettings(ctx, p); err != nil {
		t.Fatal(err)
	}
	p.EventRetention = store.Duration(time.Hour)
	if err := s.PutProfileSettings(ctx, p); err != nil {
		t.Fatal(err)
	}
	if ps, err := s.ListProfileSettings(ctx); err != nil || len(ps) != 1 || ps[0] != p {
		t.Fatalf("settings = %+v, %v; want [%+v]", ps, err, p)
	}

	rule := store.AlarmRule{Profile: "sensors", Type: "hot", Key: "temperature", Severity: store.SeverityMajor,
		Raise: store.Condition{Op: ">", Value: raw("40"), Duration: store.Duration(time.Minute)},
		Clear: &store.Condition{Op: "<=", Value: raw("38"), Duration: store.Duration(time.Minute)}}
	r1, err := s.AddAlarmRule(ctx, rule)
	if err != nil || r1.ID == 0 {
		t.Fatalf("AddAlarmRule = %+v, %v", r1, err)
	}
	rule.Profile, rule.Clear = "other", nil
	r2, err := s.AddAlarmRule(ctx, rule)
	if err != nil {
		t.Fatal(err)
	}
	bad := rule
	bad.Raise.Op = "~"
	if _, err := s.AddAlarmRule(ctx, bad); err == nil {
		t.Error("rule with an unknown operator stored")
	}
	got, err := s.ListAlarmRules(ctx, "sensors")
	if err != nil || len(got) != 1 || got[0].ID != r1.ID || got[0].Clear == nil || got[0].Raise.Duration != store.Duration(time.Minute) || string(got[0].Raise.Value) != "40" {
		t.Fatalf("rules of sensors = %+v, %v", got, err)
	}
	if all, err := s.ListAlarmRules(ctx, ""); err != nil || len(all) != 2 || all[1].ID != r2.ID {
		t.Fatalf("all rules = %+v, %v", all, err)
	}
	if err := s.DeleteAlarmRule(ctx, r1.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAlarmRule(ctx, r1.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second delete: err %v; want ErrNotFound", err)
	}
	if got, _ := s.ListAlarmRules(ctx, "sensors"); len(got) != 0 {
		t.Errorf("rules after delete = %+v", got)
	}
}

func testLeases(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	for _, c := range []struct {
		holder string
		ttl    time.Duration
		want   bool
	}{
		{"a", time.Hour, true},
		{"b", time.Hour, false}, // a holds it
		{"a", time.Hour, true},  // renewed by its holder
		{"a", -time.Second, true},
		{"b", time.Hour, true}, // expired: taken over
		{"a", time.Hour, false},
	} {
		ok, err := s.TryLease(ctx, "job", c.holder, c.ttl)
		if err != nil || ok != c.want {
			t.Fatalf("TryLease(%s, %v) = %v, %v; want %v", c.holder, c.ttl, ok, err, c.want)
		}
	}
	if ok, err := s.TryLease(ctx, "other-job", "a", time.Hour); err != nil || !ok {
		t.Fatalf("another lease: %v, %v", ok, err)
	}
}

func testRetention(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "aging")
	keep := mustDevice(t, s, "young")
	hour := int64(3_600_000)
	t0 := base.UnixMilli() / hour * hour
	// Three hours of old data every 10 s, then one recent record.
	var recs []store.Record
	for ts := t0; ts < t0+3*hour; ts += 10_000 {
		recs = append(recs, store.Record{DeviceID: d.ID, TS: ts, Values: []store.KV{{Key: "t", Value: raw("1")}}})
		recs = append(recs, store.Record{DeviceID: keep.ID, TS: ts, Values: []store.KV{{Key: "t", Value: raw("1")}}})
	}
	recent := t0 + 10*hour
	recs = append(recs, store.Record{DeviceID: d.ID, TS: recent, Values: []store.KV{{Key: "t", Value: raw("2")}, {Key: "old", Value: raw("0")}}})
	// A key last sent long ago.
	recs = append(recs, store.Record{DeviceID: d.ID, TS: t0, Values: []store.KV{{Key: "gone", Value: raw("7")}}})
	if err := s.AppendTelemetry(ctx, recs); err != nil {
		t.Fatal(err)
	}
	compact(t, s)
	cutoff := t0 + 3*hour // everything of the first three hours goes
	var total int64
	for i := 0; ; i++ {
		n, more, err := s.DeleteTelemetryBefore(ctx, d.ID, cutoff, 300)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if !more {
			break
		}
		if i > 1000 {
			t.Fatal("DeleteTelemetryBefore never says it is done")
		}
	}
	if total < 3*360 {
		t.Errorf("removed %d records; want at least %d", total, 3*360)
	}
	q, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: d.ID, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	if len(q["t"]) != 1 || q["t"][0].TS != recent || len(q["gone"]) != 0 {
		t.Errorf("after retention: t=%d points (want 1, the recent one), gone=%d (want 0)", len(q["t"]), len(q["gone"]))
	}
	if l, err := s.LatestTelemetry(ctx, d.ID, nil); err != nil || len(l) != 2 || l["t"].TS != recent {
		t.Errorf("latest after retention = %v, %v; want t and old at the recent time", l, err)
	}
	if q, _ := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: keep.ID, Limit: 10000}); len(q["t"]) != 3*360 {
		t.Errorf("other device kept %d points; want %d", len(q["t"]), 3*360)
	}

	// Events: by device, by age, keeping the profiles that have their own.
	old := base.Add(-48 * time.Hour)
	for _, e := range []store.Event{
		{Device: "aging", Kind: store.EventConnect, Time: old},
		{Device: "young", Kind: store.EventConnect, Time: old},
		{Device: "", Kind: store.EventRefused, Time: old},
		{Device: "aging", Kind: store.EventConnect, Time: base},
	} {
		if err := s.AddEvent(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if n, more, err := s.DeleteEventsBefore(ctx, store.EventPurge{Before: base.Add(-time.Hour), Device: "aging"}); err != nil || n != 1 || more {
		t.Fatalf("DeleteEventsBefore(device) = %d, %v, %v; want 1", n, more, err)
	}
	if n, more, err := s.DeleteEventsBefore(ctx, store.EventPurge{Before: base.Add(-time.Hour), KeepProfiles: []string{"default"}}); err != nil || n != 1 || more {
		t.Fatalf("DeleteEventsBefore(keeping default) = %d, %v, %v; want 1 (the refusal)", n, more, err)
	}
	if n, more, err := s.DeleteEventsBefore(ctx, store.EventPurge{Before: base.Add(-time.Hour), Limit: 1}); err != nil || n != 1 || !more {
		t.Fatalf("DeleteEventsBefore(limit 1) = %d, %v, %v; want 1, more", n, more, err)
	}
	ev, err := s.ListEvents(ctx, store.EventQuery{})
	if err != nil || len(ev) != 1 || !ev[0].Time.Equal(base) {
		t.Fatalf("events left = %+v, %v; want the recent one", ev, err)
	}
}
