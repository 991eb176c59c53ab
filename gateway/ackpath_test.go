package gateway

import (
	"context"
	"fmt"
	"io"
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
// fleet sends, each acknowledged by the acker; then, with the session's
// write lock held by someone else, pipelined messages whose
// acknowledgements go through drainAcks, still in order and only once
// stored.
func TestAsyncAcknowledgements(t *testing.T) {
	e := newEnv(t, nil)
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
	for pid := uint16(1); pid <= 20; pid++ {
		if _, err := conn.Write(publishV4(pid, fmt.Sprintf(`{"ts":%d,"values":{"n":%d}}`, 1000+int(pid), pid))); err != nil {
			t.Fatal(err)
		}
		readAck(pid)
	}
	if n := ran() - ran0; n < 20 {
		t.Errorf("the ackers completed %d of 20 messages", n)
	}

	e.srv.mu.Lock()
	ss := e.srv.sessions["SN-ASYNC"]
	e.srv.mu.Unlock()
	ss.writeMu.Lock()
	locked := true
	unlock := func() {
		if locked {
			locked = false
			ss.writeMu.Unlock()
		}
	}
	defer unlock()
	for pid := uint16(21); pid <= 30; pid++ {
		if _, err := conn.Write(publishV4(pid, fmt.Sprintf(`{"ts":%d,"values":{"n":%d}}`, 1000+int(pid), pid))); err != nil {
			t.Fatal(err)
		}
	}
	dev := e.device(t, "SN-ASYNC")
	// All ten stored, their acknowledgements with drainAcks: blocked on
	// the write lock with the first group, the others queued.
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		got, err := e.st.QueryTelemetry(context.Background(), store.TelemetryQuery{DeviceID: dev.ID, Keys: []string{"n"}, To: 1 << 40, Limit: 100})
		if err != nil {
			return err
		}
		ss.ackMu.Lock()
		busy, queued := ss.outBusy, len(ss.outq)
		ss.ackMu.Unlock()
		if len(got["n"]) != 30 || !busy {
			return fmt.Errorf("%d points stored, drainAcks running %v with %d queued", len(got["n"]), busy, queued)
		}
		return nil
	})
	unlock()
	for pid := uint16(21); pid <= 30; pid++ {
		readAck(pid)
	}
}
