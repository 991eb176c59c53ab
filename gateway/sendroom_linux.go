package gateway

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// sendRoomMax is the unsent bytes in a socket's send queue below which a
// PUBACK record (about 30 bytes) is written without waiting: default send
// buffers are 16 KiB and more.
const sendRoomMax = 4096

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

// sendRoom tells whether a small write to the session's socket completes
// without waiting for the device to read.
func (ss *session) sendRoom() bool {
	if ss.rc == nil {
		return false
	}
	q, err := 0, error(nil)
	if cerr := ss.rc.Control(func(fd uintptr) { q, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); cerr != nil || err != nil {
		return false
	}
	return q < sendRoomMax
}
