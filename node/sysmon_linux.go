package node

import (
	"os"
	"syscall"
)

// reexec replaces the process with a fresh run of the same executable and
// arguments under env; the process keeps its ID, standard streams and
// parent. /proc/self/exe is the running executable even when its file was
// replaced or removed since (an upgrade in place).
func reexec(env []string) {
	syscall.Exec("/proc/self/exe", os.Args, env)
}
