package wifiprov_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/protocomm"
	"github.com/thingline/thingline/protocomm/httpd"
	"github.com/thingline/thingline/protocomm/security"
	"github.com/thingline/thingline/tstest"
	"github.com/thingline/thingline/wifiprov"
)

// radio is the simulated station the twin would provide: a fixed set of
// networks with their passphrases.
type radio struct {
	mu       sync.Mutex
	networks map[string]string
	joined   []string
}

func newRadio() *radio {
	return &radio{networks: map[string]string{"home": "correct horse", "cafe": ""}}
}

func (r *radio) Scan() []wifiprov.AP {
	return []wifiprov.AP{
		{SSID: "home", Channel: 6, RSSI: -40, Auth: wifiprov.AuthWPA2PSK, BSSID: []byte{1, 2, 3, 4, 5, 6}},
		{SSID: "cafe", Channel: 1, RSSI: -70, Auth: wifiprov.AuthOpen},
		{SSID: "neighbour", Channel: 11, RSSI: -85, Auth: wifiprov.AuthWPA3PSK},
		{SSID: "office", Channel: 36, RSSI: -60, Auth: wifiprov.AuthWPA2WPA3PSK},
		{SSID: "lab", Channel: 3, RSSI: -55, Auth: wifiprov.AuthWPA2PSK},
	}
}

func (r *radio) Connect(ssid, pass string) wifiprov.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	want, ok := r.networks[ssid]
	switch {
	case !ok:
		return wifiprov.Result{Reason: wifiprov.NetworkNotFound}
	case want != pass:
		return wifiprov.Result{Reason: wifiprov.AuthError}
	}
	r.joined = append(r.joined, ssid)
	return wifiprov.Result{Connected: true, IP: "192.168.1.77", AP: wifiprov.AP{SSID: ssid, Channel: 6, Auth: wifiprov.AuthWPA2PSK}}
}

type fixture struct {
	dev   *wifiprov.Device
	addr  string
	radio *radio
	prov  chan string
}

func start(t *testing.T, sec security.Scheme) *fixture {
	t.Helper()
	f := &fixture{radio: newRadio(), prov: make(chan string, 4)}
	dev, err := wifiprov.NewDevice(wifiprov.DeviceConfig{
		Security: sec, WiFi: f.radio,
		Apps:          []wifiprov.AppInfo{{Label: "thingline", Version: "1.0", Capabilities: []string{"x509"}}},
		OnProvisioned: func(ssid, pass string) { f.prov <- ssid + "/" + pass },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.AddCustomEndpoint("custom-data", func(_ uint32, req []byte) ([]byte, error) {
		return append([]byte("got:"), req...), nil
	}); err != nil {
		t.Fatal(err)
	}
	f.dev = dev
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- httpd.NewServer(dev.Protocomm(), nil).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return f
}

func sec2(t *testing.T, patch int) security.Scheme {
	salt, ver, err := security.GenSaltVerifier("wifiprov", "abcd1234", 16)
	if err != nil {
		t.Fatal(err)
	}
	s, err := security.NewSec2(salt, ver, patch)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func opts(cred wifiprov.Credentials) wifiprov.Options {
	return wifiprov.Options{
		Credentials: cred, SSID: "home", Passphrase: "correct horse", Scan: true,
		Custom:       []wifiprov.CustomData{{Endpoint: "custom-data", Data: []byte("hello")}},
		PollInterval: 10 * time.Millisecond,
	}
}

func TestProvisionOverHTTP(t *testing.T) {
	cases := []struct {
		name string
		sec  func(t *testing.T) security.Scheme
		cred wifiprov.Credentials
	}{
		{"sec0", func(*testing.T) security.Scheme { return security.NewSec0() }, wifiprov.Credentials{Security: wifiprov.SecurityAuto}},
		{"sec1", func(*testing.T) security.Scheme { return security.NewSec1([]byte("abcd1234")) }, wifiprov.Credentials{Security: 1, PoP: "abcd1234"}},
		{"sec1 no pop", func(*testing.T) security.Scheme { return security.NewSec1(nil) }, wifiprov.Credentials{Security: wifiprov.SecurityAuto, PoP: "ignored"}},
		{"sec2 patch0", func(t *testing.T) security.Scheme { return sec2(t, 0) }, wifiprov.Credentials{Security: 2, Username: "wifiprov", Password: "abcd1234"}},
		{"sec2 patch1", func(t *testing.T) security.Scheme { return sec2(t, 1) }, wifiprov.Credentials{Security: wifiprov.SecurityAuto, Username: "wifiprov", Password: "abcd1234"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := start(t, c.sec(t))
			cl := httpd.NewClient(f.addr)
			defer cl.Close()
			o, err := wifiprov.Run(context.Background(), cl, opts(c.cred))
			if err != nil {
				t.Fatalf("provision: %v", err)
			}
			if o.Status.State != wifiprov.Connected || o.Status.IP != "192.168.1.77" || o.Status.AP.SSID != "home" {
				t.Fatalf("status %+v", o.Status)
			}
			if len(o.Networks) != 5 || o.Networks[0].SSID != "home" || o.Networks[4].SSID != "lab" || !bytes.Equal(o.Networks[0].BSSID, []byte{1, 2, 3, 4, 5, 6}) {
				t.Fatalf("networks %+v", o.Networks)
			}
			if got := string(o.Custom["custom-data"]); got != "got:hello" {
				t.Fatalf("custom-data answered %q", got)
			}
			if got := <-f.prov; got != "home/correct horse" {
				t.Fatalf("OnProvisioned got %q", got)
			}
			select {
			case <-f.dev.Done():
			default:
				t.Fatal("Done not closed after the client saw Connected")
			}
		})
	}
}

// A wrong secret fails the handshake and the device serves the next client.
func TestWrongSecretThenRightOne(t *testing.T) {
	cases := []struct {
		name      string
		sec       security.Scheme
		bad, good wifiprov.Credentials
	}{
		{"sec1", security.NewSec1([]byte("abcd1234")), wifiprov.Credentials{Security: 1, PoP: "nope"}, wifiprov.Credentials{Security: 1, PoP: "abcd1234"}},
		{"sec2", sec2(t, 1), wifiprov.Credentials{Security: 2, Username: "wifiprov", Password: "nope"}, wifiprov.Credentials{Security: 2, Username: "wifiprov", Password: "abcd1234"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := start(t, c.sec)
			bad := httpd.NewClient(f.addr)
			_, err := wifiprov.Provision(context.Background(), bad, opts(c.bad))
			bad.Close()
			if err == nil || !strings.Contains(err.Error(), "500") {
				t.Fatalf("wrong secret: err %v, want a refused handshake", err)
			}
			good := httpd.NewClient(f.addr)
			defer good.Close()
			if _, err := wifiprov.Provision(context.Background(), good, opts(c.good)); err != nil {
				t.Fatalf("after a failed attempt: %v", err)
			}
		})
	}
}

// Garbage on an established session (undecodable protobuf, forged
// ciphertext) is refused with a non-200 and does not break the device.
func TestGarbageRefused(t *testing.T) {
	f := start(t, sec2(t, 1))
	cl := httpd.NewClient(f.addr)
	ctx := context.Background()
	c, err := wifiprov.Connect(ctx, cl, wifiprov.Credentials{Security: 2, Username: "wifiprov", Password: "abcd1234"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Do(ctx, wifiprov.EndpointConfig, []byte("definitely not AES-GCM output")); err == nil {
		t.Fatal("forged ciphertext accepted")
	}
	// A well-encrypted body that is not a protobuf message.
	if _, err := c.Custom(ctx, wifiprov.EndpointConfig, []byte{0xff, 0xff, 0xff, 0x0f}); err == nil {
		t.Fatal("malformed protobuf accepted")
	}
	cl.Close()
	for _, req := range [][]byte{{0x08, 0x01, 0x5a, 0x02, 0x08, 0x07}, []byte("\xff\xff"), bytes.Repeat([]byte{0x0a}, 4096)} {
		raw := httpd.NewClient(f.addr)
		if _, err := raw.Do(ctx, protocomm.EndpointSession, req); err == nil {
			t.Errorf("session request %x accepted", req[:min(len(req), 8)])
		}
		raw.Close()
	}
	good := httpd.NewClient(f.addr)
	defer good.Close()
	if _, err := wifiprov.Provision(ctx, good, opts(wifiprov.Credentials{Security: 2, Username: "wifiprov", Password: "abcd1234"})); err != nil {
		t.Fatalf("after garbage: %v", err)
	}
}

// A wrong passphrase ends in ConnectionFailed with the reason; prov-ctrl
// reset then lets the same session try again.
func TestFailedThenReset(t *testing.T) {
	f := start(t, security.NewSec1([]byte("pop")))
	cl := httpd.NewClient(f.addr)
	defer cl.Close()
	ctx := context.Background()
	c, err := wifiprov.Connect(ctx, cl, wifiprov.Credentials{Security: 1, PoP: "pop"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Reset(ctx); err == nil {
		t.Fatal("reset accepted while not failed")
	}
	if err := c.SetConfig(ctx, "home", "wrong"); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.WaitConnected(ctx, 10*time.Millisecond, nil)
	var fe *wifiprov.FailedError
	if !errors.As(err, &fe) || st.State != wifiprov.ConnectionFailed || st.Reason != wifiprov.AuthError {
		t.Fatalf("wrong passphrase: %+v, %v", st, err)
	}
	if err := c.SetConfig(ctx, "nowhere", "x"); err != nil {
		t.Fatal(err)
	}
	if err := c.Reset(ctx); err != nil {
		t.Fatalf("reset after failure: %v", err)
	}
	if err := c.SetConfig(ctx, "nowhere", "x"); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.WaitConnected(ctx, 10*time.Millisecond, nil); st.Reason != wifiprov.NetworkNotFound {
		t.Fatalf("unknown SSID: %+v", st)
	}
	if err := c.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.SetConfig(ctx, strings.Repeat("s", 33), "x"); err == nil {
		t.Fatal("33-byte SSID accepted")
	}
	if err := c.SetConfig(ctx, "home", strings.Repeat("p", 64)); err == nil {
		t.Fatal("64-byte passphrase accepted")
	}
	if err := c.SetConfig(ctx, "cafe", ""); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if s := f.dev.Status(); s.State != wifiprov.Connected {
			return errors.New(s.String())
		}
		return nil
	})
	if err := c.Reprov(ctx); err != nil {
		t.Fatal(err)
	}
	if s := f.dev.Status(); s.State != wifiprov.Disconnected {
		t.Fatalf("after reprov: %s", s)
	}
}

func TestVersionJSON(t *testing.T) {
	got := wifiprov.VersionJSON(security.NewSec1(nil), []wifiprov.AppInfo{{Label: "rmaker", Version: "1.0", Capabilities: []string{"claim"}}})
	want := "{\n\t\"rmaker\":\t{\n\t\t\"ver\":\t\"1.0\",\n\t\t\"cap\":\t[\"claim\"]\n\t},\n" +
		"\t\"prov\":\t{\n\t\t\"ver\":\t\"v1.1\",\n\t\t\"sec_ver\":\t1,\n\t\t\"sec_patch_ver\":\t0,\n\t\t\"cap\":\t[\"no_pop\", \"wifi_scan\"]\n\t}\n}"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	info := wifiprov.ParseInfo([]byte(got))
	if info.SecVer != 1 || info.Version != "v1.1" || !info.HasCap("no_pop") {
		t.Fatalf("parsed %+v", info)
	}
	if v := wifiprov.VersionJSON(security.NewSec0(), nil); !strings.Contains(v, "[\"no_sec\", \"wifi_scan\"]") {
		t.Fatalf("sec0 caps missing in %s", v)
	}
	if old := wifiprov.ParseInfo([]byte("V0.1")); old.Version != "V0.1" || old.SecVer != -1 {
		t.Fatalf("bare version parsed as %+v", old)
	}
}

func TestEndpointsIDs(t *testing.T) {
	f := start(t, security.NewSec0())
	if err := f.dev.AddCustomEndpoint("second", func(uint32, []byte) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	ids := f.dev.Endpoints()
	if ids["custom-data"] != 0xff54 || ids["second"] != 0xff55 || ids["prov-session"] != 0xff51 {
		t.Fatalf("ids %v", ids)
	}
	if err := f.dev.AddCustomEndpoint("prov-config", nil); err == nil {
		t.Fatal("standard endpoint name accepted as custom")
	}
}
