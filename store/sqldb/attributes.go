package sqldb

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/thingline/thingline/store"
)

// Device attributes: a backend's table (device, scope, key, value,
// updated_at), values stored as JSON text.

func validScope(sc store.Scope) error {
	switch sc {
	case store.ClientScope, store.SharedScope, store.ServerScope:
		return nil
	}
	return fmt.Errorf("unknown attribute scope %q", sc)
}

// SetAttributes implements store.Attributes.
func (t *Tables) SetAttributes(ctx context.Context, deviceID int64, scope store.Scope, kv map[string]json.RawMessage, at time.Time) error {
	if err := validScope(scope); err != nil {
		return fmt.Errorf("sqldb: setting attributes: %w", err)
	}
	ms := orNow(at).UnixMilli()
	args := make([]any, 0, 5*len(kv))
	for k, v := range kv {
		if !json.Valid(v) {
			return fmt.Errorf("sqldb: setting attribute %q: value is not JSON", k)
		}
		args = append(args, deviceID, string(scope), k, string(v), ms)
	}
	lock := ""
	if t.db.dialect == Postgres {
		// Keeps a concurrent delete of the device from leaving orphans
		// behind (SQLite's writes are serial anyway).
		lock = " FOR SHARE"
	}
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		var ok bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM devices WHERE id=?"+lock+")", deviceID).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return store.ErrNotFound
		}
		return insertRows(ctx, tx, "INSERT INTO attributes(device, scope, key, value, updated_at)",
			"ON CONFLICT (device, scope, key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at", 5, args)
	})
	if err != nil {
		return fmt.Errorf("sqldb: setting attributes of device %d: %w", deviceID, err)
	}
	return nil
}

// GetAttributes implements store.Attributes. A device has few attributes
// in a scope: all of them are read and those not asked for dropped.
func (t *Tables) GetAttributes(ctx context.Context, deviceID int64, scope store.Scope, keys []string) (map[string]store.Attribute, error) {
	rows, err := t.db.Query(ctx, "SELECT key, value, updated_at FROM attributes WHERE device=? AND scope=?", deviceID, string(scope))
	if err != nil {
		return nil, fmt.Errorf("sqldb: getting attributes: %w", err)
	}
	defer rows.Close()
	out := map[string]store.Attribute{}
	for rows.Next() {
		var k, v string
		var a store.Attribute
		if err := rows.Scan(&k, &v, &a.UpdatedAt); err != nil {
			return nil, fmt.Errorf("sqldb: getting attributes: %w", err)
		}
		if len(keys) == 0 || slices.Contains(keys, k) {
			a.Value = json.RawMessage(v)
			out[k] = a
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqldb: getting attributes: %w", err)
	}
	return out, nil
}

// DeleteAttributes implements store.Attributes.
func (t *Tables) DeleteAttributes(ctx context.Context, deviceID int64, scope store.Scope, keys []string) error {
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		for part := range slices.Chunk(keys, maxRows) {
			args := []any{deviceID, string(scope)}
			for _, k := range part {
				args = append(args, k)
			}
			if _, err := tx.Exec(ctx, "DELETE FROM attributes WHERE device=? AND scope=? AND key IN ("+params(len(part))+")", args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqldb: deleting attributes: %w", err)
	}
	return nil
}
