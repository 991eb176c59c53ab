package sqldb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/thingline/thingline/store"
)

func init() {
	// The partial unique index is the arbiter of de-duplication: at most
	// one active (clear_ns = 0) alarm per device and type, whichever node
	// raises it; RaiseAlarm's upsert targets it.
	Register(Migration{Name: "alarm/001", SQL: `
CREATE TABLE alarms (
	id {{id}},
	device_id BIGINT NOT NULL,
	device TEXT NOT NULL,
	type TEXT NOT NULL,
	severity TEXT NOT NULL,
	sev_rank INTEGER NOT NULL,
	detail TEXT NOT NULL DEFAULT '',
	raises BIGINT NOT NULL,
	start_ns BIGINT NOT NULL,
	last_ns BIGINT NOT NULL,
	ack_ns BIGINT NOT NULL DEFAULT 0,
	ack_by TEXT NOT NULL DEFAULT '',
	clear_ns BIGINT NOT NULL DEFAULT 0,
	clear_by TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX alarms_active ON alarms(device_id, type) WHERE clear_ns = 0;
CREATE INDEX alarms_device ON alarms(device_id, id)`},
		// Retention removes cleared alarms of every device, oldest first.
		Migration{Name: "alarm/002", SQL: `CREATE INDEX alarms_cleared ON alarms(clear_ns) WHERE clear_ns <> 0`},
		// Where each rule stands for each device (store.AlarmRuleState),
		// so that rule timers outlive sessions. A row exists only while
		// it says something (a timer running or an episode known); the
		// rule index serves the deletion of a rule.
		Migration{Name: "alarm/003", SQL: `
CREATE TABLE alarm_rule_states (
	device_id BIGINT NOT NULL,
	rule_id BIGINT NOT NULL,
	raise_ns BIGINT NOT NULL DEFAULT 0,
	clear_ns BIGINT NOT NULL DEFAULT 0,
	episode INTEGER NOT NULL DEFAULT 0,
	episode_ns BIGINT NOT NULL DEFAULT 0,
	value_ts BIGINT NOT NULL DEFAULT 0,
	PRIMARY KEY (device_id, rule_id)
);
CREATE INDEX alarm_rule_states_rule ON alarm_rule_states(rule_id)`})
	RegisterPurge(func(ctx context.Context, tx *Tx, device int64) error {
		if _, err := tx.Exec(ctx, "DELETE FROM alarm_rule_states WHERE device_id=?", device); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "DELETE FROM alarms WHERE device_id=?", device)
		return err
	})
}

const alarmCols = "id, device_id, device, type, severity, detail, raises, start_ns, last_ns, ack_ns, ack_by, clear_ns, clear_by"

type rowScanner interface{ Scan(dest ...any) error }

func scanAlarm(r rowScanner) (store.Alarm, error) {
	var a store.Alarm
	var sev, detail string
	var start, last, ack, clr int64
	if err := r.Scan(&a.ID, &a.DeviceID, &a.Device, &a.Type, &sev, &detail, &a.Count, &start, &last, &ack, &a.AckBy, &clr, &a.ClearBy); err != nil {
		return a, err
	}
	a.Severity = store.Severity(sev)
	if detail != "" {
		a.Detail = json.RawMessage(detail)
	}
	a.StartTime, a.LastTime, a.AckTime, a.ClearTime = nsTime(start), nsTime(last), nsTime(ack), nsTime(clr)
	a.Status = store.StatusOf(a.Active(), a.Acknowledged())
	return a, nil
}

// nsTime is the time of Unix nanoseconds; 0 is the zero time.
func nsTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// RaiseAlarm implements store.Alarms.
func (t *Tables) RaiseAlarm(ctx context.Context, r store.AlarmRaise) (store.Alarm, bool, error) {
	if r.DeviceID == 0 || r.Type == "" {
		return store.Alarm{}, false, errors.New("sqldb: raising an alarm needs a device and a type")
	}
	if !r.Severity.Valid() {
		return store.Alarm{}, false, fmt.Errorf("sqldb: raising an alarm: unknown severity %q", r.Severity)
	}
	if len(r.Detail) > 0 && !json.Valid(r.Detail) {
		return store.Alarm{}, false, errors.New("sqldb: raising an alarm: detail is not JSON")
	}
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	ns := r.Time.UnixNano()
	var a store.Alarm
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var err error
		a, err = scanAlarm(tx.QueryRow(ctx, `INSERT INTO alarms(device_id, device, type, severity, sev_rank, detail, raises, start_ns, last_ns)
VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)
ON CONFLICT (device_id, type) WHERE clear_ns = 0 DO UPDATE SET
	severity = excluded.severity,
	sev_rank = excluded.sev_rank,
	detail = excluded.detail,
	raises = alarms.raises + 1,
	last_ns = CASE WHEN excluded.last_ns > alarms.last_ns THEN excluded.last_ns ELSE alarms.last_ns END,
	ack_ns = CASE WHEN excluded.sev_rank > alarms.sev_rank THEN 0 ELSE alarms.ack_ns END,
	ack_by = CASE WHEN excluded.sev_rank > alarms.sev_rank THEN '' ELSE alarms.ack_by END
RETURNING `+alarmCols,
			r.DeviceID, r.Device, r.Type, string(r.Severity), r.Severity.Rank(), string(r.Detail), ns, ns))
		return err
	})
	if err != nil {
		return store.Alarm{}, false, fmt.Errorf("sqldb: raising alarm %s of device %d: %w", r.Type, r.DeviceID, err)
	}
	return a, a.Count == 1, nil
}

// alarmTransition sets a time column (ack_ns or clear_ns) once and returns
// the alarm; changed tells whether this call set it.
func (t *Tables) alarmTransition(ctx context.Context, id int64, col, byCol, by string, at time.Time) (store.Alarm, bool, error) {
	if at.IsZero() {
		at = time.Now()
	}
	var a store.Alarm
	var changed bool
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		res, err := tx.Exec(ctx, "UPDATE alarms SET "+col+"=?, "+byCol+"=? WHERE id=? AND "+col+"=0", at.UnixNano(), by, id)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		changed = n > 0
		a, err = scanAlarm(tx.QueryRow(ctx, "SELECT "+alarmCols+" FROM alarms WHERE id=?", id))
		return NotFound(err, fmt.Sprintf("alarm %d", id))
	})
	return a, changed, err
}

// AckAlarm implements store.Alarms.
func (t *Tables) AckAlarm(ctx context.Context, id int64, by string, at time.Time) (store.Alarm, bool, error) {
	return t.alarmTransition(ctx, id, "ack_ns", "ack_by", by, at)
}

// ClearAlarm implements store.Alarms.
func (t *Tables) ClearAlarm(ctx context.Context, id int64, by string, at time.Time) (store.Alarm, bool, error) {
	return t.alarmTransition(ctx, id, "clear_ns", "clear_by", by, at)
}

// ClearActiveAlarm implements store.Alarms.
func (t *Tables) ClearActiveAlarm(ctx context.Context, deviceID int64, typ, by string, at time.Time) (store.Alarm, error) {
	if at.IsZero() {
		at = time.Now()
	}
	var a store.Alarm
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var err error
		a, err = scanAlarm(tx.QueryRow(ctx, "UPDATE alarms SET clear_ns=?, clear_by=? WHERE device_id=? AND type=? AND clear_ns=0 RETURNING "+alarmCols,
			at.UnixNano(), by, deviceID, typ))
		return NotFound(err, fmt.Sprintf("active alarm %s of device %d", typ, deviceID))
	})
	return a, err
}

// GetAlarm implements store.Alarms.
func (t *Tables) GetAlarm(ctx context.Context, id int64) (store.Alarm, error) {
	a, err := scanAlarm(t.db.QueryRow(ctx, "SELECT "+alarmCols+" FROM alarms WHERE id=?", id))
	return a, NotFound(err, fmt.Sprintf("alarm %d", id))
}

// ListAlarms implements store.Alarms.
func (t *Tables) ListAlarms(ctx context.Context, q store.AlarmQuery) ([]store.Alarm, error) {
	var where []string
	var args []any
	add := func(cond string, v ...any) {
		where = append(where, cond)
		args = append(args, v...)
	}
	if q.DeviceID != 0 {
		add("device_id=?", q.DeviceID)
	}
	if q.Type != "" {
		add("type=?", q.Type)
	}
	if q.Severity != "" {
		add("severity=?", string(q.Severity))
	}
	if q.Active != nil {
		if *q.Active {
			add("clear_ns=0")
		} else {
			add("clear_ns<>0")
		}
	}
	if q.Acked != nil {
		if *q.Acked {
			add("ack_ns<>0")
		} else {
			add("ack_ns=0")
		}
	}
	if !q.Since.IsZero() {
		add("start_ns>=?", q.Since.UnixNano())
	}
	if q.Before > 0 {
		add("id<?", q.Before)
	}
	query := "SELECT " + alarmCols + " FROM alarms"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY id DESC LIMIT ?"
	args = append(args, limit(q.Limit))
	rows, err := t.db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing alarms: %w", err)
	}
	defer rows.Close()
	var out []store.Alarm
	for rows.Next() {
		a, err := scanAlarm(rows)
		if err != nil {
			return nil, fmt.Errorf("sqldb: listing alarms: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// limit applies the store's paging rule: 0 means 100, at most 10,000.
func limit(n int) int {
	if n <= 0 {
		return 100
	}
	return min(n, 10000)
}

// Alarm rule states (store.AlarmRuleStates).

// ruleStateChunk bounds the states of one write transaction (on SQLite
// every write runs on the one writer, between telemetry's group commits);
// a read takes eight times as many devices in its IN list.
const ruleStateChunk = 64

const ruleStateCols = "device_id, rule_id, raise_ns, clear_ns, episode, episode_ns, value_ts"

func scanRuleState(r rowScanner) (store.AlarmRuleState, error) {
	var s store.AlarmRuleState
	var raise, clr, ep int64
	var episode int
	err := r.Scan(&s.DeviceID, &s.RuleID, &raise, &clr, &episode, &ep, &s.ValueTS)
	s.RaiseSince, s.ClearSince, s.EpisodeTime = nsTime(raise), nsTime(clr), nsTime(ep)
	s.Episode = store.RuleEpisode(episode)
	return s, err
}

// AlarmRuleStates implements store.AlarmRuleStates.
func (t *Tables) AlarmRuleStates(ctx context.Context, deviceIDs []int64) ([]store.AlarmRuleState, error) {
	var out []store.AlarmRuleState
	for len(deviceIDs) > 0 {
		n := min(len(deviceIDs), ruleStateChunk*8)
		args := make([]any, n)
		for i, id := range deviceIDs[:n] {
			args[i] = id
		}
		q := "SELECT " + ruleStateCols + " FROM alarm_rule_states WHERE device_id IN (?" + strings.Repeat(", ?", n-1) + ")"
		rows, err := t.db.Query(ctx, q, args...)
		ss, err := collect(rows, err, scanRuleState)
		if err != nil {
			return nil, fmt.Errorf("sqldb: reading alarm rule states: %w", err)
		}
		out = append(out, ss...)
		deviceIDs = deviceIDs[n:]
	}
	return out, nil
}

// PutAlarmRuleStates implements store.AlarmRuleStates. The existence
// checks keep a node that has not seen a rule's or device's deletion yet
// from writing its rows again; a write racing the deletion itself may
// still leave a row no one reads (ids are never reused), as PurgeDevice
// may.
func (t *Tables) PutAlarmRuleStates(ctx context.Context, states []store.AlarmRuleState) error {
	for len(states) > 0 {
		n := min(len(states), ruleStateChunk)
		err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
			for _, s := range states[:n] {
				if s.Empty() {
					if _, err := tx.Exec(ctx, "DELETE FROM alarm_rule_states WHERE device_id=? AND rule_id=?", s.DeviceID, s.RuleID); err != nil {
						return err
					}
					continue
				}
				// CAST: PostgreSQL types a bare placeholder of a select
				// list as text.
				_, err := tx.Exec(ctx, `INSERT INTO alarm_rule_states(`+ruleStateCols+`)
SELECT CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS INTEGER), CAST(? AS BIGINT), CAST(? AS BIGINT)
WHERE EXISTS (SELECT 1 FROM alarm_rules WHERE id=?) AND EXISTS (SELECT 1 FROM devices WHERE id=?)
ON CONFLICT (device_id, rule_id) DO UPDATE SET raise_ns=excluded.raise_ns, clear_ns=excluded.clear_ns,
	episode=excluded.episode, episode_ns=excluded.episode_ns, value_ts=excluded.value_ts`,
					s.DeviceID, s.RuleID, ToNS(s.RaiseSince), ToNS(s.ClearSince), int(s.Episode), ToNS(s.EpisodeTime), s.ValueTS,
					s.RuleID, s.DeviceID)
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("sqldb: writing alarm rule states: %w", err)
		}
		states = states[n:]
	}
	return nil
}

// DeleteAlarmRuleStatesBefore implements store.AlarmRuleStates.
func (t *Tables) DeleteAlarmRuleStatesBefore(ctx context.Context, q store.HistoryPurge) (int64, bool, error) {
	n := q.Limit
	if n <= 0 {
		n = 1000
	}
	before := q.Before.UnixNano()
	where := "((raise_ns <> 0 AND raise_ns < ?) OR (clear_ns <> 0 AND clear_ns < ?) OR (episode_ns <> 0 AND episode_ns < ?))"
	args := []any{before, before, before}
	if q.DeviceID != 0 {
		where += " AND device_id=?"
		args = append(args, q.DeviceID)
	}
	args = append(args, n)
	res, err := t.db.Exec(ctx, `DELETE FROM alarm_rule_states WHERE (device_id, rule_id) IN (
	SELECT device_id, rule_id FROM alarm_rule_states WHERE `+where+` LIMIT ?)`, args...)
	if err != nil {
		return 0, false, fmt.Errorf("sqldb: deleting alarm rule states: %w", err)
	}
	removed, err := res.RowsAffected()
	if err != nil {
		return 0, false, fmt.Errorf("sqldb: deleting alarm rule states: %w", err)
	}
	return removed, removed == int64(n), nil
}
