package gateway

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// pollConn is the connection under a session's tls.Conn. It changes
// reading only while the session's flags ask it to, and, once the session
// started sending through it, every write.
//
// With nonblock set its reads fail at once, without a system call, so that
// a tls.Conn.Read made then returns only what crypto/tls has buffered
// already (decrypted bytes, or whole records it read from the socket
// ahead): the one thing a look at the socket cannot tell. crypto/tls treats
// the error as temporary and keeps a partly read record for the next read.
// See (*session).buffered.
//
// Writes never wait for the device (from startSending on, after the
// handshake). What the socket does not take at once (its send buffer is
// full: a device slow to read, or one that stopped) is kept, in order, and
// sent by a goroutine of the connection's (send), which waits for the
// socket under a deadline of its own; later writes go behind it. So no
// writer waits for one device — not the acker serving a share of every
// session, not a ready loop, not crypto/tls answering a key update from
// inside a read — nor holds crypto/tls's output side while waiting, and no
// write meets a deadline an earlier one left to pass. crypto/tls cannot be
// given a short write (it would fail the connection for good), which is
// why the rest must belong to the connection.
type pollConn struct {
	net.Conn
	rc syscall.RawConn // the socket; nil if not one (every write then goes through send)

	// nonblock is set and cleared by the session's reading goroutine
	// around one read; nothing else reads through the connection.
	nonblock bool
	// raw is set, as nonblock, by a ready loop around one read: reads
	// make one system call that does not wait (readNow), nothing there
	// being the same temporary error.
	raw bool
	// readNow's state: the callback made once and what it reads.
	readFn func(fd uintptr) bool
	rb     []byte
	rn     int
	rerr   error

	// sendOn is set once, by startSending, before the session is shared;
	// the rest of the send side is guarded by smu. crypto/tls calls Write
	// holding its own output lock, so writes come one at a time and in
	// the order of their records.
	sendOn   bool
	timeout  time.Duration  // how long send waits for the device to take bytes
	failed   func()         // told, from another goroutine, once sending failed
	backlogs *atomic.Uint64 // send goroutines started (metrics, tests)
	smu      sync.Mutex
	backlog  []byte // what the socket has not taken yet, in order
	sending  bool   // send runs
	serr     error  // the first failure, returned to every later write

	// writeNow's state, guarded by smu: the callback made once and what
	// it writes.
	writeFn func(fd uintptr) bool
	wb      []byte
	wn      int
	werr    error
}

// maxBacklog bounds what a connection keeps for a device that does not
// read: beyond it (and at least one write kept already) the session ends
// rather than hold more of the server's memory.
const maxBacklog = 1 << 20

// sendPiece is how much send writes under one deadline.
const sendPiece = 64 << 10

// errBacklogFull fails the writes to a device that left maxBacklog unread.
var errBacklogFull = errors.New("gateway: the device left too much unread")

func newPollConn(c net.Conn) *pollConn {
	return &pollConn{Conn: c, rc: rawConnOf(c)}
}

// rawConnOf returns the socket under nc, or nil.
func rawConnOf(nc any) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// errNothingBuffered is the temporary error of a read made with nonblock.
var errNothingBuffered = &nothingBuffered{}

type nothingBuffered struct{}

func (*nothingBuffered) Error() string   { return "gateway: nothing buffered" }
func (*nothingBuffered) Timeout() bool   { return true }
func (*nothingBuffered) Temporary() bool { return true }

func (p *pollConn) Read(b []byte) (int, error) {
	if p.nonblock {
		return 0, errNothingBuffered
	}
	if p.raw && p.rc != nil {
		return p.readNow(b)
	}
	return p.Conn.Read(b)
}

// startSending makes writes stop waiting (see pollConn). A write through
// the socket that does not wait still fails once its deadline passed, so
// the handshake's is cleared: from now on only send sets one. failed runs
// in a goroutine of its own (it may write).
func (p *pollConn) startSending(timeout time.Duration, failed func(), backlogs *atomic.Uint64) {
	p.timeout, p.failed, p.backlogs = timeout, failed, backlogs
	p.Conn.SetWriteDeadline(time.Time{})
	p.sendOn = true
}

func (p *pollConn) Write(b []byte) (int, error) {
	if !p.sendOn {
		return p.Conn.Write(b)
	}
	p.smu.Lock()
	defer p.smu.Unlock()
	if p.serr != nil {
		return 0, p.serr
	}
	if p.sending {
		if len(p.backlog) > 0 && len(p.backlog)+len(b) > maxBacklog {
			p.serr = errBacklogFull
			if p.failed != nil {
				go p.failed()
			}
			return 0, p.serr
		}
		p.backlog = append(p.backlog, b...)
		return len(b), nil
	}
	n := 0
	if p.rc != nil {
		var err error
		if n, err = p.writeNow(b); err != nil {
			p.serr = err
			return n, err
		}
	}
	if n < len(b) {
		p.backlog = append(p.backlog[:0], b[n:]...)
		p.sending = true
		if p.backlogs != nil {
			p.backlogs.Add(1)
		}
		go p.send()
	}
	return len(b), nil
}

// send writes the backlog, waiting for the socket, until it is empty. The
// device has the timeout to take each sendPiece: one that takes nothing for
// that long fails the connection (failed ends the session).
func (p *pollConn) send() {
	var b []byte
	for {
		p.smu.Lock()
		if len(p.backlog) == 0 || p.serr != nil {
			// Nothing kept for a device that is up to date again.
			p.backlog, p.sending = nil, false
			p.smu.Unlock()
			return
		}
		b, p.backlog = p.backlog, b[:0]
		p.smu.Unlock()
		var err error
		for rest := b; len(rest) > 0 && err == nil; {
			// A piece at a time, each under a deadline of its own: a
			// device that reads slowly but steadily is not cut off.
			n := min(len(rest), sendPiece)
			p.Conn.SetWriteDeadline(time.Now().Add(p.timeout))
			_, err = p.Conn.Write(rest[:n])
			rest = rest[n:]
		}
		// Writes that do not wait fail on a deadline that passed.
		p.Conn.SetWriteDeadline(time.Time{})
		if err != nil {
			p.smu.Lock()
			p.serr = fmt.Errorf("gateway: sending to the device: %w", err)
			p.backlog, p.sending = nil, false
			p.smu.Unlock()
			if p.failed != nil {
				go p.failed()
			}
			return
		}
	}
}

// backlogged reports how many bytes wait for the device (tests).
func (p *pollConn) backlogged() (n int, sending bool) {
	p.smu.Lock()
	defer p.smu.Unlock()
	return len(p.backlog), p.sending
}

// SyscallConn exposes the socket, for socketWatch.
func (p *pollConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := p.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("gateway: not a socket")
	}
	return sc.SyscallConn()
}

// buffered returns the next byte if crypto/tls holds it already; ok is
// false when it holds nothing (err is then nil) or the read failed.
func (ss *session) buffered() (b byte, ok bool, err error) {
	if len(ss.lbuf) > 0 {
		b = ss.lbuf[0]
		ss.lbuf = ss.lbuf[1:]
		return b, true, nil
	}
	ss.pc.nonblock = true
	n, err := ss.conn.Read(ss.hdr[:])
	ss.pc.nonblock = false
	if n == 1 {
		return ss.hdr[0], true, nil
	}
	if errors.Is(err, errNothingBuffered) {
		return 0, false, nil
	}
	return 0, false, err
}
