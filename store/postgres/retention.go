package postgres

import (
	"context"
	"fmt"
)

// DeleteTelemetryBefore implements store.Retention: one DELETE of at most
// limit rows found through the (device, ts) index, outside the telemetry
// writers, so appends go on meanwhile (the rows it removes are old, the
// rows they insert new: they touch different pages).
func (s *Store) DeleteTelemetryBefore(ctx context.Context, deviceID int64, before int64, limit int) (int64, bool, error) {
	if err := s.checkOpen(); err != nil {
		return 0, false, err
	}
	if limit <= 0 {
		limit = 10000
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM telemetry WHERE ctid = ANY(ARRAY(
	SELECT ctid FROM telemetry WHERE device=$1 AND ts < $2 LIMIT $3))`, deviceID, before, limit)
	if err != nil {
		return 0, false, fmt.Errorf("postgres: removing old telemetry of device %d: %w", deviceID, err)
	}
	n := tag.RowsAffected()
	return n, n == int64(limit), nil
}
