package node

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// A node spends its memory on very different loads. A fleet that is mostly
// quiet is memory-bound: every idle connection's state sits in the heap,
// and with the default GOGC=100 the heap may grow to twice that before a
// collection. A busy node is CPU-bound, and frequent collections cost
// throughput. So, unless the operator set GOGC, the node collects eagerly
// (GOGC 40) while the device traffic is light, and while it is heavy
// (messages streaming, or a storm of new connections) lazily (GOGC 200: the
// heap may grow to three times what is live) as long as the live heap is
// small, at the default rate once it is large. A large heap is a large
// fleet: memory counts, and a storm of connections collected lazily would
// leave each session's long-lived state scattered over more memory than
// the quiet node gets back (measured: 18.4 instead of 16.0 KB per idle
// connection at 15,000). (docs/benchmarks.md has the figures.)
const (
	gcQuietPercent   = 40
	gcBusyPercent    = 100
	gcLazyPercent    = 200
	gcLazyHeap       = 64 << 20 // live heap up to which a busy node collects lazily
	gcBusyPackets    = 2000     // packets per second above which the node is busy
	gcBusyHandshakes = 50       // or handshakes per second: a reconnect storm allocates a lot
	gcInterval       = time.Second
	gcQuietAfter     = 3 // intervals of light traffic before collecting eagerly
)

// gcTarget is the policy: the GC percent for one interval's traffic and
// live heap, given how many intervals in a row (quiet) were light before.
func gcTarget(current, quiet int, packetsPerS, handshakesPerS float64, liveHeap uint64) (want, quietAfter int) {
	if packetsPerS > gcBusyPackets || handshakesPerS > gcBusyHandshakes {
		if liveHeap < gcLazyHeap {
			return gcLazyPercent, 0
		}
		return gcBusyPercent, 0
	}
	if quiet++; quiet >= gcQuietAfter {
		return gcQuietPercent, quiet
	}
	return current, quiet
}

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
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
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
		metrics.Read(live)
		var heap uint64
		if live[0].Value.Kind() == metrics.KindUint64 {
			heap = live[0].Value.Uint64()
		}
		var want int
		want, quiet = gcTarget(current, quiet, rate, hsRate, heap)
		if want != current {
			debug.SetGCPercent(want)
			if want == gcQuietPercent {
				// Without allocations no collection would come to apply
				// the lower target: the garbage of the busy spell would
				// stay resident for as long as the fleet stays quiet.
				debug.FreeOSMemory()
			}
			log.Debug("node: GC target changed", "gogc", want, "packetsPerSecond", rate, "handshakesPerSecond", hsRate, "liveHeap", heap)
			current = want
		}
	}
}
