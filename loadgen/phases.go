package loadgen

import (
	"context"
	"crypto/tls"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Device is one simulated device: its name (the certificate CN) and the
// TLS configuration holding its certificate.
type Device struct {
	Name string
	TLS  *tls.Config
}

// HandshakeResult reports a connection phase.
type HandshakeResult struct {
	Connected int
	Failed    int
	FirstErr  error
	Elapsed   time.Duration
}

// PerSecond is connections completed per second.
func (r HandshakeResult) PerSecond() float64 {
	return float64(r.Connected) / r.Elapsed.Seconds()
}

// Connect opens one connection per device, concurrency at a time, each a
// full TLS handshake (no resumption) followed by CONNECT/CONNACK. It
// returns the open connections and, for each, the index of its device.
func Connect(ctx context.Context, addr string, devs []Device, concurrency int) ([]*Conn, []int, HandshakeResult) {
	return ConnectSpread(ctx, []string{addr}, devs, concurrency)
}

// ConnectSpread is Connect over several servers (the nodes of a cluster):
// device i connects to addrs[i mod len(addrs)].
func ConnectSpread(ctx context.Context, addrs []string, devs []Device, concurrency int) ([]*Conn, []int, HandshakeResult) {
	conns := make([]*Conn, len(devs))
	var failed atomic.Int64
	var firstErr atomic.Value
	next := atomic.Int64{}
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(devs) {
					return
				}
				c, err := Dial(addrs[i%len(addrs)], devs[i].TLS, devs[i].Name, 30*time.Second)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	res := HandshakeResult{Elapsed: time.Since(start), Failed: int(failed.Load())}
	if e, ok := firstErr.Load().(error); ok {
		res.FirstErr = e
	}
	var out []*Conn
	var idx []int
	for i, c := range conns {
		if c != nil {
			out = append(out, c)
			idx = append(idx, i)
		}
	}
	res.Connected = len(out)
	return out, idx, res
}

// PublishResult reports a publish phase.
type PublishResult struct {
	Sent, Acked int64
	Elapsed     time.Duration
	P50, P99    time.Duration
	// AckedPerConn[i] is how many messages conns[i] had acknowledged; they
	// carry seq 0..AckedPerConn[i]-1 and timestamps Base+seq.
	AckedPerConn []int64
	Errors       int64
}

// PerSecond is acknowledged messages per second.
func (r PublishResult) PerSecond() float64 { return float64(r.Acked) / r.Elapsed.Seconds() }

// Payload is the telemetry message number seq of a device: ThingsBoard's
// {ts, values} shape with three keys, the timestamp base+seq so that every
// message of a device has its own and can be found again.
func Payload(base, seq int64) []byte {
	b := make([]byte, 0, 96)
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, base+seq, 10)
	b = append(b, `,"values":{"temperature":23.5,"humidity":56,"seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, "}}"...)
	return b
}

// Publish makes every connection publish QoS 1 telemetry for d, keeping up
// to window messages in flight per connection, and waits for the
// outstanding acknowledgements before returning.
func Publish(ctx context.Context, conns []*Conn, topic string, base int64, d time.Duration, window int) PublishResult {
	res := PublishResult{AckedPerConn: make([]int64, len(conns))}
	lat := make([][]time.Duration, len(conns))
	var sent, acked, errs atomic.Int64
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The send times of the messages in flight, oldest first; its
			// capacity is the window. PUBACKs come back in order (MQTT
			// 4.6.0-2), so the oldest time belongs to the next PUBACK.
			inflight := make(chan time.Time, window)
			done := make(chan struct{})
			var local []time.Duration
			var n int64
			go func() {
				defer close(done)
				for {
					fh, body, err := c.Read()
					if err != nil {
						return
					}
					if fh.Type != packets.Puback || len(body) < 2 {
						continue
					}
					local = append(local, time.Since(<-inflight))
					n++
					acked.Add(1)
					res.AckedPerConn[i] = n
				}
			}()
			var seq int64
			id := uint16(0)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				inflight <- time.Now()
				id++
				if id == 0 {
					id = 1
				}
				if err := c.Publish(topic, 1, id, Payload(base, seq)); err != nil {
					errs.Add(1)
					break
				}
				seq++
				sent.Add(1)
			}
			// Drain: the window fills with placeholders only once every
			// real message has been acknowledged (or give up).
			drain := time.After(30 * time.Second)
			for k := 0; k < window; k++ {
				select {
				case inflight <- time.Time{}:
				case <-drain:
					k = window
				case <-done:
					k = window
				}
			}
			c.nc.SetReadDeadline(time.Now())
			<-done
			c.nc.SetReadDeadline(time.Time{})
			// The reader may have been cut by the deadline above after the
			// last acknowledgement; the connection stays usable for Close.
			lat[i] = local
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Sent, res.Acked, res.Errors = sent.Load(), acked.Load(), errs.Load()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) > 0 {
		slices.Sort(all)
		res.P50 = all[len(all)/2]
		res.P99 = all[len(all)*99/100]
	}
	return res
}

// CloseAll disconnects every connection.
func CloseAll(conns []*Conn) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			c.Close()
			<-sem
		}()
	}
	wg.Wait()
}

func (r PublishResult) String() string {
	return fmt.Sprintf("%d acked of %d sent in %v (%.0f/s), p50 %v, p99 %v, %d errors",
		r.Acked, r.Sent, r.Elapsed.Round(time.Millisecond), r.PerSecond(), r.P50, r.P99, r.Errors)
}
