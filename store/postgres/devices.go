package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqldb"
)

const (
	defaultLimit = 100
	maxLimit     = 10_000
)

func normLimit(n int) int {
	switch {
	case n <= 0:
		return defaultLimit
	case n > maxLimit:
		return maxLimit
	}
	return n
}

// Times are stored as Unix nanoseconds (0 for the zero time): exact, and the
// same in both backends.
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

// querier is what both the pool and a transaction offer.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

const deviceCols = "id, name, profile, created_at, first_seen_addr, last_seen_at, last_seen_addr, online, node"

func scanDevice(sc interface{ Scan(...any) error }) (store.Device, error) {
	var d store.Device
	var created, seen int64
	err := sc.Scan(&d.ID, &d.Name, &d.Profile, &created, &d.FirstSeenAddr, &seen, &d.LastSeenAddr, &d.Online, &d.Node)
	d.CreatedAt, d.LastSeenAt = fromNS(created), fromNS(seen)
	return d, err
}

func fill(ctx context.Context, q querier, d *store.Device) error {
	rows, err := q.Query(ctx, "SELECT name, value FROM counters WHERE device=$1", d.ID)
	if err != nil {
		return err
	}
	for rows.Next() {
		var k string
		var v int64
		if err := rows.Scan(&k, &v); err != nil {
			rows.Close()
			return err
		}
		if d.Counters == nil {
			d.Counters = map[string]int64{}
		}
		d.Counters[k] = v
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var inUse bool
	if err := q.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM units)").Scan(&inUse); err != nil {
		return err
	}
	if inUse {
		var produced bool
		err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM credentials c JOIN units u ON u.serial = c.serial
			WHERE c.device=$1)`, d.ID).Scan(&produced)
		if err != nil {
			return err
		}
		d.Produced = &produced
	}
	return nil
}

func getDevice(ctx context.Context, q querier, where string, arg any) (store.Device, error) {
	d, err := scanDevice(q.QueryRow(ctx, "SELECT "+deviceCols+" FROM devices WHERE "+where, arg))
	if errors.Is(err, pgx.ErrNoRows) {
		return d, store.ErrNotFound
	}
	if err != nil {
		return d, err
	}
	return d, fill(ctx, q, &d)
}

// EnsureDevice relies on the unique name: of two transactions inserting the
// same new name, the second waits for the first and then finds its row.
func (s *Store) EnsureDevice(ctx context.Context, d store.Device, c store.Credential, ev *store.Event) (dev store.Device, created, rotated bool, err error) {
	if err := s.checkOpen(); err != nil {
		return dev, false, false, err
	}
	if d.Name == "" {
		return dev, false, false, errors.New("postgres: ensuring device: empty name")
	}
	var evDetail *string
	if ev != nil {
		if evDetail, err = eventDetail(*ev); err != nil {
			return dev, false, false, fmt.Errorf("postgres: ensuring device: event %w", err)
		}
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		created, rotated = false, false
		var id int64
		err := tx.QueryRow(ctx, `INSERT INTO devices(name, profile, created_at, first_seen_addr) VALUES ($1, $2, $3, $4)
			ON CONFLICT (name) DO NOTHING RETURNING id`,
			d.Name, d.Profile, toNS(orNow(d.CreatedAt)), d.FirstSeenAddr).Scan(&id)
		switch {
		case err == nil:
			created = true
		case errors.Is(err, pgx.ErrNoRows):
			if err := tx.QueryRow(ctx, "SELECT id FROM devices WHERE name=$1", d.Name).Scan(&id); err != nil {
				return err
			}
		default:
			return err
		}
		if c.SHA256 != "" {
			seen := toNS(orNow(c.LastSeen))
			first := seen
			if !c.FirstSeen.IsZero() {
				first = toNS(c.FirstSeen)
			}
			var inserted bool
			err := tx.QueryRow(ctx, `INSERT INTO credentials(device, sha256, serial, issuer, subject, not_before,
				not_after, credential_id, pem, first_seen, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
				ON CONFLICT (device, sha256) DO UPDATE SET last_seen=greatest(credentials.last_seen, excluded.last_seen)
				RETURNING xmax = 0`,
				id, c.SHA256, c.Serial, c.Issuer, c.Subject, toNS(c.NotBefore), toNS(c.NotAfter),
				c.CredentialID, c.PEM, first, seen).Scan(&inserted)
			if err != nil {
				return err
			}
			rotated = inserted && !created
		}
		if e, ok := store.ProvisioningEvent(ev, created, rotated); ok {
			if err := insertEvent(ctx, tx, e, evDetail); err != nil {
				return err
			}
		}
		dev, err = getDevice(ctx, tx, "id=$1", id)
		return err
	})
	if err != nil {
		return store.Device{}, false, false, fmt.Errorf("postgres: ensuring device %q: %w", d.Name, err)
	}
	return dev, created, rotated, nil
}

func (s *Store) GetDevice(ctx context.Context, name string) (store.Device, error) {
	if err := s.checkOpen(); err != nil {
		return store.Device{}, err
	}
	d, err := getDevice(ctx, s.pool, "name=$1", name)
	if err != nil {
		return d, fmt.Errorf("postgres: getting device %q: %w", name, err)
	}
	return d, nil
}

func (s *Store) GetDeviceByID(ctx context.Context, id int64) (store.Device, error) {
	if err := s.checkOpen(); err != nil {
		return store.Device{}, err
	}
	d, err := getDevice(ctx, s.pool, "id=$1", id)
	if err != nil {
		return d, fmt.Errorf("postgres: getting device %d: %w", id, err)
	}
	return d, nil
}

func (s *Store) ListDevices(ctx context.Context, opt store.ListOptions) ([]store.Device, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	var out []store.Device
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		q, args, err := sqldb.DeviceList(sqldb.Postgres, deviceCols, opt, normLimit(opt.Limit))
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		for rows.Next() {
			var x sqldb.Listed
			d, err := scanDevice(x.Wrap(rows))
			x.Fill(&d)
			if err != nil {
				rows.Close()
				return err
			}
			out = append(out, d)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for i := range out {
			if err := fill(ctx, tx, &out[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: listing devices: %w", err)
	}
	return out, nil
}

// DeleteDevice removes the device's rows. A late append for its ID may
// still land afterwards; it stays unreachable, since IDs are never reused
// and queries ask for existing devices only.
func (s *Store) DeleteDevice(ctx context.Context, name string) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	var id int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "DELETE FROM devices WHERE name=$1 RETURNING id", name).Scan(&id); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return store.ErrNotFound
			}
			return err
		}
		for _, q := range []string{
			"DELETE FROM counters WHERE device=$1",
			"DELETE FROM credentials WHERE device=$1",
			"DELETE FROM attributes WHERE device=$1",
			"DELETE FROM device_keys WHERE device=$1",
			"DELETE FROM telemetry WHERE device=$1",
		} {
			if _, err := tx.Exec(ctx, q, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("postgres: deleting device %q: %w", name, err)
	}
	return s.PurgeDevice(ctx, id)
}

// execDevice runs an update that must touch the device's row.
func (s *Store) execDevice(ctx context.Context, what string, id int64, q string, args ...any) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, q, args...)
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("postgres: %s of device %d: %w", what, id, err)
	}
	return nil
}

// SetOnline records a session start or end. An end only clears the session
// if node still holds it, so that the old node of a takeover cannot mark
// the device offline after the new node took it.
func (s *Store) SetOnline(ctx context.Context, id int64, node string, online bool, addr string, at time.Time) error {
	at = orNow(at)
	if online {
		return s.execDevice(ctx, "recording session", id, `UPDATE devices SET online=true, node=$1, last_seen_at=$2,
			last_seen_addr=$3, first_seen_addr=CASE WHEN first_seen_addr='' THEN $3 ELSE first_seen_addr END WHERE id=$4`,
			node, toNS(at), addr, id)
	}
	return s.execDevice(ctx, "recording session end", id, `UPDATE devices SET last_seen_at=greatest(last_seen_at, $1),
		online=CASE WHEN node=$2 THEN false ELSE online END, node=CASE WHEN node=$2 THEN '' ELSE node END WHERE id=$3`,
		toNS(at), node, id)
}

func (s *Store) ResetNode(ctx context.Context, node string) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, "UPDATE devices SET online=false, node='' WHERE online AND node=$1", node); err != nil {
		return fmt.Errorf("postgres: resetting node %q: %w", node, err)
	}
	return nil
}

func (s *Store) AddCounter(ctx context.Context, id int64, name string, delta int64) error {
	return s.execDevice(ctx, "adding to counter "+name, id, `INSERT INTO counters(device, name, value)
		SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM devices WHERE id=$1)
		ON CONFLICT (device, name) DO UPDATE SET value=counters.value+excluded.value`, id, name, delta)
}

func (s *Store) ListCredentials(ctx context.Context, deviceID int64) ([]store.Credential, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT sha256, serial, issuer, subject, not_before, not_after, credential_id,
		pem, first_seen, last_seen FROM credentials WHERE device=$1 ORDER BY first_seen DESC, id DESC`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("postgres: listing credentials: %w", err)
	}
	defer rows.Close()
	var out []store.Credential
	for rows.Next() {
		c := store.Credential{DeviceID: deviceID}
		var nb, na, fs, ls int64
		if err := rows.Scan(&c.SHA256, &c.Serial, &c.Issuer, &c.Subject, &nb, &na, &c.CredentialID, &c.PEM, &fs, &ls); err != nil {
			return nil, fmt.Errorf("postgres: listing credentials: %w", err)
		}
		c.NotBefore, c.NotAfter, c.FirstSeen, c.LastSeen = fromNS(nb), fromNS(na), fromNS(fs), fromNS(ls)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: listing credentials: %w", err)
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
	if err := s.checkOpen(); err != nil {
		return err
	}
	if err := validScope(scope); err != nil {
		return fmt.Errorf("postgres: setting attributes: %w", err)
	}
	var keys, vals []string
	for k, v := range kv {
		if !json.Valid(v) {
			return fmt.Errorf("postgres: setting attribute %q: %w", k, errNotJSON)
		}
		keys, vals = append(keys, k), append(vals, string(v))
	}
	ms := orNow(at).UnixMilli()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var ok bool
		// FOR SHARE keeps a concurrent delete from leaving orphans behind.
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM devices WHERE id=$1 FOR SHARE)", deviceID).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return store.ErrNotFound
		}
		_, err := tx.Exec(ctx, `INSERT INTO attributes(device, scope, key, value, updated_at)
			SELECT $1, $2, k, v, $5 FROM unnest($3::text[], $4::text[]) AS u(k, v)
			ON CONFLICT (device, scope, key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at`,
			deviceID, string(scope), keys, vals, ms)
		return err
	})
	if err != nil {
		return fmt.Errorf("postgres: setting attributes of device %d: %w", deviceID, err)
	}
	return nil
}

func (s *Store) GetAttributes(ctx context.Context, deviceID int64, scope store.Scope, keys []string) (map[string]store.Attribute, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT key, value, updated_at FROM attributes WHERE device=$1 AND scope=$2
		AND (coalesce(cardinality($3::text[]), 0) = 0 OR key = ANY($3))`, deviceID, string(scope), keys)
	if err != nil {
		return nil, fmt.Errorf("postgres: getting attributes: %w", err)
	}
	defer rows.Close()
	out := map[string]store.Attribute{}
	for rows.Next() {
		var k, v string
		var a store.Attribute
		if err := rows.Scan(&k, &v, &a.UpdatedAt); err != nil {
			return nil, fmt.Errorf("postgres: getting attributes: %w", err)
		}
		a.Value = json.RawMessage(v)
		out[k] = a
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: getting attributes: %w", err)
	}
	return out, nil
}

func (s *Store) DeleteAttributes(ctx context.Context, deviceID int64, scope store.Scope, keys []string) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, "DELETE FROM attributes WHERE device=$1 AND scope=$2 AND key = ANY($3)",
		deviceID, string(scope), keys); err != nil {
		return fmt.Errorf("postgres: deleting attributes: %w", err)
	}
	return nil
}

func (s *Store) AddEvent(ctx context.Context, e store.Event) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	detail, err := eventDetail(e)
	if err != nil {
		return fmt.Errorf("postgres: adding event: %w", err)
	}
	if err := insertEvent(ctx, s.pool, e, detail); err != nil {
		return fmt.Errorf("postgres: adding event: %w", err)
	}
	return nil
}

func (s *Store) AddEvents(ctx context.Context, es []store.Event) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, e := range es {
			detail, err := eventDetail(e)
			if err != nil {
				return err
			}
			b.Queue("INSERT INTO events(time, device, kind, reason, addr, node, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
				toNS(orNow(e.Time)), e.Device, e.Kind, e.Reason, e.Addr, e.Node, detail)
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return fmt.Errorf("postgres: adding events: %w", err)
	}
	return nil
}

// eventDetail checks an event's detail and gives it in the form stored.
func eventDetail(e store.Event) (*string, error) {
	if len(e.Detail) == 0 {
		return nil, nil
	}
	if !json.Valid(e.Detail) {
		return nil, fmt.Errorf("detail: %w", errNotJSON)
	}
	d := string(e.Detail)
	return &d, nil
}

func insertEvent(ctx context.Context, q interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, e store.Event, detail *string) error {
	_, err := q.Exec(ctx, "INSERT INTO events(time, device, kind, reason, addr, node, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
		toNS(orNow(e.Time)), e.Device, e.Kind, e.Reason, e.Addr, e.Node, detail)
	return err
}

func (s *Store) ListEvents(ctx context.Context, q store.EventQuery) ([]store.Event, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	var where []string
	var args []any
	add := func(cond string, arg any) {
		args = append(args, arg)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if q.Device != "" {
		add("device=$%d", q.Device)
	}
	if q.Kind != "" {
		add("kind=$%d", q.Kind)
	}
	if q.Before > 0 {
		add("id<$%d", q.Before)
	}
	query := "SELECT id, time, device, kind, reason, addr, node, detail FROM events"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	args = append(args, normLimit(q.Limit))
	query += fmt.Sprintf(" ORDER BY id DESC LIMIT $%d", len(args))
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: listing events: %w", err)
	}
	defer rows.Close()
	var out []store.Event
	for rows.Next() {
		var e store.Event
		var t int64
		var detail *string
		if err := rows.Scan(&e.ID, &t, &e.Device, &e.Kind, &e.Reason, &e.Addr, &e.Node, &detail); err != nil {
			return nil, fmt.Errorf("postgres: listing events: %w", err)
		}
		e.Time = fromNS(t)
		if detail != nil {
			e.Detail = json.RawMessage(*detail)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: listing events: %w", err)
	}
	return out, nil
}

func (s *Store) Revoke(ctx context.Context, r store.Revocation) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	if r.Serial == "" {
		return errors.New("postgres: revoking: empty serial")
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO revocations(serial, reason, revoked_at) VALUES ($1, $2, $3)
		ON CONFLICT (serial) DO UPDATE SET reason=excluded.reason`, r.Serial, r.Reason, toNS(orNow(r.RevokedAt)))
	if err != nil {
		return fmt.Errorf("postgres: revoking %s: %w", r.Serial, err)
	}
	return nil
}

func (s *Store) ListRevocations(ctx context.Context) ([]store.Revocation, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT serial, reason, revoked_at FROM revocations ORDER BY revoked_at, serial")
	if err != nil {
		return nil, fmt.Errorf("postgres: listing revocations: %w", err)
	}
	defer rows.Close()
	var out []store.Revocation
	for rows.Next() {
		var r store.Revocation
		var t int64
		if err := rows.Scan(&r.Serial, &r.Reason, &t); err != nil {
			return nil, fmt.Errorf("postgres: listing revocations: %w", err)
		}
		r.RevokedAt = fromNS(t)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: listing revocations: %w", err)
	}
	return out, nil
}

func (s *Store) AddUnits(ctx context.Context, units []store.Unit) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	b := &pgx.Batch{}
	for _, u := range units {
		if u.SN == "" {
			return errors.New("postgres: adding units: empty serial number")
		}
		b.Queue(`INSERT INTO units(sn, serial, sha256, not_after, batch, produced_at, test_passed)
			VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (sn) DO UPDATE SET serial=excluded.serial,
			sha256=excluded.sha256, not_after=excluded.not_after, batch=excluded.batch,
			produced_at=excluded.produced_at, test_passed=excluded.test_passed`,
			u.SN, u.Serial, u.SHA256, toNS(u.NotAfter), u.Batch, toNS(u.ProducedAt), u.TestPassed)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return fmt.Errorf("postgres: adding units: %w", err)
	}
	return nil
}

func (s *Store) GetUnit(ctx context.Context, sn string) (store.Unit, error) {
	if err := s.checkOpen(); err != nil {
		return store.Unit{}, err
	}
	var u store.Unit
	var na, pa int64
	err := s.pool.QueryRow(ctx, "SELECT sn, serial, sha256, not_after, batch, produced_at, test_passed FROM units WHERE sn=$1", sn).
		Scan(&u.SN, &u.Serial, &u.SHA256, &na, &u.Batch, &pa, &u.TestPassed)
	if errors.Is(err, pgx.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Unit{}, fmt.Errorf("postgres: getting unit %q: %w", sn, err)
	}
	u.NotAfter, u.ProducedAt = fromNS(na), fromNS(pa)
	return u, nil
}

func (s *Store) CountUnits(ctx context.Context) (int64, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	var n int64
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM units").Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres: counting units: %w", err)
	}
	return n, nil
}
