// Package gateway is thingline's device gateway: an MQTT 3.1.1 and 5 server
// over mutual TLS that speaks ThingsBoard's device API. A device proves its
// identity with an X.509 certificate chaining to a configured device CA; its
// name is derived from the certificate CN and it is auto-provisioned on its
// first connection.
package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// Config configures a Server.
type Config struct {
	TLSCertificate tls.Certificate     // server certificate (chain) and key
	DeviceCAs      []*x509.Certificate // trust anchors: the device-issuing CAs
	Profile        Profile             // the default profile; the zero value means DefaultProfile()
	Store          store.Store
	Bus            bus.Bus
	Node           string // this node's id
	Logger         *slog.Logger
	Registerer     prometheus.Registerer // nil: metrics are kept but not registered
	Now            func() time.Time      // for tests; nil = time.Now
	// Observer, if set, follows sessions for device state and alarms.
	Observer Observer

	// MaxHandshakes caps concurrent TLS handshakes; 0 means 512. A
	// connection takes a slot only once its client has sent its first byte
	// (see admission.go).
	MaxHandshakes int
	// Per source address (see admission.go); 0 means the Default* value.
	MaxConnsPerAddr      int           // connections held at once
	MaxHandshakesPerAddr int           // handshakes in progress
	HandshakeRatePerAddr int           // new connections a second (burst: twice that)
	HelloTimeout         time.Duration // from accept to the client's first byte
	// IdleLimit closes a session that sends nothing for this long when it
	// asked for no keep-alive (or a longer one); 0 means 10 min.
	IdleLimit time.Duration
	// Telemetry timestamps must lie within [now-MaxTimestampAge,
	// now+MaxTimestampAhead] of the server's clock, or the message is
	// refused (a reading stamped in the future would be "latest" for ever).
	// MaxTimestampAhead 0 means 24 h; MaxTimestampAge 0 means no bound
	// (devices upload what they buffered while offline).
	MaxTimestampAhead time.Duration
	MaxTimestampAge   time.Duration
	// TakeoversPerMinute: a device identity taken over more often than this
	// in a minute has further takeovers refused; 0 means 6.
	TakeoversPerMinute int
	// Timeout bounds the TLS handshake, separately the wait for CONNECT,
	// and how long a device may leave what it is sent unread before its
	// session ends; 0 means 10 s.
	Timeout time.Duration
	// RefusalEventsPerMinute limits refusal and bad-input events per remote
	// IP and reason; 0 means 20.
	RefusalEventsPerMinute int

	// Issuer signs certificate rotation requests (see certreq.go); nil
	// answers every request with an error.
	Issuer Issuer
	// RotationGrace is how long a rotated-out certificate stays valid;
	// 0 means DefaultRotationGrace.
	RotationGrace time.Duration
	// CSRBurst rotation requests are accepted per device at once, then
	// one per CSREvery; 0 means DefaultCSRBurst and DefaultCSREvery.
	CSRBurst int
	CSREvery time.Duration
	// RevocationReload is how often the revocations are read again from
	// the store, in case a notice was lost; 0 means DefaultRevocationReload.
	RevocationReload time.Duration
	// RPC connects sessions to persistent RPC; nil: answers to persistent
	// calls are dropped.
	RPC RPCHooks

	// noReadyLoops (tests): every session is read by goroutines of its
	// own, as where there is no epoll.
	noReadyLoops bool
}

// Server is the device gateway. Create it with New, then call Serve.
type Server struct {
	cfg     Config
	profile *compiledProfile
	st      store.Store
	async   store.AsyncAppender // st, if it can complete appends itself (ackpath.go)
	// The bus's optional abilities, resolved once rather than per message.
	watcher  bus.Watcher // nil if the bus cannot tell who listens
	buffered bool        // the bus implements bus.Buffered
	ackers   []*acker
	// loops serve sessions between packets (readyloop_linux.go); nil
	// where there are none.
	loops    []*readyLoop
	nextLoop atomic.Uint64
	// nextAcker spreads sessions over the ackers.
	nextAcker atomic.Uint64
	bus       bus.Bus
	node      string
	log       *slog.Logger
	now       func() time.Time
	// realClock: now is time.Now, so a time already read can stand in for
	// another call on the hot path.
	realClock bool
	roots     *x509.CertPool
	tlsConf   *tls.Config
	met       *metrics
	timeout   time.Duration

	maxPacket int // largest PUBLISH read into memory

	packets    atomic.Uint64 // packets read from devices since start
	backlogs   atomic.Uint64 // writes the socket did not take at once, left to a goroutine (pollConn)
	handshakes atomic.Uint64 // TLS handshakes attempted since start

	fw fwCache // firmware packages being served (gateway/ota.go)

	revMu   sync.RWMutex // leaf lock
	revoked map[string]struct{}

	chainMu sync.RWMutex // leaf lock
	chains  map[[32]byte]chainValidity

	// mu guards the fields below. Lock order: Server.mu before session.mu;
	// never held while calling the store, the bus or writing to a network
	// connection.
	mu          sync.Mutex
	closed      bool
	listeners   map[net.Listener]struct{}
	conns       map[net.Conn]struct{}  // every accepted connection, closed by Close
	sessions    map[string]*session    // live sessions by device name
	known       map[string]knownCred   // device names already ensured with a certificate
	takeovers   map[string][]time.Time // recent takeovers between different addresses
	clonedAt    map[string]time.Time   // last possible-cloned-identity event per device
	unitCount   int64
	unitCountAt time.Time

	hsSem chan struct{}

	peerMu sync.Mutex // leaf lock
	peers  map[string]*peer

	connLog connLog
	wg      sync.WaitGroup // connection goroutines

	events  chan store.Event
	evWG    sync.WaitGroup
	limitMu sync.Mutex // leaf lock
	limits  map[string]*rateWindow
	// csrBuckets: rotation requests per device, under limitMu.
	csrBuckets map[string]*csrBucket
	stopSubs   []func()
	// stopReload ends reloadRevocations (which counts in evWG).
	stopReload chan struct{}
}

type rateWindow struct {
	start time.Time
	n     int
}

// New checks cfg, loads the revocation list, marks this node's stale
// sessions offline and subscribes to the cluster notices it needs.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Bus == nil {
		return nil, errors.New("gateway: config needs a store and a bus")
	}
	if len(cfg.DeviceCAs) == 0 {
		return nil, errors.New("gateway: config needs at least one device CA")
	}
	if len(cfg.TLSCertificate.Certificate) == 0 {
		return nil, errors.New("gateway: config needs a server certificate")
	}
	prof, err := compileProfile(cfg.Profile)
	if err != nil {
		return nil, err
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, profile: prof, st: cfg.Store, bus: cfg.Bus, node: cfg.Node, log: cfg.Logger,
		now: cfg.Now, roots: x509.NewCertPool(), met: met, timeout: cfg.Timeout,
		revoked:   map[string]struct{}{},
		chains:    map[[32]byte]chainValidity{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
		sessions:  map[string]*session{},
		known:     map[string]knownCred{},
		takeovers: map[string][]time.Time{},
		clonedAt:  map[string]time.Time{},
		limits:    map[string]*rateWindow{},
		peers:     map[string]*peer{},
		events:    make(chan store.Event, 4096),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
		s.realClock = true
	}
	if s.timeout <= 0 {
		s.timeout = 10 * time.Second
	}
	if s.cfg.MaxHandshakes <= 0 {
		s.cfg.MaxHandshakes = 512
	}
	if s.cfg.RefusalEventsPerMinute <= 0 {
		s.cfg.RefusalEventsPerMinute = 20
	}
	s.admissionDefaults()
	s.certDefaults()
	s.hsSem = make(chan struct{}, s.cfg.MaxHandshakes)
	// Topic, packet id and MQTT 5 properties around the payload.
	s.maxPacket = prof.MaxPayload + 8192
	for _, ca := range cfg.DeviceCAs {
		s.roots.AddCert(ca)
	}
	s.tlsConf = &tls.Config{
		Certificates: []tls.Certificate{cfg.TLSCertificate},
		// Verification is ours (verifyConnection): Go's own would refuse a
		// missing certificate before we could record why.
		ClientAuth: tls.RequestClientCert,
		MinVersion: tls.VersionTLS12,
		// X25519 first, then P-256: both are what ESP32's mbedTLS offers,
		// and both are far cheaper than the post-quantum hybrid Go would
		// otherwise prefer; devices cannot do ML-KEM anyway.
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384},
		VerifyConnection: s.verifyConnection,
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	revs, err := s.st.ListRevocations(ctx)
	if err != nil {
		return nil, fmt.Errorf("gateway: loading revocations: %w", err)
	}
	for _, r := range revs {
		s.addRevocation(r.Serial)
	}
	if err := s.st.ResetNode(ctx, s.node); err != nil {
		return nil, fmt.Errorf("gateway: resetting sessions of node %q: %w", s.node, err)
	}
	if err := s.subscribe(); err != nil {
		s.unsubscribe()
		return nil, err
	}
	// Several writers, so that the store's group commit can put many
	// events in one transaction: a few writers waiting for each commit in
	// turn could not keep up with a reconnect storm.
	for range eventWriters {
		s.evWG.Add(1)
		go s.writeEvents()
	}
	s.stopReload = make(chan struct{})
	s.evWG.Add(1)
	go s.reloadRevocations(s.stopReload)
	if aa, ok := cfg.Store.(store.AsyncAppender); ok {
		s.async, s.ackers = aa, newAckers()
	}
	s.watcher, _ = s.bus.(bus.Watcher)
	_, s.buffered = s.bus.(bus.Buffered)
	if !cfg.noReadyLoops {
		s.loops = newReadyLoops(s)
	}
	return s, nil
}

func (s *Server) subscribe() error {
	stop, err := s.bus.Subscribe(bus.TopicRevocations, func(data []byte) {
		var r store.Revocation
		if err := json.Unmarshal(data, &r); err != nil {
			s.log.Warn("gateway: bad revocation notice", "err", err)
			return
		}
		s.addRevocation(r.Serial)
		s.closeRevoked(normalizeSerial(r.Serial))
	})
	if err != nil {
		return fmt.Errorf("gateway: subscribing to revocations: %w", err)
	}
	s.stopSubs = append(s.stopSubs, stop)
	stop, err = s.bus.Subscribe(bus.TopicSessions, s.onSessionNotice)
	if err != nil {
		return fmt.Errorf("gateway: subscribing to sessions: %w", err)
	}
	s.stopSubs = append(s.stopSubs, stop)
	stop, err = s.bus.Subscribe(bus.TopicDevices, s.onDeviceNotice)
	if err != nil {
		return fmt.Errorf("gateway: subscribing to devices: %w", err)
	}
	s.stopSubs = append(s.stopSubs, stop)
	return nil
}

func (s *Server) unsubscribe() {
	for _, stop := range s.stopSubs {
		stop()
	}
	s.stopSubs = nil
}

// closeRevoked ends live sessions whose certificate was just revoked.
func (s *Server) closeRevoked(serial string) {
	s.mu.Lock()
	var victims []*session
	for _, ss := range s.sessions {
		if ss.serial == serial {
			victims = append(victims, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range victims {
		ss.closeByServer(codeNotAuthorized, "certificate revoked")
	}
}

// onDeviceNotice forgets deleted devices and closes their sessions, so
// that a reconnect provisions them afresh.
func (s *Server) onDeviceNotice(data []byte) {
	var n struct {
		Device string `json:"device"`
		Op     string `json:"op"`
	}
	if json.Unmarshal(data, &n) != nil {
		return
	}
	if n.Op == "units-added" {
		// The factory registry grew: count it again at the next
		// connection (see unitUnknown).
		s.mu.Lock()
		s.unitCountAt = time.Time{}
		s.mu.Unlock()
		return
	}
	if n.Op != "deleted" {
		return
	}
	s.mu.Lock()
	delete(s.known, n.Device)
	ss := s.sessions[n.Device]
	s.mu.Unlock()
	if ss != nil {
		ss.closeByServer(codeAdministrative, "device deleted")
	}
}

// Serve accepts device connections on ln (a plain TCP listener: TLS is
// done here) until Close. It returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("gateway: server closed")
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			if isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("gateway: accepting: %w", err)
		}
		backoff = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// isTemporary treats accept errors like EMFILE as transient: the accept
// loop backs off instead of ending, as net/http does.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.As(err, &t) && t.Temporary()
}

// readyLoop returns the ready loop for a session going idle, or nil.
func (s *Server) readyLoop() *readyLoop {
	if len(s.loops) == 0 {
		return nil
	}
	return s.loops[s.nextLoop.Add(1)%uint64(len(s.loops))]
}

// Sessions returns the number of live device sessions on this server.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Close stops accepting, ends every session (devices are marked offline)
// and flushes pending audit events.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var lns []net.Listener
	for ln := range s.listeners {
		lns = append(lns, ln)
	}
	var sessions []*session
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	var conns []net.Conn
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	for _, ss := range sessions {
		ss.closeByServer(codeServerShuttingDown, "server shutting down")
	}
	for _, c := range conns {
		// Sessions closed above have already sent their DISCONNECT; this
		// reaches connections still in the handshake or CONNECT.
		c.SetDeadline(time.Now())
	}
	s.wg.Wait()
	for _, l := range s.loops {
		l.stop() // every session has ended: none is left in a loop
	}
	for _, a := range s.ackers {
		a.stop() // every session has finished: nothing is in flight
	}
	s.unsubscribe()
	close(s.stopReload)
	close(s.events)
	s.evWG.Wait()
	s.connLog.mu.Lock()
	if s.connLog.timer != nil {
		s.connLog.timer.Stop()
	}
	s.connLog.mu.Unlock()
	s.flushConnLog()
	return nil
}

// event queues an audit event without blocking; a full queue drops it.
func (s *Server) event(e store.Event) {
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	e.Node = s.node
	if s.cfg.Observer != nil {
		s.cfg.Observer.Event(e)
	}
	defer func() {
		// The queue is closed by Close; an event racing it is dropped.
		if recover() != nil {
			s.met.eventsDropped.Inc()
		}
	}()
	select {
	case s.events <- e:
	default:
		s.met.eventsDropped.Inc()
	}
}

// limited applies the per-IP, per-reason event limit, so that a flood of
// refused connections or bad messages cannot fill the disk with events.
// limited applies to a "host:port" or any other key (a device name).
func (s *Server) limited(addr, reason string) bool {
	return s.overLimit(hostOf(addr)+"|"+reason, s.cfg.RefusalEventsPerMinute)
}

// overLimit counts one more occurrence of key in its current minute and
// tells whether that makes more than max.
func (s *Server) overLimit(key string, max int) bool {
	now := time.Now()
	s.limitMu.Lock()
	defer s.limitMu.Unlock()
	if len(s.limits) > 100000 {
		s.limits = map[string]*rateWindow{}
	}
	w := s.limits[key]
	if w == nil || now.Sub(w.start) > time.Minute {
		s.limits[key] = &rateWindow{start: now, n: 1}
		return false
	}
	w.n++
	return w.n > max
}

// eventWriters is how many events may be on their way to the store at once.
const eventWriters = 32

func (s *Server) writeEvents() {
	defer s.evWG.Done()
	// Whatever is queued is written in one transaction: one at a time, a
	// reconnect storm's connect and disconnect events took a commit each
	// and kept a stopping node waiting for tens of seconds.
	const maxBatch = 1024
	batch := make([]store.Event, 0, maxBatch)
	for e := range s.events {
		batch = append(batch[:0], e)
	more:
		for len(batch) < maxBatch {
			select {
			case e, ok := <-s.events:
				if !ok {
					break more
				}
				batch = append(batch, e)
			default:
				break more
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.st.AddEvents(ctx, batch); err != nil {
			s.log.Warn("gateway: writing events", "events", len(batch), "kind", batch[0].Kind, "device", batch[0].Device, "err", err)
		}
		cancel()
	}
}

// refuse records a refused connection.
func (s *Server) refuse(addr string, r *refusal) {
	s.met.refusals.WithLabelValues(r.reason).Inc()
	// Log lines are bounded as events are: a flood of refusals from one
	// address is counted, not written out.
	if s.limited(addr, r.reason) {
		s.met.eventsDropped.Inc()
		return
	}
	s.log.Info("gateway: connection refused", "addr", addr, "reason", r.reason, "cn", r.cn, "serial", r.serial)
	s.event(store.Event{Device: r.device, Kind: store.EventRefused, Reason: r.reason, Addr: addr, Detail: r.detail()})
}

// Packets is the number of MQTT packets read from devices since start.
func (s *Server) Packets() uint64 { return s.packets.Load() }

// Handshakes is the number of TLS handshakes attempted since start.
func (s *Server) Handshakes() uint64 { return s.handshakes.Load() }

// serveConn runs one connection: admission, the wait for the client's
// first byte, the handshake, CONNECT, then the session.
func (s *Server) serveConn(c net.Conn) {
	addr := c.RemoteAddr().String()
	host := hostOf(addr)
	start := time.Now()
	p, why := s.admit(host, start)
	if why != "" {
		s.cut(addr, why)
		c.Close()
		s.forgetConn(c)
		return
	}
	handedOff := false
	var releaseHS func()
	defer func() {
		if releaseHS != nil {
			releaseHS()
		}
		if v := recover(); v != nil {
			s.log.Error("gateway: connection panicked", "addr", addr, "panic", v)
		}
		if !handedOff {
			s.endConn(c)
		}
	}()
	if err := s.awaitHello(c, start.Add(s.cfg.HelloTimeout)); err != nil {
		if isTimeout(err) {
			s.cut(addr, CutHelloTimeout)
		}
		return
	}
	// The handshake, its wait for slots included, has s.timeout from the
	// client's first byte.
	deadline := time.Now().Add(s.timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var err error
	releaseHS, err = s.acquireHandshake(ctx, p)
	if err != nil {
		s.cut(addr, CutHandshakeTimout)
		return
	}
	tc := tls.Server(newPollConn(c), s.tlsConf)
	c.SetDeadline(deadline)
	err = tc.HandshakeContext(ctx)
	s.handshakes.Add(1)
	releaseHS()
	if err != nil {
		var r *refusal
		if errors.As(err, &r) {
			s.met.handshakes.WithLabelValues("refused").Inc()
			s.refuse(addr, r)
		} else {
			s.met.handshakes.WithLabelValues("error").Inc()
			if isTimeout(err) {
				s.cut(addr, CutHandshakeTimout)
			}
			s.log.Debug("gateway: handshake failed", "addr", addr, "err", err)
		}
		return
	}
	s.met.handshakes.WithLabelValues("ok").Inc()
	c.SetDeadline(time.Now().Add(s.timeout))
	ss := newSession(s, tc, addr)
	if !ss.start() {
		return
	}
	handedOff = true
	go ss.serve(c)
}

// endConn releases what serveConn took for c.
func (s *Server) endConn(c net.Conn) {
	c.Close()
	s.release(hostOf(c.RemoteAddr().String()))
	s.forgetConn(c)
}

// forgetConn drops c from the server's connections.
func (s *Server) forgetConn(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}
