package sqldb

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/thingline/thingline/store"
)

// Persistent server-side RPC (package rpc). Every change of status is one
// conditional UPDATE, so that the nodes of a cluster agree on who sends an
// attempt and who records its outcome without any other coordination.
func init() {
	Register(Migration{Name: "rpc/001", SQL: `
CREATE TABLE rpc_calls (
	id {{id}},
	device_id BIGINT NOT NULL,
	device TEXT NOT NULL,
	method TEXT NOT NULL,
	params TEXT NOT NULL,
	oneway {{bool}} NOT NULL,
	status TEXT NOT NULL,
	retries INTEGER NOT NULL,
	attempts INTEGER NOT NULL,
	timeout_ms BIGINT NOT NULL,
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	sent_at BIGINT NOT NULL,
	node TEXT NOT NULL,
	response TEXT,
	error TEXT NOT NULL
);
CREATE INDEX rpc_calls_device ON rpc_calls(device_id, id);
CREATE INDEX rpc_calls_status ON rpc_calls(status, expires_at)`},
		// Retention removes finished calls of every device, oldest first.
		Migration{Name: "rpc/002", SQL: `CREATE INDEX rpc_calls_updated ON rpc_calls(updated_at)`})
	RegisterPurge(func(ctx context.Context, tx *Tx, device int64) error {
		_, err := tx.Exec(ctx, "DELETE FROM rpc_calls WHERE device_id=?", device)
		return err
	})
}

const rpcColumns = "id, device_id, device, method, params, oneway, status, retries, attempts, timeout_ms, created_at, expires_at, updated_at, sent_at, node, response, error"

// notFinal is the SQL list of the statuses a call can leave.
var notFinal = "'" + strings.Join([]string{string(store.RPCQueued), string(store.RPCSent), string(store.RPCDelivered), string(store.RPCTimeout)}, "','") + "'"

func scanRPC(row rowScanner) (store.RPC, error) {
	var r store.RPC
	var params string
	var resp sql.NullString
	var created, expires, updated, sent int64
	err := row.Scan(&r.ID, &r.DeviceID, &r.Device, &r.Method, &params, &r.Oneway, &r.Status, &r.Retries, &r.Attempts,
		&r.TimeoutMs, &created, &expires, &updated, &sent, &r.Node, &resp, &r.Error)
	if err != nil {
		return r, err
	}
	r.Params = json.RawMessage(params)
	if resp.Valid {
		r.Response = json.RawMessage(resp.String)
	}
	r.CreatedAt, r.ExpiresAt, r.UpdatedAt, r.SentAt = nsTime(created), nsTime(expires), nsTime(updated), nsTime(sent)
	return r, nil
}

func nullJSON(v json.RawMessage) any {
	if v == nil {
		return nil
	}
	return string(v)
}

// CreateRPC implements store.RPCs.
func (t *Tables) CreateRPC(ctx context.Context, r store.RPC) (store.RPC, error) {
	if r.Status == "" {
		r.Status = store.RPCQueued
	}
	if len(r.Params) == 0 {
		r.Params = json.RawMessage("{}")
	}
	if r.CreatedAt.IsZero() {
		r.CreatedAt = time.Now()
	}
	r.UpdatedAt, r.Attempts = r.CreatedAt, 0
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		row := tx.QueryRow(ctx, `INSERT INTO rpc_calls (device_id, device, method, params, oneway, status, retries, attempts,
			timeout_ms, created_at, expires_at, updated_at, sent_at, node, response, error)
			VALUES (?,?,?,?,?,?,?,0,?,?,?,?,0,'',?,?) RETURNING `+rpcColumns,
			r.DeviceID, r.Device, r.Method, string(r.Params), r.Oneway, string(r.Status), r.Retries, r.TimeoutMs,
			r.CreatedAt.UnixNano(), r.ExpiresAt.UnixNano(), r.UpdatedAt.UnixNano(), nullJSON(r.Response), r.Error)
		var err error
		r, err = scanRPC(row)
		return err
	})
	if err != nil {
		return store.RPC{}, fmt.Errorf("sqldb: creating rpc: %w", err)
	}
	return r, nil
}

// GetRPC implements store.RPCs.
func (t *Tables) GetRPC(ctx context.Context, id int64) (store.RPC, error) {
	r, err := scanRPC(t.db.QueryRow(ctx, "SELECT "+rpcColumns+" FROM rpc_calls WHERE id=?", id))
	if err != nil {
		return r, NotFound(err, fmt.Sprintf("rpc %d", id))
	}
	return r, nil
}

// ListRPCs implements store.RPCs.
func (t *Tables) ListRPCs(ctx context.Context, q store.RPCQuery) ([]store.RPC, error) {
	var where []string
	var args []any
	if q.DeviceID != 0 {
		where, args = append(where, "device_id=?"), append(args, q.DeviceID)
	}
	if !q.Since.IsZero() {
		where, args = append(where, "created_at>=?"), append(args, q.Since.UnixNano())
	}
	if q.Before > 0 {
		where, args = append(where, "id<?"), append(args, q.Before)
	}
	if len(q.Status) > 0 {
		where = append(where, "status IN (?"+strings.Repeat(",?", len(q.Status)-1)+")")
		for _, s := range q.Status {
			args = append(args, string(s))
		}
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	query := "SELECT " + rpcColumns + " FROM rpc_calls"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += fmt.Sprintf(" ORDER BY id DESC LIMIT %d", limit)
	rows, err := t.db.Query(ctx, query, args...)
	out, err := collect(rows, err, scanRPC)
	if err != nil {
		return nil, fmt.Errorf("sqldb: listing rpc: %w", err)
	}
	return out, nil
}

// DeleteRPC implements store.RPCs.
func (t *Tables) DeleteRPC(ctx context.Context, id int64) error {
	res, err := t.db.Exec(ctx, "DELETE FROM rpc_calls WHERE id=?", id)
	if err != nil {
		return fmt.Errorf("sqldb: deleting rpc %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("rpc %d: %w", id, store.ErrNotFound)
	}
	return nil
}

// TransitionRPC implements store.RPCs.
func (t *Tables) TransitionRPC(ctx context.Context, tr store.RPCTransition) (store.RPC, bool, error) {
	if tr.At.IsZero() {
		tr.At = time.Now()
	}
	set := []string{"status=?", "updated_at=?"}
	args := []any{string(tr.To), tr.At.UnixNano()}
	switch {
	case tr.NewAttempt:
		set = append(set, "attempts=attempts+1", "sent_at=?", "node=?")
		args = append(args, tr.At.UnixNano(), tr.Node)
	case tr.UndoAttempt:
		set = append(set, "attempts=attempts-1")
	}
	if tr.Response != nil {
		set, args = append(set, "response=?"), append(args, string(tr.Response))
	}
	if tr.Error != "" {
		set, args = append(set, "error=?"), append(args, tr.Error)
	}
	where := []string{"id=?"}
	args = append(args, tr.ID)
	if len(tr.From) > 0 {
		where = append(where, "status IN (?"+strings.Repeat(",?", len(tr.From)-1)+")")
		for _, s := range tr.From {
			args = append(args, string(s))
		}
	}
	if tr.Attempts >= 0 {
		where, args = append(where, "attempts=?"), append(args, tr.Attempts)
	}
	if tr.DeviceID != 0 {
		where, args = append(where, "device_id=?"), append(args, tr.DeviceID)
	}
	var r store.RPC
	ok := false
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var err error
		r, err = scanRPC(tx.QueryRow(ctx, "UPDATE rpc_calls SET "+strings.Join(set, ", ")+" WHERE "+strings.Join(where, " AND ")+
			" RETURNING "+rpcColumns, args...))
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		ok = err == nil
		return err
	})
	if err != nil {
		return store.RPC{}, false, fmt.Errorf("sqldb: rpc %d to %s: %w", tr.ID, tr.To, err)
	}
	return r, ok, nil
}

// PendingRPCDevices implements store.RPCs.
func (t *Tables) PendingRPCDevices(ctx context.Context) ([]int64, error) {
	rows, err := t.db.Query(ctx, "SELECT DISTINCT device_id FROM rpc_calls WHERE status IN ("+notFinal+") ORDER BY device_id")
	if err != nil {
		return nil, fmt.Errorf("sqldb: pending rpc devices: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// ExpireRPCs implements store.RPCs.
func (t *Tables) ExpireRPCs(ctx context.Context, now time.Time) ([]store.RPC, error) {
	var out []store.RPC
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		rows, err := tx.Query(ctx, "UPDATE rpc_calls SET status=?, updated_at=?, error=? WHERE status IN ("+notFinal+
			") AND expires_at<=? RETURNING "+rpcColumns,
			string(store.RPCExpired), now.UnixNano(), "expired before completion", now.UnixNano())
		out, err = collect(rows, err, scanRPC)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqldb: expiring rpc: %w", err)
	}
	return out, nil
}
