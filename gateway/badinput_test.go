package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.golang/paho"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

func (e *env) waitCounter(t *testing.T, name, counter string, want int64) {
	t.Helper()
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		d, err := e.st.GetDevice(context.Background(), name)
		if err != nil {
			return err
		}
		if d.Counters[counter] != want {
			return fmt.Errorf("counter %s = %d, want %d (all %v)", counter, d.Counters[counter], want, d.Counters)
		}
		return nil
	})
}

func TestBadInputV5(t *testing.T) {
	e := newEnv(t, func(_ *env, cfg *Config) {
		p := DefaultProfile()
		p.MaxPayload = 1024
		cfg.Profile = p
	})
	cert, _ := e.inter.device(t, "SN-BAD5")
	c := e.v5(t, cert)
	other, _ := e.inter.device(t, "SN-GOOD5")
	o := e.v5(t, other)
	cases := []struct {
		topic, payload string
		code           byte
	}{
		{"v1/devices/me/telemetry", `{"t":`, codePayloadFormat},
		{"v1/devices/me/telemetry", `42`, codePayloadFormat},
		{"v1/devices/me/telemetry", `[1,2]`, codePayloadFormat},
		{"v1/devices/me/telemetry", `{"ts":"yesterday","values":{"a":1}}`, codePayloadFormat},
		{"v1/devices/me/attributes", `["a"]`, codePayloadFormat},
		{"v1/devices/me/nowhere", `{"a":1}`, codeTopicNameInvalid},
		{"v1/devices/me/telemetry", `{"big":"` + strings.Repeat("x", 2000) + `"}`, codeQuotaExceeded},
	}
	for _, tc := range cases {
		if code := c.pub(t, tc.topic, tc.payload); code != tc.code {
			t.Errorf("%s %.40s: PUBACK %#x, want %#x", tc.topic, tc.payload, code, tc.code)
		}
	}
	// The session and the other device are unaffected.
	if code := c.pub(t, "v1/devices/me/telemetry", `{"ok":1}`); code != 0 {
		t.Errorf("valid message after bad ones: %#x", code)
	}
	if code := o.pub(t, "v1/devices/me/telemetry", `{"ok":2}`); code != 0 {
		t.Errorf("other device: %#x", code)
	}
	e.waitCounter(t, "SN-BAD5", "rejected.payload-format", 5)
	e.waitCounter(t, "SN-BAD5", "rejected.topic", 1)
	e.waitCounter(t, "SN-BAD5", "rejected.too-large", 1)
	ev := e.waitEvent(t, "SN-BAD5", store.EventBadInput, "topic")
	if !strings.Contains(string(ev.Detail), "v1/devices/me/nowhere") {
		t.Errorf("bad-input detail %s", ev.Detail)
	}

	// A packet beyond the advertised maximum packet size ends the session
	// with 0x95.
	big := strings.Repeat("y", 1024+9000)
	c.Publish(context.Background(), &paho.Publish{Topic: "v2/t", QoS: 0, Payload: []byte(big)})
	select {
	case d := <-c.disconnected:
		if d.ReasonCode != codePacketTooLarge {
			t.Errorf("disconnect reason %#x", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("oversized packet did not end the session")
	}
	if code := o.pub(t, "v2/t", `{"ok":3}`); code != 0 {
		t.Errorf("other device after oversized packet: %#x", code)
	}
}

func TestBadInputV3(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-BAD3")
	c := e.v3(t, cert)
	// Default: PUBACK and drop, the session stays.
	c.pub(t, "v1/devices/me/telemetry", `{not json}`)
	c.pub(t, "v2/unknown", `{}`)
	c.pub(t, "v1/devices/me/telemetry", `{"fine":true}`)
	d := e.device(t, "SN-BAD3")
	got, err := e.st.LatestTelemetry(context.Background(), d.ID, []string{"fine"})
	if err != nil || string(got["fine"].Value) != "true" {
		t.Errorf("telemetry after bad input = %v, %v", got, err)
	}
	e.waitCounter(t, "SN-BAD3", "rejected.payload-format", 1)
	e.waitCounter(t, "SN-BAD3", "rejected.topic", 1)
	if !c.IsConnectionOpen() {
		t.Error("3.1.1 session closed on bad input with the default profile")
	}

	// DisconnectOnBadInput: the connection is closed instead.
	e2 := newEnv(t, func(_ *env, cfg *Config) {
		p := DefaultProfile()
		p.DisconnectOnBadInput = true
		cfg.Profile = p
	})
	cert2, _ := e2.inter.device(t, "SN-STRICT")
	c2 := e2.v3(t, cert2)
	c2.Publish("v1/devices/me/telemetry", 1, false, `[[]]`)
	select {
	case <-c2.lost:
	case <-time.After(5 * time.Second):
		t.Fatal("strict profile kept the session")
	}
	e2.waitCounter(t, "SN-STRICT", "rejected.payload-format", 1)
}

func TestWillAndKeepAlive(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-WILL")
	conn, c := e.rawV5(t, cert, 1, &paho.WillMessage{Topic: "v1/devices/me/telemetry", Payload: []byte(`{"lastWill":"gone"}`), QoS: 1})
	_ = c
	d := e.device(t, "SN-WILL")
	// Silence for 1.5 × keep-alive: the server closes and processes the
	// will as if the device had published it.
	start := time.Now()
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		got, err := e.st.LatestTelemetry(context.Background(), d.ID, []string{"lastWill"})
		if err != nil {
			return err
		}
		if string(got["lastWill"].Value) != `"gone"` {
			return fmt.Errorf("will not stored: %v", got)
		}
		return nil
	})
	if el := time.Since(start); el < time.Second {
		t.Errorf("closed after %v, before the keep-alive allowance", el)
	}
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		d, err := e.st.GetDevice(context.Background(), "SN-WILL")
		if err != nil || d.Online {
			return fmt.Errorf("still online: %v", err)
		}
		return nil
	})
	conn.Close()
}

// TestMalformedPackets sends packets the codec cannot decode (one of them
// makes it index out of range) over a real connection: the session ends
// with DISCONNECT 0x81, the server and other devices carry on.
func TestMalformedPackets(t *testing.T) {
	e := newEnv(t, nil)
	other, _ := e.inter.device(t, "SN-BYSTANDER")
	o := e.v5(t, other)
	cert, _ := e.inter.device(t, "SN-GARBAGE")
	for _, garbage := range [][]byte{
		{0x82, 6, 0, 1, 0, 0, 1, 'a'},        // SUBSCRIBE without its options byte
		{0x32, 3, 0, 9, 'v'},                 // PUBLISH whose topic overruns the packet
		{0xf0, 0},                            // AUTH without content
		{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f}, // remaining length over four bytes
		{0x62, 2, 0, 1, 0x10, 0},             // PUBREL, then an empty second CONNECT
	} {
		conn, err := tls.Dial("tcp", e.addr, e.clientTLS(&cert))
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		connect := []byte{0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 30, 0, 0, 1, 'x'}
		if _, err := conn.Write(connect); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		fh, err := readFixedHeader(r)
		if err != nil || fh.Type != 2 {
			t.Fatalf("connack: %+v %v", fh, err)
		}
		io.CopyN(io.Discard, r, int64(fh.Remaining))
		conn.Write(garbage)
		// Whatever the server answers, the connection must end.
		_, err = io.Copy(io.Discard, r)
		if err != nil && !strings.Contains(err.Error(), "reset") {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("%x: connection not closed", garbage)
			}
		}
		conn.Close()
	}
	e.waitCounter(t, "SN-GARBAGE", "rejected.protocol", 5)
	if code := o.pub(t, "v1/devices/me/telemetry", `{"still":"here"}`); code != 0 {
		t.Errorf("bystander puback %#x", code)
	}
}
