package store

import (
	"context"
	"time"
)

// SharedChange is a change of a device's shared attributes that the device
// has not been told of yet: a new value (read the current one), or a
// deletion.
type SharedChange struct {
	Key     string    `json:"key"`
	Deleted bool      `json:"deleted"`
	At      time.Time `json:"at"`
}

// SharedSync remembers shared-attribute changes a device may have missed,
// so that they are pushed when it next subscribes to attribute updates.
// Writers mark a change before they try to push it and clear it once it
// was pushed; docs/rpc.md explains why in that order.
type SharedSync interface {
	// MarkShared records that keys changed (or were deleted) at at; a
	// later mark of a key replaces an earlier one.
	MarkShared(ctx context.Context, deviceID int64, keys []string, deleted bool, at time.Time) error
	// PendingShared lists a device's marked changes.
	PendingShared(ctx context.Context, deviceID int64) ([]SharedChange, error)
	// ClearShared removes the given changes, each only if it was not
	// marked again since (same At).
	ClearShared(ctx context.Context, deviceID int64, cs []SharedChange) error
}
