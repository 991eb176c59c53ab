//go:build unix

package gateway

import (
	"errors"

	"golang.org/x/sys/unix"
)

// writeNow writes what the socket takes of b without waiting: n < len(b)
// with a nil error means its send buffer is full. The caller holds smu.
func (p *pollConn) writeNow(b []byte) (n int, err error) {
	if p.writeFn == nil {
		// Made once per connection: a closure made per call would be
		// allocated per acknowledgement (rc.Write takes it through an
		// interface, so it escapes).
		p.writeFn = p.writeSome
	}
	p.wb, p.wn, p.werr = b, 0, nil
	cerr := p.rc.Write(p.writeFn)
	n, err = p.wn, p.werr
	p.wb, p.werr = nil, nil
	if cerr != nil {
		return n, cerr
	}
	return n, err
}

// writeSome is rc.Write's callback for writeNow: it writes p.wb from p.wn
// on, never waiting.
func (p *pollConn) writeSome(fd uintptr) bool {
	for p.wn < len(p.wb) {
		m, e := unix.Write(int(fd), p.wb[p.wn:])
		if m > 0 {
			p.wn += m
		}
		switch {
		case errors.Is(e, unix.EINTR):
			continue
		case errors.Is(e, unix.EAGAIN):
			return true
		case e != nil:
			p.werr = e
			return true
		case m <= 0:
			return true
		}
	}
	return true
}
