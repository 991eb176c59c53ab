package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// DeviceState is the activity of a device, ThingsBoard's way: a device is
// active while its last activity is more recent than its profile's
// inactivity timeout, whether or not it still holds a session; it is
// connected while a session is open (Device.Online).
type DeviceState struct {
	DeviceID       int64     `json:"deviceId"`
	Device         string    `json:"device"`
	Profile        string    `json:"profile"`
	Active         bool      `json:"active"`
	LastActivity   time.Time `json:"lastActivityTime,omitzero"`
	LastConnect    time.Time `json:"lastConnectTime,omitzero"`
	LastDisconnect time.Time `json:"lastDisconnectTime,omitzero"`
	InactiveSince  time.Time `json:"inactivityAlarmTime,omitzero"` // when it was last found inactive
}

// Activity is what a node reports about a device it holds a session for.
type Activity struct {
	DeviceID   int64
	At         time.Time // last activity; zero when only Connect/Disconnect changed
	Connect    bool      // a session started at At
	Disconnect time.Time // a session ended then; zero when not
}

// DeviceStates stores device activity. Marking a device inactive is a
// conditional update, so that when every node sweeps, one of them wins.
type DeviceStates interface {
	// RecordActivity records activities in one transaction and returns the
	// ids of the devices that were inactive and are active again.
	RecordActivity(ctx context.Context, acts []Activity) (woke []int64, err error)
	GetDeviceState(ctx context.Context, deviceID int64) (DeviceState, error)
	// StaleDevices returns active devices whose last activity is before
	// cutoff, oldest first, at most limit of them.
	StaleDevices(ctx context.Context, cutoff time.Time, limit int) ([]DeviceState, error)
	// MarkInactive marks the device inactive if it is still active with
	// the given last activity; ok tells whether this call did.
	MarkInactive(ctx context.Context, deviceID int64, lastActivity, at time.Time) (ok bool, err error)
}

// ProfileSettings are a profile's operational settings; a zero duration
// means the node's default.
type ProfileSettings struct {
	Profile            string   `json:"profile"`
	InactivityTimeout  Duration `json:"inactivityTimeout,omitzero"`
	TelemetryRetention Duration `json:"telemetryRetention,omitzero"`
	EventRetention     Duration `json:"eventRetention,omitzero"`
}

// Profiles stores per-profile settings and alarm rules.
type Profiles interface {
	PutProfileSettings(ctx context.Context, p ProfileSettings) error
	ListProfileSettings(ctx context.Context) ([]ProfileSettings, error)
	// AddAlarmRule stores a new rule (its ID is assigned) and returns it.
	AddAlarmRule(ctx context.Context, r AlarmRule) (AlarmRule, error)
	// ListAlarmRules returns the rules of a profile, or of every profile
	// when profile is empty, by ID.
	ListAlarmRules(ctx context.Context, profile string) ([]AlarmRule, error)
	// DeleteAlarmRule removes a rule and its states (AlarmRuleStates).
	// Rules are not changed in place: a changed rule is a new one.
	DeleteAlarmRule(ctx context.Context, id int64) error
}

// Duration is a time.Duration written in JSON as Go's duration text
// ("90s", "2160h"); it also reads a number of seconds, or "90d" days.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var sec float64
		if err := json.Unmarshal(b, &sec); err != nil || sec < 0 || sec > math.MaxInt64/1e9 {
			return errors.New("duration: want text like \"90s\" or a number of seconds")
		}
		*d = Duration(sec * float64(time.Second))
		return nil
	}
	v, err := ParseDuration(s)
	*d = Duration(v)
	return err
}

// ParseDuration is time.ParseDuration that also reads whole days ("90d").
func ParseDuration(s string) (time.Duration, error) {
	if n := len(s); n > 1 && s[n-1] == 'd' {
		days, err := strconv.ParseInt(s[:n-1], 10, 64)
		if err != nil || days < 0 || days > 100*365 {
			return 0, fmt.Errorf("duration %q: want whole days, at most 100 years", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: %w", s, err)
	}
	if v < 0 {
		return 0, fmt.Errorf("duration %q is negative", s)
	}
	return v, nil
}

// Condition is one side of an alarm rule: the key's latest value compared
// with Value must hold for Duration.
type Condition struct {
	Op       string          `json:"op"`    // ">", ">=", "<", "<=", "==", "!="
	Value    json.RawMessage `json:"value"` // a number for the orders; any JSON value for == and !=
	Duration Duration        `json:"duration,omitzero"`
}

// AlarmRule raises an alarm of Type on a device of Profile when its
// telemetry Key meets Raise for Raise.Duration, and clears it when the key
// meets Clear for Clear.Duration (no Clear: cleared by a person only).
type AlarmRule struct {
	ID       int64      `json:"id"`
	Profile  string     `json:"profile"`
	Type     string     `json:"type"` // the alarm's type, e.g. "high-temperature"
	Key      string     `json:"key"`
	Severity Severity   `json:"severity"`
	Raise    Condition  `json:"raise"`
	Clear    *Condition `json:"clear,omitempty"`
}

// Validate checks a rule before it is stored.
func (r AlarmRule) Validate() error {
	switch {
	case r.Profile == "":
		return errors.New("alarm rule: profile is empty")
	case r.Type == "" || len(r.Type) > 100:
		return errors.New("alarm rule: type must have 1 to 100 characters")
	case r.Key == "" || len(r.Key) > 255:
		return errors.New("alarm rule: key must have 1 to 255 characters")
	case !r.Severity.Valid():
		return fmt.Errorf("alarm rule: severity %q is not one of CRITICAL, MAJOR, MINOR, WARNING, INDETERMINATE", r.Severity)
	}
	if err := r.Raise.validate(); err != nil {
		return fmt.Errorf("alarm rule: raise: %w", err)
	}
	if r.Clear != nil {
		if err := r.Clear.validate(); err != nil {
			return fmt.Errorf("alarm rule: clear: %w", err)
		}
	}
	return nil
}

func (c Condition) validate() error {
	if time.Duration(c.Duration) > 365*24*time.Hour {
		return errors.New("duration is longer than a year")
	}
	if !json.Valid(c.Value) {
		return errors.New("value is not JSON")
	}
	switch c.Op {
	case ">", ">=", "<", "<=":
		var f float64
		if json.Unmarshal(c.Value, &f) != nil {
			return fmt.Errorf("%s needs a number", c.Op)
		}
	case "==", "!=":
	default:
		return fmt.Errorf("operator %q is not one of > >= < <= == !=", c.Op)
	}
	return nil
}

// Holds tells whether value meets the condition. Numbers compare as
// numbers (so 40 == 40.0); other values by their JSON text.
func (c Condition) Holds(value json.RawMessage) bool {
	x, xerr := strconv.ParseFloat(string(value), 64)
	y, yerr := strconv.ParseFloat(string(c.Value), 64)
	numbers := xerr == nil && yerr == nil
	switch c.Op {
	case "==", "!=":
		eq := numbers && x == y || !numbers && string(value) == string(c.Value)
		return eq == (c.Op == "==")
	}
	if !numbers {
		return false
	}
	switch c.Op {
	case ">":
		return x > y
	case ">=":
		return x >= y
	case "<":
		return x < y
	case "<=":
		return x <= y
	}
	return false
}

// Retention removes old data in bounded steps, so that a removal never
// holds the write path for long.
type Retention interface {
	// DeleteTelemetryBefore removes telemetry of a device with timestamps
	// before before (ms since the epoch), about limit records or rows at
	// most per call; more tells that some may remain. A backend that keeps
	// telemetry in blocks removes only whole blocks entirely before it.
	DeleteTelemetryBefore(ctx context.Context, deviceID int64, before int64, limit int) (removed int64, more bool, err error)
	// DeleteEventsBefore removes at most limit events older than q.Before.
	DeleteEventsBefore(ctx context.Context, q EventPurge) (removed int64, more bool, err error)
}

// Leases lets one node of many do a periodic job at a time.
type Leases interface {
	// TryLease takes or renews the named lease for holder until ttl from
	// now; ok is false while another holder's lease runs.
	TryLease(ctx context.Context, name, holder string, ttl time.Duration) (ok bool, err error)
}

// HistoryPurge selects a bounded batch of history to remove: alarms,
// persistent RPC calls or OTA state changes.
type HistoryPurge struct {
	DeviceID int64     // only this device's rows; 0 means every device
	Before   time.Time // rows older than this (each method says by which time)
	// Finished spares what is still under way (retention): only cleared
	// alarms and calls in a final status go, aged by when they ended.
	// Without it (an ownership wipe) everything begun before Before goes.
	Finished bool
	Limit    int // 0 means 1000
}

// EventPurge selects events to remove.
type EventPurge struct {
	Before time.Time
	Device string // only this device's events; empty: every event but those of KeepProfiles
	// KeepProfiles: with no Device, events of devices of these profiles
	// are kept (their own retention applies to them).
	KeepProfiles []string
	Limit        int // 0 means 1000
}
