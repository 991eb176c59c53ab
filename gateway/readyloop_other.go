//go:build !linux

package gateway

import "net"

// readyLoop is only available on Linux (epoll); elsewhere sessions wait
// for their devices in goroutines.
type readyLoop struct{}

func newReadyLoops(*Server) []*readyLoop { return nil }

func (*readyLoop) add(*session, net.Conn) bool { return false }
func (*readyLoop) kick(*session)               {}
func (*readyLoop) stop()                       {}

func (p *pollConn) readNow([]byte) (int, error) { return 0, errNothingBuffered }
