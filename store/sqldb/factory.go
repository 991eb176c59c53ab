package sqldb

// The factory's side of the registry, for people: units by batch, batch
// summaries, and the station events of the factory's ledger (pushed with
// the units), from which the console shows travellers and per-station
// yield; and the registry itself (AddUnits, GetUnit, CountUnits), whose
// units table each backend's migrations create (devices.go).

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/thingline/thingline/store"
)

func init() {
	// The unique index makes a second push of the same ledger a no-op.
	Register(Migration{Name: "factory/001", SQL: `
CREATE TABLE unit_events (
	id {{id}},
	sn TEXT NOT NULL,
	board TEXT NOT NULL,
	station INTEGER NOT NULL,
	result TEXT NOT NULL,
	operator TEXT NOT NULL,
	batch TEXT NOT NULL,
	time_ns BIGINT NOT NULL,
	detail TEXT NOT NULL
);
CREATE UNIQUE INDEX unit_events_key ON unit_events(sn, board, station, time_ns, result);
CREATE INDEX unit_events_batch ON unit_events(batch, id)`})
}

const unitCols = "sn, serial, sha256, not_after, batch, produced_at, test_passed"

func scanUnit(r rowScanner) (store.Unit, error) {
	var u store.Unit
	var na, pa int64
	var tp sql.NullBool
	err := r.Scan(&u.SN, &u.Serial, &u.SHA256, &na, &u.Batch, &pa, &tp)
	u.NotAfter, u.ProducedAt = nsTime(na), nsTime(pa)
	if tp.Valid {
		u.TestPassed = &tp.Bool
	}
	return u, err
}

// ListUnits pages through the registry by SN.
func (t *Tables) ListUnits(ctx context.Context, q store.UnitQuery) ([]store.Unit, error) {
	b := &builder{d: t.db.dialect}
	snCol := "sn"
	if t.db.dialect == Postgres {
		snCol = `sn COLLATE "C"` // byte order, as the SQLite backend's
	}
	b.where = append(b.where, snCol+" > "+b.arg(q.After))
	if q.Batch != "" {
		b.where = append(b.where, "batch = "+b.arg(q.Batch))
	}
	if q.Search != "" {
		b.where = append(b.where, "sn "+likeOp(b.d)+" "+b.arg("%"+likeEscape(q.Search)+"%")+` ESCAPE '\'`)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	query := "SELECT " + unitCols + " FROM units" + b.whereSQL() + " ORDER BY " + snCol + " LIMIT " + b.arg(limit)
	rows, err := t.db.read.QueryContext(ctx, rebind(b.d, query), b.args...)
	out, err := collect(rows, err, scanUnit)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing units: %w", err)
	}
	return out, nil
}

// UnitBatches summarizes the registry per batch, newest first.
func (t *Tables) UnitBatches(ctx context.Context) ([]store.Batch, error) {
	rows, err := t.db.Query(ctx, `SELECT batch, count(*),
		sum(CASE WHEN test_passed THEN 1 ELSE 0 END), sum(CASE WHEN NOT test_passed THEN 1 ELSE 0 END),
		min(produced_at), max(produced_at)
		FROM units GROUP BY batch ORDER BY max(produced_at) DESC, batch`)
	out, err := collect(rows, err, func(r rowScanner) (store.Batch, error) {
		var b store.Batch
		var first, last int64
		err := r.Scan(&b.Batch, &b.Units, &b.TestPassed, &b.TestFailed, &first, &last)
		b.FirstProduced, b.LastProduced = nsTime(first), nsTime(last)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("sqldb: summarizing batches: %w", err)
	}
	return out, nil
}

// UnitDevice names the device that presented the unit's certificate.
func (t *Tables) UnitDevice(ctx context.Context, sn string) (string, error) {
	var name string
	err := t.db.QueryRow(ctx, `SELECT d.name FROM units u JOIN credentials c ON c.serial = u.serial
		JOIN devices d ON d.id = c.device WHERE u.sn = ? ORDER BY c.last_seen DESC LIMIT 1`, sn).Scan(&name)
	if err != nil {
		return "", NotFound(err, "sqldb: device of unit "+sn)
	}
	return name, nil
}

// AddUnitEvents records station events, skipping those already recorded.
func (t *Tables) AddUnitEvents(ctx context.Context, evs []store.UnitEvent) (int, error) {
	added := 0
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		added = 0
		for _, e := range evs {
			res, err := tx.Exec(ctx, `INSERT INTO unit_events(sn, board, station, result, operator, batch, time_ns, detail)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
				e.SN, e.Board, e.Station, e.Result, e.Operator, e.Batch, e.Time.UnixNano(), e.Detail)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n > 0 {
				added++
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sqldb: adding unit events: %w", err)
	}
	return added, nil
}

// UnitEvents returns station events, oldest first. A unit's traveller
// includes the events of the board it was assembled on, recorded before
// the unit had its SN.
func (t *Tables) UnitEvents(ctx context.Context, q store.UnitEventQuery) ([]store.UnitEvent, error) {
	b := &builder{d: t.db.dialect}
	if q.SN != "" {
		sn := b.arg(q.SN)
		b.where = append(b.where, "(sn = "+sn+" OR (sn = '' AND board <> '' AND board IN (SELECT board FROM unit_events WHERE sn = "+b.arg(q.SN)+" AND board <> '')))")
	}
	if q.Batch != "" {
		b.where = append(b.where, "batch = "+b.arg(q.Batch))
	}
	query := "SELECT sn, board, station, result, operator, batch, time_ns, detail FROM unit_events" + b.whereSQL() + " ORDER BY time_ns, id"
	if q.Limit > 0 {
		query += " LIMIT " + b.arg(q.Limit)
	}
	rows, err := t.db.read.QueryContext(ctx, rebind(b.d, query), b.args...)
	out, err := collect(rows, err, func(r rowScanner) (store.UnitEvent, error) {
		var e store.UnitEvent
		var at int64
		err := r.Scan(&e.SN, &e.Board, &e.Station, &e.Result, &e.Operator, &e.Batch, &at, &e.Detail)
		e.Time = time.Unix(0, at).UTC()
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing unit events: %w", err)
	}
	return out, nil
}

// AddUnits implements store.Units. A unit listed twice is recorded as its
// last listing says (one statement must not upsert a row twice).
func (t *Tables) AddUnits(ctx context.Context, units []store.Unit) error {
	last := make(map[string]int, len(units))
	for i, u := range units {
		if u.SN == "" {
			return fmt.Errorf("sqldb: adding units: empty serial number")
		}
		last[u.SN] = i
	}
	var args []any
	for i, u := range units {
		if last[u.SN] != i {
			continue
		}
		var passed any
		if u.TestPassed != nil {
			passed = *u.TestPassed
		}
		args = append(args, u.SN, u.Serial, u.SHA256, ToNS(u.NotAfter), u.Batch, ToNS(u.ProducedAt), passed)
	}
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		return insertRows(ctx, tx, "INSERT INTO units("+unitCols+")", `ON CONFLICT (sn) DO UPDATE SET serial=excluded.serial,
			sha256=excluded.sha256, not_after=excluded.not_after, batch=excluded.batch,
			produced_at=excluded.produced_at, test_passed=excluded.test_passed`, 7, args)
	})
	if err != nil {
		return fmt.Errorf("sqldb: adding units: %w", err)
	}
	return nil
}

// GetUnit implements store.Units.
func (t *Tables) GetUnit(ctx context.Context, sn string) (store.Unit, error) {
	if err := t.db.open(); err != nil {
		return store.Unit{}, err
	}
	u, err := scanUnit(t.db.QueryRow(ctx, "SELECT "+unitCols+" FROM units WHERE sn=?", sn))
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Unit{}, fmt.Errorf("sqldb: getting unit %q: %w", sn, err)
	}
	return u, nil
}

// CountUnits implements store.Units.
func (t *Tables) CountUnits(ctx context.Context) (int64, error) {
	if err := t.db.open(); err != nil {
		return 0, err
	}
	var n int64
	if err := t.db.QueryRow(ctx, "SELECT count(*) FROM units").Scan(&n); err != nil {
		return 0, fmt.Errorf("sqldb: counting units: %w", err)
	}
	return n, nil
}
