package node

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"time"
)

// A node spends its memory on two very different loads. A fleet that is
// mostly quiet is memory-bound: every idle connection's state sits in the
// heap, and with the default GOGC=100 the heap may grow to twice that
// before a collection. A busy node is CPU-bound, and frequent collections
// would cost throughput. So, unless the operator set GOGC, the node
// collects eagerly while the device traffic is light and lazily (GOGC 200:
// the heap may grow to three times what is live) while it is heavy. A busy
// node's live heap is small next to an idle fleet's (its connections are
// the same, its garbage short-lived), so the lazy setting costs little
// memory and saves about a tenth of the CPU per message. (Measured in
// docs/benchmarks.md.)
const (
	gcQuietPercent   = 40
	gcBusyPercent    = 200
	gcBusyPackets    = 2000 // packets per second above which the node is busy
	gcBusyHandshakes = 50   // or handshakes per second: a reconnect storm allocates a lot
	gcInterval       = time.Second
	gcQuietAfter     = 3 // intervals of light traffic before collecting eagerly
)

// governGC adjusts the GC target from the device traffic until ctx is done.
func governGC(ctx context.Context, packets, handshakes func() uint64, log *slog.Logger) {
	if os.Getenv("GOGC") != "" {
		return
	}
	// Start busy: a node that has just started usually faces its whole
	// fleet reconnecting.
	debug.SetGCPercent(gcBusyPercent)
	current, quiet := gcBusyPercent, 0
	last, lastHS := packets(), handshakes()
	t := time.NewTicker(gcInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, hs := packets(), handshakes()
		rate := float64(n-last) / gcInterval.Seconds()
		hsRate := float64(hs-lastHS) / gcInterval.Seconds()
		last, lastHS = n, hs
		want := gcBusyPercent
		if rate > gcBusyPackets || hsRate > gcBusyHandshakes {
			quiet = 0
		} else if quiet++; quiet >= gcQuietAfter {
			want = gcQuietPercent
		}
		if want != current {
			debug.SetGCPercent(want)
			if want == gcQuietPercent {
				// Without allocations no collection would come to apply
				// the lower target: the garbage of the busy spell would
				// stay resident for as long as the fleet stays quiet.
				debug.FreeOSMemory()
			}
			log.Debug("node: GC target changed", "gogc", want, "packetsPerSecond", rate, "handshakesPerSecond", hsRate)
			current = want
		}
	}
}
