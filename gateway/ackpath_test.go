package gateway

import (
	"context"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

// publishV4 is a QoS 1 telemetry PUBLISH with packet id pid.
func publishV4(pid uint16, payload string) []byte {
	topic := "v1/devices/me/telemetry"
	body := []byte{byte(len(topic) >> 8), byte(len(topic))}
	body = append(body, topic...)
	body = append(body, byte(pid>>8), byte(pid))
	body = append(body, payload...)
	return append([]byte{0x32, byte(len(body))}, body...)
}

// TestAsyncAcknowledgements drives the store's commit path of
// acknowledgements (ackpath.go): one message in flight at a time, as the
// fleet sends, each acknowledged by the acker, then pipelined messages,
// acknowledged in order.
func TestAsyncAcknowledgements(t *testing.T) {
	// A short write timeout: the acknowledgements below come after the
	// deadline set when CONNACK was written has passed.
	e := newEnv(t, func(_ *env, c *Config) { c.Timeout = 500 * time.Millisecond })
	if len(e.srv.ackers) == 0 {
		t.Fatal("the SQLite store offers asynchronous appends; the gateway does not use them")
	}
	cert, _ := e.inter.device(t, "SN-ASYNC")
	conn, err := rawConnect(e, cert)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	readAck := func(pid uint16) {
		t.Helper()
		var ack [4]byte
		if _, err := io.ReadFull(conn, ack[:]); err != nil {
			t.Fatalf("waiting for PUBACK %d: %v", pid, err)
		}
		if ack != [4]byte{0x40, 2, byte(pid >> 8), byte(pid)} {
			t.Fatalf("PUBACK %x; want id %d", ack, pid)
		}
	}
	ran := func() (n uint64) {
		for _, a := range e.srv.ackers {
			n += a.ran.Load()
		}
		return n
	}
	ran0 := ran()
	time.Sleep(time.Second)
	for pid := uint16(1); pid <= 20; pid++ {
		if _, err := conn.Write(publishV4(pid, fmt.Sprintf(`{"ts":%d,"values":{"n":%d}}`, 1000+int(pid), pid))); err != nil {
			t.Fatal(err)
		}
		readAck(pid)
	}
	if n := ran() - ran0; n < 20 {
		t.Errorf("the ackers completed %d of 20 messages", n)
	}

	for pid := uint16(21); pid <= 30; pid++ {
		if _, err := conn.Write(publishV4(pid, fmt.Sprintf(`{"ts":%d,"values":{"n":%d}}`, 1000+int(pid), pid))); err != nil {
			t.Fatal(err)
		}
	}
	for pid := uint16(21); pid <= 30; pid++ {
		readAck(pid)
	}
	dev := e.device(t, "SN-ASYNC")
	got, err := e.st.QueryTelemetry(context.Background(), store.TelemetryQuery{DeviceID: dev.ID, Keys: []string{"n"}, To: 1 << 40, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(got["n"]) != 30 {
		t.Fatalf("%d points stored after 30 acknowledgements", len(got["n"]))
	}
}

// TestAcksToADeviceNotReading: a device that pipelines messages and stops
// reading fills its socket with acknowledgements. The acker's writes, which
// never wait, leave what the socket does not take to a goroutine of the
// connection's (pollConn.send); meanwhile another device is acknowledged
// as usual; once the first reads again it gets every acknowledgement,
// whole and in order.
func TestAcksToADeviceNotReading(t *testing.T) {
	e := newEnv(t, nil)
	if len(e.srv.ackers) == 0 {
		t.Fatal("the SQLite store offers asynchronous appends; the gateway does not use them")
	}
	slowCert, _ := e.inter.device(t, "SN-SLOW")
	// Small buffers on both sides, so that a few hundred records fill
	// them: the device's receive buffer set before it connects, so that
	// the window it offers is small from the start.
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) }); err != nil {
			return err
		}
		return serr
	}}
	slow, err := rawConnectWith(e, slowCert, d)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	e.srv.mu.Lock()
	ss := e.srv.sessions["SN-SLOW"]
	e.srv.mu.Unlock()
	if err := ss.pc.Conn.(*net.TCPConn).SetWriteBuffer(1024); err != nil {
		t.Fatal(err)
	}

	const n = 2000
	sent := make(chan error, 1)
	go func() {
		// Each message on its own, so that each has a record of its own
		// to acknowledge it, until the server stops reading (maxPending)
		// and this write waits for it.
		for pid := 1; pid <= n; pid++ {
			if _, err := slow.Write(publishV4(uint16(pid), fmt.Sprintf(`{"ts":%d,"values":{"n":%d}}`, 1000+pid, pid))); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	// Left to the connection's goroutine, which waits for the device.
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n, sending := ss.pc.backlogged(); !sending || e.srv.backlogs.Load() == 0 {
			return fmt.Errorf("nothing left for later yet (%d bytes kept, sending %v, %d packets read)", n, sending, e.srv.packets.Load())
		}
		return nil
	})

	// The acker is free: another device is acknowledged.
	otherCert, _ := e.inter.device(t, "SN-OTHER")
	other, err := rawConnect(e, otherCert)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := other.Write(publishV4(7, `{"ts":1,"values":{"n":1}}`)); err != nil {
		t.Fatal(err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(other, ack[:]); err != nil || ack != [4]byte{0x40, 2, 0, 7} {
		t.Fatalf("the other device's PUBACK: %x, %v", ack, err)
	}

	// The slow device reads again: every acknowledgement, in order.
	slow.SetReadDeadline(time.Now().Add(30 * time.Second))
	for pid := 1; pid <= n; pid++ {
		if _, err := io.ReadFull(slow, ack[:]); err != nil {
			t.Fatalf("waiting for PUBACK %d: %v", pid, err)
		}
		if ack != [4]byte{0x40, 2, byte(pid >> 8), byte(pid)} {
			t.Fatalf("PUBACK %x; want id %d", ack, pid)
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}
