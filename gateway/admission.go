package gateway

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Admission: what one source address may hold of the gateway. A connection
// is accepted, then waits for the client's first TLS byte holding nothing
// but its socket and a small goroutine; only then does it take a handshake
// slot, first one of its address's own few, then one of the server's. So:
//
//   - idle connections that never start TLS are closed after HelloTimeout
//     and never hold a handshake slot;
//   - one address (or a few) trickling handshakes holds at most
//     MaxHandshakesPerAddr of the MaxHandshakes slots, the rest stay free
//     for everyone else;
//   - one address opens at most HandshakeRatePerAddr connections a second
//     (with a burst of twice that) and holds at most MaxConnsPerAddr
//     connections at once; beyond that new connections are closed at once.
//
// The defaults let a NAT gateway with thousands of devices behind one
// address reconnect them all within a minute; see docs/security.md.

// Admission defaults.
const (
	DefaultHelloTimeout         = 5 * time.Second
	DefaultMaxConnsPerAddr      = 16384
	DefaultMaxHandshakesPerAddr = 64
	DefaultHandshakeRatePerAddr = 300
	DefaultIdleLimit            = 10 * time.Minute
	DefaultTakeoversPerMinute   = 6
	DefaultMaxTimestampAhead    = 24 * time.Hour
)

// Reasons a connection is cut by admission, counted in
// thingline_gateway_connections_cut_total.
const (
	CutConnsPerAddr    = "per-address-connections"
	CutRatePerAddr     = "per-address-rate"
	CutHelloTimeout    = "hello-timeout"
	CutHandshakeTimout = "handshake-timeout"
	CutIdle            = "idle"
	CutTakeoverRate    = "takeover-rate"
)

// peer is what one source address holds. Guarded by Server.peerMu.
type peer struct {
	conns  int
	hs     chan struct{} // the address's handshake slots
	tokens float64       // connection rate bucket
	last   time.Time     // when tokens was last topped up
}

// peerSweepAt: the peer table is swept of idle entries when it grows past
// this, so a scan over many addresses cannot grow it without bound.
const peerSweepAt = 65536

func (s *Server) admissionDefaults() {
	c := &s.cfg
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = DefaultHelloTimeout
	}
	if c.MaxConnsPerAddr <= 0 {
		c.MaxConnsPerAddr = DefaultMaxConnsPerAddr
	}
	if c.MaxHandshakesPerAddr <= 0 {
		c.MaxHandshakesPerAddr = DefaultMaxHandshakesPerAddr
	}
	c.MaxHandshakesPerAddr = min(c.MaxHandshakesPerAddr, c.MaxHandshakes)
	if c.HandshakeRatePerAddr <= 0 {
		c.HandshakeRatePerAddr = DefaultHandshakeRatePerAddr
	}
	if c.IdleLimit <= 0 {
		c.IdleLimit = DefaultIdleLimit
	}
	if c.MaxTimestampAhead <= 0 {
		c.MaxTimestampAhead = DefaultMaxTimestampAhead
	}
	if c.TakeoversPerMinute <= 0 {
		c.TakeoversPerMinute = DefaultTakeoversPerMinute
	}
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// admit counts a new connection from host against its address's limits.
// It returns the address's record, or the reason it is cut.
func (s *Server) admit(host string, now time.Time) (*peer, string) {
	s.peerMu.Lock()
	defer s.peerMu.Unlock()
	p := s.peers[host]
	if p == nil {
		if len(s.peers) >= peerSweepAt {
			s.sweepPeers(now)
		}
		p = &peer{tokens: float64(2 * s.cfg.HandshakeRatePerAddr), last: now}
		s.peers[host] = p
	}
	rate := float64(s.cfg.HandshakeRatePerAddr)
	p.tokens = min(p.tokens+now.Sub(p.last).Seconds()*rate, 2*rate)
	p.last = now
	if p.conns >= s.cfg.MaxConnsPerAddr {
		return nil, CutConnsPerAddr
	}
	if p.tokens < 1 {
		return nil, CutRatePerAddr
	}
	p.tokens--
	p.conns++
	if p.hs == nil {
		p.hs = make(chan struct{}, s.cfg.MaxHandshakesPerAddr)
	}
	return p, ""
}

// release ends a connection's count against its address. The record is
// there: it is never swept while it counts a connection.
func (s *Server) release(host string) {
	s.peerMu.Lock()
	if p := s.peers[host]; p != nil {
		p.conns--
	}
	s.peerMu.Unlock()
}

// sweepPeers forgets addresses with no connection whose rate bucket is
// full again: remembering them would change nothing. Called with peerMu.
func (s *Server) sweepPeers(now time.Time) {
	// The bucket holds two seconds' worth: full again after two seconds.
	for h, p := range s.peers {
		if p.conns == 0 && now.Sub(p.last) > 2*time.Second {
			delete(s.peers, h)
		}
	}
}

// awaitHello waits, holding no handshake slot, until the client has sent
// something (its ClientHello) or the hello deadline passes.
func (s *Server) awaitHello(c net.Conn, deadline time.Time) error {
	_, wait := socketWatch(c)
	if wait == nil {
		return nil // not a socket (tests' pipes): nothing to wait on cheaply
	}
	c.SetReadDeadline(deadline)
	return wait()
}

// acquireHandshake takes one of the address's handshake slots, then one of
// the server's, waiting until ctx ends. The returned function gives both
// back.
func (s *Server) acquireHandshake(ctx context.Context, p *peer) (func(), error) {
	select {
	case p.hs <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case s.hsSem <- struct{}{}:
	case <-ctx.Done():
		<-p.hs
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-s.hsSem
			<-p.hs
		})
	}, nil
}

// cut counts a connection cut by admission and logs it, at most
// RefusalEventsPerMinute times a minute per address and reason.
func (s *Server) cut(addr, reason string) {
	s.met.cuts.WithLabelValues(reason).Inc()
	if !s.limited(addr, "cut:"+reason) {
		s.log.Info("gateway: connection cut", "addr", addr, "reason", reason)
	}
}

// isTimeout tells a deadline's expiry from other failures.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

func newCutsMetric() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "thingline", Subsystem: "gateway", Name: "connections_cut_total",
		Help: "Connections closed or refused by the per-address limits, the hello, handshake and idle deadlines, and the takeover rate, by reason.",
	}, []string{"reason"})
}
