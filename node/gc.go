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
// connection at 15,000).
//
// Messages streaming without a storm are different: their garbage is the
// messages' own, short-lived, so a lazy collection scatters no long-lived
// state. There the cost of collecting is latency: a collection's marking
// lasted 200–300 ms at 10,000 devices × 1 msg/s on two cores (a live heap of
// 130 MB, mostly the connections' TLS state), one every 6 s at GOGC 100,
// and acknowledgements made meanwhile took tens to hundreds of
// milliseconds: the p99 (docs/benchmarks.md). So a streaming node collects
// with up to gcStreamHeadroom of garbage (GOGC up to 400: at that shape
// 430 → about 720 MB resident, a collection every 25 s), and at the
// default rate once its live heap is so large that the headroom is less
// than it. (docs/benchmarks.md has the figures.)
const (
	gcQuietPercent   = 40
	gcBusyPercent    = 100
	gcLazyPercent    = 200
	gcLazyHeap       = 64 << 20 // live heap up to which a busy node collects lazily
	gcStreamPercent  = 400
	gcStreamHeadroom = 512 << 20 // garbage a streaming node lets grow between collections
	gcBusyPackets    = 2000      // packets per second above which the node is busy
	gcBusyHandshakes = 50        // or handshakes per second: a reconnect storm allocates a lot
	gcInterval       = time.Second
	gcQuietAfter     = 3 // intervals of light traffic before collecting eagerly
)

// gcTarget is the policy: the GC percent for one interval's traffic and
// live heap, given how many intervals in a row (quiet) were light before.
func gcTarget(current, quiet int, packetsPerS, handshakesPerS float64, liveHeap uint64) (want, quietAfter int) {
	if handshakesPerS > gcBusyHandshakes {
		if liveHeap < gcLazyHeap {
			return gcLazyPercent, 0
		}
		return gcBusyPercent, 0
	}
	if packetsPerS > gcBusyPackets {
		return streamPercent(liveHeap), 0
	}
	if quiet++; quiet >= gcQuietAfter {
		return gcQuietPercent, quiet
	}
	return current, quiet
}

// streamPercent is the GC percent of a streaming node with liveHeap live:
// gcStreamHeadroom of garbage, within [gcBusyPercent, gcStreamPercent].
func streamPercent(liveHeap uint64) int {
	if liveHeap == 0 {
		return gcStreamPercent
	}
	p := uint64(gcStreamHeadroom) * 100 / liveHeap
	return int(max(gcBusyPercent, min(gcStreamPercent, p)))
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
