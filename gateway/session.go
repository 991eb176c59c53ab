package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
)

// MQTT reason codes the gateway sends.
const (
	codeSuccess            byte = 0x00
	codeMalformed          byte = 0x81
	codeProtocolError      byte = 0x82
	codeImplSpecific       byte = 0x83
	codeUnsupportedVersion byte = 0x84
	codeNotAuthorized      byte = 0x87
	codeServerUnavailable  byte = 0x88
	codeServerShuttingDown byte = 0x8B
	codeKeepAliveTimeout   byte = 0x8D
	codeSessionTakenOver   byte = 0x8E
	codeTopicFilterInvalid byte = 0x8F
	codeTopicNameInvalid   byte = 0x90
	codeNoSubscription     byte = 0x11
	codeTopicAliasInvalid  byte = 0x94
	codePacketTooLarge     byte = 0x95
	codeQuotaExceeded      byte = 0x97
	codeAdministrative     byte = 0x98
	codePayloadFormat      byte = 0x99
	codeQoSNotSupported    byte = 0x9B

	// MQTT 3.1.1 CONNACK return codes.
	v3UnacceptableVersion byte = 1
	v3ServerUnavailable   byte = 3
	v3NotAuthorized       byte = 5
)

// maxPending bounds the messages of one session waiting for the store;
// the reader stops reading beyond it, which is the flow control.
const maxPending = 256

// Bad-input reasons, counted per device as "rejected.<reason>".
const (
	badPayload  = "payload-format"
	badTopic    = "topic"
	badTooLarge = "too-large"
	badProtocol = "protocol"
	badTime     = "timestamp"
)

// work is one received PUBLISH moving through the session's ordered
// pipeline: its store writes and side effects run in arrival order and its
// acknowledgement is written only after them, so PUBACK order is PUBLISH
// order and a PUBACK means "durably stored".
type work struct {
	pid       uint16
	qos       byte
	read      time.Time
	recs      []store.Record
	attrs     []store.KV
	fn        func(ctx context.Context) // runs after the store writes of the same batch
	reason    byte
	reasonStr string

	// Room for the usual message, one record handed to the store alone:
	// recs and the group passed to the store then cost no allocations of
	// their own (see parseTelemetry and enqueue).
	one  [1]store.Record
	self [1]*work
}

type subState struct {
	on  bool
	qos byte
	st  style
}

// session is one device connection. One goroutine (run) reads; a second,
// flush, exists only while stored work is pending, so idle connections cost
// one goroutine.
type session struct {
	srv  *Server
	conn *tls.Conn
	addr string
	sid  string
	// started orders sessions of one device across nodes: the newest wins.
	started time.Time

	// Set before the session is registered, read-only afterwards.
	ver       byte
	keepAlive time.Duration
	dev       store.Device
	leaf      *x509.Certificate
	serial    string
	maxOut    uint32 // client's Maximum Packet Size (MQTT 5); 0 means no limit
	noProblem bool   // MQTT 5 client asked for no reason strings
	will      *packets.Packet
	hdr       [1]byte
	obs       SessionObserver // set in connect, before any message is handled
	keys      keyCache        // of the reading goroutine, for the JSON parser

	pid atomic.Uint32 // outbound packet ids

	// attrMu orders shared-attribute pushes: a live update and the
	// catch-up on subscription (attrsync.go). Taken before writeMu; held
	// while reading the store.
	attrMu sync.Mutex

	writeMu sync.Mutex // leaf lock: one writer on conn at a time (never waiting: see pollConn)
	ackBuf  [64]byte   // the acker's PUBACKs; guarded by writeMu

	// mu guards the fields below. Lock order: Server.mu, then session.mu.
	mu        sync.Mutex
	subs      [numSubKinds]subState
	rpcWait   map[string]chan json.RawMessage
	rpcNext   uint64
	rpcSent   map[string]struct{}      // persistent RPC ids published, not yet answered
	ackWait   map[uint16]chan struct{} // outbound QoS 1 packet ids whose PUBACK someone awaits
	takenOver bool
	// serverClosed: ended on purpose by the server (shutdown, deletion,
	// revocation, operator): the will is not published.
	serverClosed bool
	stopServe    func()
	badCounts    map[string]int64
	fw           fwSession
	badTimer     *time.Timer
	claim        claimWatch // the device's claim request in waiting (claim.go)

	// ackMu guards the pipeline. It is never held with mu; writeMu may be
	// taken while holding it, not the reverse.
	ackMu    sync.Mutex
	ackCond  *sync.Cond
	ackQ     []*work
	pending  int
	flushing bool
	// The asynchronous path (ackpath.go): messages stored by the store's
	// commit path and not yet acknowledged.
	inAsync    int
	asyncGroup []*work // read, not yet handed to the store; the reading goroutine's
	ackerIdx   int     // the acker of this session's completions
	// The flusher's store context, reused across bursts (see flushCtx).
	// Only the one running flusher (flushing=true) touches these.
	fctx    context.Context
	fcancel context.CancelFunc
	fctxAt  time.Time

	// idleWait waits for the socket under the TLS connection to be
	// readable (see socketWatch); nil when it cannot be watched that way.
	// pc is that connection, for reading only what crypto/tls has buffered.
	idleWait func() error
	pc       *pollConn
	// rloop is the ready loop holding the session between packets, nil
	// while a goroutine of its own reads; rslot is its slot there
	// (guarded by that loop's mu). lbuf holds bytes the loop read and
	// left to the goroutine, read before the connection.
	rloop atomic.Pointer[readyLoop]
	rslot int32
	lbuf  []byte
	// noLoop: no ready loop took the session (see serve); the reading
	// goroutine's.
	noLoop bool
	rdl    time.Time // the read deadline last set by the reading goroutine
	// lingering: the packet being read began under the short idle deadline
	// (nextByte), which readFull extends to the keep-alive if the rest is slow.
	lingering bool
	// sent: the device sent something since the session last handed its
	// wait off (see idleAfter).
	sent bool

	closing   atomic.Bool
	ended     atomic.Bool // the reader stopped: the device's connection is over
	closeOnce sync.Once
	done      chan struct{} // closed when the session has ended
	finished  chan struct{} // closed when finish is complete (device marked offline)
	ready     chan struct{} // closed once CONNACK is sent
}

func newSession(s *Server, c *tls.Conn, addr string) *session {
	ss := &session{srv: s, conn: c, addr: addr, done: make(chan struct{}), finished: make(chan struct{}), ready: make(chan struct{})}
	_, ss.idleWait = socketWatch(c.NetConn())
	if n := len(s.ackers); n > 0 {
		ss.ackerIdx = int(s.nextAcker.Add(1) % uint64(n))
	}
	if ss.pc, _ = c.NetConn().(*pollConn); ss.pc == nil {
		ss.idleWait = nil
	} else {
		ss.pc.startSending(s.timeout, func() { ss.close(codeImplSpecific, "write failed") }, &s.backlogs)
	}
	ss.ackCond = sync.NewCond(&ss.ackMu)
	return ss
}

// errMalformed marks a packet that cannot be decoded.
var errMalformed = errors.New("malformed packet")

func (ss *session) ReadByte() (byte, error) {
	err := ss.readFull(ss.hdr[:])
	return ss.hdr[0], err
}

// readFull reads len(b) bytes. Within a packet the read deadline may still
// be the short one nextByte set for the packet's first byte: a packet that
// arrives in pieces more slowly than that (a lossy Wi-Fi link) is then
// waited for up to the keep-alive, as any read is. crypto/tls keeps what it
// had read across the timeout.
func (ss *session) readFull(b []byte) error {
	if len(ss.lbuf) > 0 {
		n := copy(b, ss.lbuf)
		ss.lbuf = ss.lbuf[n:]
		if len(ss.lbuf) == 0 {
			ss.lbuf = nil
		}
		if b = b[n:]; len(b) == 0 {
			return nil
		}
	}
	got := 0
	for {
		n, err := io.ReadFull(ss.conn, b[got:])
		got += n
		if err == nil {
			return nil
		}
		// (isTimeout, not errors.As here: its target would be allocated
		// on every read, error or not.)
		if ss.lingering && isTimeout(err) && !ss.closing.Load() {
			ss.setKeepAliveDeadline() // clears lingering: once only
			continue
		}
		return err
	}
}

// readFixedHeader reads the fixed header straight from the TLS connection:
// tls.Conn already buffers a whole record, so a bufio.Reader per
// connection would only add memory.
func (ss *session) readFixedHeader() (packets.FixedHeader, error) { return readFixedHeader(ss) }

func readFixedHeader(r io.ByteReader) (packets.FixedHeader, error) {
	hb, err := r.ReadByte()
	if err != nil {
		return packets.FixedHeader{}, err
	}
	return fixedHeaderAfter(hb, r)
}

// fixedHeaderAfter decodes a fixed header whose first byte, hb, was read
// already, reading the remaining length from r.
func fixedHeaderAfter(hb byte, r io.ByteReader) (packets.FixedHeader, error) {
	var fh packets.FixedHeader
	if err := fh.Decode(hb); err != nil {
		return fh, fmt.Errorf("%w: %v", errMalformed, err)
	}
	n, mult := 0, 1
	for i := 0; i < 4; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return fh, err
		}
		n += int(b&127) * mult
		if b&128 == 0 {
			fh.Remaining = n
			return fh, nil
		}
		mult *= 128
	}
	return fh, fmt.Errorf("%w: remaining length over four bytes", errMalformed)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// readBody reads a packet body into a pooled buffer; the caller returns it
// with putBuf once nothing aliases it (the codec's strings do).
func (ss *session) readBody(n int) (*[]byte, error) {
	bp := bufPool.Get().(*[]byte)
	if cap(*bp) < n {
		if n <= 64*1024 {
			*bp = make([]byte, n, max(n, 4096))
		} else {
			// Large packets are rare: do not keep their buffers in the pool.
			b := make([]byte, n)
			bp = &b
		}
	}
	*bp = (*bp)[:n]
	if err := ss.readFull(*bp); err != nil {
		putBuf(bp)
		return nil, err
	}
	return bp, nil
}

func putBuf(bp *[]byte) {
	if cap(*bp) <= 64*1024 {
		*bp = (*bp)[:0]
		bufPool.Put(bp)
	}
}

// decode decodes a packet body. The codec can index out of range on some
// truncated inputs, so a panic is turned into a malformed-packet error.
func decode(pk *packets.Packet, buf []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errMalformed, r)
		}
	}()
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(buf)
	case packets.Publish:
		err = pk.PublishDecode(buf)
	case packets.Puback:
		err = pk.PubackDecode(buf)
	case packets.Pubrec:
		err = pk.PubrecDecode(buf)
	case packets.Pubrel:
		err = pk.PubrelDecode(buf)
	case packets.Pubcomp:
		err = pk.PubcompDecode(buf)
	case packets.Subscribe:
		err = pk.SubscribeDecode(buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(buf)
	case packets.Pingreq, packets.Pingresp:
	case packets.Disconnect:
		err = pk.DisconnectDecode(buf)
	case packets.Auth:
		err = pk.AuthDecode(buf)
	default:
		return fmt.Errorf("%w: packet type %d", errMalformed, pk.FixedHeader.Type)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errMalformed, err)
	}
	return nil
}

func encode(pk *packets.Packet, buf *bytes.Buffer) error {
	switch pk.FixedHeader.Type {
	case packets.Connack:
		return pk.ConnackEncode(buf)
	case packets.Publish:
		return pk.PublishEncode(buf)
	case packets.Puback:
		return pk.PubackEncode(buf)
	case packets.Pubrec:
		return pk.PubrecEncode(buf)
	case packets.Pubcomp:
		return pk.PubcompEncode(buf)
	case packets.Suback:
		return pk.SubackEncode(buf)
	case packets.Unsuback:
		return pk.UnsubackEncode(buf)
	case packets.Pingresp:
		return pk.PingrespEncode(buf)
	case packets.Disconnect:
		return pk.DisconnectEncode(buf)
	}
	return fmt.Errorf("gateway: cannot encode packet type %d", pk.FixedHeader.Type)
}

var wbufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// write encodes pks and sends them in one TLS write.
func (ss *session) write(pks ...*packets.Packet) error {
	buf := getWriteBuf()
	defer putWriteBuf(buf)
	for _, pk := range pks {
		pk.ProtocolVersion = ss.ver
		if ss.noProblem {
			pk.Mods.DisallowProblemInfo = true
		}
		mark := buf.Len()
		if err := encode(pk, buf); err != nil {
			return fmt.Errorf("gateway: encoding packet: %w", err)
		}
		if ss.maxOut > 0 && uint32(buf.Len()-mark) > ss.maxOut {
			// MQTT 5: a packet over the client's maximum is dropped.
			buf.Truncate(mark)
		}
	}
	return ss.writeBytes(buf.Bytes())
}

func getWriteBuf() *bytes.Buffer { return wbufPool.Get().(*bytes.Buffer) }

// putWriteBuf returns buf to the pool, unless a large packet grew it.
func putWriteBuf(buf *bytes.Buffer) {
	if buf.Cap() <= 64*1024 {
		buf.Reset()
		wbufPool.Put(buf)
	}
}

// writeBytes writes encoded packets in one TLS record. It does not wait
// for the device: see pollConn.
func (ss *session) writeBytes(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	ss.writeMu.Lock()
	defer ss.writeMu.Unlock()
	return ss.writeLocked(b)
}

// writeLocked writes b with writeMu held.
func (ss *session) writeLocked(b []byte) error {
	if _, err := ss.conn.Write(b); err != nil {
		return fmt.Errorf("gateway: writing to %s: %w", ss.addr, err)
	}
	return nil
}

// writePlainAcks writes successful PUBACKs and PUBRECs without the codec:
// a type byte, remaining length 2 and the packet id, which MQTT 5 allows
// too when the reason is success and there are no properties (3.4.2.1).
// It is the one packet written per message under load.
func (ss *session) writePlainAcks(q []*work) error {
	buf := getWriteBuf()
	defer putWriteBuf(buf)
	for _, w := range q {
		typ := byte(packets.Puback)
		switch w.qos {
		case 0:
			continue
		case 2:
			typ = packets.Pubrec
		}
		buf.Write([]byte{typ << 4, 2, byte(w.pid >> 8), byte(w.pid)})
	}
	return ss.writeBytes(buf.Bytes())
}

func (ss *session) nextPID() uint16 { return uint16(ss.pid.Add(1)%65535 + 1) }

// publish sends a server-to-device message.
func (ss *session) publish(topic string, payload []byte, qos byte) error {
	pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, Payload: payload}
	if qos > 0 {
		pk.PacketID = ss.nextPID()
	}
	return ss.write(pk)
}

// close ends the session: MQTT 5 clients get a DISCONNECT with code, then
// the connection's deadlines expire so the reader returns at once. It is
// safe from any goroutine and idempotent.
func (ss *session) close(code byte, reason string) {
	ss.closeOnce.Do(func() {
		ss.closing.Store(true)
		if ss.ver == 5 && code != codeSuccess {
			pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: code}
			pk.Properties.ReasonString = reason
			ss.write(pk)
		}
		ss.conn.NetConn().SetDeadline(time.Now())
		// A session between packets has no reader to fail: its loop
		// ends it (see readyLoop.add for the order).
		if l := ss.rloop.Load(); l != nil {
			l.kick(ss)
		}
		ss.ackMu.Lock()
		ss.ackCond.Broadcast()
		ss.ackMu.Unlock()
	})
}

// over reports whether the session was ending before a newer one came:
// the server closed it (its device deleted or revoked, an operator's
// disconnect) or the device's connection is gone (DISCONNECT, EOF). Such a
// replacement is not recorded as a takeover nor counted towards a cloned
// identity or the takeover limit: the device came back, which says nothing
// about a second holder of its identity.
func (ss *session) over() bool { return ss.closing.Load() || ss.ended.Load() }

// closeByServer ends the session on purpose (not the device's fault).
func (ss *session) closeByServer(code byte, reason string) {
	ss.mu.Lock()
	ss.serverClosed = true
	ss.mu.Unlock()
	ss.close(code, reason)
}

// storeTimeout bounds a store call: a store that does not answer in time
// fails the call (and, for telemetry, ends the session unacknowledged).
const storeTimeout = 30 * time.Second

func (ss *session) storeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), storeTimeout)
}

// flushCtx is the flusher's store context. A context with a timeout per
// burst costs a timer per message when a device has one message in flight,
// so one is reused for flushCtxReuse: every call still gets between
// storeTimeout and storeTimeout+flushCtxReuse. Its timer releases it at its
// deadline; finish cancels the last one.
func (ss *session) flushCtx() context.Context {
	if now := time.Now(); ss.fctx == nil || now.Sub(ss.fctxAt) > flushCtxReuse {
		ss.fctx, ss.fcancel = context.WithTimeout(context.Background(), storeTimeout+flushCtxReuse)
		ss.fctxAt = now
	}
	return ss.fctx
}

const flushCtxReuse = 10 * time.Second

// start reads and handles CONNECT. When it returns false the session is
// over and finish has run.
func (ss *session) start() (ok bool) {
	s := ss.srv
	registered := false
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("gateway: session panicked", "addr", ss.addr, "device", ss.dev.Name, "panic", v)
			ok = false
		}
		if !ok {
			ss.finish(registered, true)
		}
	}()
	fh, err := ss.readFixedHeader()
	if err != nil || fh.Type != packets.Connect || fh.Remaining > 64*1024 {
		return false
	}
	bp, err := ss.readBody(fh.Remaining)
	if err != nil {
		return false
	}
	pk := packets.Packet{FixedHeader: fh}
	err = decode(&pk, *bp)
	if err == nil {
		registered, err = ss.connect(&pk)
	}
	putBuf(bp)
	if err != nil {
		s.log.Debug("gateway: connect failed", "addr", ss.addr, "err", err)
		return false
	}
	return true
}

// serve runs the session after CONNECT in its own goroutine until it ends,
// then releases the connection. When the device has nothing more to say,
// the session goes to a ready loop (readyloop_linux.go), or else its wait
// is handed to a goroutine with a small stack (see socketWatch), and this
// one ends.
func (ss *session) serve(c net.Conn) {
	if ended := ss.loop(); ended {
		ss.srv.endConn(c)
		return
	}
	if !ss.noLoop {
		if l := ss.srv.readyLoop(); l != nil && l.add(ss, c) {
			return
		}
		// Waited for in a goroutine from now on; nextByte reads as
		// it does without loops.
		ss.noLoop = true
		ss.serve(c)
		return
	}
	go ss.waitThenServe(c)
}

// resume serves the session again in a goroutine of its own, after its
// ready loop met something it does not handle itself.
func (ss *session) resume(c net.Conn) {
	ss.setKeepAliveDeadline()
	if ss.closing.Load() {
		// close's deadline, overwritten just now.
		ss.setReadDeadline(time.Now())
	}
	ss.sent = true
	ss.serve(c)
}

// waitThenServe waits until the device sends again (or the keep-alive
// expires, or the session is closed), then serves in this goroutine.
func (ss *session) waitThenServe(c net.Conn) {
	if err := ss.idleWait(); err != nil {
		ss.readFailed(err)
		ss.finish(true, true)
		ss.srv.endConn(c)
		return
	}
	ss.sent = true
	ss.serve(c)
}

// loop serves packets until the session ends (ended=true, finish has run)
// or, with idle waiting, until no further byte is already at hand.
func (ss *session) loop() (ended bool) {
	s := ss.srv
	abnormal := true
	ended = true
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("gateway: session panicked", "addr", ss.addr, "device", ss.dev.Name, "panic", v)
			ended = true
		}
		if ended {
			ss.finish(true, abnormal)
		}
	}()
	for {
		first, idle, err := ss.nextByte()
		if idle {
			return false
		}
		if err != nil {
			ss.readFailed(err)
			return true
		}
		fh, err := fixedHeaderAfter(first, ss)
		if err != nil {
			ss.readFailed(err)
			return true
		}
		if fh.Remaining > s.maxPacket {
			ss.badInput(badTooLarge, fmt.Sprintf("packet of %d bytes exceeds the maximum of %d", fh.Remaining, s.maxPacket))
			ss.close(codePacketTooLarge, "packet too large")
			return true
		}
		bp, err := ss.readBody(fh.Remaining)
		if err != nil {
			ss.readFailed(err)
			return true
		}
		pk := packets.Packet{FixedHeader: fh, ProtocolVersion: ss.ver}
		if err := decode(&pk, *bp); err != nil {
			putBuf(bp)
			ss.badInput(badProtocol, err.Error())
			ss.close(codeMalformed, "malformed packet")
			return true
		}
		s.packets.Add(1)
		cont, normal := ss.handle(&pk)
		putBuf(bp)
		if !cont {
			abnormal = !normal
			return true
		}
	}
}

// idleAfter is how long a session whose device is sending waits for its
// next packet in its own goroutine before handing the wait to a small
// goroutine (see socketWatch): a device sending every second or two — the
// fleet's shape — keeps its goroutine and its stack, parked on the socket,
// and each of its messages costs one wake-up, not a goroutine, a timer
// firing and a stack grown again. A session whose device has sent nothing
// since its last hand-off (a fresh connection, a device that reports
// rarely) hands off after idleQuiet, so that quiet connections hold small
// stacks. Waits last between half of these and these: the deadline is moved
// only when less than half of it is left.
var idleAfter = 2 * time.Second

const idleQuiet = 250 * time.Millisecond

// nextByte reads the first byte of the next packet, or reports idle when
// the device has been quiet for idleAfter and the wait can be handed off.
func (ss *session) nextByte() (b byte, idle bool, err error) {
	now := time.Now()
	var kaDeadline time.Time
	if ss.keepAlive > 0 {
		kaDeadline = now.Add(ss.keepAlive * 3 / 2)
	}
	inLoop := ss.idleWait != nil && ss.srv.loops != nil && !ss.noLoop
	if ss.idleWait == nil || (!inLoop && !kaDeadline.IsZero() && kaDeadline.Before(now.Add(idleAfter))) {
		ss.submitAsync()
		ss.setReadDeadline(kaDeadline)
		b, err = ss.ReadByte()
		return b, false, err
	}
	// A packet crypto/tls holds already (pipelined packets in one record,
	// or records read ahead) is read at once, without a system call or a
	// deadline change; the rest of it under the deadline set last, which
	// readFull extends if needed.
	if b, ok, err := ss.buffered(); ok || err != nil {
		ss.lingering = err == nil
		return b, false, err
	}
	// Nothing more at hand: the telemetry read since the last wait goes to
	// the store as one append.
	ss.submitAsync()
	if inLoop {
		// A ready loop waits for the next packet: no goroutine keeps
		// a stack for it.
		ss.setReadDeadline(kaDeadline)
		return 0, true, nil
	}
	wait := idleQuiet
	if ss.sent {
		wait = idleAfter
	}
	if ss.rdl.Before(now.Add(wait/2)) || ss.rdl.After(now.Add(wait)) {
		ss.setReadDeadline(now.Add(wait))
	}
	// A plain read, parked inside crypto/tls until the socket has bytes (a
	// session waiting here keeps its stack; see idleAfter for how long): a
	// timeout here means idle, not a slow packet.
	_, err = io.ReadFull(ss.conn, ss.hdr[:])
	b = ss.hdr[0]
	// The rest of this packet is read under the same deadline too, which
	// readFull extends if the packet is slow to arrive.
	ss.lingering = err == nil
	ss.sent = ss.sent || err == nil
	if err == nil || !isTimeout(err) || ss.closing.Load() {
		return b, false, err
	}
	// Quiet for a while. crypto/tls keeps a partly read record across a
	// timeout, so the read can resume later, from the small goroutine,
	// which looks at the socket first.
	ss.setReadDeadline(kaDeadline)
	ss.sent = false
	return 0, true, nil
}

// setKeepAliveDeadline lets a read wait 1.5 keep-alive periods, as MQTT
// says, or forever without keep-alive.
func (ss *session) setKeepAliveDeadline() {
	if ss.keepAlive > 0 {
		ss.setReadDeadline(time.Now().Add(ss.keepAlive * 3 / 2))
	} else {
		ss.setReadDeadline(time.Time{})
	}
}

// setReadDeadline sets the connection's read deadline and remembers it.
// Only the goroutine reading the connection calls it.
func (ss *session) setReadDeadline(t time.Time) {
	ss.rdl = t
	ss.lingering = false
	ss.conn.SetReadDeadline(t)
}

func (ss *session) readFailed(err error) {
	if errors.Is(err, errMalformed) {
		ss.badInput(badProtocol, err.Error())
		ss.close(codeMalformed, "malformed packet")
	} else if isTimeout(err) && !ss.closing.Load() {
		ss.srv.met.cuts.WithLabelValues(CutIdle).Inc()
		ss.close(codeKeepAliveTimeout, "keep alive timeout")
	}
}

// connect handles CONNECT: protocol checks, authorization, takeover and
// CONNACK. It reports whether the session was registered.
func (ss *session) connect(pk *packets.Packet) (bool, error) {
	s := ss.srv
	ss.ver = pk.ProtocolVersion
	if ss.ver != 4 && ss.ver != 5 {
		ss.ver = 4
		ss.connack(v3UnacceptableVersion, nil)
		return false, fmt.Errorf("gateway: unsupported protocol version %d", pk.ProtocolVersion)
	}
	if code := pk.ConnectValidate(); code != packets.CodeSuccess {
		if ss.ver == 5 {
			ss.connack(code.Code, nil)
		}
		return false, fmt.Errorf("gateway: invalid CONNECT: %s", code.Reason)
	}
	ss.keepAlive = time.Duration(pk.Connect.Keepalive) * time.Second
	// No keep-alive still has an idle limit: a quiet session must not hold
	// its connection forever. The read deadline is 1.5 keep-alives.
	idleLimited := ss.keepAlive == 0
	if idleLimited {
		ss.keepAlive = s.cfg.IdleLimit * 2 / 3
	}
	if ss.ver == 5 {
		ss.maxOut = pk.Properties.MaximumPacketSize
		ss.noProblem = pk.Properties.RequestProblemInfoFlag && pk.Properties.RequestProblemInfo == 0
	}
	if pk.Connect.WillFlag {
		ss.will = &packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: min(pk.Connect.WillQos, 1)},
			TopicName:   string([]byte(pk.Connect.WillTopic)),
			Payload:     append([]byte(nil), pk.Connect.WillPayload...),
		}
	}
	certs := ss.conn.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return false, errors.New("gateway: no peer certificate after handshake")
	}
	ss.leaf = certs[0]
	ss.serial = pki.SerialHex(ss.leaf)

	ctx, cancel := ss.storeCtx()
	defer cancel()
	id, ref := s.authorize(ctx, ss.leaf, ss.addr)
	if ref != nil {
		s.refuse(ss.addr, ref)
		code := ss.code(codeNotAuthorized, v3NotAuthorized)
		if ref.reason == ReasonStoreError {
			code = ss.code(codeServerUnavailable, v3ServerUnavailable)
		}
		ss.connack(code, nil)
		return false, ref
	}
	ss.dev = id.dev
	ss.started = time.Now()
	ss.sid = fmt.Sprintf("%s/%p/%d", s.node, ss, ss.started.UnixNano())

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ss.connack(ss.code(codeServerUnavailable, v3ServerUnavailable), nil)
		return false, errors.New("gateway: server closed")
	}
	old := s.sessions[ss.dev.Name]
	if old != nil && !old.over() && s.overLimit("takeover|"+ss.dev.Name, s.cfg.TakeoversPerMinute) {
		// Two holders of one identity (a clone, or a device in a reconnect
		// loop) would otherwise take the session from each other for ever,
		// each time with an event: the session in place stays.
		s.mu.Unlock()
		s.cut(ss.addr, CutTakeoverRate)
		s.refuse(ss.addr, &refusal{reason: CutTakeoverRate, device: ss.dev.Name, cn: ss.leaf.Subject.CommonName, serial: ss.serial,
			err: fmt.Errorf("more than %d takeovers of %s in a minute", s.cfg.TakeoversPerMinute, ss.dev.Name)})
		ss.connack(ss.code(codeQuotaExceeded, v3ServerUnavailable), nil)
		return false, errors.New("gateway: takeover rate exceeded")
	}
	s.sessions[ss.dev.Name] = ss
	s.mu.Unlock()
	s.met.sessions.Inc()
	if old != nil {
		// The old session's end is not reported as the device going
		// offline either way; only a live one counts as taken over.
		ending := old.over()
		old.mu.Lock()
		old.takenOver = true
		old.mu.Unlock()
		old.close(codeSessionTakenOver, "session taken over")
		if !ending {
			s.recordTakeover(ss.dev.Name, old.addr, ss.addr, s.node)
		}
	}

	var props *packets.Properties
	if ss.ver == 5 {
		props = &packets.Properties{
			MaximumPacketSize:      uint32(s.maxPacket),
			MaximumQos:             1,
			MaximumQosFlag:         true,
			RetainAvailable:        0,
			RetainAvailableFlag:    true,
			ReceiveMaximum:         maxPending,
			SharedSubAvailable:     0,
			SharedSubAvailableFlag: true,
			SubIDAvailable:         0,
			SubIDAvailableFlag:     true,
		}
		if pk.Connect.ClientIdentifier == "" {
			props.AssignedClientID = ss.dev.Name
		}
		if idleLimited {
			props.ServerKeepAlive = uint16(ss.keepAlive / time.Second)
			props.ServerKeepAliveFlag = true
		}
	}
	// Announce the session and take the device's commands before
	// CONNACK: the device cannot act on this session (or open another)
	// before it is known cluster-wide, so a late notice or Serve can never
	// displace a newer session. Commands wait for ready (after CONNACK).
	notice, _ := json.Marshal(map[string]any{"device": ss.dev.Name, "node": s.node, "addr": ss.addr, "session": ss.sid,
		"started": ss.started.UnixNano()})
	if err := s.bus.Publish(ctx, bus.TopicSessions, notice); err != nil {
		s.log.Warn("gateway: publishing session notice", "device", ss.dev.Name, "err", err)
	}
	stop, err := s.bus.Serve(ss.dev.Name, ss.handleCommand)
	if err != nil {
		ss.connack(ss.code(codeServerUnavailable, v3ServerUnavailable), nil)
		return true, fmt.Errorf("gateway: serving commands for %s: %w", ss.dev.Name, err)
	}
	ss.mu.Lock()
	ss.stopServe = stop
	ss.mu.Unlock()
	if err := ss.connack(codeSuccess, props); err != nil {
		return true, err
	}
	close(ss.ready)
	// Past CONNECT: from now on the keep-alive governs the read deadline
	// (writeBytes keeps the write deadline).
	ss.conn.SetReadDeadline(time.Time{})

	if old != nil {
		select {
		case <-old.finished:
		case <-time.After(5 * time.Second):
			s.log.Warn("gateway: taken-over session slow to finish", "device", ss.dev.Name)
		}
	}
	now := s.now()
	if err := s.st.SetOnline(ctx, ss.dev.ID, s.node, true, ss.addr, now); err != nil {
		s.log.Warn("gateway: setting device online", "device", ss.dev.Name, "err", err)
	}
	ss.observeStart(ctx, now)
	s.connected(ss.dev.Name, ss.addr, ss.ver)
	s.event(store.Event{Device: ss.dev.Name, Kind: store.EventConnect, Addr: ss.addr, Time: now,
		Detail: json.RawMessage(fmt.Sprintf(`{"protocol":%d,"serial":%q}`, ss.ver, ss.serial))})
	return true, nil
}

// code picks the MQTT 5 reason code or the 3.1.1 return code.
func (ss *session) code(v5, v3 byte) byte {
	if ss.ver == 5 {
		return v5
	}
	return v3
}

func (ss *session) connack(code byte, props *packets.Properties) error {
	pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: code}
	if props != nil {
		pk.Properties = *props
	}
	return ss.write(pk)
}

// handle dispatches one packet. cont=false ends the session; normal tells
// whether the device ended it with a DISCONNECT (no will message).
func (ss *session) handle(pk *packets.Packet) (cont, normal bool) {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		return ss.handlePublish(pk), false
	case packets.Puback, packets.Pubrec, packets.Pubcomp:
		// Outbound messages are not retransmitted, so acks need no state
		// beyond telling a persistent RPC that it was delivered.
		ss.outboundAcked(pk.FixedHeader.Type, pk.PacketID)
		return true, false
	case packets.Pubrel:
		ss.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: pk.PacketID})
		return true, false
	case packets.Subscribe:
		ss.handleSubscribe(pk)
		return true, false
	case packets.Unsubscribe:
		ss.handleUnsubscribe(pk)
		return true, false
	case packets.Pingreq:
		ss.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}})
		return true, false
	case packets.Disconnect:
		// MQTT 5 reason 0x04 asks for the will to be published.
		return false, !(ss.ver == 5 && pk.ReasonCode == 0x04)
	default:
		ss.badInput(badProtocol, fmt.Sprintf("unexpected packet type %d", pk.FixedHeader.Type))
		ss.close(codeProtocolError, "unexpected packet")
		return false, false
	}
}

func (ss *session) handleSubscribe(pk *packets.Packet) {
	if code := pk.SubscribeValidate(); code != packets.CodeSuccess {
		ss.close(codeProtocolError, code.Reason)
		return
	}
	codes := make([]byte, len(pk.Filters))
	ss.mu.Lock()
	for i, f := range pk.Filters {
		kind, st, ok := classifyFilter(f.Filter)
		if !ok {
			codes[i] = ss.code(codeTopicFilterInvalid, 0x80)
			continue
		}
		// QoS 2 is granted as QoS 1, as ThingsBoard does.
		q := min(f.Qos, 1)
		ss.subs[kind] = subState{on: true, qos: q, st: st}
		codes[i] = q
	}
	ss.mu.Unlock()
	ss.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: pk.PacketID, ReasonCodes: codes})
	ss.subscribed(pk.Filters)
}

func (ss *session) handleUnsubscribe(pk *packets.Packet) {
	codes := make([]byte, len(pk.Filters))
	ss.mu.Lock()
	for i, f := range pk.Filters {
		kind, _, ok := classifyFilter(f.Filter)
		if !ok || !ss.subs[kind].on {
			codes[i] = codeNoSubscription
			continue
		}
		ss.subs[kind] = subState{}
	}
	ss.mu.Unlock()
	ss.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsuback}, PacketID: pk.PacketID, ReasonCodes: codes})
}

// sub returns the style and QoS for a server-to-device message: those of
// the matching subscription, else v1 and QoS 1 (ThingsBoard's default).
func (ss *session) sub(kind subKind) (subState, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	st := ss.subs[kind]
	if !st.on {
		return subState{qos: 1, st: styleV1}, false
	}
	return st, true
}

// handlePublish processes a device PUBLISH; false ends the session.
func (ss *session) handlePublish(pk *packets.Packet) bool {
	s := ss.srv
	if code := pk.PublishValidate(0); code != packets.CodeSuccess {
		if code.Code == codeTopicAliasInvalid {
			ss.close(codeTopicAliasInvalid, "topic aliases are not supported")
		} else {
			ss.badInput(badProtocol, code.Reason)
			ss.close(codeProtocolError, code.Reason)
		}
		return false
	}
	if pk.FixedHeader.Qos == 2 && ss.ver == 5 {
		// CONNACK said Maximum QoS 1.
		ss.close(codeQoSNotSupported, "QoS 2 is not supported")
		return false
	}
	read := time.Now()
	w := &work{pid: pk.PacketID, qos: pk.FixedHeader.Qos, read: read}
	if len(pk.Payload) > s.profile.MaxPayload {
		return ss.reject(w, badTooLarge, codeQuotaExceeded,
			fmt.Sprintf("payload of %d bytes exceeds the maximum of %d", len(pk.Payload), s.profile.MaxPayload))
	}
	kind, st, id := classifyPublish(pk.TopicName)
	switch kind {
	case pubTelemetry:
		if ss.keys == nil {
			ss.keys = keyCache{}
		}
		now := read
		if !s.realClock {
			now = s.now()
		}
		recs, err := parseTelemetry(pk.Payload, now.UnixMilli(), ss.keys, w.one[:0:1])
		if err != nil {
			return ss.reject(w, badPayload, codePayloadFormat, err.Error())
		}
		if msg := s.timestampsOutside(recs, now); msg != "" {
			return ss.reject(w, badTime, codePayloadFormat, msg)
		}
		for i := range recs {
			recs[i].DeviceID = ss.dev.ID
		}
		w.recs = recs
		w.fn = ss.fwReport(recs, nil)
		s.met.byKind["telemetry"].Inc()
	case pubAttributes:
		kv, err := parseAttributes(pk.Payload, ss.keys)
		if err != nil {
			return ss.reject(w, badPayload, codePayloadFormat, err.Error())
		}
		w.attrs = kv
		w.fn = ss.fwReport(nil, kv)
		s.met.byKind["attributes"].Inc()
	case pubAttrRequest:
		req, err := parseAttrRequest(pk.Payload)
		if err != nil {
			return ss.reject(w, badPayload, codePayloadFormat, err.Error())
		}
		topic := attrResponseTopic(st, id)
		w.fn = func(ctx context.Context) { ss.answerAttrRequest(ctx, topic, req) }
		s.met.byKind["attribute-request"].Inc()
	case pubRPCResponse:
		if !ss.deliverRPC(id, pk.Payload) {
			w.fn = ss.persistentRPCResponse(id, pk.Payload)
		}
		s.met.byKind["rpc-response"].Inc()
	case pubRPCRequest:
		req, err := parseRPC(pk.Payload)
		if err != nil {
			return ss.reject(w, badPayload, codePayloadFormat, err.Error())
		}
		topic := rpcResponseTopic(id)
		w.fn = func(ctx context.Context) { ss.answerClientRPC(topic, req) }
		s.met.byKind["rpc-request"].Inc()
	case pubFWRequest, pubSWRequest:
		return ss.fwRequest(w, kind, id, pk.Payload)
	case pubCertRequest:
		csr, err := parseCertRequest(pk.Payload)
		w.fn = func(ctx context.Context) { ss.answerCertRequest(ctx, csr, err) }
		s.met.byKind["cert-request"].Inc()
	case pubClaim:
		req, err := parseClaim(pk.Payload)
		if err != nil {
			return ss.reject(w, badPayload, codePayloadFormat, err.Error())
		}
		w.fn = func(ctx context.Context) { ss.recordClaim(ctx, req) }
		s.met.byKind["claim"].Inc()
	case pubProvision:
		w.fn = func(context.Context) {
			ss.publish("/provision/response", []byte(`{"status":"FAILURE","errorMsg":"provisioning by key is not supported: connect with a device certificate"}`), 1)
		}
	default:
		return ss.reject(w, badTopic, codeTopicNameInvalid, "unknown topic "+pk.TopicName)
	}
	ss.enqueue(w)
	return true
}

// reject refuses a message for its content: counted, recorded and either
// acknowledged with a reason code or, for MQTT 3.1.1 when the profile says
// so, answered by closing the connection.
func (ss *session) reject(w *work, reason string, code byte, msg string) bool {
	ss.badInput(reason, msg)
	if ss.ver == 4 && ss.srv.profile.DisconnectOnBadInput {
		ss.close(codeSuccess, "")
		return false
	}
	w.reason, w.reasonStr = code, msg
	ss.enqueue(w)
	return true
}

// badInput counts and records a refused message. Counters are summed in
// memory and written at most once a second per session, events are limited
// per address, so a device sending garbage in a loop costs little.
func (ss *session) badInput(reason, msg string) {
	s := ss.srv
	s.met.rejected.WithLabelValues(reason).Inc()
	if ss.dev.ID == 0 {
		return
	}
	ss.mu.Lock()
	if ss.badCounts == nil {
		ss.badCounts = map[string]int64{}
	}
	ss.badCounts[reason]++
	obs := ss.obs
	if ss.badTimer == nil {
		ss.badTimer = time.AfterFunc(0, ss.flushCounters)
	}
	ss.mu.Unlock()
	if obs != nil {
		obs.Rejected(reason, s.now())
	}
	// Limited per device: devices behind one NAT share an address.
	if s.limited(ss.dev.Name, "bad-input") {
		s.met.eventsDropped.Inc()
		return
	}
	detail, _ := json.Marshal(map[string]string{"error": msg})
	s.event(store.Event{Device: ss.dev.Name, Kind: store.EventBadInput, Reason: reason, Addr: ss.addr, Detail: detail})
}

// flushCounters writes the summed counters and, if more arrive within a
// second, schedules itself once more.
func (ss *session) flushCounters() {
	ss.mu.Lock()
	counts := ss.badCounts
	ss.badCounts = nil
	ss.mu.Unlock()
	ctx, cancel := ss.storeCtx()
	defer cancel()
	for reason, n := range counts {
		if err := ss.srv.st.AddCounter(ctx, ss.dev.ID, "rejected."+reason, n); err != nil {
			ss.srv.log.Warn("gateway: adding counter", "device", ss.dev.Name, "err", err)
		}
	}
	ss.mu.Lock()
	if len(ss.badCounts) > 0 {
		ss.badTimer = time.AfterFunc(time.Second, ss.flushCounters)
	} else {
		ss.badTimer = nil
	}
	ss.mu.Unlock()
}

// enqueue adds w to the ordered pipeline, waiting while maxPending
// messages are already in flight.
func (ss *session) enqueue(w *work) {
	ss.ackMu.Lock()
	for ss.pending >= maxPending && !ss.closing.Load() {
		if len(ss.asyncGroup) > 0 {
			// What is waited for must be on its way first.
			ss.ackMu.Unlock()
			ss.submitAsync()
			ss.ackMu.Lock()
			continue
		}
		ss.ackCond.Wait()
	}
	ss.pending++
	if !ss.flushing && ss.asyncOK(w) {
		ss.inAsync++
		ss.ackMu.Unlock()
		if ss.asyncGroup == nil {
			w.self[0] = w
			ss.asyncGroup = w.self[:1:1]
		} else {
			ss.asyncGroup = append(ss.asyncGroup, w)
		}
		return
	}
	if len(ss.asyncGroup) > 0 {
		ss.ackMu.Unlock()
		ss.submitAsync()
		ss.ackMu.Lock()
	}
	ss.ackQ = append(ss.ackQ, w)
	if !ss.flushing {
		ss.flushing = true
		go ss.flush()
	}
	ss.ackMu.Unlock()
}

// flush drains the pipeline: one AppendTelemetry for everything queued
// (the store group-commits across sessions too), then the attribute
// writes and side effects in order, then all acknowledgements in one write.
func (ss *session) flush() {
	s := ss.srv
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("gateway: flush panicked", "device", ss.dev.Name, "panic", v)
			ss.close(codeImplSpecific, "internal error")
			ss.ackMu.Lock()
			ss.flushing = false
			ss.pending = 0
			ss.ackQ = nil
			ss.ackCond.Broadcast()
			ss.ackMu.Unlock()
		}
	}()
	for {
		ss.ackMu.Lock()
		// Asynchronous appends queued before q go first (ackpath.go).
		for ss.inAsync > 0 {
			ss.ackCond.Wait()
		}
		q := ss.ackQ
		ss.ackQ = nil
		if len(q) == 0 {
			ss.flushing = false
			ss.ackCond.Broadcast()
			ss.ackMu.Unlock()
			return
		}
		ss.ackMu.Unlock()

		ok := ss.process(q)

		ss.ackMu.Lock()
		ss.pending -= len(q)
		ss.ackCond.Broadcast()
		ss.ackMu.Unlock()
		if !ok {
			// Unstored messages must not be acknowledged; the device
			// will resend them on its next connection.
			ss.close(codeImplSpecific, "storage unavailable")
		}
	}
}

func (ss *session) process(q []*work) bool {
	s := ss.srv
	ctx := ss.flushCtx()
	var recs []store.Record
	for _, w := range q {
		recs = append(recs, w.recs...)
	}
	if len(recs) > 0 {
		if err := s.st.AppendTelemetry(ctx, recs); err != nil {
			s.log.Error("gateway: storing telemetry", "device", ss.dev.Name, "err", err)
			return false
		}
	}
	for _, w := range q {
		if len(w.attrs) > 0 {
			kv := make(map[string]json.RawMessage, len(w.attrs))
			for _, a := range w.attrs {
				kv[a.Key] = a.Value
			}
			if err := s.st.SetAttributes(ctx, ss.dev.ID, store.ClientScope, kv, s.now()); err != nil {
				s.log.Error("gateway: storing attributes", "device", ss.dev.Name, "err", err)
				return false
			}
		}
		if w.fn != nil {
			w.fn(ctx)
		}
	}
	if ss.closing.Load() {
		return true
	}
	// Almost always every acknowledgement is a bare success, 4 bytes each,
	// written without building packets for the codec.
	plain, n := true, 0
	for _, w := range q {
		if w.qos > 0 {
			n++
			plain = plain && (ss.ver != 5 || w.reason == codeSuccess)
		}
	}
	if n > 0 {
		var err error
		if plain {
			err = ss.writePlainAcks(q)
		} else {
			var acks []*packets.Packet
			for _, w := range q {
				switch w.qos {
				case 1:
					acks = append(acks, ss.ack(packets.Puback, w))
				case 2:
					acks = append(acks, ss.ack(packets.Pubrec, w))
				}
			}
			err = ss.write(acks...)
		}
		if err != nil {
			s.log.Debug("gateway: writing acks", "device", ss.dev.Name, "err", err)
		}
		now := time.Now()
		for _, w := range q {
			if w.qos > 0 {
				s.met.ackLatency.Observe(now.Sub(w.read).Seconds())
			}
		}
	}
	if len(recs) > 0 {
		ss.publishLive(ctx, recs)
	}
	if ss.obs != nil {
		ss.obs.Handled(recs, s.now())
	}
	return true
}

func (ss *session) ack(typ byte, w *work) *packets.Packet {
	pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: w.pid}
	if ss.ver == 5 && w.reason != codeSuccess {
		pk.ReasonCode = w.reason
		pk.Properties.ReasonString = w.reasonStr
	}
	return pk
}

// publishLive broadcasts stored telemetry for consoles, one message per
// record: {"device":..,"ts":..,"values":{..}}. It is on the hot path, so
// the JSON is assembled by hand from the already-valid value texts.
func (ss *session) publishLive(ctx context.Context, recs []store.Record) {
	if w := ss.srv.watcher; w != nil && !w.Watched(bus.TopicTelemetry) {
		return
	}
	name := appendJSONString(nil, ss.dev.Name)
	for _, r := range recs {
		n := len(name) + 48
		for _, kv := range r.Values {
			n += len(kv.Key) + len(kv.Value) + 4
		}
		b := make([]byte, 0, n)
		b = append(b, `{"device":`...)
		b = append(b, name...)
		b = append(b, `,"ts":`...)
		b = strconv.AppendInt(b, r.TS, 10)
		b = append(b, `,"values":{`...)
		for i, kv := range r.Values {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, kv.Key)
			b = append(b, ':')
			b = append(b, kv.Value...)
		}
		b = append(b, "}}"...)
		if err := ss.srv.bus.Publish(ctx, bus.TopicTelemetry, b); err != nil {
			return
		}
	}
}

// appendJSONString quotes s, without encoding/json for plain ASCII.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// finish runs when the reader stops: the will (after an abnormal end),
// pending writes, then the offline bookkeeping.
func (ss *session) finish(registered, abnormal bool) {
	s := ss.srv
	defer close(ss.finished)
	ss.ended.Store(true)
	ss.mu.Lock()
	takenOver := ss.takenOver
	ss.mu.Unlock()
	if registered && abnormal && ss.will != nil && !takenOver && !ss.closedByServer() {
		ss.processWill()
	}
	ss.submitAsync()
	ss.close(codeSuccess, "")
	// Wait for the pipeline: a will or late telemetry is stored before
	// the device is reported offline.
	ss.ackMu.Lock()
	for ss.flushing || ss.inAsync > 0 {
		ss.ackCond.Wait()
	}
	if ss.fcancel != nil {
		ss.fcancel()
	}
	ss.ackMu.Unlock()
	close(ss.done)
	if !registered {
		return
	}
	ss.mu.Lock()
	stop := ss.stopServe
	timer := ss.badTimer
	takenOver = ss.takenOver
	ss.mu.Unlock()
	if stop != nil {
		stop()
	}
	if timer != nil && timer.Stop() {
		ss.flushCounters()
	}
	ctx, cancel := ss.storeCtx()
	defer cancel()
	now := s.now()
	if !takenOver {
		if err := s.st.SetOnline(ctx, ss.dev.ID, s.node, false, ss.addr, now); err != nil {
			s.log.Warn("gateway: setting device offline", "device", ss.dev.Name, "err", err)
		}
	}
	ss.observeEnd(ctx, now, takenOver)
	// Leave the session table only now: a reconnect arriving meanwhile
	// finds this session, takes it over and waits for finished, so its
	// "online" cannot be overwritten by this "offline".
	s.mu.Lock()
	if s.sessions[ss.dev.Name] == ss {
		delete(s.sessions, ss.dev.Name)
	}
	s.mu.Unlock()
	s.met.sessions.Dec()
	s.event(store.Event{Device: ss.dev.Name, Kind: store.EventDisconnect, Addr: ss.addr, Time: now})
}

// closedByServer tells whether the server ended the session on purpose
// (shutdown, deletion, revocation): the device did nothing wrong, so its
// will is not published.
func (ss *session) closedByServer() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.serverClosed
}

// processWill handles the will as if the device had published it.
func (ss *session) processWill() {
	w := ss.will
	ss.will = nil
	w.FixedHeader.Qos = 0 // nobody is left to acknowledge
	ss.handlePublish(w)
}
