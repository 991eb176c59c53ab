package twin

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestParseNetworks(t *testing.T) {
	text := "# lab networks\nhome\tsecret123\t-40\t6\twpa2\ncafe | | -70 | 1\noffice|longpassword|-55|11|wpa2-wpa3\n"
	nets, err := ParseNetworks([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	want := []Network{
		{SSID: "home", Passphrase: "secret123", RSSI: -40, Channel: 6, Auth: AuthWPA2PSK},
		{SSID: "cafe", RSSI: -70, Channel: 1, Auth: AuthOpen},
		{SSID: "office", Passphrase: "longpassword", RSSI: -55, Channel: 11, Auth: AuthWPA2WPA3PSK},
	}
	if len(nets) != len(want) {
		t.Fatalf("got %+v", nets)
	}
	for i := range want {
		if nets[i] != want[i] {
			t.Errorf("network %d = %+v, want %+v", i, nets[i], want[i])
		}
	}
	js := `[{"ssid":"home","passphrase":"secret123","rssi":-40,"channel":6,"auth":"wpa2"},{"ssid":"cafe","auth":0}]`
	p := filepath.Join(t.TempDir(), "nets.json")
	os.WriteFile(p, []byte(js), 0o600)
	nets, err = LoadNetworks(p)
	if err != nil || len(nets) != 2 || nets[0] != want[0] || nets[1].Auth != AuthOpen || nets[1].RSSI != -60 {
		t.Fatalf("json: %+v, %v", nets, err)
	}
	for _, bad := range []string{
		"home\tshort\n",                     // passphrase too short
		"x|secret123|-40|99\n",              // channel
		"x|secret123|-40|6|wpa9\n",          // auth
		`[{"ssid":""}]`,                     // empty SSID
		`[{"ssid":"a","auth":12}]`,          // auth out of range
		"abcdefghijabcdefghijabcdefghijabc", // 33-byte SSID
	} {
		if _, err := ParseNetworks([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestStation(t *testing.T) {
	s := &Station{Networks: testNetworks}
	if sc := s.Scan(); len(sc) != 2 || sc[0].SSID != "home" {
		t.Fatalf("scan = %+v", sc)
	}
	if _, err := s.Connect("home", "nope-nope"); !errors.Is(err, ErrAuth) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	if _, err := s.Connect("nowhere", "secret123"); !errors.Is(err, ErrNetworkNotFound) {
		t.Fatalf("unknown ssid: %v", err)
	}
	if n, err := s.Connect("cafe", "anything"); err != nil || n.SSID != "cafe" {
		t.Fatalf("open network: %+v, %v", n, err)
	}
	any := &Station{}
	if _, err := any.Connect("whatever", "secret123"); err != nil {
		t.Fatalf("any network: %v", err)
	}
	if _, err := any.Connect("whatever", "short"); !errors.Is(err, ErrAuth) {
		t.Fatalf("short passphrase: %v", err)
	}
	if _, err := any.Connect("open", ""); err != nil {
		t.Fatalf("open: %v", err)
	}
}

func TestDHT11(t *testing.T) {
	d := newDHT11("SN-000001")
	prevT, prevH := d.read()
	for range 10000 {
		tc, h := d.read()
		if tc < 0 || tc > 50 || h < 20 || h > 90 {
			t.Fatalf("out of range: %v °C, %d %%", tc, h)
		}
		if abs(tc*10-math.Round(tc*10)) > 1e-9 {
			t.Fatalf("%v is not in 0.1 °C steps", tc)
		}
		if abs(tc-prevT) > 1 || abs(float64(h-prevH)) > 3 {
			t.Fatalf("jump from %v/%d to %v/%d", prevT, prevH, tc, h)
		}
		prevT, prevH = tc, h
	}
	a, b := newDHT11("SN-1"), newDHT11("SN-1")
	if x, y := a.read(); func() bool { u, v := b.read(); return u != x || v != y }() {
		t.Fatal("same unit, different readings")
	}
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

func TestParseBroker(t *testing.T) {
	for in, want := range map[string]Broker{
		"mqtts://example.com":     {Addr: "example.com:8883", TLS: true, ServerName: "example.com"},
		"mqtts://127.0.0.1:18883": {Addr: "127.0.0.1:18883", TLS: true, ServerName: "127.0.0.1"},
		"mqtt://[::1]":            {Addr: "[::1]:1883", ServerName: "::1"},
	} {
		got, err := ParseBroker(in)
		if err != nil || got != want {
			t.Errorf("%s = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"http://x", "mqtts://", "::"} {
		if _, err := ParseBroker(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
