// Package sqldb holds the relational state that both store backends keep
// the same way, written once over database/sql: the tables of persistent
// RPC, OTA, alarms, accounts, ownership and whatever comes next.
//
// The telemetry path stays in each backend (its layout and group commit are
// what make each fast); the control-plane tables are small, change at human
// or device-command rates, and gain nothing from two copies. The device
// store (devices, credentials, counters, attributes, events, revocations,
// units) is here too: its tables are still created by each backend's own
// migrations, which existing databases have applied, but the queries are
// the same. A backend gives a DB a Backend: the dialect, a *sql.DB to read
// from, and a Writer that runs a function inside one of its write
// transactions (SQLite: its single writer goroutine, so these writes share
// the group commit and never contend for the write lock; PostgreSQL: a
// transaction on the pool), plus what the device store must know of its
// telemetry.
//
// Adding a table: write its migration with Register (in the file of the
// concept, named "<concept>/NNN"), its methods on *DB in the same file, the
// interface they implement in package store, and its conformance tests in
// store/storetest. Both backends then have it. See docs/storage.md.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/thingline/thingline/store"
)

// Dialect is the SQL flavour of a backend.
type Dialect uint8

const (
	SQLite Dialect = iota
	Postgres
)

func (d Dialect) String() string {
	if d == Postgres {
		return "postgres"
	}
	return "sqlite"
}

// Writer runs op.Fn inside a write transaction and returns once that
// transaction committed durably (or failed; then nothing of op.Fn
// remains). op.Fn may be run with a context other than the caller's and
// must not keep its Executor past its return.
type Writer func(ctx context.Context, op Op) error

// Op is one write handed to a Writer.
type Op struct {
	Fn func(ctx context.Context, ex Executor) error
	// Single: Fn changes the database with at most one statement, so a
	// failure leaves nothing of it to undo. SQLite's writer then skips the
	// savepoint that isolates an operation from the rest of its batch (two
	// statements, a third of a small write's cost); PostgreSQL runs the
	// statement on its own, without BEGIN and COMMIT round trips.
	Single bool
	// After, if set, runs once the transaction committed, even when the
	// caller stopped waiting (SQLite: on its writer goroutine, before the
	// next batch).
	After func()
}

// Executor runs statements already rewritten for the dialect: those of a
// write, in its transaction (or for a Single write on their own), and the
// single-statement reads. A backend may implement it with its driver's own
// API rather than database/sql (PostgreSQL does: database/sql starts a
// goroutine for every transaction and for every result set read in one,
// which cost the provisioning path a quarter more CPU than pgx itself).
type Executor interface {
	Exec(ctx context.Context, q string, args ...any) (sql.Result, error)
	Query(ctx context.Context, q string, args ...any) (Rows, error)
	QueryRow(ctx context.Context, q string, args ...any) Row
}

// Rows is a query's result set, as *sql.Rows offers it.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close() error
}

// Row is the first row of a query, as *sql.Row offers it: Scan returns an
// error wrapping sql.ErrNoRows when there is none.
type Row interface {
	Scan(dest ...any) error
}

// SQLExecutor is the Executor of a database/sql transaction, connection or
// database.
func SQLExecutor(c interface {
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}) Executor {
	return sqlExecutor{c}
}

type sqlExecutor struct {
	c interface {
		ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
		QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
		QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
	}
}

func (e sqlExecutor) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return e.c.ExecContext(ctx, q, args...)
}

func (e sqlExecutor) Query(ctx context.Context, q string, args ...any) (Rows, error) {
	rows, err := e.c.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err // not a nil *sql.Rows in a non-nil Rows
	}
	return rows, nil
}

func (e sqlExecutor) QueryRow(ctx context.Context, q string, args ...any) Row {
	return e.c.QueryRowContext(ctx, q, args...)
}

// PoolWriter is the Writer of a database/sql database that takes
// concurrent writers: a write is a transaction of its own on db, and a
// Single one its statement alone, a transaction by itself without the
// round trips of BEGIN and COMMIT.
func PoolWriter(db *sql.DB) Writer {
	return func(ctx context.Context, op Op) error {
		if op.Single {
			if err := op.Fn(ctx, SQLExecutor(db)); err != nil {
				return err
			}
		} else if err := inTx(ctx, db, op.Fn); err != nil {
			return err
		}
		if op.After != nil {
			op.After()
		}
		return nil
	}
}

func inTx(ctx context.Context, db *sql.DB, fn func(ctx context.Context, ex Executor) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(ctx, SQLExecutor(tx)); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Backend is what a store backend gives its DB.
type Backend struct {
	Dialect Dialect
	Read    *sql.DB // sees every transaction Write committed
	// Reader, if set, runs the single-statement reads (DB.Query,
	// DB.QueryRow) instead of Read: PostgreSQL's is pgx on the same pool,
	// as for its writes. Snapshots of several statements use Read.
	Reader Executor
	Write  Writer
	// Open returns store.ErrClosed once the backend is closed; reads and
	// writes ask it first. Optional.
	Open func() error
	// DeviceTables are the backend's own tables with a device column (its
	// telemetry): DeleteDevice deletes the device's rows in them, in the
	// transaction that deletes the device.
	DeviceTables []string
	// DeviceDeleted, if set, runs once a device's deletion committed
	// (SQLite forgets the device's telemetry it holds in memory).
	DeviceDeleted func(id int64)
}

// DB is the shared relational part of a store.
type DB struct {
	dialect Dialect
	read    *sql.DB
	reader  Executor
	write   Writer
	b       Backend

	rebound sync.Map // query text → rewritten for the dialect
}

// New returns the relational part of a store.
func New(b Backend) *DB {
	db := &DB{dialect: b.Dialect, read: b.Read, reader: b.Reader, write: b.Write, b: b}
	if db.reader == nil {
		db.reader = SQLExecutor(b.Read)
	}
	return db
}

// open makes reads fail with store.ErrClosed once the backend is closed.
func (db *DB) open() error {
	if db.b.Open == nil {
		return nil
	}
	return db.b.Open()
}

// Dialect tells which backend this is, for the rare query that differs.
func (db *DB) Dialect() Dialect { return db.dialect }

// Q rewrites a query written with ? placeholders and the DDL macros below
// for the backend. Queries are written once, in SQLite's spelling.
func (db *DB) Q(q string) string {
	if v, ok := db.rebound.Load(q); ok {
		return v.(string)
	}
	r := rebind(db.dialect, q)
	db.rebound.Store(q, r)
	return r
}

// Macros usable in migrations, expanded per dialect.
var macros = map[string][2]string{ // {sqlite, postgres}
	"{{id}}":   {"INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"},
	"{{blob}}": {"BLOB", "BYTEA"},
	"{{bool}}": {"INTEGER", "BOOLEAN"},
}

// rebind turns ? into $1, $2… for PostgreSQL (outside quoted strings) and
// expands the macros.
func rebind(d Dialect, q string) string {
	for m, v := range macros {
		q = strings.ReplaceAll(q, m, v[d])
	}
	if d != Postgres || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	n := 0
	inStr := false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'':
			inStr = !inStr
		case c == '?' && !inStr:
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Write runs fn in a write transaction of the backend.
func (db *DB) Write(ctx context.Context, fn func(ctx context.Context, tx *Tx) error) error {
	return db.writeOp(ctx, false, nil, fn)
}

func (db *DB) writeOp(ctx context.Context, single bool, after func(), fn func(ctx context.Context, tx *Tx) error) error {
	if err := db.open(); err != nil {
		return err
	}
	return db.write(ctx, Op{Single: single, After: after, Fn: func(ctx context.Context, ex Executor) error {
		return fn(ctx, &Tx{db: db, tx: ex})
	}})
}

// Exec runs one statement as a write of its own (a Single one).
func (db *DB) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := db.writeOp(ctx, true, nil, func(ctx context.Context, tx *Tx) error {
		var err error
		res, err = tx.Exec(ctx, q, args...)
		return err
	})
	return res, err
}

// Query reads.
func (db *DB) Query(ctx context.Context, q string, args ...any) (Rows, error) {
	if err := db.open(); err != nil {
		return nil, err
	}
	return db.reader.Query(ctx, db.Q(q), args...)
}

// QueryRow reads one row.
func (db *DB) QueryRow(ctx context.Context, q string, args ...any) Row {
	return db.reader.QueryRow(ctx, db.Q(q), args...)
}

// Tx is a write transaction handed to a Write function.
type Tx struct {
	db *DB
	tx Executor
}

// Exec runs a statement in the transaction.
func (t *Tx) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return t.tx.Exec(ctx, t.db.Q(q), args...)
}

// Query reads in the transaction.
func (t *Tx) Query(ctx context.Context, q string, args ...any) (Rows, error) {
	return t.tx.Query(ctx, t.db.Q(q), args...)
}

// QueryRow reads one row in the transaction.
func (t *Tx) QueryRow(ctx context.Context, q string, args ...any) Row {
	return t.tx.QueryRow(ctx, t.db.Q(q), args...)
}

// Insert runs an INSERT … RETURNING id and returns the id (both backends
// support RETURNING; LastInsertId is SQLite's only).
func (t *Tx) Insert(ctx context.Context, q string, args ...any) (int64, error) {
	var id int64
	err := t.QueryRow(ctx, q+" RETURNING id", args...).Scan(&id)
	return id, err
}

// collect scans every row of a query (whose error is err) with scan and
// closes the rows.
func collect[T any](rows Rows, err error, scan func(rowScanner) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// NotFound maps sql.ErrNoRows to store.ErrNotFound, wrapped with what.
func NotFound(err error, what string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", what, store.ErrNotFound)
	}
	return err
}

// ToNS is how times are stored: Unix nanoseconds, 0 for the zero time
// (exact, and the same in both backends).
func ToNS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// FromNS reads a time stored by ToNS.
func FromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// orNow is t, or the present for the zero time.
func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

// Limit is a listing's page size: 0 (or less) means 100, and none is
// larger than 10,000.
func Limit(n int) int {
	if n <= 0 {
		return 100
	}
	return min(n, 10_000)
}

// params returns n placeholders separated by commas, for an IN list.
func params(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// valueRows returns n parenthesized rows of cols placeholders, for an
// INSERT of several rows.
func valueRows(n, cols int) string {
	return strings.TrimSuffix(strings.Repeat("("+params(cols)+"), ", n), ", ")
}

// maxRows bounds the rows of one multi-row statement and the values of one
// IN list, well below either backend's limit on parameters.
const maxRows = 100

// insertRows inserts the rows whose values args holds, cols a row, with a
// few statements of up to maxRows rows each: head is the statement up to
// VALUES, tail what follows the rows (ON CONFLICT …). A round trip to
// PostgreSQL per row would cost more than the rows.
func insertRows(ctx context.Context, tx *Tx, head, tail string, cols int, args []any) error {
	for part := range slices.Chunk(args, cols*maxRows) {
		if _, err := tx.Exec(ctx, head+" VALUES "+valueRows(len(part)/cols, cols)+" "+tail, part...); err != nil {
			return err
		}
	}
	return nil
}

// Migration is one schema step of one concept.
type Migration struct {
	Name string // "<concept>/NNN"; applied once, in name order
	SQL  string // statements separated by ";\n", with the macros above
}

var (
	regMu      sync.Mutex
	migrations []Migration
	// purgers delete a device's rows from the tables of one concept.
	purgers []func(ctx context.Context, tx *Tx, device int64) error
)

// Register adds migrations; concepts call it from init.
func Register(ms ...Migration) {
	regMu.Lock()
	defer regMu.Unlock()
	migrations = append(migrations, ms...)
}

// RegisterPurge adds a function that deletes one device's rows of a
// concept's tables; PurgeDevice runs them all.
func RegisterPurge(fn func(ctx context.Context, tx *Tx, device int64) error) {
	regMu.Lock()
	defer regMu.Unlock()
	purgers = append(purgers, fn)
}

// Migrate applies the registered migrations not applied yet, each in its own
// transaction with its record in sqldb_migrations, so that a crash leaves
// every migration either whole or absent. Nodes starting together on one
// PostgreSQL database take turns through an advisory lock.
func (db *DB) Migrate(ctx context.Context) error {
	regMu.Lock()
	ms := slices.Clone(migrations)
	regMu.Unlock()
	slices.SortFunc(ms, func(a, b Migration) int { return strings.Compare(a.Name, b.Name) })
	for i := 1; i < len(ms); i++ {
		if ms[i].Name == ms[i-1].Name {
			return fmt.Errorf("sqldb: migration %q registered twice", ms[i].Name)
		}
	}
	for _, m := range ms {
		err := db.Write(ctx, func(ctx context.Context, tx *Tx) error {
			if db.dialect == Postgres {
				if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(7805418722)"); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS sqldb_migrations (name TEXT PRIMARY KEY)"); err != nil {
				return err
			}
			var done int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM sqldb_migrations WHERE name=?", m.Name).Scan(&done); err != nil {
				return err
			}
			if done > 0 {
				return nil
			}
			for _, stmt := range strings.Split(m.SQL, ";\n") {
				if strings.TrimSpace(stmt) == "" {
					continue
				}
				if _, err := tx.Exec(ctx, stmt); err != nil {
					return fmt.Errorf("%w\n%s", err, stmt)
				}
			}
			_, err := tx.Exec(ctx, "INSERT INTO sqldb_migrations(name) VALUES (?)", m.Name)
			return err
		})
		if err != nil {
			return fmt.Errorf("sqldb: migration %s: %w", m.Name, err)
		}
	}
	return nil
}

// PurgeDevice deletes the rows of a deleted device from every concept's
// tables, in a write of its own (DeleteDevice purges in its own
// transaction).
func (db *DB) PurgeDevice(ctx context.Context, device int64) error {
	return db.Write(ctx, func(ctx context.Context, tx *Tx) error { return purge(ctx, tx, device) })
}

// purge runs the registered purges of device in tx.
func purge(ctx context.Context, tx *Tx, device int64) error {
	regMu.Lock()
	ps := slices.Clone(purgers)
	regMu.Unlock()
	for _, p := range ps {
		if err := p(ctx, tx, device); err != nil {
			return err
		}
	}
	return nil
}

// Tables implements the parts of store.Store kept in the shared SQL tables.
// Both backends embed it; the concept files of this package define its
// methods. Its only field is unexported so that embedding it adds nothing
// but those methods to a backend's API.
type Tables struct {
	db *DB
}

// NewTables migrates db and returns the tables on it.
func NewTables(ctx context.Context, db *DB) (*Tables, error) {
	if err := db.Migrate(ctx); err != nil {
		return nil, err
	}
	return &Tables{db: db}, nil
}

// PurgeDevice deletes a deleted device's rows from the shared tables.
func (t *Tables) PurgeDevice(ctx context.Context, device int64) error {
	if err := t.db.PurgeDevice(ctx, device); err != nil {
		return fmt.Errorf("sqldb: purging device %d: %w", device, err)
	}
	return nil
}
