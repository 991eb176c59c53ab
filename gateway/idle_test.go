package gateway

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
)

// TestSlowPacketAcrossIdleHandOff sends a QoS 1 PUBLISH in pieces, each
// after a pause longer than idleAfter: the session hands its wait to the
// small goroutine between packets and extends its deadline within one, so
// the packet is still read whole, stored and acknowledged.
func TestSlowPacketAcrossIdleHandOff(t *testing.T) {
	// Restored after the server's own cleanup, which ends its sessions.
	saved := idleAfter
	t.Cleanup(func() { idleAfter = saved })
	idleAfter = 250 * time.Millisecond
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-SLOW")
	conn, err := rawConnect(e, cert)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := `{"ts":1700000000000,"values":{"slow":1}}`
	topic := "v1/devices/me/telemetry"
	body := []byte{byte(len(topic) >> 8), byte(len(topic))}
	body = append(body, topic...)
	body = append(body, 0, 7) // packet id 7
	body = append(body, payload...)
	pkt := append([]byte{0x32, byte(len(body))}, body...) // PUBLISH, QoS 1
	time.Sleep(idleAfter * 2)                             // idle first: the session hands off its wait
	pieces := [][]byte{pkt[:1], pkt[1:5], pkt[5:]}
	for _, p := range pieces {
		if _, err := conn.Write(p); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idleAfter * 2)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ack [4]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		t.Fatalf("no PUBACK for a slowly sent packet: %v", err)
	}
	if ack != [4]byte{0x40, 2, 0, 7} {
		t.Fatalf("PUBACK %x", ack)
	}
	dev := e.device(t, "SN-SLOW")
	tstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		pts, err := e.st.LatestTelemetry(context.Background(), dev.ID, []string{"slow"})
		if err != nil {
			return err
		}
		if p, ok := pts["slow"]; !ok || string(p.Value) != "1" {
			return fmt.Errorf("stored: %v", pts)
		}
		return nil
	})
}
