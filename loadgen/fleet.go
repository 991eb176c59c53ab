package loadgen

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// FleetResult reports an open-loop phase: every device publishing at a
// fixed period whether or not its earlier messages are acknowledged.
type FleetResult struct {
	Devices int
	Period  time.Duration
	// Sent counts the messages written, Acked those acknowledged (by the
	// end of the drain), Errors the failed writes and connections lost.
	Sent, Acked, Errors int64
	// Elapsed is the sending time, without the drain.
	Elapsed time.Duration
	// Acknowledgement latency from the write of a PUBLISH to the read of
	// its PUBACK.
	P50, P99, P999, Max time.Duration
	// Late is how far behind its schedule the load generator wrote (p99 and
	// worst): a generator that cannot keep its schedule offers less than
	// the nominal load, and its figures say so.
	LateP99, LateMax time.Duration
	// AckedPerConn[i] is how many messages conns[i] had acknowledged; they
	// carry seq 0..AckedPerConn[i]-1 and timestamps Base+seq.
	AckedPerConn []int64
}

// Unacked is the number of messages sent and never acknowledged.
func (r FleetResult) Unacked() int64 { return r.Sent - r.Acked }

// OfferedPerSecond is the nominal load: devices ÷ period.
func (r FleetResult) OfferedPerSecond() float64 { return float64(r.Devices) / r.Period.Seconds() }

func (r FleetResult) String() string {
	return fmt.Sprintf("%d devices every %v: %d acked of %d sent in %v, p50 %v, p99 %v, p99.9 %v, max %v, %d errors, generator late p99 %v max %v",
		r.Devices, r.Period, r.Acked, r.Sent, r.Elapsed.Round(time.Millisecond), r.P50, r.P99, r.P999, r.Max, r.Errors,
		r.LateP99, r.LateMax)
}

// fleetConn is one device's state during an open-loop phase.
type fleetConn struct {
	c *Conn
	// mu guards inflight: the send times and packet ids of the messages
	// not yet acknowledged, oldest first (PUBACKs come in order, MQTT
	// 4.6.0-2). A leaf lock.
	mu       sync.Mutex
	inflight []sentMsg
	head     int
	id       uint16
	seq      int64
	acked    atomic.Int64
	lat      []time.Duration // of the reading goroutine
	dead     atomic.Bool     // a write failed or acks broke order: nothing more is sent
	broken   atomic.Bool     // an acknowledgement broke MQTT's order
}

type sentMsg struct {
	id uint16
	at time.Time
}

// Fleet makes every connection publish one QoS 1 telemetry message each
// period for d, open loop: as firmware does, a device sends on its schedule
// whether or not its earlier messages have been acknowledged. The devices'
// schedules are spread evenly over the period, so the server sees a steady
// len(conns)/period messages per second, each from a device with (normally)
// nothing else in flight. After d it waits up to drain for the outstanding
// acknowledgements.
//
// A few sending goroutines walk the schedule (a goroutine and a timer per
// device would make the load generator, which shares the machine with the
// server, pay a wake-up per message); one reading goroutine per connection
// takes its acknowledgements.
func Fleet(ctx context.Context, conns []*Conn, topic string, base int64, period, d, drain time.Duration) FleetResult {
	n := len(conns)
	res := FleetResult{Devices: n, Period: period, AckedPerConn: make([]int64, n)}
	if n == 0 || period <= 0 {
		return res
	}
	fcs := make([]*fleetConn, n)
	var readers sync.WaitGroup
	for i, c := range conns {
		fc := &fleetConn{c: c}
		fcs[i] = fc
		readers.Add(1)
		go func() {
			defer readers.Done()
			fc.readAcks()
		}()
	}
	senders := max(2, runtime.GOMAXPROCS(0))
	start := time.Now().Add(10 * time.Millisecond)
	stop := start.Add(d)
	lates := make([][]time.Duration, senders)
	var sent, errs atomic.Int64
	var wg sync.WaitGroup
	for k := 0; k < senders; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Device i sends at start + i·period/n + r·period; this
			// sender's devices are i ≡ k (mod senders), in schedule order.
			var late []time.Duration
			for r := 0; ; r++ {
				round := start.Add(time.Duration(r) * period)
				if !round.Before(stop) {
					break
				}
				for i := k; i < n; i += senders {
					due := round.Add(time.Duration(int64(period) * int64(i) / int64(n)))
					if !due.Before(stop) || ctx.Err() != nil {
						break
					}
					now := time.Now()
					if wait := due.Sub(now); wait > 0 {
						// Sleep only for gaps worth a timer: messages due
						// within a millisecond go out together.
						if wait > time.Millisecond {
							time.Sleep(wait)
						}
						now = time.Now()
					}
					late = append(late, max(0, now.Sub(due)))
					fc := fcs[i]
					if fc.dead.Load() {
						continue
					}
					if err := fc.send(topic, base, now); err != nil {
						fc.dead.Store(true)
						errs.Add(1)
						continue
					}
					sent.Add(1)
				}
			}
			lates[k] = late
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)

	// Drain: wait for the outstanding acknowledgements, then stop the
	// readers (the connections stay usable).
	limit := time.Now().Add(drain)
	for time.Now().Before(limit) && ctx.Err() == nil {
		var acked int64
		for _, fc := range fcs {
			acked += fc.acked.Load()
		}
		if acked >= sent.Load() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, fc := range fcs {
		fc.c.nc.SetReadDeadline(time.Now())
	}
	readers.Wait()
	var all []time.Duration
	for i, fc := range fcs {
		fc.c.nc.SetReadDeadline(time.Time{})
		a := fc.acked.Load()
		res.AckedPerConn[i] = a
		res.Acked += a
		all = append(all, fc.lat...)
		if fc.broken.Load() {
			errs.Add(1)
		}
	}
	res.Sent, res.Errors = sent.Load(), errs.Load()
	res.P50, res.P99, res.P999, res.Max = quantiles(all)
	var late []time.Duration
	for _, l := range lates {
		late = append(late, l...)
	}
	_, res.LateP99, _, res.LateMax = quantiles(late)
	return res
}

// quantiles sorts v and returns its p50, p99, p99.9 and maximum.
func quantiles(v []time.Duration) (p50, p99, p999, top time.Duration) {
	if len(v) == 0 {
		return
	}
	slices.Sort(v)
	at := func(q float64) time.Duration { return v[min(len(v)-1, int(float64(len(v))*q))] }
	return at(0.50), at(0.99), at(0.999), v[len(v)-1]
}

// send writes the device's next message; at is when.
func (fc *fleetConn) send(topic string, base int64, at time.Time) error {
	fc.id++
	if fc.id == 0 {
		fc.id = 1
	}
	fc.mu.Lock()
	fc.inflight = append(fc.inflight, sentMsg{id: fc.id, at: at})
	fc.mu.Unlock()
	err := fc.c.Publish(topic, 1, fc.id, Payload(base, fc.seq))
	fc.seq++
	return err
}

// readAcks takes PUBACKs until the connection fails or its read deadline
// passes.
func (fc *fleetConn) readAcks() {
	for {
		fh, body, err := fc.c.Read()
		if err != nil {
			return
		}
		if fh.Type != packets.Puback || len(body) < 2 {
			continue
		}
		now := time.Now()
		id := uint16(body[0])<<8 | uint16(body[1])
		fc.mu.Lock()
		if fc.head >= len(fc.inflight) || fc.inflight[fc.head].id != id {
			// Out of order or unknown: a server breaking MQTT's order.
			fc.mu.Unlock()
			fc.broken.Store(true)
			fc.dead.Store(true)
			return
		}
		at := fc.inflight[fc.head].at
		fc.head++
		if fc.head == len(fc.inflight) {
			fc.inflight, fc.head = fc.inflight[:0], 0
		}
		fc.mu.Unlock()
		fc.lat = append(fc.lat, now.Sub(at))
		fc.acked.Add(1)
	}
}
