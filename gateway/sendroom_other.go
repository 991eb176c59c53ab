//go:build !linux

package gateway

import "syscall"

func rawConnOf(any) syscall.RawConn { return nil }

// sendRoom cannot tell without Linux's SIOCOUTQ: acknowledgements of the
// asynchronous path are then written by a goroutine of the session's own.
func (ss *session) sendRoom() bool { return false }
