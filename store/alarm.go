package store

import (
	"context"
	"encoding/json"
	"time"
)

// Severity of an alarm, ThingsBoard's five.
type Severity string

const (
	SeverityCritical      Severity = "CRITICAL"
	SeverityMajor         Severity = "MAJOR"
	SeverityMinor         Severity = "MINOR"
	SeverityWarning       Severity = "WARNING"
	SeverityIndeterminate Severity = "INDETERMINATE"
)

// Rank orders severities: CRITICAL is 5, INDETERMINATE 1, anything else 0.
func (s Severity) Rank() int {
	switch s {
	case SeverityCritical:
		return 5
	case SeverityMajor:
		return 4
	case SeverityMinor:
		return 3
	case SeverityWarning:
		return 2
	case SeverityIndeterminate:
		return 1
	}
	return 0
}

// Valid tells whether s is one of the five severities.
func (s Severity) Valid() bool { return s.Rank() > 0 }

// AlarmStatus is ThingsBoard's combined status of an alarm: whether it is
// still active (not cleared) and whether someone acknowledged it.
type AlarmStatus string

const (
	AlarmActiveUnack  AlarmStatus = "ACTIVE_UNACK"
	AlarmActiveAck    AlarmStatus = "ACTIVE_ACK"
	AlarmClearedUnack AlarmStatus = "CLEARED_UNACK"
	AlarmClearedAck   AlarmStatus = "CLEARED_ACK"
)

// Alarm types raised by thingline itself; alarm rules raise their own.
const (
	AlarmOffline     = "offline"                  // no activity for longer than the profile's inactivity timeout
	AlarmCertExpiry  = "certificate-expiring"     // the device certificate expires within the threshold
	AlarmCloned      = "possible-cloned-identity" // sessions of one certificate keep taking each other over
	AlarmOTAFailed   = "ota-failed"               // a firmware update ended in FAILED
	AlarmBadPayloads = "bad-payload-rate"         // too many refused messages within a window
)

// Alarm is one alarm of one device. An alarm is active until it is
// cleared; while it is active, raising the same type for the same device
// updates it (severity, detail, last time, count) instead of adding
// another one.
type Alarm struct {
	ID        int64           `json:"id"`
	DeviceID  int64           `json:"deviceId"`
	Device    string          `json:"device"`
	Type      string          `json:"type"`
	Severity  Severity        `json:"severity"`
	Status    AlarmStatus     `json:"status"`
	Detail    json.RawMessage `json:"detail,omitempty"`
	Count     int64           `json:"count"`     // raises folded into this alarm, 1 for a fresh one
	StartTime time.Time       `json:"startTime"` // first raise
	LastTime  time.Time       `json:"lastTime"`  // latest raise
	AckTime   time.Time       `json:"ackTime,omitzero"`
	AckBy     string          `json:"ackBy,omitempty"`
	ClearTime time.Time       `json:"clearTime,omitzero"`
	ClearBy   string          `json:"clearBy,omitempty"`
}

// Active tells whether the alarm is not cleared.
func (a Alarm) Active() bool { return a.ClearTime.IsZero() }

// Acknowledged tells whether someone acknowledged the alarm.
func (a Alarm) Acknowledged() bool { return !a.AckTime.IsZero() }

// StatusOf computes the combined status from the two flags.
func StatusOf(active, acked bool) AlarmStatus {
	switch {
	case active && acked:
		return AlarmActiveAck
	case active:
		return AlarmActiveUnack
	case acked:
		return AlarmClearedAck
	}
	return AlarmClearedUnack
}

// AlarmRaise asks for an alarm of Type on a device.
type AlarmRaise struct {
	DeviceID int64
	Device   string // the device's name, kept with the alarm
	Type     string
	Severity Severity
	Detail   json.RawMessage // JSON, or nil
	Time     time.Time
}

// AlarmQuery selects alarms, newest first.
type AlarmQuery struct {
	DeviceID int64    // 0 means every device
	Type     string   // empty means every type
	Severity Severity // empty means every severity
	Active   *bool    // nil: both; true: not cleared; false: cleared
	Acked    *bool    // nil: both; true: acknowledged; false: not
	// Since keeps only alarms whose StartTime is at or after it (the
	// beginning of an ownership, for one); zero means no bound.
	Since  time.Time
	Before int64 // return IDs strictly below this one; 0 means from the newest
	Limit  int   // 0 means 100
}

// Alarms stores alarms. Raising is atomic with respect to concurrent
// raises of the same device and type on any node: at most one alarm of a
// device and type is active at a time.
type Alarms interface {
	// RaiseAlarm creates the alarm (created=true) or, when one of that
	// device and type is active, folds the raise into it: severity and
	// detail replaced, LastTime moved, Count incremented. A raise of a
	// higher severity than the alarm's makes an acknowledged alarm
	// unacknowledged again: an escalation needs a person's attention.
	RaiseAlarm(ctx context.Context, r AlarmRaise) (a Alarm, created bool, err error)
	// AckAlarm acknowledges an alarm; changed is false when it already was.
	AckAlarm(ctx context.Context, id int64, by string, at time.Time) (a Alarm, changed bool, err error)
	// ClearAlarm clears an alarm; changed is false when it already was.
	ClearAlarm(ctx context.Context, id int64, by string, at time.Time) (a Alarm, changed bool, err error)
	// ClearActiveAlarm clears the active alarm of a device and type; it
	// returns ErrNotFound when there is none.
	ClearActiveAlarm(ctx context.Context, deviceID int64, typ, by string, at time.Time) (a Alarm, err error)
	GetAlarm(ctx context.Context, id int64) (Alarm, error)
	ListAlarms(ctx context.Context, q AlarmQuery) ([]Alarm, error)
	// DeleteAlarmsBefore removes at most q.Limit alarms whose StartTime
	// is before q.Before or, with q.Finished, cleared alarms whose
	// ClearTime is; more tells that some may remain.
	DeleteAlarmsBefore(ctx context.Context, q HistoryPurge) (removed int64, more bool, err error)
}

// AlarmRuleState is where one alarm rule stands for one device: the little
// a rule needs so that "held for 60 s" and "raise once per episode" mean
// the same across reconnects, moves to another node and restarts. The node
// holding the device's session writes it when it changes (a condition
// starts or stops holding, the rule raises, clears or is re-armed), never
// per message, and the next session reads it when it starts.
type AlarmRuleState struct {
	DeviceID int64
	RuleID   int64
	// RaiseSince is when the raise condition started holding (the
	// arrival of the reading, on the node's clock); zero while it does
	// not hold. ClearSince likewise for the clear condition.
	RaiseSince time.Time
	ClearSince time.Time
	// Episode tells whether the rule raised (and not re-armed since) or
	// cleared; EpisodeTime is when. Zero time with RuleUnknown.
	Episode     RuleEpisode
	EpisodeTime time.Time
	// ValueTS is the timestamp (ms) of the reading behind the last
	// change: a reading older than it, arriving late, is ignored.
	ValueTS int64
}

// RuleEpisode is what a rule did in the current episode of its condition.
type RuleEpisode uint8

const (
	RuleUnknown RuleEpisode = iota // not known whether an alarm of the rule is active
	RuleRaised                     // raised: the condition holding on raises nothing more
	RuleCleared                    // its clear condition cleared the alarm
)

// Empty tells whether s says nothing a fresh rule would not assume: such
// a state is kept as no row at all.
func (s AlarmRuleState) Empty() bool {
	return s.RaiseSince.IsZero() && s.ClearSince.IsZero() && s.Episode == RuleUnknown
}

// AlarmRuleStates stores AlarmRuleState per device and rule. A device's
// states go with the device, a rule's with the rule.
type AlarmRuleStates interface {
	// AlarmRuleStates returns the stored states of the devices' rules,
	// in no particular order.
	AlarmRuleStates(ctx context.Context, deviceIDs []int64) ([]AlarmRuleState, error)
	// PutAlarmRuleStates replaces the stored states of the same device
	// and rule; an Empty state removes its row. The state of a device or
	// rule that no longer exists is dropped, so that a node that has not
	// seen a deletion yet does not bring its rows back.
	PutAlarmRuleStates(ctx context.Context, states []AlarmRuleState) error
	// DeleteAlarmRuleStatesBefore removes the states of q.DeviceID (every
	// device when 0) with a timer started or an episode reached before
	// q.Before, at most q.Limit of them: an ownership wipe, which also
	// removes the alarms those episodes raised. q.Finished is ignored:
	// retention never ages states (they are a handful per device).
	DeleteAlarmRuleStatesBefore(ctx context.Context, q HistoryPurge) (removed int64, more bool, err error)
}

// Operations announced on bus.TopicAlarms.
const (
	AlarmOpRaised  = "raised"       // a new alarm
	AlarmOpUpdated = "updated"      // a raise folded into an active alarm
	AlarmOpAcked   = "acknowledged" // someone acknowledged it
	AlarmOpCleared = "cleared"      // it was cleared (by a person or by its condition)
)

// AlarmNotice is the payload of bus.TopicAlarms: what happened to which
// alarm, with the alarm as it now is. TS is in ms since the epoch.
type AlarmNotice struct {
	Device string `json:"device"`
	TS     int64  `json:"ts"`
	Op     string `json:"op"`
	Alarm  Alarm  `json:"alarm"`
}
