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

// ruleFixture is a store with one device and the rule "temperature > 40
// for 60 s, cleared by <= 38 for 60 s", and engines on it (nodes).
type ruleFixture struct {
	t    *testing.T
	st   store.Store
	dev  store.Device
	rule store.AlarmRule
	t0   time.Time // an hour ahead: the engines' own ticks, on the real clock, never fire a rule
}

func newRuleFixture(t *testing.T) *ruleFixture {
	ctx := context.Background()
	st := openSQLite(t)
	d, _, _, err := st.EnsureDevice(ctx, store.Device{Name: "SN-R", Profile: "default"}, store.Credential{SHA256: "ab"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.AddAlarmRule(ctx, store.AlarmRule{Profile: "default", Type: "hot", Key: "temperature", Severity: store.SeverityMajor,
		Raise: store.Condition{Op: ">", Value: json.RawMessage("40"), Duration: store.Duration(time.Minute)},
		Clear: &store.Condition{Op: "<=", Value: json.RawMessage("38"), Duration: store.Duration(time.Minute)}})
	if err != nil {
		t.Fatal(err)
	}
	return &ruleFixture{t: t, st: st, dev: d, rule: r, t0: time.Now().Add(time.Hour)}
}

// engine starts a node's engine on the fixture's store. Its own tick is
// an hour: the tests tick it themselves, and it reloads no rules.
func (f *ruleFixture) engine(node string) *Engine {
	b := inproc.New()
	f.t.Cleanup(func() { b.Close() })
	e, err := Start(context.Background(), Config{Store: f.st, Bus: b, Node: node, Tick: time.Hour, Reload: time.Hour})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(e.Close)
	return e
}

// start starts a session of the device on e at t0+after and waits until
// it loaded the stored rule states.
func (f *ruleFixture) start(e *Engine, after time.Duration) *Session {
	s := e.SessionStarted(f.dev, f.t0.Add(after))
	tstest.CheckFor(f.t, 10*time.Second, 5*time.Millisecond, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.loaded {
			return fmt.Errorf("session started at +%v has not loaded its rule states", after)
		}
		return nil
	})
	return s
}

func (f *ruleFixture) send(s *Session, after time.Duration, v string) {
	at := f.t0.Add(after)
	s.Handled([]store.Record{{DeviceID: f.dev.ID, TS: at.UnixMilli(), Values: []store.KV{{Key: "temperature", Value: json.RawMessage(v)}}}}, at)
}

// end ends s at t0+after; its engine's queued side effects (the write of
// the rule states among them) have run when it returns.
func (f *ruleFixture) end(s *Session, after time.Duration) {
	s.Ended(f.t0.Add(after), false)
	f.settle(s.e)
}

// settle waits for the side effects e queued so far.
func (f *ruleFixture) settle(e *Engine) {
	f.t.Helper()
	done := make(chan struct{})
	if !e.tryDo(func(context.Context) { close(done) }) {
		f.t.Fatal("side-effect queue full")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		f.t.Fatal("side effects not run")
	}
}

// alarms returns the device's alarms of the rule, newest first.
func (f *ruleFixture) alarms() []store.Alarm {
	f.t.Helper()
	as, err := f.st.ListAlarms(context.Background(), store.AlarmQuery{DeviceID: f.dev.ID, Type: f.rule.Type})
	if err != nil {
		f.t.Fatal(err)
	}
	return as
}

// active tells whether the rule's alarm is active.
func (f *ruleFixture) active() bool {
	as := f.alarms()
	return len(as) > 0 && as[0].Active()
}

// stored returns the rule's stored state.
func (f *ruleFixture) stored() store.AlarmRuleState {
	f.t.Helper()
	ss, err := f.st.AlarmRuleStates(context.Background(), []int64{f.dev.ID})
	if err != nil || len(ss) > 1 {
		f.t.Fatalf("stored rule states: %+v, %v", ss, err)
	}
	if len(ss) == 0 {
		return store.AlarmRuleState{}
	}
	return ss[0]
}

// TestRuleTimersAcrossSessions: a condition that started holding in one
// session raises at its start plus the duration in the next one, on
// another node, not a full duration after the reconnect; the raise happens
// once per episode across reconnects; the clear side likewise, by the
// tick; a device that comes back failing the condition starts it again.
func TestRuleTimersAcrossSessions(t *testing.T) {
	f := newRuleFixture(t)
	a, b := f.engine("node-a"), f.engine("node-b")

	// Hot from t0, the connection drops at 30 s.
	s := f.start(a, 0)
	f.send(s, 0, "45")
	f.send(s, 20*time.Second, "46")
	f.end(s, 30*time.Second)
	if st := f.stored(); !st.RaiseSince.Equal(f.t0) || st.Episode != store.RuleUnknown {
		t.Fatalf("stored after the first session: %+v; want raising since t0", st)
	}
	// Back at 40 s on node B, still hot: 60 s count from t0.
	s = f.start(b, 40*time.Second)
	f.send(s, 40*time.Second, "47")
	f.send(s, 59*time.Second, "47")
	f.settle(b)
	if f.active() {
		t.Fatal("raised before the condition held for 60 s")
	}
	f.send(s, 60*time.Second, "47")
	f.settle(b)
	if !f.active() {
		t.Fatal("not raised 60 s after the condition started holding in the previous session")
	}

	// Still hot across another reconnect, back on node A: the episode
	// raised already, so nothing more (no raise folded into the alarm).
	f.end(s, 70*time.Second)
	if st := f.stored(); st.Episode != store.RuleRaised {
		t.Fatalf("stored after the raise: %+v; want the episode raised", st)
	}
	s = f.start(a, 75*time.Second)
	f.send(s, 80*time.Second, "48")
	f.send(s, 200*time.Second, "48")
	f.settle(a)
	if as := f.alarms(); len(as) != 1 || as[0].Count != 1 {
		t.Fatalf("alarms after a reconnect within the episode: %+v; want one, raised once", as)
	}

	// Cooling down from 210 s, reconnecting at 230 s: the tick clears
	// 60 s after 210 s, with the last value still holding.
	f.send(s, 210*time.Second, "30")
	f.end(s, 220*time.Second)
	s = f.start(b, 230*time.Second)
	f.send(s, 240*time.Second, "30")
	b.tick(f.t0.Add(269 * time.Second))
	f.settle(b)
	if !f.active() {
		t.Fatal("cleared before the clear condition held for 60 s")
	}
	b.tick(f.t0.Add(270 * time.Second))
	f.settle(b)
	if f.active() {
		t.Fatal("not cleared by the tick 60 s after the clear condition started holding in the previous session")
	}

	// Hot at 300 s, gone at 310 s, back at 400 s cool: the stored
	// condition does not hold any more, and the timer starts again with
	// the next hot reading.
	f.send(s, 300*time.Second, "45")
	f.end(s, 310*time.Second)
	s = f.start(a, 400*time.Second)
	f.send(s, 400*time.Second, "20")
	f.send(s, 410*time.Second, "45")
	f.send(s, 469*time.Second, "45")
	f.settle(a)
	if f.active() {
		t.Fatal("raised on a condition broken by the first reading after the reconnect")
	}
	f.send(s, 470*time.Second, "45")
	f.settle(a)
	if as := f.alarms(); len(as) != 2 || !as[0].Active() {
		t.Fatalf("alarms after 60 s of a new episode: %+v; want a second one, active", as)
	}
}

// TestRuleStateRestoredAfterRestart: an engine closed and a new one on the
// same store (a node's restart) continue the timer, including the changes
// of the last tick before the close.
func TestRuleStateRestoredAfterRestart(t *testing.T) {
	f := newRuleFixture(t)
	b := inproc.New()
	t.Cleanup(func() { b.Close() })
	e, err := Start(context.Background(), Config{Store: f.st, Bus: b, Node: "node-a", Tick: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s := f.start(e, 0)
	f.send(s, 0, "45")
	e.Close() // the session is still open: the close writes its state
	if st := f.stored(); !st.RaiseSince.Equal(f.t0) {
		t.Fatalf("stored after the close: %+v; want raising since t0", st)
	}
	e = f.engine("node-a")
	s = f.start(e, 30*time.Second)
	f.send(s, 59*time.Second, "45")
	f.settle(e)
	if f.active() {
		t.Fatal("raised before 60 s")
	}
	f.send(s, 60*time.Second, "45")
	f.settle(e)
	if !f.active() {
		t.Fatal("not raised 60 s after the condition started holding before the restart")
	}
}

// TestRestoreMerge: readings that arrive before the stored states are
// loaded keep a stored timer only when they all met its condition, and a
// stored raised episode holds back the raise.
func TestRestoreMerge(t *testing.T) {
	f := newRuleFixture(t)
	e := f.engine("node-a")
	session := func() *Session { // not registered: nothing loads it but the test
		return &Session{e: e, dev: f.dev, rules: map[int64]*ruleState{}, started: f.t0, last: f.t0}
	}
	stored := []store.AlarmRuleState{{DeviceID: f.dev.ID, RuleID: f.rule.ID, RaiseSince: f.t0}}
	since := func(s *Session) time.Time {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.rules[f.rule.ID].raiseSince
	}

	s := session()
	f.send(s, 30*time.Second, "45")
	s.restore(stored, time.Now())
	if got := since(s); !got.Equal(f.t0) {
		t.Errorf("held on every reading: raising since +%v; want t0", got.Sub(f.t0))
	}

	s = session()
	f.send(s, 30*time.Second, "45")
	f.send(s, 35*time.Second, "30")
	f.send(s, 40*time.Second, "45")
	s.restore(stored, time.Now())
	if got := since(s); !got.Equal(f.t0.Add(40 * time.Second)) {
		t.Errorf("broken by a reading: raising since +%v; want +40s", got.Sub(f.t0))
	}

	stored[0].Episode, stored[0].EpisodeTime = store.RuleRaised, f.t0.Add(time.Minute)
	s = session()
	f.send(s, 90*time.Second, "45")
	s.restore(stored, time.Now())
	f.send(s, 120*time.Second, "45")
	f.settle(e)
	if as := f.alarms(); len(as) != 0 {
		t.Errorf("alarms with the episode raised before: %+v; want none", as)
	}
}

// TestRuleStateWrites: the state is written when it changes, not per
// message, and a deleted rule's state is not written back.
func TestRuleStateWrites(t *testing.T) {
	f := newRuleFixture(t)
	e := f.engine("node-a")
	s := f.start(e, 0)
	changes := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.appendChanges(nil, e.rulesOf(f.dev.Profile)))
	}
	f.send(s, 0, "39")
	if n := changes(); n != 0 {
		t.Errorf("a reading meeting no condition: %d changes; want none", n)
	}
	f.send(s, time.Second, "45")
	if n := changes(); n != 1 {
		t.Errorf("the raise condition starting to hold: %d changes; want 1", n)
	}
	for i := 2; i < 50; i++ {
		f.send(s, time.Duration(i)*time.Second, "45")
	}
	if n := changes(); n != 0 {
		t.Errorf("the raise condition holding on: %d changes; want none", n)
	}
	if err := f.st.DeleteAlarmRule(context.Background(), f.rule.ID); err != nil {
		t.Fatal(err)
	}
	f.send(s, 55*time.Second, "30")
	f.end(s, 56*time.Second) // the engine has not reloaded: it still applies the rule
	if ss, err := f.st.AlarmRuleStates(context.Background(), []int64{f.dev.ID}); err != nil || len(ss) != 0 {
		t.Errorf("states after the rule's deletion: %+v, %v; want none", ss, err)
	}
}
