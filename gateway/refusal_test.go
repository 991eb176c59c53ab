package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.golang/paho"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
)

// tlsRefused connects with cert (nil: none) and returns the error the
// client sees: with TLS 1.3 the client's handshake completes before the
// server has checked its certificate, so the alert arrives on first read.
func (e *env) tlsRefused(t *testing.T, cert *tls.Certificate, maxVersion uint16) error {
	t.Helper()
	cfg := e.clientTLS(cert)
	cfg.MaxVersion = maxVersion
	conn, err := tls.Dial("tcp", e.addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	// MQTT 3.1.1 CONNECT, client id "x", keep-alive 30.
	if _, err := conn.Write([]byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 1, 'x'}); err != nil {
		return err
	}
	var b [4]byte
	_, err = conn.Read(b[:])
	if err == nil {
		t.Fatalf("server answered %x instead of refusing the handshake", b)
	}
	return err
}

func TestHandshakeRefusals(t *testing.T) {
	e := newEnv(t, nil)
	now := time.Now()
	expired, _ := e.inter.device(t, "SN-EXPIRED", validity(now.Add(-48*time.Hour), now.Add(-24*time.Hour)))
	future, _ := e.inter.device(t, "SN-FUTURE", validity(now.Add(time.Hour), now.Add(48*time.Hour)))
	other := newRootCA(t, "Other Root").sub(t, "Other Device CA")
	foreign, _ := other.device(t, "SN-FOREIGN")
	self := selfSigned(t, "SN-SELF")
	cases := []struct {
		name, device, reason string
		cert                 *tls.Certificate
		alert                string
	}{
		{"expired", "SN-EXPIRED", ReasonExpired, &expired, "bad certificate"},
		{"not yet valid", "SN-FUTURE", ReasonNotYetValid, &future, "bad certificate"},
		{"unknown CA", "SN-FOREIGN", ReasonUnknownCA, &foreign, "bad certificate"},
		{"self-signed", "SN-SELF", ReasonSelfSigned, &self, "bad certificate"},
		{"no certificate", "", ReasonNoClientCert, nil, "bad certificate"},
	}
	for _, tc := range cases {
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			err := e.tlsRefused(t, tc.cert, v)
			if !strings.Contains(err.Error(), tc.alert) {
				t.Errorf("%s (TLS %x): client error %v, want alert %q", tc.name, v, err, tc.alert)
			}
		}
		ev := e.waitEvent(t, tc.device, store.EventRefused, tc.reason)
		if tc.cert != nil && !strings.Contains(string(ev.Detail), tc.cert.Leaf.Subject.CommonName) {
			t.Errorf("%s: event detail %s lacks the CN", tc.name, ev.Detail)
		}
		if !strings.HasPrefix(ev.Addr, "127.0.0.1:") || ev.Node != "node-1" {
			t.Errorf("%s: event addr %q node %q", tc.name, ev.Addr, ev.Node)
		}
		if _, err := e.st.GetDevice(context.Background(), tc.device); err == nil && tc.device != "" {
			t.Errorf("%s: refused device was created", tc.name)
		}
	}
	if n := e.srv.Sessions(); n != 0 {
		t.Errorf("sessions = %d after refusals", n)
	}
}

func TestRevocation(t *testing.T) {
	var preRevoked tls.Certificate
	e := newEnv(t, func(e *env, cfg *Config) {
		var leaf = e.inter
		c, l := leaf.device(t, "SN-PRE")
		preRevoked = c
		if err := cfg.Store.Revoke(context.Background(), store.Revocation{Serial: pki.SerialHex(l), Reason: "keyCompromise", RevokedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	})
	// Loaded from the store at start.
	if _, ack, _ := e.tryV5(preRevoked); ack == nil || ack.ReasonCode != codeNotAuthorized {
		t.Errorf("pre-revoked connack = %+v", ack)
	}
	e.waitEvent(t, "SN-PRE", store.EventRefused, ReasonRevoked)

	// Revoked while connected: the session ends, and the next CONNECT is
	// refused.
	cert, leaf := e.inter.device(t, "SN-LIVE")
	c := e.v5(t, cert)
	rev, _ := json.Marshal(store.Revocation{Serial: strings.ToUpper(pki.SerialHex(leaf)), Reason: "superseded"})
	if err := e.bus.Publish(context.Background(), bus.TopicRevocations, rev); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-c.disconnected:
		if d.ReasonCode != codeNotAuthorized {
			t.Errorf("disconnect reason %#x", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("revoked session was not disconnected")
	}
	if _, ack, _ := e.tryV5(cert); ack == nil || ack.ReasonCode != codeNotAuthorized {
		t.Errorf("revoked connack = %+v", ack)
	}
	e.waitEvent(t, "SN-LIVE", store.EventRefused, ReasonRevoked)
}

func TestProfilePolicy(t *testing.T) {
	e := newEnv(t, func(_ *env, cfg *Config) {
		cfg.Profile = Profile{Name: "sn", CNRegex: `^SN-(\d+)$`, AllowCreate: true}
	})
	bad, _ := e.inter.device(t, "BAD-1")
	if _, ack, _ := e.tryV5(bad); ack == nil || ack.ReasonCode != codeNotAuthorized {
		t.Errorf("cn-mismatch connack = %+v", ack)
	}
	e.waitEvent(t, "", store.EventRefused, ReasonCNMismatch)
	good, _ := e.inter.device(t, "SN-0042")
	e.v5(t, good)
	if d := e.device(t, "0042"); d.Profile != "sn" {
		t.Errorf("device profile %q", d.Profile)
	}

	// AllowCreate=false: unknown names are refused (3.1.1: return code 5).
	e2 := newEnv(t, func(_ *env, cfg *Config) {
		p := DefaultProfile()
		p.AllowCreate = false
		cfg.Profile = p
	})
	cert, _ := e2.inter.device(t, "SN-NEW")
	opts := mqtt3.NewClientOptions().AddBroker("ssl://" + e2.addr).SetTLSConfig(e2.clientTLS(&cert)).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	c := mqtt3.NewClient(opts)
	tok := c.Connect()
	tok.WaitTimeout(10 * time.Second)
	if tok.Error() == nil || !strings.Contains(tok.Error().Error(), "not Authorized") {
		t.Errorf("unknown device connect error = %v", tok.Error())
	}
	e2.waitEvent(t, "SN-NEW", store.EventRefused, ReasonUnknownDevice)
}

func TestTakeoverAndClonedIdentity(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-CLONE")
	first := e.v5(t, cert)
	var prev = first
	for i := 0; i < 3; i++ {
		next := e.v5(t, cert)
		select {
		case d := <-prev.disconnected:
			if d.ReasonCode != codeSessionTakenOver {
				t.Errorf("takeover disconnect reason %#x", d.ReasonCode)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("older session was not disconnected")
		}
		prev = next
	}
	ev := e.waitEvent(t, "SN-CLONE", store.EventTakeover, "")
	var det map[string]string
	if json.Unmarshal(ev.Detail, &det) != nil || det["oldAddr"] == "" || det["newAddr"] == "" || det["oldAddr"] == det["newAddr"] {
		t.Errorf("takeover detail %s", ev.Detail)
	}
	e.waitEvent(t, "SN-CLONE", store.EventCloned, "")
	if n := e.srv.Sessions(); n != 1 {
		t.Errorf("sessions = %d, want 1", n)
	}
	// The survivor still works and the device is online.
	if code := prev.pub(t, "v1/devices/me/telemetry", `{"alive":1}`); code != 0 {
		t.Errorf("puback %#x", code)
	}
	if d := e.device(t, "SN-CLONE"); !d.Online {
		t.Error("device offline after takeovers")
	}
}

// TestExpiryAfterCachedChain checks that a chain remembered as verified is
// refused once the clock passes its certificate's end of validity.
func TestExpiryAfterCachedChain(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	e := newEnv(t, func(_ *env, cfg *Config) {
		cfg.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	})
	cert, _ := e.inter.device(t, "SN-SHORT", validity(time.Now().Add(-time.Minute), time.Now().Add(time.Hour)))
	c := e.v5(t, cert)
	c.Disconnect(&paho.Disconnect{})
	clock.Store(time.Now().Add(2 * time.Hour).UnixNano())
	if err := e.tlsRefused(t, &cert, tls.VersionTLS13); !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("client error %v", err)
	}
	e.waitEvent(t, "SN-SHORT", store.EventRefused, ReasonExpired)
}
