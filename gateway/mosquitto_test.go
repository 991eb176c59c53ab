package gateway

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s: not installed", tool)
		}
	}
}

func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestMosquittoWithOpenSSLRSACert follows the seed's factory recipe: an
// RSA device key and certificate made by the openssl CLI under an
// intermediate, presented by Debian's mosquitto_pub with the leaf and
// intermediate, and with the leaf alone.
func TestMosquittoWithOpenSSLRSACert(t *testing.T) {
	need(t, "openssl", "mosquitto_pub")
	dir := t.TempDir()
	run(t, dir, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root.key", "-out", "root.crt",
		"-subj", "/CN=Seed Root CA", "-days", "30")
	if err := os.WriteFile(filepath.Join(dir, "ca.ext"), []byte("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, dir, "openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "inter.key", "-out", "inter.csr", "-subj", "/CN=Seed Intermediate CA")
	run(t, dir, "openssl", "x509", "-req", "-in", "inter.csr", "-CA", "root.crt", "-CAkey", "root.key", "-CAcreateserial",
		"-out", "inter.crt", "-days", "30", "-sha256", "-extfile", "ca.ext")
	// The seed's device recipe, verbatim.
	run(t, dir, "openssl", "genpkey", "-algorithm", "RSA", "-out", "SN-000001.key")
	run(t, dir, "openssl", "req", "-new", "-key", "SN-000001.key", "-subj", "/CN=SN-000001", "-out", "SN-000001.csr")
	run(t, dir, "openssl", "x509", "-req", "-in", "SN-000001.csr", "-CA", "inter.crt", "-CAkey", "inter.key", "-CAcreateserial",
		"-out", "SN-000001.crt", "-days", "1095", "-sha256")

	interPEM, err := os.ReadFile(filepath.Join(dir, "inter.crt"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(interPEM)
	inter, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(_ *env, cfg *Config) { cfg.DeviceCAs = []*x509.Certificate{inter} })
	writePEM(t, filepath.Join(dir, "server-ca.pem"), "CERTIFICATE", e.srvCA.cert.Raw)
	leafPEM, err := os.ReadFile(filepath.Join(dir, "SN-000001.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "chain.crt"), append(leafPEM, interPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(e.addr)

	for i, tc := range []struct{ certFile, version string }{
		{"chain.crt", "mqttv311"},
		{"SN-000001.crt", "mqttv311"},
		{"chain.crt", "mqttv5"},
	} {
		payload := fmt.Sprintf(`{"temperature":23.5,"humidity":56,"run":%d}`, i)
		run(t, dir, "mosquitto_pub", "--cafile", "server-ca.pem", "--cert", tc.certFile, "--key", "SN-000001.key",
			"-h", host, "-p", port, "-V", tc.version, "-q", "1", "-t", "v1/devices/me/telemetry", "-m", payload)
		d := e.device(t, "SN-000001")
		tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			got, err := e.st.LatestTelemetry(context.Background(), d.ID, []string{"run", "temperature"})
			if err != nil {
				return err
			}
			if string(got["run"].Value) != fmt.Sprint(i) || string(got["temperature"].Value) != "23.5" {
				return fmt.Errorf("%s/%s: stored %v", tc.certFile, tc.version, got)
			}
			return nil
		})
	}
	e.waitEvent(t, "SN-000001", store.EventProvisioned, "")

	// mosquitto_sub receives a server-side RPC request.
	need(t, "mosquitto_sub")
	sub := exec.Command("mosquitto_sub", "--cafile", "server-ca.pem", "--cert", "chain.crt", "--key", "SN-000001.key",
		"-h", host, "-p", port, "-q", "1", "-t", "v1/devices/me/rpc/request/+", "-C", "1", "-W", "10", "-F", "%t %p")
	sub.Dir = dir
	outCh := make(chan string, 1)
	go func() {
		out, _ := sub.CombinedOutput()
		outCh <- string(out)
	}()
	// Until mosquitto_sub's session exists and has subscribed, the request
	// finds no session or goes unseen; retry until it is printed.
	var out string
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		e.bus.Request(context.Background(), "SN-000001", bus.Command{Kind: bus.CommandRPC, TimeoutMs: 50,
			Payload: json.RawMessage(`{"method":"blink","params":{"times":3}}`)})
		select {
		case out = <-outCh:
			return nil
		default:
			return fmt.Errorf("mosquitto_sub printed nothing yet")
		}
	})
	if !strings.HasPrefix(out, "v1/devices/me/rpc/request/") || !strings.Contains(out, `{"method":"blink","params":{"times":3}}`) {
		t.Errorf("mosquitto_sub got %q", out)
	}
}
