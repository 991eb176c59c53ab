// Package tstest holds small helpers shared by thingline's tests.
package tstest

import (
	"testing"
	"time"
)

// CheckFor calls fn every sleep until it returns nil or total has passed, in
// which case the test fails with fn's last error. Tests wait with it instead
// of sleeping for a guessed time.
func CheckFor(tb testing.TB, total, sleep time.Duration, fn func() error) {
	tb.Helper()
	deadline := time.Now().Add(total)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met after %v: %v", total, err)
		}
		time.Sleep(sleep)
	}
}
