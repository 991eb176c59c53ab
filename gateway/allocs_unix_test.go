//go:build unix

package gateway

import (
	"io"
	"net"
	"testing"
)

// TestWriteNowAllocatesNothing checks that an acknowledgement written
// without waiting allocates nothing once the connection has written one:
// the acker writes one per message.
func TestWriteNowAllocatesNothing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	got := make(chan int64)
	go func() { n, _ := io.Copy(io.Discard, client); got <- n }()

	p := newPollConn(sc)
	ack := []byte{0x40, 2, 0, 1}
	const runs = 100
	allocs := testing.AllocsPerRun(runs, func() {
		if n, err := p.writeNow(ack); n != len(ack) || err != nil {
			t.Fatalf("writeNow: %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per write; want 0", allocs)
	}
	sc.Close()
	// AllocsPerRun runs the function once more to warm up.
	if n := <-got; n != (runs+1)*int64(len(ack)) {
		t.Errorf("peer read %d bytes; want %d", n, (runs+1)*len(ack))
	}
}
