package sqlite

import (
	"context"
	"database/sql"
	"fmt"
)

// DeleteTelemetryBefore implements store.Retention. Compacted telemetry is
// removed a chunk at a time: a chunk goes once all of it is before the
// bound (chunks never straddle an hour, so at most the hour around the
// bound is kept longer), with the latest values older than the bound and
// the merge marks of the hours wholly before it. One step removes at most
// about limit records (chunks hold up to 1,024) in one write of the
// writer goroutine, so acknowledgements wait for one short step at most.
// The ingest log is left alone: it holds only the last seconds of
// arrivals, which compaction moves into chunks that a later step removes.
func (s *Store) DeleteTelemetryBefore(ctx context.Context, deviceID int64, before int64, limit int) (int64, bool, error) {
	if limit <= 0 {
		limit = 10000
	}
	chunks := max(1, limit/chunkRecords)
	var removed int64
	var more bool
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		removed, more = 0, false
		rows, err := tx.QueryContext(ctx, "SELECT id, n FROM chunk WHERE device=? AND t_end < ? ORDER BY t_end LIMIT ?", deviceID, before, chunks+1)
		if err != nil {
			return err
		}
		var ids []int64
		for rows.Next() {
			var id, n int64
			if err := rows.Scan(&id, &n); err != nil {
				rows.Close()
				return err
			}
			if len(ids) == chunks {
				more = true
				break
			}
			ids = append(ids, id)
			removed += n
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, id := range ids {
			if _, err := tx.ExecContext(ctx, "DELETE FROM chunk WHERE id=?", id); err != nil {
				return err
			}
		}
		if more {
			return nil
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM latest WHERE device=? AND ts < ?", deviceID, before); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, "DELETE FROM dirty WHERE device=? AND bucket < ?", deviceID, bucketOf(before))
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("sqlite: removing old telemetry of device %d: %w", deviceID, err)
	}
	return removed, more, nil
}
