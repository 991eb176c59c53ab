package gateway

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

// nth waits for the n-th (from 1) message on topic.
func (r *received) nth(t *testing.T, topic string, n int) msg {
	t.Helper()
	var got msg
	tstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		i := 0
		for _, m := range r.msgs {
			if m.topic == topic {
				if i++; i == n {
					got = m
					return nil
				}
			}
		}
		return fmt.Errorf("%d messages on %s, want %d", i, topic, n)
	})
	return got
}

func csrFor(t *testing.T, key any, cn string) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pki.EncodeCSRPEM(der))
}

func certRequest(t *testing.T, csr string) string {
	b, _ := json.Marshal(map[string]string{"csr": csr})
	return string(b)
}

type certAnswer struct {
	Cert     string    `json:"cert"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"notAfter"`
	Error    string    `json:"error"`
}

func TestCertRotationRequest(t *testing.T) {
	e := newEnv(t, func(e *env, c *Config) {
		c.Issuer = &pki.CA{Cert: e.inter.cert, Key: e.inter.key}
		c.RotationGrace = time.Hour
		c.CSRBurst = 5
	})
	// The test CA lives a day: the device's certificate must expire
	// before it for a rotation to give a longer-lived one.
	cert, leaf := e.inter.device(t, "SN-ROT", validity(time.Now().Add(-time.Hour), time.Now().Add(time.Hour)))
	c := e.v3(t, cert)
	c.sub(t, "v1/devices/me/cert/response")
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	bad := []struct{ payload, want string }{
		{"not json", "must be"},
		{`{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}`, "refused"},
		{certRequest(t, csrFor(t, newKey(t), "SN-OTHER")), "common name"},
		{certRequest(t, csrFor(t, weak, "SN-ROT")), "1024 bits"},
	}
	for i, b := range bad {
		c.pub(t, "v1/devices/me/cert/request", b.payload)
		var a certAnswer
		m := c.rx.nth(t, "v1/devices/me/cert/response", i+1)
		if err := json.Unmarshal([]byte(m.payload), &a); err != nil || a.Cert != "" || !strings.Contains(a.Error, b.want) {
			t.Errorf("request %d answered %s, want an error with %q", i, m.payload, b.want)
		}
	}
	// The session is unharmed: telemetry is still stored.
	c.pub(t, "v1/devices/me/telemetry", `{"t":1}`)
	dev := e.device(t, "SN-ROT")
	if pts, err := e.st.LatestTelemetry(context.Background(), dev.ID, nil); err != nil || len(pts) != 1 {
		t.Fatalf("telemetry after bad requests: %v, %v", pts, err)
	}
	if rs, _ := e.st.ListRetirements(context.Background(), dev.ID); len(rs) != 0 {
		t.Fatalf("bad requests scheduled retirements: %+v", rs)
	}
	e.waitEvent(t, "SN-ROT", store.EventCertRefused, "bad-csr")

	key := newKey(t)
	start := time.Now()
	c.pub(t, "v1/devices/me/cert/request", certRequest(t, csrFor(t, key, "SN-ROT")))
	var a certAnswer
	m := c.rx.nth(t, "v1/devices/me/cert/response", len(bad)+1)
	if err := json.Unmarshal([]byte(m.payload), &a); err != nil || a.Error != "" {
		t.Fatalf("good request answered %s", m.payload)
	}
	chain, err := pki.ParseCertsPEM([]byte(a.Cert))
	if err != nil || len(chain) != 2 {
		t.Fatalf("answer chain: %d certificates, %v", len(chain), err)
	}
	nl := chain[0]
	// The factory's validity, capped by the test CA's one day.
	if nl.Subject.CommonName != "SN-ROT" || pki.SerialHex(nl) != a.Serial || !chain[1].Equal(e.inter.cert) ||
		nl.CheckSignatureFrom(e.inter.cert) != nil || !nl.NotAfter.Equal(e.inter.cert.NotAfter) {
		t.Errorf("new certificate: %v serial %s (answer %s) not after %v", nl.Subject, pki.SerialHex(nl), a.Serial, nl.NotAfter)
	}
	rs, err := e.st.ListRetirements(context.Background(), dev.ID)
	if err != nil || len(rs) != 1 || rs[0].Serial != pki.SerialHex(leaf) || rs[0].Next != a.Serial ||
		rs[0].RetireAt.Before(start.Add(time.Hour-time.Minute)) || rs[0].RetireAt.After(time.Now().Add(time.Hour)) {
		t.Errorf("retirements = %+v, %v; want %s retired in an hour", rs, err, pki.SerialHex(leaf))
	}
	e.waitEvent(t, "SN-ROT", store.EventCertIssued, "")

	// The sixth request within the burst is refused without signing.
	c.pub(t, "v1/devices/me/cert/request", certRequest(t, csrFor(t, key, "SN-ROT")))
	m = c.rx.nth(t, "v1/devices/me/cert/response", len(bad)+2)
	if !strings.Contains(m.payload, "too many") {
		t.Errorf("request beyond the limit answered %s", m.payload)
	}

	if got := counterValue(e.srv.met.rotations.WithLabelValues("issued")); got != 1 {
		t.Errorf("certificate_requests_total{result=issued} = %v", got)
	}
	if got := counterValue(e.srv.met.rotations.WithLabelValues("bad-csr")); got != 3 {
		t.Errorf("certificate_requests_total{result=bad-csr} = %v, want 3", got)
	}
	// The device reconnects with its new certificate: the same device.
	c.Disconnect(100)
	nc := tls.Certificate{Certificate: [][]byte{nl.Raw, e.inter.cert.Raw}, PrivateKey: key, Leaf: nl}
	c2 := e.v3(t, nc)
	c2.pub(t, "v1/devices/me/telemetry", `{"t":2}`)
	creds, err := e.st.ListCredentials(context.Background(), dev.ID)
	if err != nil || len(creds) != 2 || creds[0].Serial != a.Serial {
		t.Errorf("credentials after reconnecting = %+v, %v", creds, err)
	}
}

func TestCertRotationWithoutIssuer(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-NOCA")
	c := e.v3(t, cert)
	c.sub(t, "v1/devices/me/cert/response")
	c.pub(t, "v1/devices/me/cert/request", certRequest(t, csrFor(t, newKey(t), "SN-NOCA")))
	m := c.rx.nth(t, "v1/devices/me/cert/response", 1)
	if !strings.Contains(m.payload, `"error"`) || !strings.Contains(m.payload, "not available") {
		t.Errorf("answer = %s", m.payload)
	}
}

// TestCertRotationIssuerExpiresFirst: when the issuing CA expires before
// the device's certificate, no rotation is possible; the request is
// refused and the current certificate is not scheduled for retirement.
func TestCertRotationIssuerExpiresFirst(t *testing.T) {
	e := newEnv(t, func(e *env, c *Config) {
		c.Issuer = &pki.CA{Cert: e.inter.cert, Key: e.inter.key}
	})
	cert, _ := e.inter.device(t, "SN-LATE", validity(time.Now().Add(-time.Hour), e.inter.cert.NotAfter))
	c := e.v3(t, cert)
	c.sub(t, "v1/devices/me/cert/response")
	c.pub(t, "v1/devices/me/cert/request", certRequest(t, csrFor(t, newKey(t), "SN-LATE")))
	m := c.rx.nth(t, "v1/devices/me/cert/response", 1)
	if !strings.Contains(m.payload, "issuing CA expires before") {
		t.Errorf("answer = %s", m.payload)
	}
	dev := e.device(t, "SN-LATE")
	if rs, err := e.st.ListRetirements(context.Background(), dev.ID); err != nil || len(rs) != 0 {
		t.Errorf("retirements = %+v, %v; want none", rs, err)
	}
}
