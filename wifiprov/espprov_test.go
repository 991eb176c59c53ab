package wifiprov_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/protocomm/httpd"
	"github.com/thingline/thingline/protocomm/security"
	"github.com/thingline/thingline/wifiprov"
)

// TestEspProv runs Espressif's own esp_prov.py (ESP-IDF v5.5) against our
// device over HTTP on loopback. THINGLINE_ESP_PROV points at a tree holding
// tools/esp_prov and components/{protocomm,wifi_provisioning}/python (an
// ESP-IDF checkout will do); THINGLINE_PYTHON names a Python with protobuf
// and cryptography (default python3).
func TestEspProv(t *testing.T) {
	idf := os.Getenv("THINGLINE_ESP_PROV")
	if idf == "" {
		t.Skip("esp_prov compatibility: THINGLINE_ESP_PROV not set to an ESP-IDF tree")
	}
	script := filepath.Join(idf, "tools", "esp_prov", "esp_prov.py")
	if _, err := os.Stat(script); err != nil {
		t.Skipf("esp_prov compatibility: %v", err)
	}
	python := os.Getenv("THINGLINE_PYTHON")
	if python == "" {
		python = "python3"
	}
	if _, err := exec.LookPath(python); err != nil {
		t.Skipf("esp_prov compatibility: %s not installed", python)
	}
	cases := []struct {
		name string
		sec  func(t *testing.T) security.Scheme
		args []string
	}{
		{"sec0", func(*testing.T) security.Scheme { return security.NewSec0() }, []string{"--sec_ver", "0"}},
		{"sec1", func(*testing.T) security.Scheme { return security.NewSec1([]byte("abcd1234")) }, []string{"--sec_ver", "1", "--pop", "abcd1234"}},
		{"sec2 patch1", func(t *testing.T) security.Scheme { return sec2(t, 1) }, []string{"--sec_ver", "2", "--sec2_username", "wifiprov", "--sec2_pwd", "abcd1234"}},
		{"sec2 patch0", func(t *testing.T) security.Scheme { return sec2(t, 0) }, []string{"--sec_ver", "2", "--sec2_username", "wifiprov", "--sec2_pwd", "abcd1234"}},
	}
	// run starts esp_prov; without "--ssid" in extra it scans and stdin
	// picks the network.
	run := func(t *testing.T, addr, stdin string, extra ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		args := append([]string{script, "--transport", "softap", "--service_name", addr,
			"--passphrase", "correct horse", "--custom_data", "hello"}, extra...)
		cmd := exec.CommandContext(ctx, python, args...)
		cmd.Env = append(os.Environ(), "IDF_PATH="+idf)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		t.Logf("esp_prov %s:\n%s", strings.Join(extra, " "), out)
		return string(out), err
	}
	home := []string{"--ssid", "home"}
	t.Run("scan then reprov", func(t *testing.T) {
		t.Parallel()
		f := start(t, security.NewSec1([]byte("abcd1234")))
		out, err := run(t, f.addr, "1\n", "--sec_ver", "1", "--pop", "abcd1234")
		if err != nil {
			t.Fatalf("esp_prov with scan: %v", err)
		}
		for _, want := range []string{"Scan results : 5", "home", "neighbour", "lab", "Provisioning was successful"} {
			if !strings.Contains(out, want) {
				t.Errorf("esp_prov output lacks %q", want)
			}
		}
		if got := <-f.prov; got != "home/correct horse" {
			t.Fatalf("OnProvisioned got %q", got)
		}
		if _, err := run(t, f.addr, "", "--sec_ver", "1", "--pop", "abcd1234", "--reprov"); err != nil {
			t.Fatalf("esp_prov --reprov: %v", err)
		}
		if st := f.dev.Status(); st.State != wifiprov.Disconnected {
			t.Fatalf("after --reprov the device is %s", st)
		}
		if _, err := run(t, f.addr, "", append(home, "--sec_ver", "1", "--pop", "abcd1234")...); err != nil {
			t.Fatalf("provisioning again after --reprov: %v", err)
		}
	})
	t.Run("wrong secrets then right", func(t *testing.T) {
		t.Parallel()
		f := start(t, security.NewSec1([]byte("abcd1234")))
		if out, err := run(t, f.addr, "", append(home, "--sec_ver", "1", "--pop", "wrong")...); err == nil || !strings.Contains(out, "Failed to establish session") {
			t.Fatalf("wrong PoP: %v", err)
		}
		f2 := start(t, sec2(t, 1))
		if out, err := run(t, f2.addr, "", append(home, "--sec_ver", "2", "--sec2_username", "wifiprov", "--sec2_pwd", "wrong")...); err == nil || !strings.Contains(out, "Failed to establish session") {
			t.Fatalf("wrong password: %v", err)
		}
		if _, err := run(t, f.addr, "", append(home, "--sec_ver", "1", "--pop", "abcd1234")...); err != nil {
			t.Fatalf("right PoP after a wrong one: %v", err)
		}
		if _, err := run(t, f2.addr, "", append(home, "--sec_ver", "2", "--sec2_username", "wifiprov", "--sec2_pwd", "abcd1234")...); err != nil {
			t.Fatalf("right password after a wrong one: %v", err)
		}
	})
	// Salt and verifier made by esp_prov --sec2_gen_cred work on our device.
	t.Run("gen_cred", func(t *testing.T) {
		cmd := exec.Command(python, script, "--transport", "softap", "--sec_ver", "2", "--sec2_gen_cred",
			"--sec2_username", "wifiprov", "--sec2_pwd", "abcd1234")
		cmd.Env = append(os.Environ(), "IDF_PATH="+idf)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("esp_prov --sec2_gen_cred: %v\n%s", err, out)
		}
		salt, verifier := cArray(t, string(out), "sec2_salt"), cArray(t, string(out), "sec2_verifier")
		if len(salt) != 16 || len(verifier) < 300 {
			t.Fatalf("salt %d bytes, verifier %d bytes", len(salt), len(verifier))
		}
		dev, err := security.NewSec2(salt, verifier, 1)
		if err != nil {
			t.Fatal(err)
		}
		f := start(t, dev)
		cl := httpd.NewClient(f.addr)
		defer cl.Close()
		if _, err := wifiprov.Provision(context.Background(), cl, opts(wifiprov.Credentials{Security: 2, Username: "wifiprov", Password: "abcd1234"})); err != nil {
			t.Fatal(err)
		}
	})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := start(t, c.sec(t))
			out, err := run(t, f.addr, "", append(home, c.args...)...)
			if err != nil {
				t.Fatalf("esp_prov: %v", err)
			}
			for _, want := range []string{"Session Established", "CustomData response: b'got:hello'", "WiFi state: Connected", "Provisioning was successful"} {
				if !strings.Contains(out, want) {
					t.Errorf("esp_prov output lacks %q", want)
				}
			}
			if got := <-f.prov; got != "home/correct horse" {
				t.Fatalf("OnProvisioned got %q", got)
			}
		})
	}
}

// cArray extracts the bytes of "static const char <name>[] = { 0x.., ... };".
func cArray(t *testing.T, out, name string) []byte {
	t.Helper()
	_, rest, ok := strings.Cut(out, name+"[] = {")
	if !ok {
		t.Fatalf("no %s in esp_prov output:\n%s", name, out)
	}
	body, _, _ := strings.Cut(rest, "}")
	var b []byte
	for _, f := range strings.FieldsFunc(body, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
		v, err := strconv.ParseUint(f, 0, 8)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b = append(b, byte(v))
	}
	return b
}
