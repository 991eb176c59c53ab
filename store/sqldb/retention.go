package sqldb

import (
	"context"
	"fmt"
	"strings"

	"github.com/thingline/thingline/store"
)

// events is a backend's table, with the same name and columns in both
// and an index on time (their migrations).

// DeleteEventsBefore implements store.Retention: one bounded DELETE, so a
// step holds the write path only briefly.
func (t *Tables) DeleteEventsBefore(ctx context.Context, q store.EventPurge) (int64, bool, error) {
	n := q.Limit
	if n <= 0 {
		n = 1000
	}
	where, args := "time < ?", []any{q.Before.UnixNano()}
	if q.Device != "" {
		where += " AND device = ?"
		args = append(args, q.Device)
	} else if len(q.KeepProfiles) > 0 {
		where += " AND device NOT IN (SELECT name FROM devices WHERE profile IN (?" + strings.Repeat(", ?", len(q.KeepProfiles)-1) + "))"
		for _, p := range q.KeepProfiles {
			args = append(args, p)
		}
	}
	args = append(args, n)
	res, err := t.db.Exec(ctx, "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE "+where+" ORDER BY time LIMIT ?)", args...)
	if err != nil {
		return 0, false, fmt.Errorf("sqldb: removing old events: %w", err)
	}
	removed, err := res.RowsAffected()
	return removed, removed == int64(n), err
}
