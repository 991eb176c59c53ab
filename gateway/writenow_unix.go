//go:build unix

package gateway

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// writeNow writes what the socket takes of b without waiting: n < len(b)
// with a nil error means its send buffer is full.
func writeNow(rc syscall.RawConn, b []byte) (n int, err error) {
	cerr := rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, e := unix.Write(int(fd), b[n:])
			if m > 0 {
				n += m
			}
			switch {
			case errors.Is(e, unix.EINTR):
				continue
			case errors.Is(e, unix.EAGAIN):
				return true
			case e != nil:
				err = e
				return true
			case m <= 0:
				return true
			}
		}
		return true
	})
	if cerr != nil {
		return n, cerr
	}
	return n, err
}
