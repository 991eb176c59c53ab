package sqldb

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/thingline/thingline/store"
)

// Firmware updates: packages with their bytes, one target row per device
// (revisioned, so that the engines of several nodes agree through
// compare-and-set), the history of every state change, profile
// assignments, and rollouts with their members.
func init() {
	Register(Migration{Name: "ota/001", SQL: `
CREATE TABLE ota_packages (
  id {{id}},
  title TEXT NOT NULL,
  version TEXT NOT NULL,
  size BIGINT NOT NULL,
  checksum TEXT NOT NULL,
  algorithm TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  data {{blob}} NOT NULL,
  created_at BIGINT NOT NULL,
  UNIQUE (title, version)
);
CREATE TABLE ota_profiles (
  profile TEXT PRIMARY KEY,
  package_id BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE TABLE ota_devices (
  device_id BIGINT PRIMARY KEY,
  package_id BIGINT NOT NULL,
  source TEXT NOT NULL,
  rollout_id BIGINT NOT NULL DEFAULT 0,
  wave INTEGER NOT NULL DEFAULT 0,
  state TEXT NOT NULL,
  error TEXT NOT NULL DEFAULT '',
  attempts INTEGER NOT NULL DEFAULT 0,
  cur_title TEXT NOT NULL DEFAULT '',
  cur_version TEXT NOT NULL DEFAULT '',
  state_at BIGINT NOT NULL,
  deadline BIGINT NOT NULL DEFAULT 0,
  rev BIGINT NOT NULL
);
CREATE INDEX ota_devices_due ON ota_devices(deadline) WHERE deadline > 0;
CREATE INDEX ota_devices_rollout ON ota_devices(rollout_id);
CREATE INDEX ota_devices_package ON ota_devices(package_id);
CREATE TABLE ota_history (
  id {{id}},
  device_id BIGINT NOT NULL,
  ts BIGINT NOT NULL,
  package_id BIGINT NOT NULL,
  rollout_id BIGINT NOT NULL,
  state TEXT NOT NULL,
  error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ota_history_device ON ota_history(device_id, ts);
CREATE TABLE ota_rollouts (
  id {{id}},
  package_id BIGINT NOT NULL,
  profile TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL,
  pause_reason TEXT NOT NULL DEFAULT '',
  waves TEXT NOT NULL,
  current_wave INTEGER NOT NULL,
  total INTEGER NOT NULL,
  success_pct INTEGER NOT NULL,
  failure_max INTEGER NOT NULL,
  failures_acked INTEGER NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  rev BIGINT NOT NULL
);
CREATE TABLE ota_rollout_devices (
  rollout_id BIGINT NOT NULL,
  device_id BIGINT NOT NULL,
  wave INTEGER NOT NULL,
  state TEXT NOT NULL,
  error TEXT NOT NULL DEFAULT '',
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX ota_rollout_devices_device ON ota_rollout_devices(device_id)`},
		Migration{Name: "ota/002", SQL: `ALTER TABLE ota_devices ADD COLUMN report_at BIGINT NOT NULL DEFAULT 0`},
		// Retention removes old history of every device, oldest first.
		Migration{Name: "ota/003", SQL: `CREATE INDEX ota_history_ts ON ota_history(ts)`},
		// The tick's queued rows that may start (of no rollout, or of a
		// rollout's started waves) and a rollout's rows in one state are
		// ranges of this index, in the order they are read: a tick reads
		// what it starts, not the queue ahead of it.
		Migration{Name: "ota/005", SQL: `CREATE INDEX ota_devices_state ON ota_devices(state, rollout_id, wave, device_id)`})
	RegisterPurge(func(ctx context.Context, tx *Tx, device int64) error {
		for _, t := range []string{"ota_devices", "ota_history"} {
			if _, err := tx.Exec(ctx, "DELETE FROM "+t+" WHERE device_id=?", device); err != nil {
				return err
			}
		}
		return purgeMembers(ctx, tx, device)
	})
}

// isUnique tells whether err is a unique-constraint violation, in either
// backend's words.
func otaUnique(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "UNIQUE constraint failed") || strings.Contains(s, "23505") ||
		strings.Contains(s, "duplicate key value")
}

// scanAll reads every row with scan and closes rows; an empty result is
// an empty slice, so that the API answers [] and not null.
func scanAll[T any](rows Rows, scan func(interface{ Scan(...any) error }) (T, error)) ([]T, error) {
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

const otaPackageCols = "id, title, version, size, checksum, algorithm, sha256, created_at"

func scanPackage(sc interface{ Scan(...any) error }) (store.OTAPackage, error) {
	var p store.OTAPackage
	var created int64
	err := sc.Scan(&p.ID, &p.Title, &p.Version, &p.Size, &p.Checksum, &p.ChecksumAlgorithm, &p.SHA256, &created)
	p.CreatedAt = FromNS(created)
	return p, err
}

// CreateOTAPackage implements store.OTA.
func (t *Tables) CreateOTAPackage(ctx context.Context, p store.OTAPackage, data []byte) (store.OTAPackage, error) {
	if p.CreatedAt.IsZero() {
		p.CreatedAt = time.Now()
	}
	p.Size = int64(len(data))
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var n int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM ota_packages WHERE title=? AND version=?", p.Title, p.Version).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("sqldb: package %s %s: %w", p.Title, p.Version, store.ErrExists)
		}
		id, err := tx.Insert(ctx, `INSERT INTO ota_packages(title, version, size, checksum, algorithm, sha256, data, created_at)
VALUES (?,?,?,?,?,?,?,?)`, p.Title, p.Version, p.Size, p.Checksum, p.ChecksumAlgorithm, p.SHA256, data, ToNS(p.CreatedAt))
		p.ID = id
		return err
	})
	if otaUnique(err) {
		return p, fmt.Errorf("sqldb: package %s %s: %w", p.Title, p.Version, store.ErrExists)
	}
	if err != nil && !errors.Is(err, store.ErrExists) {
		return p, fmt.Errorf("sqldb: creating package: %w", err)
	}
	p.CreatedAt = FromNS(ToNS(p.CreatedAt))
	return p, err
}

// GetOTAPackage implements store.OTA.
func (t *Tables) GetOTAPackage(ctx context.Context, id int64) (store.OTAPackage, error) {
	p, err := scanPackage(t.db.QueryRow(ctx, "SELECT "+otaPackageCols+" FROM ota_packages WHERE id=?", id))
	return p, NotFound(err, fmt.Sprintf("sqldb: package %d", id))
}

// OTAPackageData implements store.OTA.
func (t *Tables) OTAPackageData(ctx context.Context, id int64) ([]byte, error) {
	var b []byte
	err := t.db.QueryRow(ctx, "SELECT data FROM ota_packages WHERE id=?", id).Scan(&b)
	return b, NotFound(err, fmt.Sprintf("sqldb: package %d", id))
}

// ListOTAPackages implements store.OTA.
func (t *Tables) ListOTAPackages(ctx context.Context) ([]store.OTAPackage, error) {
	rows, err := t.db.Query(ctx, "SELECT "+otaPackageCols+" FROM ota_packages ORDER BY id DESC")
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing packages: %w", err)
	}
	return scanAll(rows, scanPackage)
}

// DeleteOTAPackage implements store.OTA.
func (t *Tables) DeleteOTAPackage(ctx context.Context, id int64) error {
	return t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var n int
		err := tx.QueryRow(ctx, `SELECT
 (SELECT count(*) FROM ota_devices WHERE package_id=?) +
 (SELECT count(*) FROM ota_profiles WHERE package_id=?) +
 (SELECT count(*) FROM ota_rollouts WHERE package_id=? AND status IN ('running','paused'))`, id, id, id).Scan(&n)
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("sqldb: package %d is assigned or being rolled out: %w", id, store.ErrInUse)
		}
		res, err := tx.Exec(ctx, "DELETE FROM ota_packages WHERE id=?", id)
		if err != nil {
			return err
		}
		if k, _ := res.RowsAffected(); k == 0 {
			return fmt.Errorf("sqldb: package %d: %w", id, store.ErrNotFound)
		}
		return nil
	})
}

// SetOTAProfile implements store.OTA.
func (t *Tables) SetOTAProfile(ctx context.Context, profile string, packageID int64) error {
	return t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM ota_profiles WHERE profile=?", profile); err != nil {
			return err
		}
		if packageID == 0 {
			return nil
		}
		_, err := tx.Exec(ctx, "INSERT INTO ota_profiles(profile, package_id, updated_at) VALUES (?,?,?)",
			profile, packageID, time.Now().UnixNano())
		return err
	})
}

// GetOTAProfile implements store.OTA.
func (t *Tables) GetOTAProfile(ctx context.Context, profile string) (int64, error) {
	var id int64
	err := t.db.QueryRow(ctx, "SELECT package_id FROM ota_profiles WHERE profile=?", profile).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return id, err
}

const otaDeviceCols = `o.device_id, COALESCE(d.name, ''), o.package_id, o.source, o.rollout_id, o.wave, o.state, o.error,
 o.attempts, o.cur_title, o.cur_version, o.state_at, o.deadline, o.rev, o.report_at`

const otaDeviceFrom = " FROM ota_devices o LEFT JOIN devices d ON d.id = o.device_id"

func scanOTADevice(sc interface{ Scan(...any) error }) (store.OTADevice, error) {
	var d store.OTADevice
	var at, deadline, reportAt int64
	err := sc.Scan(&d.DeviceID, &d.Device, &d.PackageID, &d.Source, &d.RolloutID, &d.Wave, &d.State, &d.Error,
		&d.Attempts, &d.CurrentTitle, &d.CurrentVersion, &at, &deadline, &d.Rev, &reportAt)
	d.StateAt, d.Deadline, d.ReportAt = FromNS(at), FromNS(deadline), FromNS(reportAt)
	return d, err
}

func getOTADevice(ctx context.Context, q interface {
	QueryRow(ctx context.Context, q string, args ...any) Row
}, id int64) (store.OTADevice, error) {
	d, err := scanOTADevice(q.QueryRow(ctx, "SELECT "+otaDeviceCols+otaDeviceFrom+" WHERE o.device_id=?", id))
	return d, NotFound(err, fmt.Sprintf("sqldb: ota state of device %d", id))
}

// otaHistory records a state change of d in the history and, for a
// rollout member, in the membership, counting it in c.
func otaHistory(ctx context.Context, tx *Tx, c tally, d store.OTADevice) error {
	if _, err := tx.Exec(ctx, "INSERT INTO ota_history(device_id, ts, package_id, rollout_id, state, error) VALUES (?,?,?,?,?,?)",
		d.DeviceID, ToNS(d.StateAt), d.PackageID, d.RolloutID, d.State, d.Error); err != nil {
		return err
	}
	if d.RolloutID == 0 {
		return nil
	}
	return setMember(ctx, tx, c, d.RolloutID, d.DeviceID, d.State, d.Error, ToNS(d.StateAt), nil)
}

// putOTADevice replaces a device's row inside tx and cancels an unfinished
// membership of another rollout, counting the changes in c.
func putOTADevice(ctx context.Context, tx *Tx, c tally, d store.OTADevice) (store.OTADevice, error) {
	var rev int64
	err := tx.QueryRow(ctx, "SELECT rev FROM ota_devices WHERE device_id=?", d.DeviceID).Scan(&rev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return d, err
	}
	if _, err := tx.Exec(ctx, "DELETE FROM ota_devices WHERE device_id=?", d.DeviceID); err != nil {
		return d, err
	}
	d.Rev = rev + 1
	if _, err := tx.Exec(ctx, `INSERT INTO ota_devices(device_id, package_id, source, rollout_id, wave, state, error, attempts,
 cur_title, cur_version, state_at, deadline, rev, report_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		d.DeviceID, d.PackageID, d.Source, d.RolloutID, d.Wave, d.State, d.Error, d.Attempts,
		d.CurrentTitle, d.CurrentVersion, ToNS(d.StateAt), ToNS(d.Deadline), d.Rev, ToNS(d.ReportAt)); err != nil {
		return d, err
	}
	rows, err := tx.Query(ctx, `SELECT rollout_id FROM ota_rollout_devices
 WHERE device_id=? AND rollout_id<>? AND state NOT IN ('UPDATED','FAILED','CANCELED') ORDER BY rollout_id`, d.DeviceID, d.RolloutID)
	if err != nil {
		return d, err
	}
	var older []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return d, err
		}
		older = append(older, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return d, err
	}
	for _, id := range older {
		if err := setMember(ctx, tx, c, id, d.DeviceID, store.OTACanceled, "superseded by a newer assignment",
			ToNS(d.StateAt), store.OTATerminal); err != nil {
			return d, err
		}
	}
	return d, otaHistory(ctx, tx, c, d)
}

// PutOTADevice implements store.OTA.
func (t *Tables) PutOTADevice(ctx context.Context, d store.OTADevice) (store.OTADevice, error) {
	if d.StateAt.IsZero() {
		d.StateAt = time.Now()
	}
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		c := tally{}
		var err error
		if d, err = putOTADevice(ctx, tx, c, d); err != nil {
			return err
		}
		return c.apply(ctx, tx)
	})
	if err != nil {
		return d, fmt.Errorf("sqldb: assigning firmware to device %d: %w", d.DeviceID, err)
	}
	return t.GetOTADevice(ctx, d.DeviceID)
}

// DeleteOTADevice implements store.OTA.
func (t *Tables) DeleteOTADevice(ctx context.Context, deviceID int64) error {
	res, err := t.db.Exec(ctx, "DELETE FROM ota_devices WHERE device_id=?", deviceID)
	if err != nil {
		return fmt.Errorf("sqldb: unassigning firmware of device %d: %w", deviceID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("sqldb: ota state of device %d: %w", deviceID, store.ErrNotFound)
	}
	return nil
}

// GetOTADevice implements store.OTA.
func (t *Tables) GetOTADevice(ctx context.Context, deviceID int64) (store.OTADevice, error) {
	return getOTADevice(ctx, t.db, deviceID)
}

// UpdateOTADevice implements store.OTA.
func (t *Tables) UpdateOTADevice(ctx context.Context, d store.OTADevice) (store.OTADevice, bool, error) {
	ok := false
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		old, err := getOTADevice(ctx, tx, d.DeviceID)
		if err != nil {
			return err
		}
		if old.Rev != d.Rev {
			return nil
		}
		if d.StateAt.IsZero() {
			d.StateAt = time.Now()
		}
		res, err := tx.Exec(ctx, `UPDATE ota_devices SET package_id=?, source=?, rollout_id=?, wave=?, state=?, error=?, attempts=?,
 cur_title=?, cur_version=?, state_at=?, deadline=?, report_at=?, rev=rev+1 WHERE device_id=? AND rev=?`,
			d.PackageID, d.Source, d.RolloutID, d.Wave, d.State, d.Error, d.Attempts, d.CurrentTitle, d.CurrentVersion,
			ToNS(d.StateAt), ToNS(d.Deadline), ToNS(d.ReportAt), d.DeviceID, d.Rev)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		ok = true
		if d.State != old.State || d.Attempts != old.Attempts || d.Error != old.Error {
			c := tally{}
			if err := otaHistory(ctx, tx, c, d); err != nil {
				return err
			}
			return c.apply(ctx, tx)
		}
		return nil
	})
	if err != nil {
		return d, false, fmt.Errorf("sqldb: updating ota state of device %d: %w", d.DeviceID, err)
	}
	if !ok {
		cur, err := t.GetOTADevice(ctx, d.DeviceID)
		return cur, false, err
	}
	cur, err := t.GetOTADevice(ctx, d.DeviceID)
	return cur, true, err
}

// ListOTADevices implements store.OTA.
func (t *Tables) ListOTADevices(ctx context.Context, q store.OTADeviceQuery) ([]store.OTADevice, error) {
	var where []string
	var args []any
	order := "o.device_id"
	switch {
	case q.RolloutID != 0:
		where, args = append(where, "o.rollout_id=?"), append(args, q.RolloutID)
		if q.FirstWaves > 0 {
			where, args = append(where, "o.wave<?"), append(args, q.FirstWaves)
		}
		order = "o.wave, o.device_id"
	case q.NoRollout:
		where, order = append(where, "o.rollout_id=0"), "o.wave, o.device_id"
	}
	if q.PackageID != 0 {
		where, args = append(where, "o.package_id=?"), append(args, q.PackageID)
	}
	if len(q.States) > 0 {
		where = append(where, "o.state IN (?"+strings.Repeat(",?", len(q.States)-1)+")")
		for _, s := range q.States {
			args = append(args, s)
		}
	}
	if !q.DueBefore.IsZero() {
		where = append(where, "o.deadline > 0 AND o.deadline <= ? AND o.state NOT IN ('UPDATED','FAILED','CANCELED')")
		args = append(args, q.DueBefore.UnixNano())
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 1000
	}
	query := "SELECT " + otaDeviceCols + otaDeviceFrom
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += fmt.Sprintf(" ORDER BY %s LIMIT %d", order, limit)
	rows, err := t.db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing ota states: %w", err)
	}
	return scanAll(rows, scanOTADevice)
}

// OTAHistory implements store.OTA.
func (t *Tables) OTAHistory(ctx context.Context, deviceID int64, since time.Time, limit int) ([]store.OTAHistoryEntry, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := t.db.Query(ctx, fmt.Sprintf(`SELECT id, ts, package_id, rollout_id, state, error FROM ota_history
 WHERE device_id=? AND ts>=? ORDER BY ts DESC, id DESC LIMIT %d`, limit), deviceID, ToNS(since))
	if err != nil {
		return nil, fmt.Errorf("sqldb: reading ota history: %w", err)
	}
	defer rows.Close()
	out := []store.OTAHistoryEntry{}
	for rows.Next() {
		var h store.OTAHistoryEntry
		var ts int64
		if err := rows.Scan(&h.ID, &ts, &h.PackageID, &h.RolloutID, &h.State, &h.Error); err != nil {
			return nil, err
		}
		h.Time = FromNS(ts)
		out = append(out, h)
	}
	return out, rows.Err()
}

const otaRolloutCols = `id, package_id, profile, status, pause_reason, waves, current_wave, total, success_pct,
 failure_max, failures_acked, created_at, updated_at, rev`

func scanRollout(sc interface{ Scan(...any) error }) (store.OTARollout, error) {
	var r store.OTARollout
	var waves string
	var created, updated int64
	err := sc.Scan(&r.ID, &r.PackageID, &r.Profile, &r.Status, &r.PauseReason, &waves, &r.CurrentWave, &r.Total,
		&r.SuccessPercent, &r.FailureMax, &r.FailuresAcked, &created, &updated, &r.Rev)
	if err != nil {
		return r, err
	}
	r.CreatedAt, r.UpdatedAt = FromNS(created), FromNS(updated)
	if err := json.Unmarshal([]byte(waves), &r.Waves); err != nil {
		return r, fmt.Errorf("sqldb: rollout %d: bad waves %q", r.ID, waves)
	}
	return r, nil
}

// CreateOTARollout implements store.OTA.
func (t *Tables) CreateOTARollout(ctx context.Context, r store.OTARollout, members []store.OTARolloutMember) (store.OTARollout, error) {
	now := time.Now()
	if r.CreatedAt.IsZero() {
		r.CreatedAt = now
	}
	r.UpdatedAt = r.CreatedAt
	r.Rev = 1
	waves, err := json.Marshal(r.Waves)
	if err != nil {
		return r, err
	}
	err = t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		id, err := tx.Insert(ctx, `INSERT INTO ota_rollouts(package_id, profile, status, pause_reason, waves, current_wave, total,
 success_pct, failure_max, failures_acked, created_at, updated_at, rev) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)`,
			r.PackageID, r.Profile, r.Status, r.PauseReason, string(waves), r.CurrentWave, r.Total, r.SuccessPercent,
			r.FailureMax, r.FailuresAcked, ToNS(r.CreatedAt), ToNS(r.UpdatedAt), r.Rev)
		if err != nil {
			return err
		}
		r.ID = id
		c := tally{}
		for _, m := range members {
			if _, err := tx.Exec(ctx, "INSERT INTO ota_rollout_devices(rollout_id, device_id, wave, state, updated_at) VALUES (?,?,?,?,?)",
				id, m.DeviceID, m.Wave, store.OTAQueued, ToNS(r.CreatedAt)); err != nil {
				return err
			}
			c.move(id, m.Wave, "", store.OTAQueued)
			if _, err := putOTADevice(ctx, tx, c, store.OTADevice{DeviceID: m.DeviceID, PackageID: r.PackageID,
				Source: store.OTASourceRollout, RolloutID: id, Wave: m.Wave, State: store.OTAQueued, StateAt: r.CreatedAt}); err != nil {
				return err
			}
		}
		return c.apply(ctx, tx)
	})
	if err != nil {
		return r, fmt.Errorf("sqldb: creating rollout: %w", err)
	}
	return t.GetOTARollout(ctx, r.ID)
}

// GetOTARollout implements store.OTA.
func (t *Tables) GetOTARollout(ctx context.Context, id int64) (store.OTARollout, error) {
	r, err := scanRollout(t.db.QueryRow(ctx, "SELECT "+otaRolloutCols+" FROM ota_rollouts WHERE id=?", id))
	return r, NotFound(err, fmt.Sprintf("sqldb: rollout %d", id))
}

// ListOTARollouts implements store.OTA.
func (t *Tables) ListOTARollouts(ctx context.Context, status string) ([]store.OTARollout, error) {
	q, args := "SELECT "+otaRolloutCols+" FROM ota_rollouts", []any{}
	if status != "" {
		q, args = q+" WHERE status=?", append(args, status)
	}
	rows, err := t.db.Query(ctx, q+" ORDER BY id DESC LIMIT 1000", args...)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing rollouts: %w", err)
	}
	return scanAll(rows, scanRollout)
}

// UpdateOTARollout implements store.OTA.
func (t *Tables) UpdateOTARollout(ctx context.Context, r store.OTARollout) (store.OTARollout, bool, error) {
	r.UpdatedAt = time.Now()
	res, err := t.db.Exec(ctx, `UPDATE ota_rollouts SET status=?, pause_reason=?, current_wave=?, failures_acked=?, updated_at=?,
 rev=rev+1 WHERE id=? AND rev=?`, r.Status, r.PauseReason, r.CurrentWave, r.FailuresAcked, ToNS(r.UpdatedAt), r.ID, r.Rev)
	if err != nil {
		return r, false, fmt.Errorf("sqldb: updating rollout %d: %w", r.ID, err)
	}
	n, _ := res.RowsAffected()
	cur, err := t.GetOTARollout(ctx, r.ID)
	return cur, n == 1, err
}

// OTARolloutMembers implements store.OTA.
func (t *Tables) OTARolloutMembers(ctx context.Context, id int64) ([]store.OTARolloutMember, error) {
	rows, err := t.db.Query(ctx, `SELECT m.device_id, COALESCE(d.name, ''), m.wave, m.state, m.error, m.updated_at
 FROM ota_rollout_devices m LEFT JOIN devices d ON d.id = m.device_id WHERE m.rollout_id=? ORDER BY m.wave, d.name`, id)
	if err != nil {
		return nil, fmt.Errorf("sqldb: reading rollout %d: %w", id, err)
	}
	defer rows.Close()
	out := []store.OTARolloutMember{}
	for rows.Next() {
		var m store.OTARolloutMember
		var at int64
		if err := rows.Scan(&m.DeviceID, &m.Device, &m.Wave, &m.State, &m.Error, &at); err != nil {
			return nil, err
		}
		m.UpdatedAt = FromNS(at)
		out = append(out, m)
	}
	return out, rows.Err()
}

// CancelOTARolloutQueued implements store.OTA.
func (t *Tables) CancelOTARolloutQueued(ctx context.Context, id int64, reason string, at time.Time) (int, error) {
	n := 0
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		rows, err := tx.Query(ctx, "SELECT device_id, package_id FROM ota_devices WHERE rollout_id=? AND state=? ORDER BY device_id",
			id, store.OTAQueued)
		if err != nil {
			return err
		}
		type row struct{ dev, pkg int64 }
		var rs []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.dev, &r.pkg); err != nil {
				rows.Close()
				return err
			}
			rs = append(rs, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		c := tally{}
		n = 0
		for _, r := range rs {
			// Only a device still queued for this rollout: another node
			// may have initiated it since the read above.
			res, err := tx.Exec(ctx, `UPDATE ota_devices SET state=?, error=?, state_at=?, deadline=0, rev=rev+1
 WHERE device_id=? AND rollout_id=? AND state=?`, store.OTACanceled, reason, ToNS(at), r.dev, id, store.OTAQueued)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k == 0 {
				continue
			}
			if err := otaHistory(ctx, tx, c, store.OTADevice{DeviceID: r.dev, PackageID: r.pkg, RolloutID: id,
				State: store.OTACanceled, Error: reason, StateAt: at}); err != nil {
				return err
			}
			n++
		}
		return c.apply(ctx, tx)
	})
	if err != nil {
		return 0, fmt.Errorf("sqldb: canceling queued devices of rollout %d: %w", id, err)
	}
	return n, nil
}
