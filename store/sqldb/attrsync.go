package sqldb

import (
	"context"
	"fmt"
	"time"

	"github.com/thingline/thingline/store"
)

// Shared-attribute changes a device has not been told of (store.SharedSync).
func init() {
	Register(Migration{Name: "attrsync/001", SQL: `
CREATE TABLE attr_pending (
	device_id BIGINT NOT NULL,
	key TEXT NOT NULL,
	deleted {{bool}} NOT NULL,
	at BIGINT NOT NULL,
	PRIMARY KEY (device_id, key)
)`})
	RegisterPurge(func(ctx context.Context, tx *Tx, device int64) error {
		_, err := tx.Exec(ctx, "DELETE FROM attr_pending WHERE device_id=?", device)
		return err
	})
}

// MarkShared implements store.SharedSync.
func (t *Tables) MarkShared(ctx context.Context, deviceID int64, keys []string, deleted bool, at time.Time) error {
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		for _, k := range keys {
			if _, err := tx.Exec(ctx, `INSERT INTO attr_pending (device_id, key, deleted, at) VALUES (?,?,?,?)
				ON CONFLICT (device_id, key) DO UPDATE SET deleted=excluded.deleted, at=excluded.at`,
				deviceID, k, deleted, at.UnixNano()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqldb: marking shared attributes of device %d: %w", deviceID, err)
	}
	return nil
}

// PendingShared implements store.SharedSync.
func (t *Tables) PendingShared(ctx context.Context, deviceID int64) ([]store.SharedChange, error) {
	rows, err := t.db.Query(ctx, "SELECT key, deleted, at FROM attr_pending WHERE device_id=? ORDER BY key", deviceID)
	out, err := collect(rows, err, func(r rowScanner) (store.SharedChange, error) {
		var c store.SharedChange
		var at int64
		err := r.Scan(&c.Key, &c.Deleted, &at)
		c.At = nsTime(at)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("sqldb: pending shared attributes of device %d: %w", deviceID, err)
	}
	return out, nil
}

// ClearShared implements store.SharedSync.
func (t *Tables) ClearShared(ctx context.Context, deviceID int64, cs []store.SharedChange) error {
	if len(cs) == 0 {
		return nil
	}
	err := t.db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		for _, c := range cs {
			if _, err := tx.Exec(ctx, "DELETE FROM attr_pending WHERE device_id=? AND key=? AND at=?",
				deviceID, c.Key, c.At.UnixNano()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqldb: clearing shared attributes of device %d: %w", deviceID, err)
	}
	return nil
}
