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
// collects eagerly while the device traffic is light, lazily (GOGC 200: the
// heap may grow to three times what is live) while messages stream, and at
// the default rate during a storm of new connections: a storm builds the
// long-lived state of every session, and a lazily collected heap would
// leave it scattered over more memory than the quiet node gets back.
// (Measured in docs/benchmarks.md.)
const (
	gcQuietPercent   = 40
	gcStormPercent   = 100
	gcBusyPercent    = 200
	gcBusyPackets    = 2000 // packets per second above which the node is busy
	gcBusyHandshakes = 50   // handshakes per second above which a storm is on
	gcInterval       = time.Second
	gcQuietAfter     = 3 // intervals of light traffic before collecting eagerly
)

// governGC adjusts the GC target from the device traffic until ctx is done.
func governGC(ctx context.Context, packets, handshakes func() uint64, log *slog.Logger) {
	if os.Getenv("GOGC") != "" {
		return
	}
	// Start as in a storm: a node that has just started usually faces its
	// whole fleet reconnecting.
	debug.SetGCPercent(gcStormPercent)
	current, quiet := gcStormPercent, 0
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
		want := current
		switch {
		case hsRate > gcBusyHandshakes:
			want, quiet = gcStormPercent, 0
		case rate > gcBusyPackets:
			want, quiet = gcBusyPercent, 0
		default:
			if quiet++; quiet >= gcQuietAfter {
				want = gcQuietPercent
			}
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
