package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	paho "github.com/eclipse/paho.golang/paho"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

func TestRotationAndUnknownSerial(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	if err := e.st.AddUnits(ctx, []store.Unit{{SN: "SN-MADE", Serial: "1", ProducedAt: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	first, _ := e.inter.device(t, "SN-MADE")
	c := e.v5(t, first)
	c.Disconnect(&paho.Disconnect{})
	second, leaf2 := e.inter.device(t, "SN-MADE")
	e.v5(t, second)
	ev := e.waitEvent(t, "SN-MADE", store.EventRotation, "")
	if ev.Addr == "" {
		t.Error("rotation event without address")
	}
	d := e.device(t, "SN-MADE")
	creds, err := e.st.ListCredentials(ctx, d.ID)
	if err != nil || len(creds) != 2 || creds[0].Serial != pki.SerialHex(leaf2) {
		t.Errorf("credentials after rotation = %+v, %v", creds, err)
	}

	// A CN the factory never produced is accepted but flagged.
	stray, _ := e.inter.device(t, "SN-STRAY")
	e.v5(t, stray)
	e.waitEvent(t, "SN-STRAY", store.EventUnknownUnit, "")
	evs, err := e.st.ListEvents(ctx, store.EventQuery{Device: "SN-MADE", Kind: store.EventUnknownUnit})
	if err != nil || len(evs) != 0 {
		t.Errorf("produced unit flagged: %v %v", evs, err)
	}
}

func TestQoSVariantsV3(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-QOS")
	c := e.v3(t, cert)
	d := e.device(t, "SN-QOS")
	ctx := context.Background()

	// QoS 0 telemetry is stored too, just not acknowledged.
	c.Publish("v1/devices/me/telemetry", 0, false, `{"q0":1}`)
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		got, err := e.st.LatestTelemetry(ctx, d.ID, []string{"q0"})
		if err != nil || string(got["q0"].Value) != "1" {
			return fmt.Errorf("q0 = %v, %v", got, err)
		}
		return nil
	})
	// QoS 2 under 3.1.1: PUBREC after storing, PUBCOMP on PUBREL.
	tok := c.Publish("v1/devices/me/telemetry", 2, false, `{"q2":2}`)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("qos 2 publish: %v", tok.Error())
	}
	got, err := e.st.LatestTelemetry(ctx, d.ID, []string{"q2"})
	if err != nil || string(got["q2"].Value) != "2" {
		t.Errorf("q2 = %v, %v", got, err)
	}
	// A QoS 0 subscription gets QoS 0 pushes.
	if tok := c.Subscribe("v1/devices/me/attributes", 0, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if _, err := e.srv.bus.Request(ctx, "SN-QOS", busAttrs(`{"k":1}`)); err != nil {
		t.Fatal(err)
	}
	if m := c.rx.wait(t, "v1/devices/me/attributes"); m.qos != 0 || m.payload != `{"k":1}` {
		t.Errorf("push = %+v", m)
	}
}

// TestTakeoverAcrossNodes runs two gateways on one store and bus: a device
// moving to the second node is closed on the first.
func TestTakeoverAcrossNodes(t *testing.T) {
	e := newEnv(t, nil)
	cfg := e.cfg
	cfg.Node = "node-2"
	cfg.Registerer = nil
	srv2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv2.Serve(ln)
	defer srv2.Close()
	e2 := *e
	e2.srv, e2.addr = srv2, ln.Addr().String()

	cert, _ := e.inter.device(t, "SN-ROAM")
	c1 := e.v5(t, cert)
	e2.v5(t, cert)
	select {
	case d := <-c1.disconnected:
		if d.ReasonCode != codeSessionTakenOver {
			t.Errorf("disconnect reason %#x", d.ReasonCode)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("node-1 kept the session")
	}
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		d, err := e.st.GetDevice(context.Background(), "SN-ROAM")
		if err != nil || !d.Online || d.Node != "node-2" {
			return fmt.Errorf("device %+v, %v", d, err)
		}
		if e.srv.Sessions() != 0 || srv2.Sessions() != 1 {
			return fmt.Errorf("sessions %d/%d", e.srv.Sessions(), srv2.Sessions())
		}
		return nil
	})
	ev := e.waitEvent(t, "SN-ROAM", store.EventTakeover, "")
	if ev.Node != "node-1" {
		t.Errorf("takeover recorded by %q", ev.Node)
	}
}

// TestTLSVersionsAndResumption: TLS 1.2 is accepted, and a TLS 1.3 session
// resumed from a ticket keeps the device's identity.
func TestTLSVersionsAndResumption(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-TLS")
	connect := func(cfg *tls.Config) *tls.Conn {
		t.Helper()
		conn, err := tls.Dial("tcp", e.addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write(connectV4); err != nil {
			t.Fatal(err)
		}
		var ack [4]byte
		if _, err := io.ReadFull(conn, ack[:]); err != nil || ack != [4]byte{0x20, 2, 0, 0} {
			t.Fatalf("connack %x, %v", ack, err)
		}
		return conn
	}
	cfg := e.clientTLS(&cert)
	cfg.MaxVersion = tls.VersionTLS12
	c := connect(cfg)
	if v := c.ConnectionState().Version; v != tls.VersionTLS12 {
		t.Errorf("version %x", v)
	}
	c.Close()

	cfg = e.clientTLS(&cert)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	c = connect(cfg)
	// The ticket arrives after the handshake; reading the CONNACK above
	// has processed it.
	c.Close()
	c = connect(cfg)
	defer c.Close()
	if !c.ConnectionState().DidResume {
		t.Error("second connection did not resume")
	}
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		d, err := e.st.GetDevice(context.Background(), "SN-TLS")
		if err != nil || !d.Online {
			return fmt.Errorf("device %+v, %v", d, err)
		}
		return nil
	})
}
