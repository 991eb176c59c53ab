//go:build linux

package gateway

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/thingline/thingline/tstest"
)

// TestReadyLoopHoldsNoGoroutine: devices between messages wait in the
// server's ready loops, not in goroutines of their own, and are served
// there when they send again.
func TestReadyLoopHoldsNoGoroutine(t *testing.T) {
	e := newEnv(t, nil)
	if len(e.srv.loops) == 0 {
		t.Fatal("no ready loops on Linux")
	}
	const n = 60
	before := runtime.NumGoroutine()
	conns := make([]io.ReadWriteCloser, n)
	for i := range conns {
		cert, _ := e.inter.device(t, fmt.Sprintf("SN-LOOP%02d", i))
		c, err := rawConnect(e, cert)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	for round := range 3 {
		for i, c := range conns {
			pid := uint16(round*100 + i + 1)
			if _, err := c.Write(publishV4(pid, fmt.Sprintf(`{"n":%d}`, round))); err != nil {
				t.Fatal(err)
			}
			var ack [4]byte
			if _, err := io.ReadFull(c, ack[:]); err != nil {
				t.Fatalf("device %d, round %d: %v", i, round, err)
			}
			if ack != [4]byte{0x40, 2, byte(pid >> 8), byte(pid)} {
				t.Fatalf("device %d, round %d: PUBACK %x", i, round, ack)
			}
		}
		// Each session has left its goroutine: far fewer than one each.
		tstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			if g := runtime.NumGoroutine() - before; g >= n/2 {
				return fmt.Errorf("%d goroutines more than before %d idle sessions", g, n)
			}
			return nil
		})
	}
	dev := e.device(t, "SN-LOOP07")
	pts, err := e.st.LatestTelemetry(context.Background(), dev.ID, []string{"n"})
	if err != nil || string(pts["n"].Value) != "2" {
		t.Fatalf("stored: %v %v", pts, err)
	}
}

// TestReadyLoopBurst: many PUBLISH in one TLS record are more than a loop
// handles at once; the session finishes them in a goroutine, every one
// acknowledged in order, then returns to its loop.
func TestReadyLoopBurst(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-BURST")
	c, err := rawConnect(e, cert)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for round := range 2 {
		var burst []byte
		const n = 3*maxInline + 5
		for i := 1; i <= n; i++ {
			burst = append(burst, publishV4(uint16(round*1000+i), fmt.Sprintf(`{"b":%d}`, i))...)
		}
		if _, err := c.Write(burst); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for i := 1; i <= n; i++ {
			var ack [4]byte
			if _, err := io.ReadFull(c, ack[:]); err != nil {
				t.Fatalf("round %d, PUBACK %d: %v", round, i, err)
			}
			pid := uint16(round*1000 + i)
			if ack != [4]byte{0x40, 2, byte(pid >> 8), byte(pid)} {
				t.Fatalf("round %d: PUBACK %x, want packet id %d", round, ack, pid)
			}
		}
		time.Sleep(100 * time.Millisecond) // back in a loop
	}
}

// TestReadyLoopKeepAlive: a session waiting in a loop is still ended after
// 1.5 keep-alive periods of silence, and its device marked offline.
func TestReadyLoopKeepAlive(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-KA")
	conn, c := e.rawV5(t, cert, 1, nil)
	defer conn.Close()
	if _, err := c.Publish(context.Background(), &paho.Publish{Topic: "v1/devices/me/telemetry", QoS: 1, Payload: []byte(`{"ka":1}`)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the session outlived its keep-alive")
	}
	// 1.5 s, plus at most one sweep of the loop.
	if d := time.Since(start); d < time.Second || d > 1500*time.Millisecond+2*loopSweep+time.Second {
		t.Fatalf("ended after %v", d)
	}
	e.waitEvent(t, "SN-KA", "disconnect", "")
	tstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		d, err := e.st.GetDevice(context.Background(), "SN-KA")
		if err != nil {
			return err
		}
		if d.Online {
			return fmt.Errorf("still online")
		}
		return nil
	})
}

// TestReadyLoopTakeover: a session waiting in a loop has no reader to
// fail when the server closes it; the loop ends it. A second connection
// with the same certificate takes the device over: the first is closed at
// once, and the second is served.
func TestReadyLoopTakeover(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-TAKE")
	first, err := rawConnect(e, cert)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := first.Write(publishV4(1, `{"t":1}`)); err != nil {
		t.Fatal(err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(first, ack[:]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // in a loop by now
	second, err := rawConnect(e, cert)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	start := time.Now()
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := first.Read(ack[:]); err == nil || isTimeout(err) {
		t.Fatalf("the session taken over is still open: read %d bytes, %v", n, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("closed after %v", d)
	}
	if _, err := second.Write(publishV4(2, `{"t":2}`)); err != nil {
		t.Fatal(err)
	}
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(second, ack[:]); err != nil || ack != [4]byte{0x40, 2, 0, 2} {
		t.Fatalf("second session: PUBACK %x, %v", ack, err)
	}
}
