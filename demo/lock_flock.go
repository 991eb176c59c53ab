//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package demo

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDir keeps a second demo off the same directory: two nodes on one
// SQLite file, with twins presenting the same certificates, would only
// take each other's sessions over. flock dies with the process, so a
// killed demo leaves no stale lock.
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, ".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("demo: opening lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("demo: %s is in use by another running demo (use --dir)", dir)
		}
		return nil, fmt.Errorf("demo: locking %s: %w", dir, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
