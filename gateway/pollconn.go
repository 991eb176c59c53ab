package gateway

import (
	"errors"
	"net"
	"syscall"
)

// pollConn is the connection under a session's tls.Conn. It changes two
// things, each only while its flag is set by the session:
//
// With nonblock set its reads fail at once, without a system call, so that
// a tls.Conn.Read made then returns only what crypto/tls has buffered
// already (decrypted bytes, or whole records it read from the socket
// ahead): the one thing a look at the socket cannot tell. crypto/tls treats
// the error as temporary and keeps a partly read record for the next read.
// See (*session).buffered.
//
// With tryWrite set a write never waits: what the socket does not take at
// once (its send buffer full: a device that stopped reading) is kept in
// rest and reported written, for the writer to send later from a goroutine
// of its own (see (*session).completeAsync). crypto/tls cannot be given a
// short write (it would fail the connection for good), so the rest must
// belong to the connection. The acker uses it: one non-blocking write
// instead of asking the kernel first how full the send queue is (an ioctl
// per message) and then writing.
type pollConn struct {
	net.Conn
	rc syscall.RawConn // the socket; nil if not one (tryWrite then waits)

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

	// tryWrite and rest are guarded by the session's writeMu: set around
	// one write, rest is non-empty only until the writer holding writeMu
	// sent it (finishWrite).
	tryWrite bool
	rest     []byte
	// inRead is set, with tryWrite, by a ready loop around a read it makes
	// holding writeMu: a write then is crypto/tls answering the device
	// from inside the read (a key update it asked for, an alert), and
	// ahead (made once per session) moves the write deadline ahead first,
	// as the session's writers do, since the last write's may have passed.
	inRead bool
	ahead  func()

	// writeNow's state, also guarded by writeMu: the callback made once
	// and what it writes.
	writeFn func(fd uintptr) bool
	wb      []byte
	wn      int
	werr    error
}

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

func (p *pollConn) Write(b []byte) (int, error) {
	if !p.tryWrite || p.rc == nil {
		return p.Conn.Write(b)
	}
	if p.inRead && p.ahead != nil {
		p.ahead()
	}
	if len(p.rest) > 0 {
		// A record after one the socket did not take whole: behind it.
		p.rest = append(p.rest, b...)
		return len(b), nil
	}
	n, err := p.writeNow(b)
	if err != nil {
		return n, err
	}
	if n < len(b) {
		p.rest = append(p.rest[:0], b[n:]...)
	}
	return len(b), nil
}

// finishWrite sends what a tryWrite left, waiting as a plain write does
// (under the write deadline). The caller holds writeMu.
func (p *pollConn) finishWrite() error {
	_, err := p.Conn.Write(p.rest)
	p.rest = nil
	return err
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
