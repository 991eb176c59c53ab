package alarm

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

// TestRuleTimers drives one session's rule with chosen arrival times (an
// hour ahead, so the engine's own ticks, on the real clock, never fire):
// the raise needs the condition to hold for its whole duration without a
// break, and the clear likewise.
func TestRuleTimers(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	b := inproc.New()
	t.Cleanup(func() { b.Close() })
	d, _, _, err := st.EnsureDevice(ctx, store.Device{Name: "SN-T", Profile: "default"}, store.Credential{SHA256: "ab"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddAlarmRule(ctx, store.AlarmRule{Profile: "default", Type: "hot", Key: "temperature", Severity: store.SeverityMajor,
		Raise: store.Condition{Op: ">", Value: json.RawMessage("40"), Duration: store.Duration(time.Minute)},
		Clear: &store.Condition{Op: "<=", Value: json.RawMessage("38"), Duration: store.Duration(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	e, err := Start(ctx, Config{Store: st, Bus: b})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	t0 := time.Now().Add(time.Hour)
	s := e.SessionStarted(d, t0)
	send := func(after time.Duration, v string) {
		at := t0.Add(after)
		s.Handled([]store.Record{{DeviceID: d.ID, TS: at.UnixMilli(), Values: []store.KV{{Key: "temperature", Value: json.RawMessage(v)}}}}, at)
	}
	status := func() string {
		yes := true
		as, err := st.ListAlarms(ctx, store.AlarmQuery{DeviceID: d.ID, Type: "hot", Active: &yes})
		if err != nil {
			t.Fatal(err)
		}
		if len(as) == 0 {
			return "none"
		}
		return "active"
	}
	// settle waits for the side effects queued so far.
	settle := func() {
		t.Helper()
		done := make(chan struct{})
		e.do(func(context.Context) { close(done) })
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("side effects not run")
		}
	}
	send(0, "45")
	send(50*time.Second, "46")
	send(55*time.Second, "39") // the condition breaks: the timer starts again
	send(70*time.Second, "45")
	send(125*time.Second, "47")
	settle()
	if got := status(); got != "none" {
		t.Fatalf("after 55 s of heat broken by 39: alarm %s; want none", got)
	}
	send(130*time.Second, "41") // 60 s since 70 s
	settle()
	if got := status(); got != "active" {
		t.Fatalf("after 60 s above 40: alarm %s; want active", got)
	}
	send(140*time.Second, "38")
	send(190*time.Second, "37")
	send(195*time.Second, "40") // neither: the clear timer starts again
	send(200*time.Second, "30")
	send(259*time.Second, "30")
	settle()
	if got := status(); got != "active" {
		t.Fatalf("clear condition held 59 s: alarm %s; want still active", got)
	}
	send(260*time.Second, "30")
	settle()
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if got := status(); got != "none" {
			return fmt.Errorf("after 60 s at or below 38: alarm %s; want cleared", got)
		}
		return nil
	})
	// An older reading arriving late changes nothing.
	at := t0.Add(300 * time.Second)
	s.Handled([]store.Record{{DeviceID: d.ID, TS: t0.UnixMilli(), Values: []store.KV{{Key: "temperature", Value: json.RawMessage("99")}}}}, at)
	s.Handled([]store.Record{{DeviceID: d.ID, TS: t0.UnixMilli(), Values: []store.KV{{Key: "temperature", Value: json.RawMessage("99")}}}}, at.Add(2*time.Minute))
	settle()
	if got := status(); got != "none" {
		t.Fatalf("a late old reading raised the alarm: %s", got)
	}
	as, _ := st.ListAlarms(ctx, store.AlarmQuery{DeviceID: d.ID})
	if len(as) != 1 || as[0].Count != 1 || as[0].ClearBy != "system" {
		t.Fatalf("alarms %+v; want one, raised once, cleared by the rule", as)
	}
}
