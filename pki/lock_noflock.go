//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package pki

// lockDir is a no-op where flock is missing; thingline's stations run on
// Linux, so concurrent revocation there is not supported.
func lockDir(dir string) (func(), error) { return func() {}, nil }
