package gateway

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Benchmarks for the performance targets. They are short by default; run
// them with -bench and -benchtime to measure (the load generator shares
// the machine with the server, as in the target figures).

var connectV4 = []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 1, 'b'}

func rawConnect(e *env, cert tls.Certificate) (*tls.Conn, error) {
	return rawConnectWith(e, cert, &net.Dialer{})
}

// rawConnectWith is rawConnect through d.
func rawConnectWith(e *env, cert tls.Certificate, d *net.Dialer) (*tls.Conn, error) {
	cfg := e.clientTLS(&cert)
	cfg.ClientSessionCache = nil
	// As an ESP32 (mbedTLS): X25519 or P-256, no post-quantum key share.
	cfg.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	conn, err := tls.DialWithDialer(d, "tcp", e.addr, cfg)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write(connectV4); err != nil {
		conn.Close()
		return nil, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		conn.Close()
		return nil, err
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		conn.Close()
		return nil, fmt.Errorf("connack %x", ack)
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// BenchmarkHandshake measures full mTLS handshakes with P-256 certificates
// followed by CONNECT/CONNACK, from parallel clients.
func BenchmarkHandshake(b *testing.B) {
	e := newEnv(&testing.T{}, nil)
	b.Cleanup(func() { e.srv.Close() })
	certs := make([]tls.Certificate, 64)
	for i := range certs {
		certs[i], _ = e.inter.device(b, fmt.Sprintf("SN-B%04d", i))
		c, err := rawConnect(e, certs[i]) // provision outside the timing
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			c, err := rawConnect(e, certs[i%int64(len(certs))])
			if err != nil {
				b.Error(err)
				return
			}
			c.Close()
		}
	})
	b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "handshakes/s")
}

// BenchmarkPublishQoS1 measures durably acknowledged QoS 1 telemetry:
// several connections, each with up to 200 unacknowledged messages.
func BenchmarkPublishQoS1(b *testing.B) { benchPublish(b, 16, 200) }

// BenchmarkPublishOneInFlight is the device's way: each connection sends
// its next message once the last is acknowledged, so nothing is batched
// per connection (compare the allocations per message with a profile:
// go test -bench OneInFlight -memprofile).
func BenchmarkPublishOneInFlight(b *testing.B) { benchPublish(b, 64, 1) }

func benchPublish(b *testing.B, conns, window int) {
	e := newEnv(&testing.T{}, nil)
	b.Cleanup(func() { e.srv.Close() })
	cl := make([]*tls.Conn, conns)
	for i := range cl {
		cert, _ := e.inter.device(b, fmt.Sprintf("SN-P%04d", i))
		c, err := rawConnect(e, cert)
		if err != nil {
			b.Fatal(err)
		}
		cl[i] = c
	}
	topic := "v1/devices/me/telemetry"
	payload := []byte(`{"temperature":23.5,"humidity":56,"pressure":1013}`)
	frame := func(pid uint16) []byte {
		rem := 2 + len(topic) + 2 + len(payload)
		f := []byte{0x32, byte(rem)}
		f = binary.BigEndian.AppendUint16(f, uint16(len(topic)))
		f = append(f, topic...)
		f = binary.BigEndian.AppendUint16(f, pid)
		return append(f, payload...)
	}
	per := b.N/conns + 1
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for _, c := range cl {
		wg.Add(1)
		go func(c *tls.Conn) {
			defer wg.Done()
			sem := make(chan struct{}, window)
			done := make(chan struct{})
			go func() {
				defer close(done)
				r := bufio.NewReader(c)
				var ack [4]byte
				for i := 0; i < per; i++ {
					if _, err := io.ReadFull(r, ack[:]); err != nil || ack[0] != 0x40 {
						b.Errorf("puback: %x %v", ack, err)
						return
					}
					<-sem
				}
			}()
			w := bufio.NewWriter(c)
			for i := 0; i < per; i++ {
				sem <- struct{}{}
				w.Write(frame(uint16(i%65535 + 1)))
				if len(sem) == window || i == per-1 {
					w.Flush()
				}
			}
			w.Flush()
			<-done
		}(c)
	}
	wg.Wait()
	b.ReportMetric(float64(per*conns)/time.Since(start).Seconds(), "msgs/s")
}
