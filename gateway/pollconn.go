package gateway

import (
	"errors"
	"net"
	"syscall"
)

// pollConn is the connection under a session's tls.Conn. With nonblock set
// its reads fail at once, without a system call, so that a tls.Conn.Read
// made then returns only what crypto/tls has buffered already (decrypted
// bytes, or whole records it read from the socket ahead): the one thing a
// look at the socket cannot tell. crypto/tls treats the error as temporary
// and keeps a partly read record for the next read. See (*session).nextByte.
type pollConn struct {
	net.Conn
	// nonblock is set and cleared by the session's reading goroutine
	// around one read; nothing else reads through the connection.
	nonblock bool
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
	return p.Conn.Read(b)
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
