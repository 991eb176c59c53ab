package ota

import (
	"fmt"
	"time"

	"github.com/thingline/thingline/store"
)

// Timeouts bound every state in which the server waits on a device, so
// that no update stays unfinished forever. Zero fields take the defaults.
type Timeouts struct {
	// Initiated: after the fw attributes were pushed, the device must
	// start (report DOWNLOADING or fetch a chunk). An online device is
	// pushed again, MaxAttempts times in all, then FAILED. An offline
	// device keeps waiting, up to Offline since the update was initiated.
	Initiated time.Duration // default 10 min
	Offline   time.Duration // default 7 days
	// Downloading: time without a report or a served chunk; chunk
	// requests move the deadline, so a long download is not cut.
	Downloading time.Duration // default 30 min
	Downloaded  time.Duration // to verify, default 10 min
	Verified    time.Duration // to start updating, default 10 min
	Updating    time.Duration // to reboot and report UPDATED, default 30 min
}

func (t *Timeouts) defaults() {
	set := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	set(&t.Initiated, 10*time.Minute)
	set(&t.Offline, 7*24*time.Hour)
	set(&t.Downloading, 30*time.Minute)
	set(&t.Downloaded, 10*time.Minute)
	set(&t.Verified, 10*time.Minute)
	set(&t.Updating, 30*time.Minute)
}

// of returns the timeout of a state; 0 for states without one.
func (t Timeouts) of(state string) time.Duration {
	switch state {
	case store.OTAInitiated:
		return t.Initiated
	case store.OTADownloading:
		return t.Downloading
	case store.OTADownloaded:
		return t.Downloaded
	case store.OTAVerified:
		return t.Verified
	case store.OTAUpdating:
		return t.Updating
	}
	return 0
}

// rank orders the states a device moves through.
func rank(state string) int {
	switch state {
	case store.OTAQueued:
		return 1
	case store.OTAInitiated:
		return 2
	case store.OTADownloading:
		return 3
	case store.OTADownloaded:
		return 4
	case store.OTAVerified:
		return 5
	case store.OTAUpdating:
		return 6
	case store.OTAUpdated, store.OTAFailed:
		return 7
	}
	return 0
}

// inProgress: initiated and not finished.
func inProgress(state string) bool { r := rank(state); return r >= 2 && r <= 6 }

// event is what happens to a device's update.
type event struct {
	kind eventKind
	// Report fields: what the device said; empty means not said.
	state, errText, title, version string
	online                         bool      // timeout: whether the device is connected
	at                             time.Time // report: when the gateway received it (zero: unknown)
}

type eventKind uint8

const (
	evReport   eventKind = iota // telemetry or attributes with fw keys
	evActivity                  // the gateway served a chunk
	evTimeout                   // the row's deadline passed
	evInitiate                  // its wave (or a direct assignment) starts it
)

// action is what the engine must do after a transition is stored.
type action uint8

const (
	actNone action = iota
	actPush        // (re)publish the fw attributes to the device
)

// machine holds the rules; step is a pure function of the row, the
// package, the event and the time, so every transition is tested alone.
type machine struct {
	t           Timeouts
	maxAttempts int
}

// step returns the new row and what to do; changed=false means nothing to
// store.
func (m machine) step(d store.OTADevice, pkg store.OTAPackage, ev event, now time.Time) (next store.OTADevice, act action, changed bool) {
	next = d
	enter := func(state, errText string) {
		next.State, next.Error, next.StateAt = state, errText, now
		next.Deadline = time.Time{}
		if to := m.t.of(state); to > 0 {
			next.Deadline = now.Add(to)
		}
		changed = true
	}
	fail := func(format string, args ...any) { enter(store.OTAFailed, fmt.Sprintf(format, args...)) }
	// retry counts a new attempt from INITIATED, or fails when none is left.
	retry := func(why string) {
		if next.Attempts >= m.maxAttempts {
			fail("%s; no attempt left after %d", why, next.Attempts)
			return
		}
		next.Attempts++
		enter(store.OTAInitiated, "")
		act = actPush
	}
	if ev.kind == evReport && !ev.at.IsZero() {
		if !ev.at.After(d.ReportAt) {
			return d, actNone, false // stale: applied already, or older than what was
		}
		next.ReportAt, changed = ev.at, true
	}
	if ev.kind == evReport {
		if ev.title != "" && ev.title != next.CurrentTitle {
			next.CurrentTitle, changed = ev.title, true
		}
		if ev.version != "" && ev.version != next.CurrentVersion {
			next.CurrentVersion, changed = ev.version, true
		}
	}
	switch ev.kind {
	case evInitiate:
		if d.State == store.OTAQueued {
			next.Attempts = 1
			enter(store.OTAInitiated, "")
			act = actPush
		}
	case evActivity:
		if d.State == store.OTAInitiated || d.State == store.OTADownloading {
			next.Deadline, changed = now.Add(m.t.of(d.State)), true
		}
	case evTimeout:
		if !inProgress(d.State) || d.Deadline.IsZero() || now.Before(d.Deadline) {
			break
		}
		if d.State != store.OTAInitiated {
			fail("no report from the device for %v in %s", m.t.of(d.State), d.State)
			break
		}
		if !ev.online {
			if now.Sub(d.StateAt) >= m.t.Offline {
				fail("device offline since the update was initiated %v ago", now.Sub(d.StateAt).Round(time.Second))
			} else {
				next.Deadline, changed = now.Add(m.t.Initiated), true
			}
			break
		}
		retry(fmt.Sprintf("the device did not start within %v", m.t.Initiated))
	case evReport:
		m.report(d, &next, pkg, ev, enter, fail, retry, &act)
	}
	return next, act, changed
}

func (m machine) report(d store.OTADevice, next *store.OTADevice, pkg store.OTAPackage, ev event,
	enter func(string, string), fail func(string, ...any), retry func(string), act *action) {
	version := next.CurrentVersion
	runsTarget := version == pkg.Version && (next.CurrentTitle == "" || next.CurrentTitle == pkg.Title)
	switch {
	case d.State == store.OTAQueued || d.State == store.OTACanceled || d.State == store.OTAUpdated:
		// Not started, or over: only the current version is kept.
	case ev.state == "":
		// The device told its current firmware: it has just booted.
		switch {
		case ev.version == "":
		case runsTarget:
			enter(store.OTAUpdated, "")
		case d.State == store.OTAInitiated:
			// Booted before starting: push again so that a device that
			// only listens for changes hears of it (not an attempt).
			*act = actPush
		case inProgress(d.State):
			retry(fmt.Sprintf("rebooted during %s still running %s", d.State, version))
		}
	case ev.state == store.OTAFailed:
		msg := ev.errText
		if msg == "" {
			msg = "the device reported FAILED"
		}
		if d.State != store.OTAFailed || d.Error != msg {
			enter(store.OTAFailed, msg)
		}
	case ev.state == store.OTAUpdated:
		if version != "" && !runsTarget {
			fail("the device reported UPDATED but runs %s %s, not %s %s", next.CurrentTitle, version, pkg.Title, pkg.Version)
			break
		}
		enter(store.OTAUpdated, "")
	case rank(ev.state) >= 3 && rank(ev.state) <= 6:
		// DOWNLOADING … UPDATING. FAILED stays failed (a rollout counts
		// it): a device retrying by itself is not followed, only a later
		// UPDATED is believed; the operator retries (resume retryFailed,
		// or a new assignment).
		switch {
		case d.State == store.OTAFailed:
		case rank(ev.state) > rank(d.State):
			enter(ev.state, "")
		case rank(ev.state) == rank(d.State):
			// Repeated: a sign of life.
			enter(ev.state, "")
		default:
			// Backwards: the device started over.
			if d.Attempts >= m.maxAttempts {
				fail("the device restarted from %s %d times", ev.state, d.Attempts)
				break
			}
			next.Attempts++
			enter(ev.state, "")
		}
	}
}
