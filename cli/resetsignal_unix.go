//go:build unix

package cli

import (
	"os"
	"syscall"
)

// resetSignals press the twin's reset button (device run).
var resetSignals = []os.Signal{syscall.SIGUSR1}
