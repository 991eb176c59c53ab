package sqldb

// The device store: devices, their counters and credentials (attributes,
// events, revocations and units are in their own files). Unlike the other
// concepts, these tables are created by each backend's own versioned
// migrations, which every database in the field has applied: they keep
// their names, columns and indexes, and a new column or table of this
// concept is a migration registered here ("devices/NNN"), which runs after
// the backend's. Where a backend's telemetry holds rows of a device, the
// backend names those tables (Backend.DeviceTables).

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/thingline/thingline/store"
)

// reader is what both DB and Tx offer for reading.
type reader interface {
	Query(ctx context.Context, q string, args ...any) (Rows, error)
	QueryRow(ctx context.Context, q string, args ...any) Row
}

// execer is what both DB (a write of its own) and Tx offer for writing.
type execer interface {
	Exec(ctx context.Context, q string, args ...any) (sql.Result, error)
}

// greatest is the larger of two values: SQLite's max of two arguments is
// scalar, PostgreSQL's max only an aggregate.
func greatest(d Dialect) string {
	if d == Postgres {
		return "greatest"
	}
	return "max"
}

const deviceCols = "id, name, profile, created_at, first_seen_addr, last_seen_at, last_seen_addr, online, node"

// scanDevice scans deviceCols, then into extra the columns after them.
func scanDevice(r rowScanner, extra ...any) (store.Device, error) {
	var d store.Device
	var created, seen int64
	err := r.Scan(append([]any{&d.ID, &d.Name, &d.Profile, &created, &d.FirstSeenAddr, &seen, &d.LastSeenAddr, &d.Online, &d.Node}, extra...)...)
	d.CreatedAt, d.LastSeenAt = FromNS(created), FromNS(seen)
	return d, err
}

// fill adds the counters and the factory-registry flag to d.
func fill(ctx context.Context, r reader, d *store.Device) error {
	type counter struct {
		name  string
		value int64
	}
	rows, err := r.Query(ctx, "SELECT name, value FROM counters WHERE device=?", d.ID)
	cs, err := collect(rows, err, func(r rowScanner) (counter, error) {
		var c counter
		err := r.Scan(&c.name, &c.value)
		return c, err
	})
	if err != nil {
		return err
	}
	for _, c := range cs {
		if d.Counters == nil {
			d.Counters = map[string]int64{}
		}
		d.Counters[c.name] = c.value
	}
	return fillProduced(ctx, r, d)
}

// fillProduced sets d.Produced when the factory registry is in use. The
// join is asked only then: on a fleet without a registry it would cost
// PostgreSQL a join's planning on every connection.
func fillProduced(ctx context.Context, r reader, d *store.Device) error {
	var inUse bool
	if err := r.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM units)").Scan(&inUse); err != nil {
		return err
	}
	if !inUse {
		return nil
	}
	var produced bool
	err := r.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM credentials c JOIN units u ON u.serial = c.serial
		WHERE c.device=?)`, d.ID).Scan(&produced)
	if err != nil {
		return err
	}
	d.Produced = &produced
	return nil
}

func getDevice(ctx context.Context, r reader, where string, arg any) (store.Device, error) {
	d, err := scanDevice(r.QueryRow(ctx, "SELECT "+deviceCols+" FROM devices WHERE "+where, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return d, store.ErrNotFound
	}
	if err != nil {
		return d, err
	}
	return d, fill(ctx, r, &d)
}

// EnsureDevice implements store.Devices. Two PostgreSQL nodes creating the
// same device meet at the unique name: the second INSERT waits for the
// first transaction, inserts nothing, and the row is read instead.
func (t *Tables) EnsureDevice(ctx context.Context, d store.Device, c store.Credential, ev *store.Event) (dev store.Device, created, rotated bool, err error) {
	if d.Name == "" {
		return dev, false, false, errors.New("sqldb: ensuring device: empty name")
	}
	var evDetail any
	if ev != nil {
		if evDetail, err = eventDetail(*ev); err != nil {
			return dev, false, false, fmt.Errorf("sqldb: ensuring device: event %w", err)
		}
	}
	err = t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var err error
		if dev, created, err = ensureDeviceRow(ctx, tx, d); err != nil {
			return err
		}
		rotated = false
		if c.SHA256 != "" {
			isNew, err := recordCredential(ctx, tx, dev.ID, c)
			if err != nil {
				return err
			}
			rotated = isNew && !created
		}
		if e, ok := store.ProvisioningEvent(ev, created, rotated); ok {
			if err := insertEvent(ctx, tx, e, evDetail); err != nil {
				return err
			}
		}
		if created {
			return fillProduced(ctx, tx, &dev) // no counters yet
		}
		return fill(ctx, tx, &dev)
	})
	if err != nil {
		return store.Device{}, false, false, fmt.Errorf("sqldb: ensuring device %q: %w", d.Name, err)
	}
	return dev, created, rotated, nil
}

// ensureDeviceRow returns the row of the device named d.Name, inserting it
// if there is none. PostgreSQL inserts first: a new device costs one round
// trip, an existing one two. SQLite reads first: most calls find the
// device, a statement costs no round trip, and its single writer makes the
// read and the insert one step, so the insert cannot conflict and takes
// its id from LastInsertId (a RETURNING row is a result set, and
// database/sql starts a goroutine for each one read in a transaction).
func ensureDeviceRow(ctx context.Context, tx *Tx, d store.Device) (dev store.Device, created bool, err error) {
	find := func() (store.Device, error) {
		return scanDevice(tx.QueryRow(ctx, "SELECT "+deviceCols+" FROM devices WHERE name=?", d.Name))
	}
	createdAt := ToNS(orNow(d.CreatedAt))
	const insert = "INSERT INTO devices(name, profile, created_at, first_seen_addr) VALUES (?, ?, ?, ?)"
	args := []any{d.Name, d.Profile, createdAt, d.FirstSeenAddr}
	var id int64
	if tx.db.dialect == SQLite {
		if dev, err = find(); !errors.Is(err, sql.ErrNoRows) {
			return dev, false, err
		}
		var res sql.Result
		if res, err = tx.Exec(ctx, insert, args...); err == nil {
			id, err = res.LastInsertId()
		}
	} else {
		err = tx.QueryRow(ctx, insert+" ON CONFLICT (name) DO NOTHING RETURNING id", args...).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			dev, err = find()
			return dev, false, err
		}
	}
	// The other columns are as the table's defaults make them.
	dev = store.Device{ID: id, Name: d.Name, Profile: d.Profile, CreatedAt: FromNS(createdAt), FirstSeenAddr: d.FirstSeenAddr}
	return dev, err == nil, err
}

// recordCredential moves the last sighting of the device's credential c
// forward, recording c first if it is new; it tells whether it was.
func recordCredential(ctx context.Context, tx *Tx, id int64, c store.Credential) (bool, error) {
	seen := ToNS(orNow(c.LastSeen))
	first := seen
	if !c.FirstSeen.IsZero() {
		first = ToNS(c.FirstSeen)
	}
	args := []any{id, c.SHA256, c.Serial, c.Issuer, c.Subject, ToNS(c.NotBefore), ToNS(c.NotAfter), c.CredentialID, c.PEM, first, seen}
	const insert = `INSERT INTO credentials(device, sha256, serial, issuer, subject, not_before,
		not_after, credential_id, pem, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	if tx.db.dialect == Postgres {
		// One round trip: xmax is 0 in the row version an INSERT made, and
		// the updating transaction's id in the one an UPDATE made.
		var inserted bool
		err := tx.QueryRow(ctx, insert+` ON CONFLICT (device, sha256)
			DO UPDATE SET last_seen=greatest(credentials.last_seen, excluded.last_seen) RETURNING xmax = 0`, args...).Scan(&inserted)
		return inserted, err
	}
	// SQLite cannot tell an upsert's insert from its update, and its single
	// writer cannot meet a concurrent insert: update, else insert.
	res, err := tx.Exec(ctx, "UPDATE credentials SET last_seen=max(last_seen, ?) WHERE device=? AND sha256=?", seen, id, c.SHA256)
	if err != nil {
		return false, err
	}
	if n, err := res.RowsAffected(); err != nil || n > 0 {
		return false, err
	}
	_, err = tx.Exec(ctx, insert, args...)
	return err == nil, err
}

// GetDevice implements store.Devices.
func (t *Tables) GetDevice(ctx context.Context, name string) (store.Device, error) {
	return t.readDevice(ctx, "name=?", name, strconv.Quote(name))
}

// GetDeviceByID implements store.Devices.
func (t *Tables) GetDeviceByID(ctx context.Context, id int64) (store.Device, error) {
	return t.readDevice(ctx, "id=?", id, strconv.FormatInt(id, 10))
}

func (t *Tables) readDevice(ctx context.Context, where string, arg any, what string) (store.Device, error) {
	if err := t.db.open(); err != nil {
		return store.Device{}, err
	}
	d, err := getDevice(ctx, t.db, where, arg)
	if err != nil {
		return d, fmt.Errorf("sqldb: getting device %s: %w", what, err)
	}
	return d, nil
}

// ListDevices implements store.Devices: the page and its devices' counters
// are read in one snapshot.
func (t *Tables) ListDevices(ctx context.Context, opt store.ListOptions) ([]store.Device, error) {
	if err := t.db.open(); err != nil {
		return nil, err
	}
	out, err := t.listDevices(ctx, opt)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing devices: %w", err)
	}
	return out, nil
}

func (t *Tables) listDevices(ctx context.Context, opt store.ListOptions) ([]store.Device, error) {
	q, args, err := DeviceList(t.db.dialect, deviceCols, opt, Limit(opt.Limit))
	if err != nil {
		return nil, err
	}
	rtx, err := t.db.read.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: isolation(t.db.dialect)})
	if err != nil {
		return nil, err
	}
	defer rtx.Rollback()
	rows, err := rtx.QueryContext(ctx, q, args...)
	out, err := collect(rows, err, func(r rowScanner) (store.Device, error) {
		var fw, owner sql.NullString
		d, err := scanDevice(r, &fw, &owner)
		d.Firmware, d.Owner = Firmware(fw), owner.String
		return d, err
	})
	if err != nil {
		return nil, err
	}
	tx := &Tx{db: t.db, tx: SQLExecutor(rtx)}
	for i := range out {
		if err := fill(ctx, tx, &out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// DeleteDevice implements store.Devices: the device and everything it owns
// but its events (the audit trail outlives it) go in one transaction — its
// rows in the backend's telemetry tables and in every concept's
// (RegisterPurge) with it.
func (t *Tables) DeleteDevice(ctx context.Context, name string) error {
	var id int64
	var after func()
	if hook := t.db.b.DeviceDeleted; hook != nil {
		after = func() { hook(id) }
	}
	err := t.db.writeOp(ctx, false, after, func(ctx context.Context, tx *Tx) error {
		if err := tx.QueryRow(ctx, "DELETE FROM devices WHERE name=? RETURNING id", name).Scan(&id); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return store.ErrNotFound
			}
			return err
		}
		for _, table := range append([]string{"counters", "credentials", "attributes"}, t.db.b.DeviceTables...) {
			if _, err := tx.Exec(ctx, "DELETE FROM "+table+" WHERE device=?", id); err != nil {
				return err
			}
		}
		return purge(ctx, tx, id)
	})
	if err != nil {
		return fmt.Errorf("sqldb: deleting device %q: %w", name, err)
	}
	return nil
}

// execDevice runs one statement that must touch the device's row.
func (t *Tables) execDevice(ctx context.Context, what string, id int64, q string, args ...any) error {
	res, err := t.db.Exec(ctx, q, args...)
	if err == nil {
		var n int64
		if n, err = res.RowsAffected(); err == nil && n == 0 {
			err = store.ErrNotFound
		}
	}
	if err != nil {
		return fmt.Errorf("sqldb: %s of device %d: %w", what, id, err)
	}
	return nil
}

// SetOnline implements store.Devices. An end only clears the session if
// node still holds it, so that the old node of a takeover cannot mark the
// device offline after the new node took it.
func (t *Tables) SetOnline(ctx context.Context, id int64, node string, online bool, addr string, at time.Time) error {
	ns := ToNS(orNow(at))
	if online {
		return t.execDevice(ctx, "recording session", id, `UPDATE devices SET online=true, node=?, last_seen_at=?,
			last_seen_addr=?, first_seen_addr=CASE WHEN first_seen_addr='' THEN ? ELSE first_seen_addr END WHERE id=?`,
			node, ns, addr, addr, id)
	}
	return t.execDevice(ctx, "recording session end", id, `UPDATE devices SET last_seen_at=`+greatest(t.db.dialect)+`(last_seen_at, ?),
		online=CASE WHEN node=? THEN false ELSE online END, node=CASE WHEN node=? THEN '' ELSE node END WHERE id=?`,
		ns, node, node, id)
}

// ResetNode implements store.Devices.
func (t *Tables) ResetNode(ctx context.Context, node string) error {
	if _, err := t.db.Exec(ctx, "UPDATE devices SET online=false, node='' WHERE online AND node=?", node); err != nil {
		return fmt.Errorf("sqldb: resetting node %q: %w", node, err)
	}
	return nil
}

// AddCounter implements store.Devices.
func (t *Tables) AddCounter(ctx context.Context, id int64, name string, delta int64) error {
	return t.execDevice(ctx, "adding to counter "+name, id, `INSERT INTO counters(device, name, value)
		SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM devices WHERE id=?)
		ON CONFLICT (device, name) DO UPDATE SET value=counters.value+excluded.value`, id, name, delta, id)
}

// insertOrder is the column that orders a table's rows by insertion:
// SQLite's rowid, PostgreSQL's identity column.
func insertOrder(d Dialect) string {
	if d == Postgres {
		return "id"
	}
	return "rowid"
}

// ListCredentials implements store.Credentials.
func (t *Tables) ListCredentials(ctx context.Context, deviceID int64) ([]store.Credential, error) {
	rows, err := t.db.Query(ctx, `SELECT sha256, serial, issuer, subject, not_before, not_after, credential_id,
		pem, first_seen, last_seen FROM credentials WHERE device=? ORDER BY first_seen DESC, `+insertOrder(t.db.dialect)+` DESC`, deviceID)
	out, err := collect(rows, err, func(r rowScanner) (store.Credential, error) {
		c := store.Credential{DeviceID: deviceID}
		var nb, na, fs, ls int64
		err := r.Scan(&c.SHA256, &c.Serial, &c.Issuer, &c.Subject, &nb, &na, &c.CredentialID, &c.PEM, &fs, &ls)
		c.NotBefore, c.NotAfter, c.FirstSeen, c.LastSeen = FromNS(nb), FromNS(na), FromNS(fs), FromNS(ls)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing credentials: %w", err)
	}
	return out, nil
}
