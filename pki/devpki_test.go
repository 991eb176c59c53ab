package pki_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
)

func TestEnsureDevPKI(t *testing.T) {
	base := t.TempDir()
	created, err := pki.EnsureDevPKI(base, []string{"gw.example.test", "10.1.2.3"})
	if err != nil || !created {
		t.Fatalf("first call: created %v, %v", created, err)
	}
	dir := filepath.Join(base, "pki")
	contents := map[string][]byte{}
	for _, f := range []string{"root-ca.crt", "root-ca.key", "device-ca.crt", "device-ca.key", "server.crt", "server.key"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		contents[f] = b
		if strings.HasSuffix(f, ".key") {
			st, _ := os.Stat(filepath.Join(dir, f))
			if st.Mode().Perm() != 0o600 {
				t.Errorf("%s mode %v", f, st.Mode().Perm())
			}
		}
	}
	root, srv := filepath.Join(dir, "root-ca.crt"), filepath.Join(dir, "server.crt")
	for _, extra := range [][]string{{"-verify_hostname", "localhost"}, {"-verify_ip", "127.0.0.1"},
		{"-verify_hostname", "gw.example.test"}, {"-verify_ip", "10.1.2.3"}} {
		args := append([]string{"verify", "-purpose", "sslserver", "-CAfile", root}, extra...)
		if out := openssl(t, append(args, srv)...); !strings.Contains(out, ": OK") {
			t.Fatalf("verify %v: %s", extra, out)
		}
	}
	if out, err := opensslErr(t, "verify", "-verify_hostname", "evil.example", "-CAfile", root, srv); err == nil {
		t.Fatalf("server cert verified for a name it lacks: %s", out)
	}
	san := openssl(t, "x509", "-in", srv, "-noout", "-ext", "subjectAltName")
	for _, want := range []string{"DNS:localhost", "IP Address:127.0.0.1", "DNS:gw.example.test", "IP Address:10.1.2.3"} {
		if !strings.Contains(san, want) {
			t.Errorf("SAN lacks %s: %s", want, san)
		}
	}
	// The server cert must not be usable as a device (client) identity.
	if _, err := opensslErr(t, "verify", "-purpose", "sslclient", "-CAfile", root, srv); err == nil {
		t.Error("server certificate verified for sslclient")
	}

	handshake(t, dir, "localhost")
	handshake(t, dir, "127.0.0.1")

	created, err = pki.EnsureDevPKI(base, nil)
	if err != nil || created {
		t.Fatalf("second call: created %v, %v", created, err)
	}
	for f, b := range contents {
		now, _ := os.ReadFile(filepath.Join(dir, f))
		if !bytes.Equal(now, b) {
			t.Errorf("second call changed %s", f)
		}
	}

	// A lost server key is remade without touching the CA.
	if err := os.Remove(filepath.Join(dir, "server.key")); err != nil {
		t.Fatal(err)
	}
	created, err = pki.EnsureDevPKI(base, nil)
	if err != nil || !created {
		t.Fatalf("after losing server.key: created %v, %v", created, err)
	}
	now, _ := os.ReadFile(filepath.Join(dir, "device-ca.key"))
	if !bytes.Equal(now, contents["device-ca.key"]) {
		t.Fatal("device ca key replaced")
	}
	handshake(t, dir, "localhost")
}

// Without the root key the server certificate comes from the device CA and
// server.crt carries the chain, so root-only clients still accept it.
func TestIssueServerFromDeviceCA(t *testing.T) {
	ca := newCA(t, pki.KeyEC)
	if err := os.Remove(filepath.Join(ca.Dir, "root-ca.key")); err != nil {
		t.Fatal(err)
	}
	if err := pki.IssueServer(ca.Dir, []string{"mqtt.example.test"}); err != nil {
		t.Fatal(err)
	}
	srv := filepath.Join(ca.Dir, "server.crt")
	b, _ := os.ReadFile(srv)
	certs, err := pki.ParseCertsPEM(b)
	if err != nil || len(certs) != 2 || !certs[1].Equal(ca.Cert) {
		t.Fatalf("server.crt: %v, %d certs", err, len(certs))
	}
	out := openssl(t, "verify", "-purpose", "sslserver", "-verify_hostname", "mqtt.example.test",
		"-CAfile", filepath.Join(ca.Dir, "root-ca.crt"), "-untrusted", srv, srv)
	if !strings.Contains(out, ": OK") {
		t.Fatal(out)
	}
	handshake(t, ca.Dir, "localhost")
}

// handshake serves TLS on loopback with dir's server.crt/key and connects
// with a client trusting only root-ca.crt, using serverName.
func handshake(t *testing.T, dir, serverName string) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- c.(*tls.Conn).Handshake()
	}()
	rootPEM, _ := os.ReadFile(filepath.Join(dir, "root-ca.crt"))
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		t.Fatal("no root")
	}
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: serverName})
	if err != nil {
		t.Fatalf("client handshake as %s: %v", serverName, err)
	}
	c.Close()
	if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatalf("server handshake: %v", err)
	}
}

// A device presenting LeafChainPEM is accepted by a TLS server that trusts
// only the root, and the server sees the device's CN: the shape of the
// gateway's mutual TLS.
func TestMutualTLSWithDevPKI(t *testing.T) {
	base := t.TempDir()
	if _, err := pki.EnsureDevPKI(base, nil); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "pki")
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey(pki.KeyEC)
	leaf, err := ca.IssueDevice(key.Public(), "SN-000777", 0)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pki.EncodeKeyPEM(key)
	clientCert, err := tls.X509KeyPair(ca.LeafChainPEM(leaf), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Root)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srvCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cn := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			cn <- err.Error()
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			cn <- err.Error()
			return
		}
		cn <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{clientCert}})
	if err != nil {
		t.Fatal(err)
	}
	// TLS 1.3 finishes client authentication after the client's Dial
	// returns; a read makes the client wait for the server's verdict.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Read(make([]byte, 1))
	c.Close()
	if got := <-cn; got != "SN-000777" {
		t.Fatalf("server saw %q", got)
	}
}
