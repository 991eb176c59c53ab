package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
)

// tcpPair returns the two ends of a loopback TCP connection with small
// buffers, so that a little unread data fills them.
func tcpPair(t *testing.T) (c, peer *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		a, _ := ln.Accept()
		accepted <- a
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-accepted
	if a == nil {
		t.Fatal("accept failed")
	}
	c, peer = d.(*net.TCPConn), a.(*net.TCPConn)
	t.Cleanup(func() { c.Close(); peer.Close() })
	c.SetWriteBuffer(4096)
	peer.SetReadBuffer(4096)
	return c, peer
}

// writeAll writes pieces through p in another goroutine and reports when
// every write returned: a write that waited for the peer would never.
func writeAll(p *pollConn, pieces [][]byte) <-chan error {
	done := make(chan error, 1)
	go func() {
		for i, b := range pieces {
			if n, err := p.Write(b); err != nil || n != len(b) {
				done <- fmt.Errorf("write %d: %d of %d bytes, %v", i, n, len(b), err)
				return
			}
		}
		done <- nil
	}()
	return done
}

// TestPollConnNeverWaits: writes to a peer that does not read return at
// once, what the socket does not take is sent in order once the peer
// reads, and nothing is kept afterwards.
func TestPollConnNeverWaits(t *testing.T) {
	c, peer := tcpPair(t)
	p := newPollConn(c)
	// A deadline that passed (the handshake's, say) must not fail the
	// writes that follow: startSending clears it.
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	var backlogs atomic.Uint64
	p.startSending(10*time.Second, func() { t.Error("sending failed") }, &backlogs)

	var pieces [][]byte
	var want bytes.Buffer
	for i := range 128 {
		b := bytes.Repeat([]byte{byte(i)}, 512)
		pieces = append(pieces, b)
		want.Write(b)
	}
	select {
	case err := <-writeAll(p, pieces):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("writes to a peer that does not read waited for it")
	}
	if n, sending := p.backlogged(); !sending || backlogs.Load() != 1 {
		t.Fatalf("after 64 KiB unread: %d bytes kept, sending %v, %d backlogs", n, sending, backlogs.Load())
	}

	got := make([]byte, want.Len())
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("the peer read other bytes than were written, or in another order")
	}
	tstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n, sending := p.backlogged(); sending || n != 0 {
			return fmt.Errorf("%d bytes kept, sending %v", n, sending)
		}
		return nil
	})
	// Up to date again: the next write goes straight to the socket.
	if _, err := p.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(peer, b); err != nil || string(b) != "after" {
		t.Fatalf("read %q, %v", b, err)
	}
	if backlogs.Load() != 1 {
		t.Errorf("%d backlogs; want 1", backlogs.Load())
	}
}

// TestPollConnGivesUp: a peer that reads nothing fails the connection once
// it has left the timeout pass with bytes waiting, or maxBacklog unread;
// either way the session is told (failed) and later writes fail.
func TestPollConnGivesUp(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		c, _ := tcpPair(t)
		p := newPollConn(c)
		failed := make(chan struct{}, 2)
		p.startSending(300*time.Millisecond, func() { failed <- struct{}{} }, nil)
		start := time.Now()
		if err := <-writeAll(p, [][]byte{make([]byte, 256<<10)}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-failed:
		case <-time.After(10 * time.Second):
			t.Fatal("a peer reading nothing was waited for past the timeout")
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Errorf("gave up after %v, before the timeout", d)
		}
		if _, err := p.Write([]byte("x")); err == nil {
			t.Error("a write after sending failed succeeded")
		}
	})
	t.Run("backlog", func(t *testing.T) {
		c, _ := tcpPair(t)
		p := newPollConn(c)
		failed := make(chan struct{}, 2)
		p.startSending(time.Minute, func() { failed <- struct{}{} }, nil)
		var err error
		written := 0
		for written <= 2*maxBacklog && err == nil {
			var n int
			n, err = p.Write(make([]byte, 64<<10))
			written += n
		}
		if !errors.Is(err, errBacklogFull) {
			t.Fatalf("after %d bytes unread: %v; want errBacklogFull", written, err)
		}
		if n, _ := p.backlogged(); n > maxBacklog {
			t.Errorf("%d bytes kept; the bound is %d", n, maxBacklog)
		}
		select {
		case <-failed:
		case <-time.After(10 * time.Second):
			t.Fatal("the session was not told")
		}
		if _, err := p.Write([]byte("x")); !errors.Is(err, errBacklogFull) {
			t.Errorf("a later write: %v", err)
		}
	})
}
