package ota

import (
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// TestStep walks the state machine one transition at a time.
func TestStep(t *testing.T) {
	tm := Timeouts{}
	tm.defaults()
	m := machine{t: tm, maxAttempts: 3}
	pkg := store.OTAPackage{ID: 1, Title: "fw", Version: "2.0"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	row := func(state string, attempts int, at time.Time) store.OTADevice {
		d := store.OTADevice{PackageID: 1, State: state, Attempts: attempts, StateAt: at, CurrentTitle: "fw", CurrentVersion: "1.0"}
		if to := tm.of(state); to > 0 {
			d.Deadline = at.Add(to)
		}
		return d
	}
	rep := func(state string) event { return event{kind: evReport, state: state} }
	for _, c := range []struct {
		name       string
		from       store.OTADevice
		ev         event
		now        time.Time
		want       string
		attempts   int
		push       bool
		errHas     string
		unchanged  bool
		noDeadline bool
	}{
		{name: "initiate", from: row(store.OTAQueued, 0, t0), ev: event{kind: evInitiate}, want: store.OTAInitiated, attempts: 1, push: true},
		{name: "initiate only queued", from: row(store.OTADownloading, 1, t0), ev: event{kind: evInitiate}, unchanged: true},
		{name: "forward", from: row(store.OTAInitiated, 1, t0), ev: rep(store.OTADownloading), want: store.OTADownloading, attempts: 1},
		{name: "skip ahead", from: row(store.OTADownloading, 1, t0), ev: rep(store.OTAVerified), want: store.OTAVerified, attempts: 1},
		{name: "device failed", from: row(store.OTADownloaded, 1, t0), ev: event{kind: evReport, state: store.OTAFailed, errText: "bad sum"}, want: store.OTAFailed, errHas: "bad sum", noDeadline: true},
		{name: "updated with the target version", from: row(store.OTAUpdating, 1, t0), ev: event{kind: evReport, state: store.OTAUpdated, title: "fw", version: "2.0"}, want: store.OTAUpdated, attempts: 1, noDeadline: true},
		{name: "updated but another version", from: row(store.OTAUpdating, 1, t0), ev: event{kind: evReport, state: store.OTAUpdated, version: "1.5"}, want: store.OTAFailed, errHas: "runs fw 1.5"},
		{name: "boot into the target", from: row(store.OTAUpdating, 1, t0), ev: event{kind: evReport, title: "fw", version: "2.0"}, want: store.OTAUpdated, attempts: 1},
		{name: "reboot mid-download retries", from: row(store.OTADownloading, 1, t0), ev: event{kind: evReport, title: "fw", version: "1.0"}, want: store.OTAInitiated, attempts: 2, push: true},
		{name: "reboot mid-download, no attempt left", from: row(store.OTADownloading, 3, t0), ev: event{kind: evReport, version: "1.0"}, want: store.OTAFailed, errHas: "rebooted during DOWNLOADING"},
		{name: "boot while initiated pushes again", from: row(store.OTAInitiated, 1, t0), ev: event{kind: evReport, version: "1.0"}, want: store.OTAInitiated, attempts: 1, push: true, unchanged: true},
		{name: "restart counts an attempt", from: row(store.OTAVerified, 1, t0), ev: rep(store.OTADownloading), want: store.OTADownloading, attempts: 2},
		{name: "failed stays failed", from: row(store.OTAFailed, 1, t0), ev: rep(store.OTADownloading), unchanged: true},
		{name: "late UPDATED after a timeout", from: row(store.OTAFailed, 1, t0), ev: event{kind: evReport, state: store.OTAUpdated, version: "2.0"}, want: store.OTAUpdated, attempts: 1},
		{name: "queued ignores reports", from: row(store.OTAQueued, 0, t0), ev: rep(store.OTADownloading), unchanged: true},
		{name: "unknown state ignored", from: row(store.OTADownloading, 1, t0), ev: rep("FLASHING"), unchanged: true},
		{name: "not due yet", from: row(store.OTADownloading, 1, t0), ev: event{kind: evTimeout, online: true}, now: t0.Add(time.Minute), unchanged: true},
		{name: "downloading times out", from: row(store.OTADownloading, 1, t0), ev: event{kind: evTimeout, online: true}, now: t0.Add(31 * time.Minute), want: store.OTAFailed, errHas: "in DOWNLOADING"},
		{name: "updating times out", from: row(store.OTAUpdating, 1, t0), ev: event{kind: evTimeout}, now: t0.Add(31 * time.Minute), want: store.OTAFailed, errHas: "in UPDATING"},
		{name: "silent online device pushed again", from: row(store.OTAInitiated, 1, t0), ev: event{kind: evTimeout, online: true}, now: t0.Add(11 * time.Minute), want: store.OTAInitiated, attempts: 2, push: true},
		{name: "silent online device fails at last", from: row(store.OTAInitiated, 3, t0), ev: event{kind: evTimeout, online: true}, now: t0.Add(11 * time.Minute), want: store.OTAFailed, errHas: "did not start"},
		{name: "offline device waits", from: row(store.OTAInitiated, 1, t0), ev: event{kind: evTimeout}, now: t0.Add(11 * time.Minute), want: store.OTAInitiated, attempts: 1},
		{name: "offline for a week fails", from: row(store.OTAInitiated, 1, t0), ev: event{kind: evTimeout}, now: t0.Add(8 * 24 * time.Hour), want: store.OTAFailed, errHas: "offline"},
		{name: "activity extends downloading", from: row(store.OTADownloading, 1, t0), ev: event{kind: evActivity}, now: t0.Add(20 * time.Minute), want: store.OTADownloading, attempts: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			now := c.now
			if now.IsZero() {
				now = t0.Add(time.Second)
			}
			next, act, changed := m.step(c.from, pkg, c.ev, now)
			if c.unchanged {
				if next.State != c.from.State || next.Attempts != c.from.Attempts {
					t.Fatalf("moved to %s (attempts %d), want no transition", next.State, next.Attempts)
				}
				if c.push != (act == actPush) {
					t.Fatalf("push %v, want %v", act == actPush, c.push)
				}
				if !c.push && changed && c.ev.kind != evReport {
					t.Fatalf("changed without a transition")
				}
				return
			}
			if !changed || next.State != c.want {
				t.Fatalf("state %s (changed %v), want %s", next.State, changed, c.want)
			}
			if c.attempts != 0 && next.Attempts != c.attempts {
				t.Errorf("attempts %d, want %d", next.Attempts, c.attempts)
			}
			if c.push != (act == actPush) {
				t.Errorf("push %v, want %v", act == actPush, c.push)
			}
			if c.errHas != "" && !strings.Contains(next.Error, c.errHas) {
				t.Errorf("error %q, want %q in it", next.Error, c.errHas)
			}
			if inProgress(next.State) && !next.Deadline.After(now) {
				t.Errorf("%s without a deadline in the future: %v", next.State, next.Deadline)
			}
			if (c.noDeadline || store.OTATerminal(next.State)) && !next.Deadline.IsZero() {
				t.Errorf("terminal state with a deadline %v", next.Deadline)
			}
		})
	}
}

// TestStaleReport: a report not newer than the last applied one (another
// node's engine applying the same notice, or an older one late) is
// ignored, so states never go backwards across nodes.
func TestStaleReport(t *testing.T) {
	tm := Timeouts{}
	tm.defaults()
	m := machine{t: tm, maxAttempts: 3}
	pkg := store.OTAPackage{Title: "fw", Version: "2.0"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := store.OTADevice{State: store.OTAInitiated, StateAt: t0, Deadline: t0.Add(time.Hour)}
	d, _, ok := m.step(d, pkg, event{kind: evReport, state: store.OTAUpdating, at: t0.Add(3)}, t0.Add(time.Second))
	if !ok || d.State != store.OTAUpdating || !d.ReportAt.Equal(t0.Add(3)) {
		t.Fatalf("newer report: %+v", d)
	}
	for _, at := range []time.Time{t0.Add(3), t0.Add(1)} {
		if next, _, changed := m.step(d, pkg, event{kind: evReport, state: store.OTADownloaded, at: at}, t0.Add(2*time.Second)); changed || next.State != store.OTAUpdating {
			t.Errorf("report at +%v moved %s to %s", at.Sub(t0), d.State, next.State)
		}
	}
}

// TestEveryWaitingStateHasATimeout: no state in which the server waits on
// the device is without a deadline.
func TestEveryWaitingStateHasATimeout(t *testing.T) {
	tm := Timeouts{}
	tm.defaults()
	for _, s := range []string{store.OTAInitiated, store.OTADownloading, store.OTADownloaded, store.OTAVerified, store.OTAUpdating} {
		if tm.of(s) <= 0 {
			t.Errorf("%s has no timeout", s)
		}
	}
}
