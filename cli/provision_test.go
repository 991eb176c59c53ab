package cli

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/thingline/thingline/protocomm/httpd"
	"github.com/thingline/thingline/protocomm/security"
	"github.com/thingline/thingline/wifiprov"
)

type provRadio struct{}

func (provRadio) Scan() []wifiprov.AP {
	return []wifiprov.AP{{SSID: "home", Channel: 6, RSSI: -42, Auth: wifiprov.AuthWPA2PSK}}
}

func (provRadio) Connect(ssid, pass string) wifiprov.Result {
	if ssid != "home" {
		return wifiprov.Result{Reason: wifiprov.NetworkNotFound}
	}
	if pass != "secret" {
		return wifiprov.Result{Reason: wifiprov.AuthError}
	}
	return wifiprov.Result{Connected: true, IP: "10.0.0.9"}
}

func startProvDevice(t *testing.T) string {
	t.Helper()
	salt, ver, err := security.GenSaltVerifier("wifiprov", "abcd1234", 16)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := security.NewSec2(salt, ver, 1)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := wifiprov.NewDevice(wifiprov.DeviceConfig{Security: sec, WiFi: provRadio{}})
	if err != nil {
		t.Fatal(err)
	}
	_ = dev.AddCustomEndpoint("custom-data", func(_ uint32, req []byte) ([]byte, error) {
		return bytes.ToUpper(req), nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = httpd.NewServer(dev.Protocomm(), nil).Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func runProvision(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"provision"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestProvisionCommand(t *testing.T) {
	addr := startProvDevice(t)
	base := []string{"--transport", "softap", "--service", addr, "--sec2-user", "wifiprov", "--sec2-pass", "abcd1234", "--poll", "10ms"}
	out, err := runProvision(t, append(base, "--ssid", "home", "--passphrase", "secret", "--scan", "--custom", "custom-data=hi")...)
	if err != nil {
		t.Fatalf("provision: %v\n%s", err, out)
	}
	for _, want := range []string{"security 2 patch 1", `custom-data answered "HI"`, `"home"`, "provisioned: connected to \"home\" with address 10.0.0.9"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// A second device instance is needed: the first one is provisioned.
	addr = startProvDevice(t)
	base[3] = addr
	out, err = runProvision(t, append(base, "--ssid", "home", "--passphrase", "wrong")...)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Fatalf("wrong passphrase: err %v\n%s", err, out)
	}

	out, err = runProvision(t, "--service", addr, "--sec", "2", "--sec2-user", "wifiprov", "--sec2-pass", "bad", "--ssid", "home")
	if err == nil || !strings.Contains(err.Error(), "handshake") && !strings.Contains(err.Error(), "wrong username or password") {
		t.Fatalf("wrong password: err %v\n%s", err, out)
	}
	if _, err := runProvision(t, "--service", addr, "--custom", "nodata", "--ssid", "x"); err == nil {
		t.Fatal("--custom without = accepted")
	}
}
