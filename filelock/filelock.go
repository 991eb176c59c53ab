// Package filelock holds advisory locks on files with flock(2). The kernel
// drops such a lock when its process dies, however it dies, so a crashed
// station or demo never leaves a stale lock behind.
//
// Where flock is missing (not Unix) locking always succeeds and Held
// always answers true: callers must then stay on the safe side without it.
package filelock

import (
	"errors"
	"fmt"
	"os"
)

// ErrLocked is returned by TryLock when another process holds the lock.
var ErrLocked = errors.New("locked by another process")

// Lock waits for an exclusive lock on path (created if missing) and
// returns the function that releases it.
func Lock(path string) (unlock func(), err error) { return lockPath(path, true) }

// TryLock is Lock without waiting: ErrLocked when the lock is taken.
func TryLock(path string) (unlock func(), err error) { return lockPath(path, false) }

func lockPath(path string, wait bool) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("filelock: opening %s: %w", path, err)
	}
	if err := lockFile(f, wait); err != nil {
		f.Close()
		if errors.Is(err, ErrLocked) {
			return nil, err
		}
		return nil, fmt.Errorf("filelock: locking %s: %w", path, err)
	}
	return func() {
		unlockFile(f)
		f.Close()
	}, nil
}

// TryLockFile takes an exclusive lock on an open file without waiting; it
// is held until the file is closed (or the process ends).
func TryLockFile(f *os.File) error { return lockFile(f, false) }

// Held tells whether another process holds a lock on f.
func Held(f *os.File) bool {
	if err := lockFile(f, false); err != nil {
		return true
	}
	unlockFile(f)
	return heldWithoutFlock
}
