//go:build !linux

package node

// reexec does nothing here: the tuning is measured on Linux only.
func reexec([]string) {}
