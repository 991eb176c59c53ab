package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqldb"
)

// Times are stored as Unix nanoseconds (0 for the zero time), which keeps
// them exact and comparable in SQL.
func toNS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

const deviceCols = "id, name, profile, created_at, first_seen_addr, last_seen_at, last_seen_addr, online, node"

func scanDevice(sc interface{ Scan(...any) error }) (store.Device, error) {
	var d store.Device
	var created, seen int64
	err := sc.Scan(&d.ID, &d.Name, &d.Profile, &created, &d.FirstSeenAddr, &seen, &d.LastSeenAddr, &d.Online, &d.Node)
	d.CreatedAt, d.LastSeenAt = fromNS(created), fromNS(seen)
	return d, err
}

// fill adds the counters and the factory-registry flag to d.
func fill(ctx context.Context, q querier, d *store.Device) error {
	rows, err := q.QueryContext(ctx, "SELECT name, value FROM counters WHERE device=?", d.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var v int64
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		if d.Counters == nil {
			d.Counters = map[string]int64{}
		}
		d.Counters[k] = v
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return fillProduced(ctx, q, d)
}

// fillProduced sets d.Produced when the factory registry is in use.
func fillProduced(ctx context.Context, q querier, d *store.Device) error {
	var units int64
	if err := q.QueryRowContext(ctx, "SELECT count(*) FROM (SELECT 1 FROM units LIMIT 1)").Scan(&units); err != nil {
		return err
	}
	if units > 0 {
		var produced bool
		err := q.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM credentials c JOIN units u ON u.serial = c.serial
			WHERE c.device=?)`, d.ID).Scan(&produced)
		if err != nil {
			return err
		}
		d.Produced = &produced
	}
	return nil
}

func getDevice(ctx context.Context, q querier, where string, arg any) (store.Device, error) {
	d, err := scanDevice(q.QueryRowContext(ctx, "SELECT "+deviceCols+" FROM devices WHERE "+where, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return d, store.ErrNotFound
	}
	if err != nil {
		return d, err
	}
	return d, fill(ctx, q, &d)
}

// EnsureDevice creates the device on first sight and records its credential.
// It runs on the writer goroutine, which serializes it with every other write.
func (s *Store) EnsureDevice(ctx context.Context, d store.Device, c store.Credential, ev *store.Event) (dev store.Device, created, rotated bool, err error) {
	if d.Name == "" {
		return dev, false, false, errors.New("sqlite: ensuring device: empty name")
	}
	var evDetail any
	if ev != nil {
		if evDetail, err = eventDetail(*ev); err != nil {
			return dev, false, false, fmt.Errorf("sqlite: ensuring device: event %w", err)
		}
	}
	err = s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		created, rotated = false, false
		var id int64
		createdAt := toNS(orNow(d.CreatedAt))
		err := tx.QueryRowContext(ctx, "SELECT id FROM devices WHERE name=?", d.Name).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			res, err := tx.ExecContext(ctx, "INSERT INTO devices(name, profile, created_at, first_seen_addr) VALUES (?, ?, ?, ?)",
				d.Name, d.Profile, createdAt, d.FirstSeenAddr)
			if err != nil {
				return err
			}
			if id, err = res.LastInsertId(); err != nil {
				return err
			}
			created = true
		} else if err != nil {
			return err
		}
		if c.SHA256 != "" {
			seen := toNS(orNow(c.LastSeen))
			res, err := tx.ExecContext(ctx, "UPDATE credentials SET last_seen=max(last_seen, ?) WHERE device=? AND sha256=?",
				seen, id, c.SHA256)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				first := seen
				if !c.FirstSeen.IsZero() {
					first = toNS(c.FirstSeen)
				}
				_, err := tx.ExecContext(ctx, `INSERT INTO credentials(device, sha256, serial, issuer, subject, not_before,
					not_after, credential_id, pem, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
					id, c.SHA256, c.Serial, c.Issuer, c.Subject, toNS(c.NotBefore), toNS(c.NotAfter),
					c.CredentialID, c.PEM, first, seen)
				if err != nil {
					return err
				}
				rotated = !created
			}
		}
		if e, ok := store.ProvisioningEvent(ev, created, rotated); ok {
			if err := insertEvent(ctx, tx, e, evDetail); err != nil {
				return err
			}
		}
		if created {
			// Just inserted: nothing to read back but the registry flag.
			dev = store.Device{ID: id, Name: d.Name, Profile: d.Profile, CreatedAt: fromNS(createdAt), FirstSeenAddr: d.FirstSeenAddr}
			return fillProduced(ctx, tx, &dev)
		}
		dev, err = getDevice(ctx, tx, "id=?", id)
		return err
	})
	if err != nil {
		return store.Device{}, false, false, fmt.Errorf("sqlite: ensuring device %q: %w", d.Name, err)
	}
	return dev, created, rotated, nil
}

func (s *Store) GetDevice(ctx context.Context, name string) (store.Device, error) {
	if err := s.readable(); err != nil {
		return store.Device{}, err
	}
	d, err := getDevice(ctx, s.db, "name=?", name)
	if err != nil {
		return d, fmt.Errorf("sqlite: getting device %q: %w", name, err)
	}
	return d, nil
}

func (s *Store) GetDeviceByID(ctx context.Context, id int64) (store.Device, error) {
	if err := s.readable(); err != nil {
		return store.Device{}, err
	}
	d, err := getDevice(ctx, s.db, "id=?", id)
	if err != nil {
		return d, fmt.Errorf("sqlite: getting device %d: %w", id, err)
	}
	return d, nil
}

func (s *Store) ListDevices(ctx context.Context, opt store.ListOptions) ([]store.Device, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("sqlite: listing devices: %w", err)
	}
	defer tx.Rollback()
	q, args, err := sqldb.DeviceList(sqldb.SQLite, deviceCols, opt, normLimit(opt.Limit))
	if err != nil {
		return nil, fmt.Errorf("sqlite: listing devices: %w", err)
	}
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: listing devices: %w", err)
	}
	var out []store.Device
	for rows.Next() {
		var x sqldb.Listed
		d, err := scanDevice(x.Wrap(rows))
		x.Fill(&d)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("sqlite: listing devices: %w", err)
		}
		out = append(out, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: listing devices: %w", err)
	}
	for i := range out {
		if err := fill(ctx, tx, &out[i]); err != nil {
			return nil, fmt.Errorf("sqlite: listing devices: %w", err)
		}
	}
	return out, nil
}

// DeleteDevice removes the device and everything it owns except events.
// Log rows not yet compacted are dropped from the in-memory tail at once and
// from the file by the next compaction, which skips devices that are gone.
func (s *Store) DeleteDevice(ctx context.Context, name string) error {
	var id int64
	o := &op{fn: func(ctx context.Context, tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, "SELECT id FROM devices WHERE name=?", name).Scan(&id); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return store.ErrNotFound
			}
			return err
		}
		for _, q := range []string{
			"DELETE FROM devices WHERE id=?",
			"DELETE FROM counters WHERE device=?",
			"DELETE FROM credentials WHERE device=?",
			"DELETE FROM attributes WHERE device=?",
			"DELETE FROM latest WHERE device=?",
			"DELETE FROM chunk WHERE device=?",
			"DELETE FROM dirty WHERE device=?",
			"DELETE FROM compacted WHERE device=?",
		} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return err
			}
		}
		return nil
	}}
	o.after = func() { s.tail.dropDevice(id) }
	if err := s.do(ctx, o); err != nil {
		return fmt.Errorf("sqlite: deleting device %q: %w", name, err)
	}
	return s.PurgeDevice(ctx, id)
}

// execOne runs an update of an existing device: one statement, so no
// savepoint is needed.
func (s *Store) execOne(ctx context.Context, what string, id int64, q string, args ...any) error {
	return s.deviceWriteOp(ctx, what, id, true, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, q, args...)
		return err
	})
}

// deviceWrite runs fn in the writer's transaction if the device exists.
func (s *Store) deviceWrite(ctx context.Context, what string, id int64, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return s.deviceWriteOp(ctx, what, id, false, fn)
}

func (s *Store) deviceWriteOp(ctx context.Context, what string, id int64, single bool, fn func(ctx context.Context, tx *sql.Tx) error) error {
	err := s.do(ctx, &op{single: single, fn: func(ctx context.Context, tx *sql.Tx) error {
		var ok bool
		if err := tx.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM devices WHERE id=?)", id).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return store.ErrNotFound
		}
		return fn(ctx, tx)
	}})
	if err != nil {
		return fmt.Errorf("sqlite: %s of device %d: %w", what, id, err)
	}
	return nil
}

// SetOnline records a session start or end. An end only clears the session
// if node still holds it, so that the old node of a takeover cannot mark
// the device offline after the new node took it.
func (s *Store) SetOnline(ctx context.Context, id int64, node string, online bool, addr string, at time.Time) error {
	at = orNow(at)
	if online {
		return s.execOne(ctx, "recording session", id, `UPDATE devices SET online=1, node=?, last_seen_at=?,
			last_seen_addr=?, first_seen_addr=CASE WHEN first_seen_addr='' THEN ? ELSE first_seen_addr END WHERE id=?`,
			node, toNS(at), addr, addr, id)
	}
	return s.execOne(ctx, "recording session end", id, `UPDATE devices SET last_seen_at=max(last_seen_at, ?),
		online=CASE WHEN node=? THEN 0 ELSE online END, node=CASE WHEN node=? THEN '' ELSE node END WHERE id=?`,
		toNS(at), node, node, id)
}

func (s *Store) ResetNode(ctx context.Context, node string) error {
	err := s.writeSingle(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE devices SET online=0, node='' WHERE online AND node=?", node)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: resetting node %q: %w", node, err)
	}
	return nil
}

func (s *Store) AddCounter(ctx context.Context, id int64, name string, delta int64) error {
	return s.execOne(ctx, "adding to counter "+name, id,
		"INSERT INTO counters(device, name, value) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET value=value+excluded.value",
		id, name, delta)
}

func (s *Store) ListCredentials(ctx context.Context, deviceID int64) ([]store.Credential, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT sha256, serial, issuer, subject, not_before, not_after, credential_id,
		pem, first_seen, last_seen FROM credentials WHERE device=? ORDER BY first_seen DESC, rowid DESC`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: listing credentials: %w", err)
	}
	defer rows.Close()
	var out []store.Credential
	for rows.Next() {
		c := store.Credential{DeviceID: deviceID}
		var nb, na, fs, ls int64
		if err := rows.Scan(&c.SHA256, &c.Serial, &c.Issuer, &c.Subject, &nb, &na, &c.CredentialID, &c.PEM, &fs, &ls); err != nil {
			return nil, fmt.Errorf("sqlite: listing credentials: %w", err)
		}
		c.NotBefore, c.NotAfter, c.FirstSeen, c.LastSeen = fromNS(nb), fromNS(na), fromNS(fs), fromNS(ls)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: listing credentials: %w", err)
	}
	return out, nil
}

func validScope(sc store.Scope) error {
	switch sc {
	case store.ClientScope, store.SharedScope, store.ServerScope:
		return nil
	}
	return fmt.Errorf("unknown attribute scope %q", sc)
}

func (s *Store) SetAttributes(ctx context.Context, deviceID int64, scope store.Scope, kv map[string]json.RawMessage, at time.Time) error {
	if err := validScope(scope); err != nil {
		return fmt.Errorf("sqlite: setting attributes: %w", err)
	}
	for k, v := range kv {
		if !json.Valid(v) {
			return fmt.Errorf("sqlite: setting attribute %q: value is not JSON", k)
		}
	}
	ms := orNow(at).UnixMilli()
	return s.deviceWrite(ctx, "setting attributes", deviceID, func(ctx context.Context, tx *sql.Tx) error {
		for k, v := range kv {
			_, err := tx.ExecContext(ctx, `INSERT INTO attributes(device, scope, key, value, updated_at) VALUES (?, ?, ?, ?, ?)
				ON CONFLICT DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at`,
				deviceID, string(scope), k, string(v), ms)
			if err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Store) GetAttributes(ctx context.Context, deviceID int64, scope store.Scope, keys []string) (map[string]store.Attribute, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, "SELECT key, value, updated_at FROM attributes WHERE device=? AND scope=?",
		deviceID, string(scope))
	if err != nil {
		return nil, fmt.Errorf("sqlite: getting attributes: %w", err)
	}
	defer rows.Close()
	want := keySet(keys)
	out := map[string]store.Attribute{}
	for rows.Next() {
		var k, v string
		var a store.Attribute
		if err := rows.Scan(&k, &v, &a.UpdatedAt); err != nil {
			return nil, fmt.Errorf("sqlite: getting attributes: %w", err)
		}
		if want == nil || want[k] {
			a.Value = json.RawMessage(v)
			out[k] = a
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: getting attributes: %w", err)
	}
	return out, nil
}

func (s *Store) DeleteAttributes(ctx context.Context, deviceID int64, scope store.Scope, keys []string) error {
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		for _, k := range keys {
			if _, err := tx.ExecContext(ctx, "DELETE FROM attributes WHERE device=? AND scope=? AND key=?",
				deviceID, string(scope), k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlite: deleting attributes: %w", err)
	}
	return nil
}

func (s *Store) AddEvent(ctx context.Context, e store.Event) error {
	detail, err := eventDetail(e)
	if err == nil {
		err = s.writeSingle(ctx, func(ctx context.Context, tx *sql.Tx) error { return insertEvent(ctx, tx, e, detail) })
	}
	if err != nil {
		return fmt.Errorf("sqlite: adding event: %w", err)
	}
	return nil
}

func (s *Store) AddEvents(ctx context.Context, es []store.Event) error {
	details := make([]any, len(es))
	for i, e := range es {
		d, err := eventDetail(e)
		if err != nil {
			return fmt.Errorf("sqlite: adding events: %w", err)
		}
		details[i] = d
	}
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		for i, e := range es {
			if err := insertEvent(ctx, tx, e, details[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlite: adding events: %w", err)
	}
	return nil
}

// eventDetail checks an event's detail and gives it in the form stored.
func eventDetail(e store.Event) (any, error) {
	if len(e.Detail) == 0 {
		return nil, nil
	}
	if !json.Valid(e.Detail) {
		return nil, errors.New("detail is not JSON")
	}
	return string(e.Detail), nil
}

func insertEvent(ctx context.Context, tx *sql.Tx, e store.Event, detail any) error {
	_, err := tx.ExecContext(ctx, "INSERT INTO events(time, device, kind, reason, addr, node, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
		toNS(orNow(e.Time)), e.Device, e.Kind, e.Reason, e.Addr, e.Node, detail)
	return err
}

func (s *Store) ListEvents(ctx context.Context, q store.EventQuery) ([]store.Event, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	var where []string
	var args []any
	if q.Device != "" {
		where, args = append(where, "device=?"), append(args, q.Device)
	}
	if q.Kind != "" {
		where, args = append(where, "kind=?"), append(args, q.Kind)
	}
	if q.Before > 0 {
		where, args = append(where, "id<?"), append(args, q.Before)
	}
	query := "SELECT id, time, device, kind, reason, addr, node, detail FROM events"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY id DESC LIMIT ?"
	args = append(args, normLimit(q.Limit))
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: listing events: %w", err)
	}
	defer rows.Close()
	var out []store.Event
	for rows.Next() {
		var e store.Event
		var t int64
		var detail sql.NullString
		if err := rows.Scan(&e.ID, &t, &e.Device, &e.Kind, &e.Reason, &e.Addr, &e.Node, &detail); err != nil {
			return nil, fmt.Errorf("sqlite: listing events: %w", err)
		}
		e.Time = fromNS(t)
		if detail.Valid {
			e.Detail = json.RawMessage(detail.String)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: listing events: %w", err)
	}
	return out, nil
}

func (s *Store) Revoke(ctx context.Context, r store.Revocation) error {
	if r.Serial == "" {
		return errors.New("sqlite: revoking: empty serial")
	}
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO revocations(serial, reason, revoked_at) VALUES (?, ?, ?)
			ON CONFLICT DO UPDATE SET reason=excluded.reason`, r.Serial, r.Reason, toNS(orNow(r.RevokedAt)))
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: revoking %s: %w", r.Serial, err)
	}
	return nil
}

func (s *Store) ListRevocations(ctx context.Context) ([]store.Revocation, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, "SELECT serial, reason, revoked_at FROM revocations ORDER BY revoked_at, serial")
	if err != nil {
		return nil, fmt.Errorf("sqlite: listing revocations: %w", err)
	}
	defer rows.Close()
	var out []store.Revocation
	for rows.Next() {
		var r store.Revocation
		var t int64
		if err := rows.Scan(&r.Serial, &r.Reason, &t); err != nil {
			return nil, fmt.Errorf("sqlite: listing revocations: %w", err)
		}
		r.RevokedAt = fromNS(t)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: listing revocations: %w", err)
	}
	return out, nil
}

func (s *Store) AddUnits(ctx context.Context, units []store.Unit) error {
	for _, u := range units {
		if u.SN == "" {
			return errors.New("sqlite: adding units: empty serial number")
		}
	}
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		for _, u := range units {
			var passed any
			if u.TestPassed != nil {
				passed = *u.TestPassed
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO units(sn, serial, sha256, not_after, batch, produced_at, test_passed)
				VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET serial=excluded.serial, sha256=excluded.sha256,
				not_after=excluded.not_after, batch=excluded.batch, produced_at=excluded.produced_at,
				test_passed=excluded.test_passed`,
				u.SN, u.Serial, u.SHA256, toNS(u.NotAfter), u.Batch, toNS(u.ProducedAt), passed)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlite: adding units: %w", err)
	}
	return nil
}

func (s *Store) GetUnit(ctx context.Context, sn string) (store.Unit, error) {
	if err := s.readable(); err != nil {
		return store.Unit{}, err
	}
	var u store.Unit
	var na, pa int64
	var passed sql.NullBool
	err := s.db.QueryRowContext(ctx, "SELECT sn, serial, sha256, not_after, batch, produced_at, test_passed FROM units WHERE sn=?", sn).
		Scan(&u.SN, &u.Serial, &u.SHA256, &na, &u.Batch, &pa, &passed)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Unit{}, fmt.Errorf("sqlite: getting unit %q: %w", sn, err)
	}
	u.NotAfter, u.ProducedAt = fromNS(na), fromNS(pa)
	if passed.Valid {
		u.TestPassed = &passed.Bool
	}
	return u, nil
}

func (s *Store) CountUnits(ctx context.Context) (int64, error) {
	if err := s.readable(); err != nil {
		return 0, err
	}
	var n int64
	if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM units").Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlite: counting units: %w", err)
	}
	return n, nil
}
