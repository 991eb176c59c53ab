package postgres

import (
	"context"
	"database/sql"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/thingline/thingline/store/sqldb"
)

// sqlWrite is the shared tables' Writer: a transaction on the pool, or a
// Single write's statement on its own, run through pgx itself. Through
// database/sql (pgx's stdlib) the same round trips cost a quarter more
// CPU on the provisioning path: it starts a goroutine for every
// transaction and for every result set read in one (docs/storage.md).
func (s *Store) sqlWrite(ctx context.Context, op sqldb.Op) error {
	var err error
	if op.Single {
		err = op.Fn(ctx, pgxExecutor{s.pool})
	} else {
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return op.Fn(ctx, pgxExecutor{tx}) })
	}
	if err == nil && op.After != nil {
		op.After()
	}
	return err
}

// pgxExecutor is the sqldb.Executor of the pool (the shared tables' reads
// and Single writes) or of a transaction.
type pgxExecutor struct {
	q interface {
		Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
		Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
		QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	}
}

func (e pgxExecutor) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	tag, err := e.q.Exec(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return result(tag.RowsAffected()), nil
}

func (e pgxExecutor) Query(ctx context.Context, q string, args ...any) (sqldb.Rows, error) {
	rows, err := e.q.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return pgxRows{rows}, nil
}

// QueryRow's Scan fails with pgx.ErrNoRows, which wraps sql.ErrNoRows.
func (e pgxExecutor) QueryRow(ctx context.Context, q string, args ...any) sqldb.Row {
	return e.q.QueryRow(ctx, q, args...)
}

// result is an Exec's sql.Result: the rows it affected.
type result int64

func (r result) RowsAffected() (int64, error) { return int64(r), nil }

func (result) LastInsertId() (int64, error) {
	return 0, errors.New("postgres: no LastInsertId, use RETURNING")
}

// pgxRows gives pgx.Rows the Close of sqldb.Rows.
type pgxRows struct{ pgx.Rows }

func (r pgxRows) Close() error {
	r.Rows.Close()
	return r.Rows.Err()
}
