//go:build unix

package factory

import (
	"os"
	"syscall"
)

// lockRun takes an exclusive flock on a run's lock file without waiting.
// The kernel releases it when the process dies, however it dies.
func lockRun(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}

// lockHeld tells whether another process holds the run's lock.
func lockHeld(f *os.File) bool {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}
