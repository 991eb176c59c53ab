package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/devicesql"
)

// CountDevices counts the devices opt's filters select.
func (s *Store) CountDevices(ctx context.Context, opt store.ListOptions) (int64, error) {
	if err := s.readable(); err != nil {
		return 0, err
	}
	q, args := devicesql.Count(devicesql.SQLite, opt)
	var n int64
	if err := s.db.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlite: counting devices: %w", err)
	}
	return n, nil
}

// FleetSummary aggregates the fleet in one read transaction, so that its
// counts agree with each other.
func (s *Store) FleetSummary(ctx context.Context, now time.Time) (store.FleetSummary, error) {
	if err := s.readable(); err != nil {
		return store.FleetSummary{}, err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return store.FleetSummary{}, fmt.Errorf("sqlite: fleet summary: %w", err)
	}
	defer tx.Rollback()
	sum, err := devicesql.Summary(devicesql.SQLite, now, func(q string, args []any, row devicesql.RowFunc) error {
		rows, err := tx.QueryContext(ctx, q, args...)
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
	if err != nil {
		return sum, fmt.Errorf("sqlite: fleet summary: %w", err)
	}
	return sum, nil
}
