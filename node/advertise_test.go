package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeviceAddrUsable: a node listening on every interface tells devices
// an address its server certificate covers (never "[::]" or "0.0.0.0"),
// and a TLS client verifying the development root connects to it.
func TestDeviceAddrUsable(t *testing.T) {
	n, err := Start(context.Background(), Config{
		DataDir: t.TempDir(), MQTTListen: ":0", HTTPListen: "127.0.0.1:0", AdminToken: "t",
		Logger: slog.New(slog.DiscardHandler), Out: io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	addr, note := n.DeviceAddr()
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "::" || host == "0.0.0.0" || host == "" {
		t.Fatalf("device address %q", addr)
	}
	if note != "" && !strings.Contains(note, "--tls-cert") {
		t.Errorf("note %q does not say how to serve other names", note)
	}
	root, err := os.ReadFile(filepath.Join(n.PKIDir(), "root-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	// No client certificate: the handshake fails at the server's check,
	// after the client has verified the server for this host name.
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: host})
	if err == nil {
		c.Close()
	} else if strings.Contains(err.Error(), "certificate is valid for") || strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("a device pointed at %s cannot verify the server: %v", addr, err)
	}
}
