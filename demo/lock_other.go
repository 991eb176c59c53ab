//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package demo

// lockDir is a no-op where flock is missing: two demos on one directory
// are then the user's to avoid.
func lockDir(string) (func(), error) { return func() {}, nil }
