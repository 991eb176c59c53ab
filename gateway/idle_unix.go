//go:build unix

package gateway

import (
	"errors"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// socketWatch returns functions that tell whether nc has bytes to read:
// readable answers at once, wait blocks until it does (or nc fails, or its
// read deadline passes). Neither consumes a byte: they belong to crypto/tls.
// Both are nil when nc is not a socket.
//
// Why: a goroutine parked inside tls.Conn.Read keeps the stack it grew while
// handling packets (8 KiB and more) for as long as the device stays quiet.
// Waiting with wait instead parks a goroutine whose few frames fit the
// smallest stack, and the goroutine that handles packets exists only while
// there is something to handle.
func socketWatch(nc net.Conn) (readable func() bool, wait func() error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, nil
	}
	peek := func(fd uintptr) bool {
		var b [1]byte
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		// Data, end of stream and errors all mean a read will not block.
		return !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR)
	}
	readable = func() bool {
		r := false
		if err := rc.Read(func(fd uintptr) bool { r = peek(fd); return true }); err != nil {
			return true // let the read report it
		}
		return r
	}
	wait = func() error { return rc.Read(peek) }
	return readable, wait
}
