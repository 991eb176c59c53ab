// Package factory is thingline's shopfloor: the unit ledger (each unit's
// traveller), identity injection (station 3), the factory test (station 4),
// labels (station 5), reports and the push of produced units to the cloud.
package factory

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/mattn/go-sqlite3" // the ledger is one SQLite file

	"github.com/thingline/thingline/filelock"
)

// Station is a shopfloor station number.
type Station int

// The five stations of the line, in the order a unit visits them.
const (
	StationAssembly  Station = 1
	StationFlashing  Station = 2
	StationInjection Station = 3
	StationTest      Station = 4
	StationLabel     Station = 5
)

// String names the station.
func (s Station) String() string {
	switch s {
	case StationAssembly:
		return "assembly"
	case StationFlashing:
		return "flashing"
	case StationInjection:
		return "injection"
	case StationTest:
		return "test"
	case StationLabel:
		return "label"
	}
	return fmt.Sprintf("station-%d", int(s))
}

// Valid tells whether s is one of the five stations.
func (s Station) Valid() bool { return s >= StationAssembly && s <= StationLabel }

// ParseStation accepts a station number ("3") or name ("injection").
func ParseStation(s string) (Station, error) {
	for st := StationAssembly; st <= StationLabel; st++ {
		if s == fmt.Sprint(int(st)) || strings.EqualFold(s, st.String()) {
			return st, nil
		}
	}
	return 0, fmt.Errorf("factory: unknown station %q (want 1-5 or assembly, flashing, injection, test, label)", s)
}

// Result is the outcome of a station.
type Result string

// Station results.
const (
	Pass Result = "pass"
	Fail Result = "fail"
)

// ParseResult accepts "pass" or "fail".
func ParseResult(s string) (Result, error) {
	switch Result(strings.ToLower(s)) {
	case Pass:
		return Pass, nil
	case Fail:
		return Fail, nil
	}
	return "", fmt.Errorf("factory: unknown result %q (want pass or fail)", s)
}

// Unit states in the ledger. See docs/factory.md for the state machine.
const (
	StateReserved  = "reserved"  // SN taken by a running inject; nothing durable made yet
	StateInjected  = "injected"  // identity made, files durably written, recorded
	StateAbandoned = "abandoned" // reserved by a run that ended without finishing it; never reused
)

// Errors callers test with errors.Is.
var (
	ErrUnknownUnit = errors.New("unknown unit")
	ErrSNUsed      = errors.New("serial number already used")
	ErrBoardLinked = errors.New("board already linked to another serial number")
)

// Unit is one unit's row of the ledger.
type Unit struct {
	SN          string
	Seq         int64 // position in the durable sequence; 0 for a unit injected with an explicit SN
	State       string
	Board       string // traveller id of the bare board, when assembly was recorded before the SN existed
	Dir         string
	Operator    string
	Batch       string
	CertSerial  string
	SHA256      string
	NotAfter    time.Time
	ImageSHA256 string
	KeyOnDevice bool // CSR mode: the private key never left the device
	ReservedAt  time.Time
	InjectedAt  time.Time
	LastStation Station // highest station with an event, 0 when none
	LastResult  Result
}

// Event is one line of a unit's traveller.
type Event struct {
	ID       int64
	SN       string
	Board    string
	Station  Station
	Result   Result
	Operator string
	Batch    string
	Time     time.Time
	Detail   string
}

// Ledger is the factory's unit ledger: a SQLite file in WAL mode that any
// number of thingline processes on the same host may share.
type Ledger struct {
	db      *sql.DB
	path    string
	runsDir string
}

const schema = `
CREATE TABLE IF NOT EXISTS sequence (
	name TEXT PRIMARY KEY,
	next INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
	sn TEXT PRIMARY KEY,
	seq INTEGER,
	state TEXT NOT NULL,
	run TEXT NOT NULL DEFAULT '',
	board TEXT UNIQUE,
	dir TEXT NOT NULL DEFAULT '',
	operator TEXT NOT NULL DEFAULT '',
	batch TEXT NOT NULL DEFAULT '',
	cert_serial TEXT NOT NULL DEFAULT '',
	sha256 TEXT NOT NULL DEFAULT '',
	not_after INTEGER NOT NULL DEFAULT 0,
	image_sha256 TEXT NOT NULL DEFAULT '',
	key_on_device INTEGER NOT NULL DEFAULT 0,
	reserved_at INTEGER NOT NULL,
	injected_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS units_state ON units(state, run);
CREATE TABLE IF NOT EXISTS boards (
	board TEXT PRIMARY KEY,
	created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	sn TEXT NOT NULL DEFAULT '',
	board TEXT NOT NULL DEFAULT '',
	station INTEGER NOT NULL,
	result TEXT NOT NULL,
	operator TEXT NOT NULL DEFAULT '',
	batch TEXT NOT NULL DEFAULT '',
	at INTEGER NOT NULL,
	detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_sn ON events(sn);
CREATE INDEX IF NOT EXISTS events_board ON events(board);
INSERT OR IGNORE INTO sequence(name, next) VALUES ('sn', 1);
`

// OpenLedger opens (creating if needed) the ledger at path. It also settles
// reservations left by runs that died (see Sweep).
func OpenLedger(path string) (*Ledger, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("factory: creating ledger directory: %w", err)
	}
	// _txlock=immediate makes every transaction BEGIN IMMEDIATE: the write
	// lock is taken up front, so two processes reserving serial numbers
	// serialize on the busy timeout instead of failing on lock upgrade.
	// synchronous=FULL: a committed reservation or completion survives a
	// power cut, not only a process crash.
	q := url.Values{}
	q.Set("_txlock", "immediate")
	q.Set("_busy_timeout", "30000")
	q.Set("_journal_mode", "WAL")
	q.Set("_synchronous", "FULL")
	q.Set("_foreign_keys", "1")
	// The file name goes into a file: URI, where these would start the
	// query, a fragment or an escape.
	name := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	db, err := sql.Open("sqlite3", "file:"+name+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("factory: opening ledger %s: %w", path, err)
	}
	// One connection: the ledger is written by one goroutine at a time
	// anyway, and it keeps the pragmas on a single connection.
	db.SetMaxOpenConns(1)
	if err := initSchema(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("factory: initializing ledger %s: %w", path, err)
	}
	l := &Ledger{db: db, path: path, runsDir: path + ".runs"}
	if err := l.Sweep(context.Background()); err != nil {
		db.Close()
		return nil, err
	}
	return l, nil
}

// initSchema creates the tables. Switching a new file to WAL can answer
// SQLITE_BUSY without waiting on the busy timeout when several processes
// create the same ledger at once, so that step is retried.
func initSchema(db *sql.DB) error {
	var err error
	for try := 0; try < 200; try++ {
		if err = db.Ping(); err == nil {
			var tx *sql.Tx
			if tx, err = db.Begin(); err == nil {
				if _, err = tx.Exec(schema); err == nil {
					err = tx.Commit()
				} else {
					tx.Rollback()
				}
			}
		}
		if err == nil || !isBusy(err) {
			return err
		}
		time.Sleep(time.Duration(5+try%20) * time.Millisecond)
	}
	return err
}

// isBusy matches on the message: the driver's error type exists only in
// cgo builds, and the package must still compile without cgo.
func isBusy(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "database is locked") || strings.Contains(msg, "database table is locked") || strings.Contains(msg, "busy")
}

// Path is the ledger's file name.
func (l *Ledger) Path() string { return l.path }

// Close releases the ledger.
func (l *Ledger) Close() error { return l.db.Close() }

func nowNS() int64 { return time.Now().UnixNano() }

func fromNS(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// tx runs fn in one immediate transaction.
func (l *Ledger) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("factory: ledger begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("factory: ledger commit: %w", err)
	}
	return nil
}

// run is one process's claim on the reservations it makes. Its lock file is
// held with flock for the life of the process: when the process dies, even
// by SIGKILL, the kernel drops the lock, and whoever opens the ledger next
// can tell the run's reservations will never be finished.
type run struct {
	id   string
	lock *os.File
}

func (l *Ledger) startRun() (*run, error) {
	if err := os.MkdirAll(l.runsDir, 0o755); err != nil {
		return nil, fmt.Errorf("factory: creating run directory: %w", err)
	}
	b := make([]byte, 8)
	rand.Read(b)
	id := hex.EncodeToString(b)
	f, err := os.OpenFile(filepath.Join(l.runsDir, id+".lock"), os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("factory: creating run lock: %w", err)
	}
	if err := filelock.TryLockFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("factory: locking run: %w", err)
	}
	fmt.Fprintf(f, "pid %d\n", os.Getpid())
	return &run{id: id, lock: f}, nil
}

// end abandons what the run reserved but did not finish, then drops its lock.
func (l *Ledger) endRun(ctx context.Context, r *run) error {
	err := l.abandonRun(context.WithoutCancel(ctx), r.id, "run ended before the unit was finished")
	os.Remove(r.lock.Name())
	r.lock.Close()
	return err
}

// runAlive tells whether the process owning run id still holds its lock.
func (l *Ledger) runAlive(id string) bool {
	f, err := os.OpenFile(filepath.Join(l.runsDir, id+".lock"), os.O_RDWR, 0)
	if err != nil {
		return false // no lock file: the run is gone
	}
	defer f.Close()
	return filelock.Held(f)
}

// Sweep marks abandoned every reservation whose run is no longer alive (its
// process ended or was killed), and sets aside any files such a run left:
// a complete unit directory becomes <SN>.abandoned and a staging directory
// is removed, so OUT holds only units the ledger calls injected.
func (l *Ledger) Sweep(ctx context.Context) error {
	rows, err := l.db.QueryContext(ctx, `SELECT DISTINCT run FROM units WHERE state = ?`, StateReserved)
	if err != nil {
		return fmt.Errorf("factory: sweeping ledger: %w", err)
	}
	var runs []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return fmt.Errorf("factory: sweeping ledger: %w", err)
		}
		runs = append(runs, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("factory: sweeping ledger: %w", err)
	}
	for _, id := range runs {
		if l.runAlive(id) {
			continue
		}
		if err := l.abandonRun(ctx, id, "process died before the unit was finished"); err != nil {
			return err
		}
		os.Remove(filepath.Join(l.runsDir, id+".lock"))
	}
	return nil
}

func (l *Ledger) abandonRun(ctx context.Context, id, why string) error {
	type left struct{ sn, dir, op, batch string }
	var units []left
	err := l.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT sn, dir, operator, batch FROM units WHERE state = ? AND run = ?`, StateReserved, id)
		if err != nil {
			return fmt.Errorf("factory: listing reservations: %w", err)
		}
		for rows.Next() {
			var u left
			if err := rows.Scan(&u.sn, &u.dir, &u.op, &u.batch); err != nil {
				rows.Close()
				return fmt.Errorf("factory: listing reservations: %w", err)
			}
			units = append(units, u)
		}
		rows.Close()
		now := nowNS()
		for _, u := range units {
			if _, err := tx.ExecContext(ctx, `UPDATE units SET state = ? WHERE sn = ?`, StateAbandoned, u.sn); err != nil {
				return fmt.Errorf("factory: abandoning %s: %w", u.sn, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO events(sn, station, result, operator, batch, at, detail) VALUES (?,?,?,?,?,?,?)`,
				u.sn, StationInjection, Fail, u.op, u.batch, now, "abandoned: "+why); err != nil {
				return fmt.Errorf("factory: abandoning %s: %w", u.sn, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, u := range units {
		if u.dir == "" {
			continue
		}
		os.RemoveAll(stagingDir(u.dir))
		if fi, err := os.Stat(u.dir); err == nil && fi.IsDir() {
			if err := os.Rename(u.dir, u.dir+".abandoned"); err != nil {
				return fmt.Errorf("factory: setting aside %s: %w", u.dir, err)
			}
		}
	}
	return nil
}

// stagingDir is where a unit's files are written before the directory is
// renamed into place; its leading dot keeps it out of listings.
func stagingDir(dir string) string {
	return filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".partial")
}

// reservation is one SN reserved for a run.
type reservation struct {
	sn  string
	seq int64
}

// reserveNext takes n serial numbers from the durable sequence in one
// committed transaction, skipping numbers whose SN was already used by an
// explicit --sn. Nothing is made for an SN before this commit returns.
func (l *Ledger) reserveNext(ctx context.Context, r *run, n int, format, outDir, operator, batch string) ([]reservation, error) {
	var res []reservation
	err := l.tx(ctx, func(tx *sql.Tx) error {
		res = res[:0]
		var next int64
		if err := tx.QueryRowContext(ctx, `SELECT next FROM sequence WHERE name = 'sn'`).Scan(&next); err != nil {
			return fmt.Errorf("factory: reading sequence: %w", err)
		}
		now := nowNS()
		for len(res) < n {
			seq := next
			next++
			sn := fmt.Sprintf(format, seq)
			if err := validSN(sn); err != nil {
				return err
			}
			var one int
			err := tx.QueryRowContext(ctx, `SELECT 1 FROM units WHERE sn = ?`, sn).Scan(&one)
			if err == nil {
				continue // used by an explicit SN; the sequence moves past it
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("factory: checking %s: %w", sn, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO units(sn, seq, state, run, dir, operator, batch, reserved_at) VALUES (?,?,?,?,?,?,?,?)`,
				sn, seq, StateReserved, r.id, filepath.Join(outDir, sn), operator, batch, now); err != nil {
				return fmt.Errorf("factory: reserving %s: %w", sn, err)
			}
			res = append(res, reservation{sn: sn, seq: seq})
		}
		if _, err := tx.ExecContext(ctx, `UPDATE sequence SET next = ? WHERE name = 'sn'`, next); err != nil {
			return fmt.Errorf("factory: advancing sequence: %w", err)
		}
		return nil
	})
	return res, err
}

// reserveSN reserves one explicit SN, refusing one the ledger has seen in
// any state: an abandoned SN may have a certificate in the wild.
func (l *Ledger) reserveSN(ctx context.Context, r *run, sn, outDir, operator, batch string) error {
	if err := validSN(sn); err != nil {
		return err
	}
	return l.tx(ctx, func(tx *sql.Tx) error {
		var state string
		err := tx.QueryRowContext(ctx, `SELECT state FROM units WHERE sn = ?`, sn).Scan(&state)
		if err == nil {
			return fmt.Errorf("factory: %s (%s): %w", sn, state, ErrSNUsed)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("factory: checking %s: %w", sn, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO units(sn, seq, state, run, dir, operator, batch, reserved_at) VALUES (?,NULL,?,?,?,?,?,?)`,
			sn, StateReserved, r.id, filepath.Join(outDir, sn), operator, batch, nowNS()); err != nil {
			return fmt.Errorf("factory: reserving %s: %w", sn, err)
		}
		return nil
	})
}

// linkBoard ties an assembled board's traveller to its SN, so that the
// board's earlier events (assembly, flashing) show in the unit's traveller.
func (l *Ledger) linkBoard(ctx context.Context, tx *sql.Tx, sn, board string) error {
	var linked sql.NullString
	err := tx.QueryRowContext(ctx, `SELECT sn FROM units WHERE board = ?`, board).Scan(&linked)
	if err == nil && linked.String != sn {
		return fmt.Errorf("factory: board %s is %s: %w", board, linked.String, ErrBoardLinked)
	}
	if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO boards(board, created_at) VALUES (?,?)`, board, nowNS()); err != nil {
		return fmt.Errorf("factory: recording board %s: %w", board, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE units SET board = ? WHERE sn = ?`, board, sn); err != nil {
		return fmt.Errorf("factory: linking board %s to %s: %w", board, sn, err)
	}
	return nil
}

// completion is what station 3 records once a unit's files are durable.
type completion struct {
	sn, board                     string
	certSerial, sha256, imageHash string
	notAfter                      time.Time
	keyOnDevice                   bool
	operator, batch, detail       string
}

// complete records finished units, each atomically: state injected with
// its certificate facts and the station 3 pass event. Several units share
// one commit, which keeps a batch fast without ever half recording a unit.
func (l *Ledger) complete(ctx context.Context, cs []completion) error {
	return l.tx(ctx, func(tx *sql.Tx) error {
		now := nowNS()
		for _, c := range cs {
			res, err := tx.ExecContext(ctx, `UPDATE units SET state = ?, cert_serial = ?, sha256 = ?, not_after = ?, image_sha256 = ?, key_on_device = ?, injected_at = ?
				WHERE sn = ? AND state = ?`,
				StateInjected, c.certSerial, c.sha256, c.notAfter.UnixNano(), c.imageHash, c.keyOnDevice, now, c.sn, StateReserved)
			if err != nil {
				return fmt.Errorf("factory: recording %s: %w", c.sn, err)
			}
			if n, _ := res.RowsAffected(); n != 1 {
				return fmt.Errorf("factory: recording %s: reservation lost", c.sn)
			}
			if c.board != "" {
				if err := l.linkBoard(ctx, tx, c.sn, c.board); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO events(sn, station, result, operator, batch, at, detail) VALUES (?,?,?,?,?,?,?)`,
				c.sn, StationInjection, Pass, c.operator, c.batch, now, c.detail); err != nil {
				return fmt.Errorf("factory: recording %s: %w", c.sn, err)
			}
		}
		return nil
	})
}

// abandon gives up one reservation of a live run (its unit failed), with
// the failure as the station 3 event.
func (l *Ledger) abandon(ctx context.Context, sn, operator, batch, why string) error {
	return l.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE units SET state = ? WHERE sn = ? AND state = ?`, StateAbandoned, sn, StateReserved); err != nil {
			return fmt.Errorf("factory: abandoning %s: %w", sn, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO events(sn, station, result, operator, batch, at, detail) VALUES (?,?,?,?,?,?,?)`,
			sn, StationInjection, Fail, operator, batch, nowNS(), "abandoned: "+why); err != nil {
			return fmt.Errorf("factory: abandoning %s: %w", sn, err)
		}
		return nil
	})
}

// RecordStation appends an event to a unit's traveller. The unit must be
// known to the ledger (any state). The event takes the unit's batch.
func (l *Ledger) RecordStation(ctx context.Context, sn string, st Station, result Result, operator, detail string) error {
	if !st.Valid() {
		return fmt.Errorf("factory: recording %s: invalid station %d", sn, int(st))
	}
	if result != Pass && result != Fail {
		return fmt.Errorf("factory: recording %s: invalid result %q", sn, result)
	}
	return l.tx(ctx, func(tx *sql.Tx) error {
		var batch string
		err := tx.QueryRowContext(ctx, `SELECT batch FROM units WHERE sn = ?`, sn).Scan(&batch)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("factory: recording %s: %w", sn, ErrUnknownUnit)
		}
		if err != nil {
			return fmt.Errorf("factory: recording %s: %w", sn, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO events(sn, station, result, operator, batch, at, detail) VALUES (?,?,?,?,?,?,?)`,
			sn, st, result, operator, batch, nowNS(), detail); err != nil {
			return fmt.Errorf("factory: recording %s: %w", sn, err)
		}
		return nil
	})
}

// RecordBoard appends an event to the traveller of a board that has no SN
// yet (assembly, and flashing of the base firmware, happen before station
// 3). If the board was already linked to an SN, the event goes to that unit.
func (l *Ledger) RecordBoard(ctx context.Context, board string, st Station, result Result, operator, batch, detail string) error {
	if board == "" {
		return fmt.Errorf("factory: recording board: empty board id")
	}
	if !st.Valid() {
		return fmt.Errorf("factory: recording board %s: invalid station %d", board, int(st))
	}
	if result != Pass && result != Fail {
		return fmt.Errorf("factory: recording board %s: invalid result %q", board, result)
	}
	return l.tx(ctx, func(tx *sql.Tx) error {
		var sn string
		err := tx.QueryRowContext(ctx, `SELECT sn FROM units WHERE board = ?`, board).Scan(&sn)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("factory: recording board %s: %w", board, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO boards(board, created_at) VALUES (?,?)`, board, nowNS()); err != nil {
			return fmt.Errorf("factory: recording board %s: %w", board, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO events(sn, board, station, result, operator, batch, at, detail) VALUES (?,?,?,?,?,?,?,?)`,
			sn, board, st, result, operator, batch, nowNS(), detail); err != nil {
			return fmt.Errorf("factory: recording board %s: %w", board, err)
		}
		return nil
	})
}

// unitCols reads a unit with its latest event. The latest event id is the
// larger of two index seeks (by SN, by board) rather than one OR query,
// which SQLite would answer with a scan of all events per unit.
const unitCols = `u.sn, COALESCE(u.seq, 0), u.state, COALESCE(u.board, ''), u.dir, u.operator, u.batch, u.cert_serial, u.sha256,
	u.not_after, u.image_sha256, u.key_on_device, u.reserved_at, u.injected_at,
	COALESCE(le.station, 0), COALESCE(le.result, '')`

const unitFrom = ` FROM units u LEFT JOIN events le ON le.id = MAX(
	COALESCE((SELECT MAX(id) FROM events WHERE sn = u.sn), 0),
	COALESCE((SELECT MAX(id) FROM events WHERE u.board IS NOT NULL AND board = u.board), 0))`

func scanUnit(sc interface{ Scan(...any) error }) (Unit, error) {
	var u Unit
	var notAfter, reserved, injected int64
	var st int
	var res string
	if err := sc.Scan(&u.SN, &u.Seq, &u.State, &u.Board, &u.Dir, &u.Operator, &u.Batch, &u.CertSerial, &u.SHA256,
		&notAfter, &u.ImageSHA256, &u.KeyOnDevice, &reserved, &injected, &st, &res); err != nil {
		return u, err
	}
	u.NotAfter, u.ReservedAt, u.InjectedAt = fromNS(notAfter), fromNS(reserved), fromNS(injected)
	u.LastStation, u.LastResult = Station(st), Result(res)
	return u, nil
}

// Unit returns one unit.
func (l *Ledger) Unit(ctx context.Context, sn string) (Unit, error) {
	u, err := scanUnit(l.db.QueryRowContext(ctx, `SELECT `+unitCols+unitFrom+` WHERE u.sn = ?`, sn))
	if errors.Is(err, sql.ErrNoRows) {
		return u, fmt.Errorf("factory: %s: %w", sn, ErrUnknownUnit)
	}
	if err != nil {
		return u, fmt.Errorf("factory: reading %s: %w", sn, err)
	}
	return u, nil
}

// Units returns every unit, in reservation order. An empty state means all
// states.
func (l *Ledger) Units(ctx context.Context, state string) ([]Unit, error) {
	rows, err := l.db.QueryContext(ctx, `SELECT `+unitCols+unitFrom+` WHERE ? = '' OR u.state = ? ORDER BY u.reserved_at, u.seq, u.sn`, state, state)
	if err != nil {
		return nil, fmt.Errorf("factory: listing units: %w", err)
	}
	defer rows.Close()
	var out []Unit
	for rows.Next() {
		u, err := scanUnit(rows)
		if err != nil {
			return nil, fmt.Errorf("factory: listing units: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("factory: listing units: %w", err)
	}
	return out, nil
}

func (l *Ledger) queryEvents(ctx context.Context, where string, args ...any) ([]Event, error) {
	rows, err := l.db.QueryContext(ctx, `SELECT id, sn, board, station, result, operator, batch, at, detail FROM events WHERE `+where+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("factory: listing events: %w", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var at int64
		var st int
		var res string
		if err := rows.Scan(&e.ID, &e.SN, &e.Board, &st, &res, &e.Operator, &e.Batch, &at, &e.Detail); err != nil {
			return nil, fmt.Errorf("factory: listing events: %w", err)
		}
		e.Station, e.Result, e.Time = Station(st), Result(res), fromNS(at)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("factory: listing events: %w", err)
	}
	return out, nil
}

// Traveller returns every event of a unit, oldest first, including those
// recorded against its board before it had an SN. A board id that is not
// linked to an SN yet gives that board's events.
func (l *Ledger) Traveller(ctx context.Context, snOrBoard string) ([]Event, error) {
	u, err := l.Unit(ctx, snOrBoard)
	if err == nil {
		if u.Board != "" {
			return l.queryEvents(ctx, `sn = ? OR board = ?`, u.SN, u.Board)
		}
		return l.queryEvents(ctx, `sn = ?`, u.SN)
	}
	if !errors.Is(err, ErrUnknownUnit) {
		return nil, err
	}
	var one int
	if err := l.db.QueryRowContext(ctx, `SELECT 1 FROM boards WHERE board = ?`, snOrBoard).Scan(&one); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("factory: %s: %w", snOrBoard, ErrUnknownUnit)
		}
		return nil, fmt.Errorf("factory: reading board %s: %w", snOrBoard, err)
	}
	return l.queryEvents(ctx, `board = ?`, snOrBoard)
}

// Events returns every event, oldest first.
func (l *Ledger) Events(ctx context.Context) ([]Event, error) {
	return l.queryEvents(ctx, `1 = 1`)
}

// validSN keeps serial numbers usable as a certificate CN, a directory name
// and a URL path segment.
func validSN(sn string) error {
	if sn == "" || len(sn) > 64 {
		return fmt.Errorf("factory: invalid serial number %q: want 1 to 64 characters", sn)
	}
	if sn == "." || sn == ".." || sn[0] == '.' || sn[0] == '-' {
		return fmt.Errorf("factory: invalid serial number %q", sn)
	}
	for _, c := range sn {
		ok := c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return fmt.Errorf("factory: invalid serial number %q: only letters, digits, '-', '_' and '.' allowed", sn)
		}
	}
	if strings.HasSuffix(sn, ".abandoned") || strings.HasSuffix(sn, ".partial") {
		return fmt.Errorf("factory: invalid serial number %q: reserved suffix", sn)
	}
	return nil
}
