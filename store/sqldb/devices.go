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
	Query(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	QueryRow(ctx context.Context, q string, args ...any) *sql.Row
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

// fillProduced sets d.Produced when the factory registry is in use.
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

func deviceID(ctx context.Context, tx *Tx, name string) (int64, error) {
	var id int64
	err := tx.QueryRow(ctx, "SELECT id FROM devices WHERE name=?", name).Scan(&id)
	return id, err
}

// EnsureDevice implements store.Devices. It reads first, since most calls
// find both the device and the credential. Two PostgreSQL nodes creating
// the same device meet at the unique name: the second INSERT waits for the
// first transaction, inserts nothing, and the row is read again. (SQLite's
// single writer never meets that case.)
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
		created, rotated = false, false
		createdAt := ToNS(orNow(d.CreatedAt))
		id, err := deviceID(ctx, tx, d.Name)
		if errors.Is(err, sql.ErrNoRows) {
			err = tx.QueryRow(ctx, `INSERT INTO devices(name, profile, created_at, first_seen_addr) VALUES (?, ?, ?, ?)
				ON CONFLICT (name) DO NOTHING RETURNING id`, d.Name, d.Profile, createdAt, d.FirstSeenAddr).Scan(&id)
			created = err == nil
			if errors.Is(err, sql.ErrNoRows) {
				id, err = deviceID(ctx, tx, d.Name)
			}
		}
		if err != nil {
			return err
		}
		if c.SHA256 != "" {
			isNew, err := recordCredential(ctx, tx, id, c)
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
			// Just inserted: nothing to read back but the registry flag.
			dev = store.Device{ID: id, Name: d.Name, Profile: d.Profile, CreatedAt: FromNS(createdAt), FirstSeenAddr: d.FirstSeenAddr}
			return fillProduced(ctx, tx, &dev)
		}
		dev, err = getDevice(ctx, tx, "id=?", id)
		return err
	})
	if err != nil {
		return store.Device{}, false, false, fmt.Errorf("sqldb: ensuring device %q: %w", d.Name, err)
	}
	return dev, created, rotated, nil
}

// recordCredential moves the last sighting of the device's credential c
// forward, recording c first if it is new; it tells whether it was.
func recordCredential(ctx context.Context, tx *Tx, id int64, c store.Credential) (bool, error) {
	seen := ToNS(orNow(c.LastSeen))
	touch := func() (int64, error) {
		res, err := tx.Exec(ctx, "UPDATE credentials SET last_seen="+greatest(tx.db.dialect)+"(last_seen, ?) WHERE device=? AND sha256=?",
			seen, id, c.SHA256)
		if err != nil {
			return 0, err
		}
		return res.RowsAffected()
	}
	if n, err := touch(); err != nil || n > 0 {
		return false, err
	}
	first := seen
	if !c.FirstSeen.IsZero() {
		first = ToNS(c.FirstSeen)
	}
	res, err := tx.Exec(ctx, `INSERT INTO credentials(device, sha256, serial, issuer, subject, not_before,
		not_after, credential_id, pem, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (device, sha256) DO NOTHING`,
		id, c.SHA256, c.Serial, c.Issuer, c.Subject, ToNS(c.NotBefore), ToNS(c.NotAfter), c.CredentialID, c.PEM, first, seen)
	if err != nil {
		return false, err
	}
	if n, err := res.RowsAffected(); err != nil || n > 0 {
		return n > 0, err
	}
	// Another connection of the device recorded it meanwhile (PostgreSQL).
	_, err = touch()
	return false, err
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
	tx := &Tx{db: t.db, tx: rtx}
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
