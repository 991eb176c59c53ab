//go:build !unix

package cli

import "os"

// resetSignals press the twin's reset button (device run): none where
// there is no SIGUSR1; the RPC factoryReset still resets.
var resetSignals []os.Signal
