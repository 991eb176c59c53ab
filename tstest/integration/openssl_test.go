package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
)

// opensslPKI builds, with openssl alone, what the seed's operator has: a
// root, an intermediate "inter.crt" that signs devices, and a server
// certificate for 127.0.0.1.
func opensslPKI(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.ext", "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n")
	write("server.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
	run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root.key", "-out", "root.crt",
		"-subj", "/CN=Seed Root CA", "-days", "30",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "inter.key", "-out", "inter.csr", "-subj", "/CN=Seed Intermediate CA")
	run("x509", "-req", "-in", "inter.csr", "-CA", "root.crt", "-CAkey", "root.key", "-CAcreateserial",
		"-out", "inter.crt", "-days", "30", "-sha256", "-extfile", "ca.ext")
	run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
	run("x509", "-req", "-in", "server.csr", "-CA", "root.crt", "-CAkey", "root.key", "-CAcreateserial",
		"-out", "server.crt", "-days", "30", "-sha256", "-extfile", "server.ext")
	return dir
}

// seedDevice runs seed 001's own commands for one serial number.
func seedDevice(t *testing.T, dir, sn string) {
	t.Helper()
	for _, args := range [][]string{
		{"genpkey", "-algorithm", "RSA", "-out", sn + ".key"},
		{"req", "-new", "-key", sn + ".key", "-subj", "/CN=" + sn, "-out", sn + ".csr"},
		{"x509", "-req", "-in", sn + ".csr", "-CA", "inter.crt", "-CAkey", "inter.key", "-CAcreateserial", "-out", sn + ".crt", "-days", "1095", "-sha256"},
	} {
		cmd := exec.Command("openssl", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestSeedCertificatesWithMosquittoPub: a device certificate made with the
// seed's openssl commands, sending the leaf alone or leaf + intermediate,
// is accepted by the server started with --device-ca inter.crt, and its
// telemetry is stored. A revoked serial is then refused.
func TestSeedCertificatesWithMosquittoPub(t *testing.T) {
	needTool(t, "openssl")
	needTool(t, "mosquitto_pub")
	dir := opensslPKI(t)
	s := startServer(t, t.TempDir(),
		"--tls-cert", filepath.Join(dir, "server.crt"), "--tls-key", filepath.Join(dir, "server.key"),
		"--device-ca", filepath.Join(dir, "inter.crt"))
	host, port, _ := strings.Cut(s.mqttAddr, ":")

	seedDevice(t, dir, "SN-000001")
	leaf, _ := os.ReadFile(filepath.Join(dir, "SN-000001.crt"))
	inter, _ := os.ReadFile(filepath.Join(dir, "inter.crt"))
	chain := filepath.Join(dir, "SN-000001-chain.crt")
	if err := os.WriteFile(chain, append(append([]byte{}, leaf...), inter...), 0o600); err != nil {
		t.Fatal(err)
	}
	pub := func(certFile, msg string) (string, error) {
		cmd := exec.Command("mosquitto_pub", "-h", host, "-p", port, "--cafile", filepath.Join(dir, "root.crt"),
			"--cert", certFile, "--key", filepath.Join(dir, "SN-000001.key"), "-i", "esp32-SN-000001",
			"-q", "1", "-t", "v1/devices/me/telemetry", "-m", msg)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for i, certFile := range []string{filepath.Join(dir, "SN-000001.crt"), chain} {
		if out, err := pub(certFile, fmt.Sprintf(`{"temperature":2%d.5,"humidity":56}`, i)); err != nil {
			t.Fatalf("mosquitto_pub with %s: %v\n%s", filepath.Base(certFile), err, out)
		}
		var latest map[string]struct {
			Value json.RawMessage `json:"value"`
		}
		if code := s.api("GET", "/api/v1/devices/SN-000001/telemetry/latest", "", &latest); code != 200 {
			t.Fatalf("latest: %d", code)
		}
		if got, want := string(latest["temperature"].Value), fmt.Sprintf("2%d.5", i); got != want {
			t.Errorf("after %s: temperature %s, want %s", filepath.Base(certFile), got, want)
		}
	}

	// Revoke the device's serial through the API: the next connection is
	// refused with "not authorised" and the refusal is recorded.
	out, err := exec.Command("openssl", "x509", "-in", filepath.Join(dir, "SN-000001.crt"), "-noout", "-serial").Output()
	if err != nil {
		t.Fatal(err)
	}
	serial := strings.TrimPrefix(strings.TrimSpace(string(out)), "serial=")
	if code := s.api("POST", "/api/v1/revocations", fmt.Sprintf(`{"serial":%q,"reason":"keyCompromise"}`, serial), nil); code != 201 {
		t.Fatalf("revoke: %d", code)
	}
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		out, err := pub(filepath.Join(dir, "SN-000001.crt"), `{"temperature":99}`)
		if err == nil {
			return fmt.Errorf("revoked certificate still accepted")
		}
		if !strings.Contains(strings.ToLower(out), "not authori") {
			return fmt.Errorf("refused without 'not authorised': %s", out)
		}
		return nil
	})
	// Refusal events are written off the connection's path, so that a
	// flood of refused connections cannot slow the server: wait for it.
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		var evs struct {
			Events []struct{ Kind, Reason, Device string }
		}
		s.api("GET", "/api/v1/events?kind=refused", "", &evs)
		for _, e := range evs.Events {
			if e.Reason == "revoked" && e.Device == "SN-000001" {
				return nil
			}
		}
		return fmt.Errorf("no refused/revoked event for SN-000001 in %+v", evs.Events)
	})
}
