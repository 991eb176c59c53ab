package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/devicesql"
)

// CountDevices counts the devices opt's filters select.
func (s *Store) CountDevices(ctx context.Context, opt store.ListOptions) (int64, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	q, args := devicesql.Count(devicesql.Postgres, opt)
	var n int64
	if err := s.pool.QueryRow(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres: counting devices: %w", err)
	}
	return n, nil
}

// FleetSummary aggregates the fleet in one read-only snapshot, so that its
// counts agree with each other.
func (s *Store) FleetSummary(ctx context.Context, now time.Time) (store.FleetSummary, error) {
	if err := s.checkOpen(); err != nil {
		return store.FleetSummary{}, err
	}
	var sum store.FleetSummary
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		var err error
		sum, err = devicesql.Summary(devicesql.Postgres, now, func(q string, args []any, row devicesql.RowFunc) error {
			rows, err := tx.Query(ctx, q, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var g string
				var n int64
				if err := rows.Scan(&g, &n); err != nil {
					return err
				}
				row(g, n)
			}
			return rows.Err()
		})
		return err
	})
	if err != nil {
		return sum, fmt.Errorf("postgres: fleet summary: %w", err)
	}
	return sum, nil
}
