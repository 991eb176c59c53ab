package node

import (
	"os"
	"strings"
)

// The Go runtime's monitor thread (sysmon) sleeps deeply while every
// processor is idle and is woken by the next system call any goroutine
// makes; it then polls every 20 µs until it finds the processors idle
// again. A node serving a fleet at its own shape — thousands of devices,
// each one reading a second, so the processors go idle between most
// messages — thus wakes the monitor about once per message: measured at
// 10,000 devices × 1 msg/s on two cores, 6,700 wake-ups a second costing
// 15 % of the server's CPU, each a context switch (expensive on a virtual
// machine). With schedtrace set the monitor never sleeps deeply: it backs
// off to one wake-up every 10 ms while nothing needs it (100 a second,
// under 0.5 % of that CPU), and polls fast again as soon as it retakes a
// processor from a long system call. The cost: a processor held by a long
// cgo call or system call is retaken after 10–20 ms instead of 20–40 µs
// (the other processor meanwhile steals its queued goroutines when idle);
// the acknowledgement latency did not move (p99 and p99.9 measured
// alongside). docs/benchmarks.md has the measurements.
//
// The runtime reads schedtrace only at start, so the server re-executes
// itself once with it in GODEBUG. The period is the largest the runtime
// takes (int32 milliseconds, 24.8 days): the trace line it stands for is
// printed once a host has been up that long, then every 24.8 days; and a
// process dying of a panic prints the scheduler's state before its stack
// traces.
// GODEBUG=schedtrace=0 (or any schedtrace) set by the operator is kept
// as it is.
const sysmonGODEBUG = "schedtrace=2147483647"

// sysmonEnv returns the environment to re-execute with, or nil when env
// needs no change (the operator set schedtrace, or this is the re-executed
// process).
func sysmonEnv(env []string) []string {
	out := make([]string, 0, len(env)+1)
	found := false
	for _, kv := range env {
		v, ok := strings.CutPrefix(kv, "GODEBUG=")
		if !ok {
			out = append(out, kv)
			continue
		}
		for _, f := range strings.Split(v, ",") {
			if strings.HasPrefix(strings.TrimSpace(f), "schedtrace=") {
				return nil
			}
		}
		if !found {
			found = true
			if v != "" {
				v += ","
			}
			kv = "GODEBUG=" + v + sysmonGODEBUG
		}
		out = append(out, kv)
	}
	if !found {
		out = append(out, "GODEBUG="+sysmonGODEBUG)
	}
	return out
}

// TuneSysmon re-executes the running server with the runtime's monitor
// tuned (see sysmonGODEBUG), unless it is already. It returns only when it
// does not re-execute (already tuned, the operator's own schedtrace, or an
// exec that failed: the server then runs untuned). Call it first thing,
// before any file, lock or socket is opened.
func TuneSysmon() {
	env := sysmonEnv(os.Environ())
	if env == nil {
		return
	}
	reexec(env)
}
