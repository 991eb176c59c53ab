package sqldb

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/thingline/thingline/store"
)

// Device activity, profile settings and alarm rules.
func init() {
	Register(Migration{Name: "state/001", SQL: `
CREATE TABLE device_state (
	device_id BIGINT PRIMARY KEY,
	active {{bool}} NOT NULL,
	last_activity_ns BIGINT NOT NULL DEFAULT 0,
	last_connect_ns BIGINT NOT NULL DEFAULT 0,
	last_disconnect_ns BIGINT NOT NULL DEFAULT 0,
	inactive_ns BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX device_state_stale ON device_state(last_activity_ns) WHERE active;
CREATE TABLE profile_settings (
	profile TEXT PRIMARY KEY,
	inactivity_ns BIGINT NOT NULL DEFAULT 0,
	telemetry_retention_ns BIGINT NOT NULL DEFAULT 0,
	event_retention_ns BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE alarm_rules (
	id {{id}},
	profile TEXT NOT NULL,
	rule TEXT NOT NULL
);
CREATE INDEX alarm_rules_profile ON alarm_rules(profile, id)`})
	// Leases: one node of many runs a periodic job (retention) at a time.
	Register(Migration{Name: "state/002", SQL: `
CREATE TABLE leases (
	name TEXT PRIMARY KEY,
	holder TEXT NOT NULL,
	until_ns BIGINT NOT NULL
)`})
	RegisterPurge(func(ctx context.Context, tx *Tx, device int64) error {
		_, err := tx.Exec(ctx, "DELETE FROM device_state WHERE device_id=?", device)
		return err
	})
}

// activityChunk bounds the devices of one write of RecordActivity. On
// SQLite every write runs on the one writer goroutine, between the group
// commits of telemetry: ten thousand devices' activity in one write (two
// statements each) held every acknowledgement for seconds at the fleet's
// shape (docs/benchmarks.md). A device's row is its own business, so the
// writes need not be one transaction.
const activityChunk = 64

// RecordActivity implements store.DeviceStates.
func (t *Tables) RecordActivity(ctx context.Context, acts []store.Activity) ([]int64, error) {
	var woke []int64
	for len(acts) > 0 {
		n := min(len(acts), activityChunk)
		w, err := t.recordActivity(ctx, acts[:n])
		if err != nil {
			return woke, err
		}
		woke = append(woke, w...)
		acts = acts[n:]
	}
	return woke, nil
}

// recordActivity writes acts in one transaction. The devices' rows are
// read in one query: a query per device cost, besides the statement, a
// goroutine (database/sql watches the transaction's context for each query
// that returns rows), ten thousand every ten seconds at the fleet's shape.
func (t *Tables) recordActivity(ctx context.Context, acts []store.Activity) ([]int64, error) {
	var woke []int64
	lock := ""
	if t.db.dialect == Postgres {
		// The sweep of another node may mark the device inactive between
		// our read and our write; the row lock orders the two.
		lock = " FOR UPDATE"
	}
	type row struct {
		active           bool
		last, conn, disc int64
	}
	q := "SELECT device_id, active, last_activity_ns, last_connect_ns, last_disconnect_ns FROM device_state WHERE device_id IN (?" +
		strings.Repeat(", ?", len(acts)-1) + ")" + lock
	args := make([]any, len(acts))
	for i, a := range acts {
		args[i] = a.DeviceID
	}
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		woke = woke[:0]
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		have := make(map[int64]row, len(acts))
		for rows.Next() {
			var id int64
			var r row
			if err := rows.Scan(&id, &r.active, &r.last, &r.conn, &r.disc); err != nil {
				rows.Close()
				return err
			}
			have[id] = r
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, a := range acts {
			r, exists := have[a.DeviceID]
			at := unixNS(a.At)
			if at > r.last {
				r.last = at
			}
			if a.Connect && at > r.conn {
				r.conn = at
			}
			if d := unixNS(a.Disconnect); d > r.disc {
				r.disc = d
			}
			if at > 0 {
				if exists && !r.active {
					woke = append(woke, a.DeviceID)
				}
				r.active = true
			}
			// The same device twice in acts: the second sees the first.
			have[a.DeviceID] = r
			if _, err := tx.Exec(ctx, `INSERT INTO device_state(device_id, active, last_activity_ns, last_connect_ns, last_disconnect_ns) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (device_id) DO UPDATE SET active=excluded.active, last_activity_ns=excluded.last_activity_ns,
	last_connect_ns=excluded.last_connect_ns, last_disconnect_ns=excluded.last_disconnect_ns`,
				a.DeviceID, r.active, r.last, r.conn, r.disc); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqldb: recording device activity: %w", err)
	}
	return woke, nil
}

const stateCols = "s.device_id, d.name, d.profile, s.active, s.last_activity_ns, s.last_connect_ns, s.last_disconnect_ns, s.inactive_ns"

func scanState(r rowScanner) (store.DeviceState, error) {
	var s store.DeviceState
	var last, conn, disc, inact int64
	err := r.Scan(&s.DeviceID, &s.Device, &s.Profile, &s.Active, &last, &conn, &disc, &inact)
	s.LastActivity, s.LastConnect, s.LastDisconnect, s.InactiveSince = nsTime(last), nsTime(conn), nsTime(disc), nsTime(inact)
	return s, err
}

// GetDeviceState implements store.DeviceStates.
func (t *Tables) GetDeviceState(ctx context.Context, id int64) (store.DeviceState, error) {
	s, err := scanState(t.db.QueryRow(ctx, "SELECT "+stateCols+" FROM device_state s JOIN devices d ON d.id = s.device_id WHERE s.device_id=?", id))
	return s, NotFound(err, fmt.Sprintf("state of device %d", id))
}

// StaleDevices implements store.DeviceStates.
func (t *Tables) StaleDevices(ctx context.Context, cutoff time.Time, n int) ([]store.DeviceState, error) {
	rows, err := t.db.Query(ctx, "SELECT "+stateCols+` FROM device_state s JOIN devices d ON d.id = s.device_id
WHERE s.active AND s.last_activity_ns < ? ORDER BY s.last_activity_ns LIMIT ?`, cutoff.UnixNano(), limit(n))
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing stale devices: %w", err)
	}
	defer rows.Close()
	var out []store.DeviceState
	for rows.Next() {
		s, err := scanState(rows)
		if err != nil {
			return nil, fmt.Errorf("sqldb: listing stale devices: %w", err)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// MarkInactive implements store.DeviceStates.
func (t *Tables) MarkInactive(ctx context.Context, id int64, lastActivity, at time.Time) (bool, error) {
	res, err := t.db.Exec(ctx, "UPDATE device_state SET active=?, inactive_ns=? WHERE device_id=? AND active AND last_activity_ns=?",
		false, at.UnixNano(), id, unixNS(lastActivity))
	if err != nil {
		return false, fmt.Errorf("sqldb: marking device %d inactive: %w", id, err)
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// PutProfileSettings implements store.Profiles.
func (t *Tables) PutProfileSettings(ctx context.Context, p store.ProfileSettings) error {
	if p.Profile == "" {
		return fmt.Errorf("sqldb: profile settings need a profile name")
	}
	_, err := t.db.Exec(ctx, `INSERT INTO profile_settings(profile, inactivity_ns, telemetry_retention_ns, event_retention_ns) VALUES (?, ?, ?, ?)
ON CONFLICT (profile) DO UPDATE SET inactivity_ns=excluded.inactivity_ns, telemetry_retention_ns=excluded.telemetry_retention_ns,
	event_retention_ns=excluded.event_retention_ns`,
		p.Profile, int64(p.InactivityTimeout), int64(p.TelemetryRetention), int64(p.EventRetention))
	if err != nil {
		return fmt.Errorf("sqldb: storing settings of profile %s: %w", p.Profile, err)
	}
	return nil
}

// ListProfileSettings implements store.Profiles.
func (t *Tables) ListProfileSettings(ctx context.Context) ([]store.ProfileSettings, error) {
	rows, err := t.db.Query(ctx, "SELECT profile, inactivity_ns, telemetry_retention_ns, event_retention_ns FROM profile_settings ORDER BY profile")
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing profile settings: %w", err)
	}
	defer rows.Close()
	var out []store.ProfileSettings
	for rows.Next() {
		var p store.ProfileSettings
		var a, b, c int64
		if err := rows.Scan(&p.Profile, &a, &b, &c); err != nil {
			return nil, fmt.Errorf("sqldb: listing profile settings: %w", err)
		}
		p.InactivityTimeout, p.TelemetryRetention, p.EventRetention = store.Duration(a), store.Duration(b), store.Duration(c)
		out = append(out, p)
	}
	return out, rows.Err()
}

// AddAlarmRule implements store.Profiles.
func (t *Tables) AddAlarmRule(ctx context.Context, r store.AlarmRule) (store.AlarmRule, error) {
	if err := r.Validate(); err != nil {
		return r, err
	}
	r.ID = 0
	body, err := json.Marshal(r)
	if err != nil {
		return r, err
	}
	err = t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		r.ID, err = tx.Insert(ctx, "INSERT INTO alarm_rules(profile, rule) VALUES (?, ?)", r.Profile, string(body))
		return err
	})
	if err != nil {
		return r, fmt.Errorf("sqldb: adding alarm rule: %w", err)
	}
	return r, nil
}

// ListAlarmRules implements store.Profiles.
func (t *Tables) ListAlarmRules(ctx context.Context, profile string) ([]store.AlarmRule, error) {
	q, args := "SELECT id, rule FROM alarm_rules ORDER BY id", []any{}
	if profile != "" {
		q, args = "SELECT id, rule FROM alarm_rules WHERE profile=? ORDER BY id", []any{profile}
	}
	rows, err := t.db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing alarm rules: %w", err)
	}
	defer rows.Close()
	var out []store.AlarmRule
	for rows.Next() {
		var id int64
		var body string
		if err := rows.Scan(&id, &body); err != nil {
			return nil, fmt.Errorf("sqldb: listing alarm rules: %w", err)
		}
		var r store.AlarmRule
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			return nil, fmt.Errorf("sqldb: alarm rule %d: %w", id, err)
		}
		r.ID = id
		out = append(out, r)
	}
	return out, rows.Err()
}

// DeleteAlarmRule implements store.Profiles. The rule's states go with
// it, in the same transaction: a rule is never changed in place (a change
// is a new rule, with a new id), so its states mean nothing without it.
func (t *Tables) DeleteAlarmRule(ctx context.Context, id int64) error {
	var n int64
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		res, err := tx.Exec(ctx, "DELETE FROM alarm_rules WHERE id=?", id)
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "DELETE FROM alarm_rule_states WHERE rule_id=?", id)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqldb: deleting alarm rule %d: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("alarm rule %d: %w", id, store.ErrNotFound)
	}
	return nil
}

// unixNS is the Unix nanoseconds of t; the zero time is 0.
func unixNS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// TryLease implements store.Leases: one upsert that takes the lease only
// when it is free, expired or already the holder's.
func (t *Tables) TryLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	now := time.Now()
	res, err := t.db.Exec(ctx, `INSERT INTO leases(name, holder, until_ns) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET holder=excluded.holder, until_ns=excluded.until_ns
WHERE leases.until_ns < ? OR leases.holder = excluded.holder`, name, holder, now.Add(ttl).UnixNano(), now.UnixNano())
	if err != nil {
		return false, fmt.Errorf("sqldb: taking lease %s: %w", name, err)
	}
	n, err := res.RowsAffected()
	return n > 0, err
}
