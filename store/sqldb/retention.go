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

// deleteBatch removes at most q.Limit rows of table matching where (and
// q.DeviceID's device_id when set), oldest first by order.
func (t *Tables) deleteBatch(ctx context.Context, table, where, order string, q store.HistoryPurge, args ...any) (int64, bool, error) {
	n := q.Limit
	if n <= 0 {
		n = 1000
	}
	if q.DeviceID != 0 {
		where += " AND device_id = ?"
		args = append(args, q.DeviceID)
	}
	args = append(args, n)
	res, err := t.db.Exec(ctx, "DELETE FROM "+table+" WHERE id IN (SELECT id FROM "+table+" WHERE "+where+" ORDER BY "+order+" LIMIT ?)", args...)
	if err != nil {
		return 0, false, fmt.Errorf("sqldb: removing old %s: %w", table, err)
	}
	removed, err := res.RowsAffected()
	return removed, removed == int64(n), err
}

// DeleteAlarmsBefore implements store.Alarms.
func (t *Tables) DeleteAlarmsBefore(ctx context.Context, q store.HistoryPurge) (int64, bool, error) {
	if q.Finished {
		return t.deleteBatch(ctx, "alarms", "clear_ns <> 0 AND clear_ns < ?", "clear_ns", q, q.Before.UnixNano())
	}
	return t.deleteBatch(ctx, "alarms", "start_ns < ?", "start_ns", q, q.Before.UnixNano())
}

// DeleteRPCsBefore implements store.RPCs.
func (t *Tables) DeleteRPCsBefore(ctx context.Context, q store.HistoryPurge) (int64, bool, error) {
	if q.Finished {
		return t.deleteBatch(ctx, "rpc_calls", "status IN (?, ?, ?) AND updated_at < ?", "updated_at", q,
			string(store.RPCSuccessful), string(store.RPCExpired), string(store.RPCFailed), q.Before.UnixNano())
	}
	return t.deleteBatch(ctx, "rpc_calls", "created_at < ?", "created_at", q, q.Before.UnixNano())
}

// DeleteOTAHistoryBefore implements store.OTA.
func (t *Tables) DeleteOTAHistoryBefore(ctx context.Context, q store.HistoryPurge) (int64, bool, error) {
	return t.deleteBatch(ctx, "ota_history", "ts < ?", "ts", q, q.Before.UnixNano())
}
