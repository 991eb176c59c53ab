package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

func testAlarms(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "alarmed")
	other := mustDevice(t, s, "calm")
	raise := func(dev store.Device, typ string, sev store.Severity, at time.Time, detail string) (store.Alarm, bool) {
		t.Helper()
		r := store.AlarmRaise{DeviceID: dev.ID, Device: dev.Name, Type: typ, Severity: sev, Time: at}
		if detail != "" {
			r.Detail = raw(detail)
		}
		a, created, err := s.RaiseAlarm(ctx, r)
		if err != nil {
			t.Fatalf("RaiseAlarm(%s, %s): %v", dev.Name, typ, err)
		}
		return a, created
	}

	a1, created := raise(d, "offline", store.SeverityMinor, base, `{"n":1}`)
	if !created || a1.Count != 1 || a1.Status != store.AlarmActiveUnack || a1.Device != "alarmed" || a1.DeviceID != d.ID ||
		!a1.StartTime.Equal(base) || !a1.LastTime.Equal(base) || string(a1.Detail) != `{"n":1}` || a1.Severity != store.SeverityMinor {
		t.Fatalf("first raise = %+v, created %v", a1, created)
	}
	// De-duplication: the same type while active folds into the alarm.
	a2, created := raise(d, "offline", store.SeverityMinor, base.Add(time.Minute), `{"n":2}`)
	if created || a2.ID != a1.ID || a2.Count != 2 || !a2.LastTime.Equal(base.Add(time.Minute)) || !a2.StartTime.Equal(base) || string(a2.Detail) != `{"n":2}` {
		t.Fatalf("second raise = %+v, created %v; want folded into %d", a2, created, a1.ID)
	}
	// Another type or another device is another alarm.
	b, created := raise(d, "temperature", store.SeverityMajor, base, "")
	if !created || b.ID == a1.ID || b.Detail != nil {
		t.Fatalf("other type = %+v, created %v", b, created)
	}
	c, created := raise(other, "offline", store.SeverityWarning, base, "")
	if !created || c.ID == a1.ID {
		t.Fatalf("other device = %+v, created %v", c, created)
	}

	// Acknowledge: once.
	ack, changed, err := s.AckAlarm(ctx, a1.ID, "ops", base.Add(2*time.Minute))
	if err != nil || !changed || ack.Status != store.AlarmActiveAck || ack.AckBy != "ops" || !ack.AckTime.Equal(base.Add(2*time.Minute)) {
		t.Fatalf("ack = %+v, %v, %v", ack, changed, err)
	}
	if again, changed, err := s.AckAlarm(ctx, a1.ID, "other", base.Add(3*time.Minute)); err != nil || changed || again.AckBy != "ops" {
		t.Fatalf("second ack = %+v, %v, %v; want unchanged", again, changed, err)
	}
	// A raise at the same or a lower severity keeps the acknowledgement,
	// a higher one (an escalation) removes it.
	if a, _ := raise(d, "offline", store.SeverityWarning, base.Add(4*time.Minute), ""); a.Status != store.AlarmActiveAck || a.Severity != store.SeverityWarning {
		t.Fatalf("lower raise after ack = %+v; want ACTIVE_ACK, WARNING", a)
	}
	if a, _ := raise(d, "offline", store.SeverityCritical, base.Add(5*time.Minute), ""); a.Status != store.AlarmActiveUnack || a.AckBy != "" || a.Count != 4 {
		t.Fatalf("escalating raise after ack = %+v; want ACTIVE_UNACK, count 4", a)
	}

	// Clear: once; a later raise is a new alarm.
	cl, changed, err := s.ClearAlarm(ctx, a1.ID, "ops", base.Add(6*time.Minute))
	if err != nil || !changed || cl.Status != store.AlarmClearedUnack || cl.ClearBy != "ops" || cl.Active() {
		t.Fatalf("clear = %+v, %v, %v", cl, changed, err)
	}
	if _, changed, err := s.ClearAlarm(ctx, a1.ID, "ops", base.Add(7*time.Minute)); err != nil || changed {
		t.Fatalf("second clear: changed %v, err %v", changed, err)
	}
	if a, _, _ := s.AckAlarm(ctx, a1.ID, "ops", base.Add(8*time.Minute)); a.Status != store.AlarmClearedAck {
		t.Fatalf("ack after clear = %+v; want CLEARED_ACK", a)
	}
	a3, created := raise(d, "offline", store.SeverityMinor, base.Add(9*time.Minute), "")
	if !created || a3.ID == a1.ID || a3.Count != 1 {
		t.Fatalf("raise after clear = %+v, created %v; want a new alarm", a3, created)
	}
	// Clearing by device and type.
	if a, err := s.ClearActiveAlarm(ctx, d.ID, "offline", "system", base.Add(10*time.Minute)); err != nil || a.ID != a3.ID || a.ClearBy != "system" {
		t.Fatalf("ClearActiveAlarm = %+v, %v", a, err)
	}
	if _, err := s.ClearActiveAlarm(ctx, d.ID, "offline", "system", base); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ClearActiveAlarm with none active: err %v; want ErrNotFound", err)
	}
	for _, err := range []error{
		func() error { _, err := s.GetAlarm(ctx, 1<<40); return err }(),
		func() error { _, _, err := s.AckAlarm(ctx, 1<<40, "x", base); return err }(),
		func() error { _, _, err := s.ClearAlarm(ctx, 1<<40, "x", base); return err }(),
	} {
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("unknown alarm: err %v; want ErrNotFound", err)
		}
	}
	if _, _, err := s.RaiseAlarm(ctx, store.AlarmRaise{DeviceID: d.ID, Device: d.Name, Type: "x", Severity: "LOUD"}); err == nil {
		t.Error("unknown severity accepted")
	}
	if _, _, err := s.RaiseAlarm(ctx, store.AlarmRaise{DeviceID: d.ID, Device: d.Name, Type: "x", Severity: store.SeverityMajor, Detail: raw("{")}); err == nil {
		t.Error("detail that is not JSON accepted")
	}

	// Listings: newest first, filters, paging, lower time bound.
	ids := func(q store.AlarmQuery) []int64 {
		t.Helper()
		as, err := s.ListAlarms(ctx, q)
		if err != nil {
			t.Fatalf("ListAlarms(%+v): %v", q, err)
		}
		var out []int64
		for _, a := range as {
			out = append(out, a.ID)
		}
		return out
	}
	yes, no := true, false
	eq := func(what string, got []int64, want ...int64) {
		t.Helper()
		if len(got) != len(want) {
			t.Errorf("%s = %v; want %v", what, got, want)
			return
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s = %v; want %v", what, got, want)
				return
			}
		}
	}
	eq("all", ids(store.AlarmQuery{}), a3.ID, c.ID, b.ID, a1.ID)
	eq("device", ids(store.AlarmQuery{DeviceID: d.ID}), a3.ID, b.ID, a1.ID)
	eq("type", ids(store.AlarmQuery{Type: "offline", DeviceID: d.ID}), a3.ID, a1.ID)
	eq("active", ids(store.AlarmQuery{Active: &yes}), c.ID, b.ID)
	eq("cleared", ids(store.AlarmQuery{Active: &no}), a3.ID, a1.ID)
	eq("acked", ids(store.AlarmQuery{Acked: &yes}), a1.ID)
	eq("unacked active", ids(store.AlarmQuery{Acked: &no, Active: &yes}), c.ID, b.ID)
	eq("severity", ids(store.AlarmQuery{Severity: store.SeverityMajor}), b.ID)
	eq("since", ids(store.AlarmQuery{Since: base.Add(time.Second)}), a3.ID)
	eq("page 1", ids(store.AlarmQuery{Limit: 2}), a3.ID, c.ID)
	eq("page 2", ids(store.AlarmQuery{Limit: 2, Before: c.ID}), b.ID, a1.ID)

	// Deleting a device removes its alarms.
	if err := s.DeleteDevice(ctx, "calm"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetAlarm(ctx, c.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("alarm of a deleted device: err %v; want ErrNotFound", err)
	}
}

// testAlarmsConcurrent raises one device's alarm from many goroutines at
// once (several nodes would): exactly one alarm, counting every raise.
func testAlarmsConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "stormy")
	const n = 24
	var wg sync.WaitGroup
	created := make(chan int64, n)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, c, err := s.RaiseAlarm(ctx, store.AlarmRaise{DeviceID: d.ID, Device: d.Name, Type: "offline",
				Severity: store.SeverityMajor, Time: base.Add(time.Duration(i) * time.Second)})
			if err != nil {
				errs <- err
				return
			}
			if c {
				created <- a.ID
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(created)
	for err := range errs {
		t.Fatalf("concurrent raise: %v", err)
	}
	if len(created) != 1 {
		t.Fatalf("%d raises reported creating an alarm; want 1", len(created))
	}
	as, err := s.ListAlarms(ctx, store.AlarmQuery{DeviceID: d.ID})
	if err != nil || len(as) != 1 || as[0].Count != n || !as[0].LastTime.Equal(base.Add((n-1)*time.Second)) {
		t.Fatalf("after %d concurrent raises: %+v, %v; want one alarm counting all, last time the latest", n, as, err)
	}
}

// testAlarmRuleStates: rule states are replaced per device and rule, an
// empty one is no row, and they go with their rule, their device and an
// ownership wipe.
func testAlarmRuleStates(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "ruled")
	other := mustDevice(t, s, "ruled-too")
	rule := func(typ string) store.AlarmRule {
		t.Helper()
		r, err := s.AddAlarmRule(ctx, store.AlarmRule{Profile: "default", Type: typ, Key: "temperature", Severity: store.SeverityMajor,
			Raise: store.Condition{Op: ">", Value: raw("40"), Duration: store.Duration(time.Minute)}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r1, r2 := rule("hot"), rule("very-hot")
	put := func(states ...store.AlarmRuleState) {
		t.Helper()
		if err := s.PutAlarmRuleStates(ctx, states); err != nil {
			t.Fatalf("PutAlarmRuleStates: %v", err)
		}
	}
	// get returns the stored states of the devices by "device/rule".
	get := func(ids ...int64) map[string]store.AlarmRuleState {
		t.Helper()
		ss, err := s.AlarmRuleStates(ctx, ids)
		if err != nil {
			t.Fatalf("AlarmRuleStates: %v", err)
		}
		m := map[string]store.AlarmRuleState{}
		for _, st := range ss {
			m[fmt.Sprintf("%d/%d", st.DeviceID, st.RuleID)] = st
		}
		return m
	}
	key := func(st store.AlarmRuleState) string { return fmt.Sprintf("%d/%d", st.DeviceID, st.RuleID) }
	same := func(a, b store.AlarmRuleState) bool {
		return a.DeviceID == b.DeviceID && a.RuleID == b.RuleID && a.RaiseSince.Equal(b.RaiseSince) && a.ClearSince.Equal(b.ClearSince) &&
			a.Episode == b.Episode && a.EpisodeTime.Equal(b.EpisodeTime) && a.ValueTS == b.ValueTS
	}
	want := func(what string, got map[string]store.AlarmRuleState, states ...store.AlarmRuleState) {
		t.Helper()
		if len(got) != len(states) {
			t.Fatalf("%s: %d states %+v; want %+v", what, len(got), got, states)
		}
		for _, w := range states {
			if g, ok := got[key(w)]; !ok || !same(g, w) {
				t.Fatalf("%s: state %s = %+v; want %+v", what, key(w), g, w)
			}
		}
	}

	if got := get(d.ID, other.ID); len(got) != 0 {
		t.Fatalf("states of an empty store: %+v", got)
	}
	at := base.Add(123456789 * time.Nanosecond) // nanoseconds are kept
	a := store.AlarmRuleState{DeviceID: d.ID, RuleID: r1.ID, RaiseSince: at, ValueTS: at.UnixMilli()}
	b := store.AlarmRuleState{DeviceID: d.ID, RuleID: r2.ID, ClearSince: at.Add(time.Minute), Episode: store.RuleCleared,
		EpisodeTime: at.Add(2 * time.Minute), ValueTS: 7}
	c := store.AlarmRuleState{DeviceID: other.ID, RuleID: r1.ID, RaiseSince: at, Episode: store.RuleRaised, EpisodeTime: at.Add(time.Minute)}
	put(a, b, c)
	want("one device", get(d.ID), a, b)
	want("both devices", get(d.ID, other.ID), a, b, c)
	// The read takes its devices in chunks: a long list finds them all.
	long := []int64{}
	for i := range 1500 {
		long = append(long, 1<<40+int64(i))
	}
	want("a long list of devices", get(append(long, other.ID, d.ID)...), a, b, c)

	// A state replaces the stored one; an empty one removes it.
	a.Episode, a.EpisodeTime, a.ValueTS = store.RuleRaised, at.Add(time.Minute), a.ValueTS+60000
	put(a, store.AlarmRuleState{DeviceID: d.ID, RuleID: r2.ID})
	want("replaced and emptied", get(d.ID), a)
	// Neither an unknown rule nor an unknown device gets a row.
	put(store.AlarmRuleState{DeviceID: d.ID, RuleID: 1 << 40, RaiseSince: at},
		store.AlarmRuleState{DeviceID: 1 << 40, RuleID: r1.ID, RaiseSince: at})
	want("unknown rule and device", get(d.ID, 1<<40), a)

	// The wipe of an ownership epoch: states begun before its end.
	put(b)
	if n, more, err := s.DeleteAlarmRuleStatesBefore(ctx, store.HistoryPurge{DeviceID: d.ID, Before: at.Add(30 * time.Second), Limit: 10}); err != nil || n != 1 || more {
		t.Fatalf("DeleteAlarmRuleStatesBefore = %d, %v, %v; want 1 removed", n, more, err)
	}
	want("after the wipe", get(d.ID, other.ID), b, c)
	if n, more, err := s.DeleteAlarmRuleStatesBefore(ctx, store.HistoryPurge{Before: at.Add(3 * time.Minute), Limit: 1}); err != nil || n != 1 || !more {
		t.Fatalf("DeleteAlarmRuleStatesBefore of every device, limit 1 = %d, %v, %v; want 1, more", n, more, err)
	}
	put(a, b, c)

	// Deleting a rule removes its states, deleting a device its own.
	if err := s.DeleteAlarmRule(ctx, r1.ID); err != nil {
		t.Fatal(err)
	}
	want("after deleting the rule", get(d.ID, other.ID), b)
	put(c) // a node that missed the deletion
	want("after writing for a deleted rule", get(d.ID, other.ID), b)
	c.RuleID = r2.ID
	put(c)
	if err := s.DeleteDevice(ctx, d.Name); err != nil {
		t.Fatal(err)
	}
	want("after deleting the device", get(d.ID, other.ID), c)
}
