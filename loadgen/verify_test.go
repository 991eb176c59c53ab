package loadgen

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thingline/thingline/pki/pkitest"
)

// serveTLS accepts TLS connections with the server certificate of the
// development PKI in dir and completes their handshakes.
func serveTLS(t *testing.T, dir string) string {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

func rootsOf(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "root-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		t.Fatal("no root certificate")
	}
	return p
}

func TestServerVerifier(t *testing.T) {
	dir := pkitest.DevPKI(t, "localhost", "127.0.0.1")
	other := pkitest.DevPKI(t, "localhost", "127.0.0.1")
	addr := serveTLS(t, dir)
	dial := func(verify func(tls.ConnectionState) error) error {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, VerifyConnection: verify})
		if err == nil {
			c.Close()
		}
		return err
	}

	good := ServerVerifier(rootsOf(t, dir), "127.0.0.1")
	for i := 0; i < 2; i++ { // the second time from memory
		if err := dial(good); err != nil {
			t.Fatalf("dial %d with the right root: %v", i, err)
		}
	}
	if err := dial(ServerVerifier(rootsOf(t, other), "127.0.0.1")); err == nil ||
		!strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("another PKI's root: err = %v, want unknown authority", err)
	}
	if err := dial(ServerVerifier(rootsOf(t, dir), "192.0.2.1")); err == nil {
		t.Error("a name the certificate does not hold was accepted")
	}
}
