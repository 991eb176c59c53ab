package twin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/protocomm/ble"
	"github.com/thingline/thingline/protocomm/httpd"
	"github.com/thingline/thingline/spiffs"
	"github.com/thingline/thingline/tstest"
	"github.com/thingline/thingline/wifiprov"
)

// buildImage makes the unit's spiffs.bin with the spiffs package, as the
// factory's identity station does (0x40000 bytes, the seed's partition).
func buildImage(t *testing.T, files map[string][]byte) string {
	t.Helper()
	var fs []spiffs.File
	for name, b := range files {
		fs = append(fs, spiffs.File{Path: "/" + name, Data: b})
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].Path < fs[j].Path })
	img, err := spiffs.Build(spiffs.DefaultConfig(0x40000), fs)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "spiffs.bin")
	if err := os.WriteFile(p, img, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var credsSec1 = wifiprov.Credentials{Security: 1, PoP: "abcd1234"}

var testNetworks = []Network{
	{SSID: "home", Passphrase: "secret123", RSSI: -40, Channel: 6, Auth: AuthWPA2PSK},
	{SSID: "cafe", RSSI: -70, Channel: 1, Auth: AuthOpen},
}

// freshTwin is a unit straight from the factory: an image and no state.
func freshTwin(t *testing.T, p *testPKI, broker string, cfg Config) *Twin {
	t.Helper()
	cfg.SPIFFS = buildImage(t, p.unitFiles(t, "SN-00A1B2", "abcd1234"))
	cfg.StateDir = t.TempDir()
	cfg.Broker = broker
	cfg.Prov = ProvSoftAP
	cfg.Networks = testNetworks
	cfg.Interval = 50 * time.Millisecond
	cfg.CleanupDelay = 50 * time.Millisecond
	cfg.BackoffMin, cfg.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	cfg.Logf = t.Logf
	tw, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tw
}

func waitProvAddr(t *testing.T, tw *Twin) string {
	t.Helper()
	var addr string
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if addr = tw.ProvAddr(); addr == "" {
			return errors.New("provisioning service not listening")
		}
		return nil
	})
	return addr
}

func provision(addr string, cred wifiprov.Credentials, ssid, pass string) (wifiprov.Status, error) {
	cl := httpd.NewClient(addr)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return wifiprov.Provision(ctx, cl, wifiprov.Options{Credentials: cred, SSID: ssid, Passphrase: pass, PollInterval: 20 * time.Millisecond})
}

func TestProvisionThenStream(t *testing.T) {
	p := newTestPKI(t)
	b := startBroker(t, p, "127.0.0.1:0")
	for _, c := range []struct {
		sec       int
		good, bad wifiprov.Credentials
	}{
		{0, wifiprov.Credentials{Security: 0}, wifiprov.Credentials{}},
		{1, wifiprov.Credentials{Security: 1, PoP: "abcd1234"}, wifiprov.Credentials{Security: 1, PoP: "wrong-pop"}},
		{2, wifiprov.Credentials{Security: 2, Username: "wifiprov", Password: "abcd1234"},
			wifiprov.Credentials{Security: 2, Username: "wifiprov", Password: "wrong-pop"}},
	} {
		t.Run(fmt.Sprintf("sec%d", c.sec), func(t *testing.T) {
			tw := freshTwin(t, p, "mqtts://"+b.addr, Config{Sec: c.sec, SecSet: true})
			if tw.Identity().SN != "SN-00A1B2" || tw.Identity().Prov.ServiceName != "PROV_00A1B2" {
				t.Fatalf("identity from the image: %+v", tw.Identity())
			}
			runTwin(t, tw)
			addr := waitProvAddr(t, tw)
			if c.sec != 0 {
				if _, err := provision(addr, c.bad, "home", "secret123"); err == nil {
					t.Fatal("wrong proof of possession accepted")
				}
			}
			st, err := provision(addr, c.good, "home", "wrong-pass")
			var fe *wifiprov.FailedError
			if !errors.As(err, &fe) || st.Reason != wifiprov.AuthError {
				t.Fatalf("wrong passphrase: %+v, %v", st, err)
			}
			st, err = provision(addr, c.good, "nowhere", "secret123")
			if !errors.As(err, &fe) || st.Reason != wifiprov.NetworkNotFound {
				t.Fatalf("unknown SSID: %+v, %v", st, err)
			}
			if tw.State().Provisioned() {
				t.Fatal("provisioned by failed attempts")
			}
			st, err = provision(addr, c.good, "home", "secret123")
			if err != nil || st.State != wifiprov.Connected || st.AP.SSID != "home" {
				t.Fatalf("provisioning: %+v, %v", st, err)
			}
			tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				if a := tw.ProvAddr(); a != "" {
					return fmt.Errorf("service still on %s", a)
				}
				return nil
			})
			if s := tw.State(); s.WiFi == nil || s.WiFi.SSID != "home" || s.WiFi.Passphrase != "secret123" {
				t.Fatalf("persisted state %+v", s)
			}
			b.waitFor(t, "SN-00A1B2", TopicTelemetry, 2)
			b.mu.Lock()
			b.msgs = nil
			b.mu.Unlock()
		})
	}
}

func TestFactoryResetReturnsToProvisioning(t *testing.T) {
	p := newTestPKI(t)
	b := startBroker(t, p, "127.0.0.1:0")
	tw := freshTwin(t, p, "mqtts://"+b.addr, Config{})
	runTwin(t, tw)
	addr := waitProvAddr(t, tw)
	if sn := provisionOwner(t, addr, "cafe", "", "user-1"); sn != "SN-00A1B2" {
		t.Fatalf("owner endpoint answered %q, want the SN", sn)
	}
	b.waitFor(t, "SN-00A1B2", TopicTelemetry, 1)
	if o := tw.State().Owner; o != "user-1" {
		t.Fatalf("owner %q, want user-1", o)
	}
	if err := tw.FactoryReset(); err != nil {
		t.Fatal(err)
	}
	addr = waitProvAddr(t, tw)
	if s := tw.State(); s.Provisioned() {
		t.Fatalf("still provisioned after reset: %+v", s)
	}
	if tw.Identity().SN != "SN-00A1B2" {
		t.Fatal("identity lost")
	}
	// The same unit provisions again and reaches the same cloud identity.
	// A different user provisions it again: the same cloud identity, and
	// the new owner reported for the cloud to act on.
	n := len(b.find("SN-00A1B2", TopicTelemetry))
	provisionOwner(t, addr, "home", "secret123", "user-2")
	b.waitFor(t, "SN-00A1B2", TopicTelemetry, n+1)
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		for _, m := range b.find("SN-00A1B2", TopicAttributes) {
			if strings.Contains(string(m.payload), `"owner":"user-2"`) {
				return nil
			}
		}
		return errors.New("owner user-2 not reported")
	})
}

// provisionOwner provisions with the owner custom endpoint and returns its answer.
func provisionOwner(t *testing.T, addr, ssid, pass, owner string) string {
	t.Helper()
	cl := httpd.NewClient(addr)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o, err := wifiprov.Run(ctx, cl, wifiprov.Options{Credentials: credsSec1, SSID: ssid, Passphrase: pass,
		PollInterval: 20 * time.Millisecond, Custom: []wifiprov.CustomData{{Endpoint: OwnerEndpoint, Data: []byte(owner)}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(o.Custom[OwnerEndpoint])
}

func TestResetStateKeepsFirmware(t *testing.T) {
	dir := t.TempDir()
	if err := SaveState(dir, State{WiFi: &WiFiCredentials{SSID: "x", Passphrase: "12345678"}, FWVersion: "1.2.3", IntervalMs: 5, Owner: "u1", BootCount: 9}); err != nil {
		t.Fatal(err)
	}
	if err := ResetState(dir); err != nil {
		t.Fatal(err)
	}
	s, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.WiFi != nil || s.Owner != "" || s.IntervalMs != 0 || s.BootCount != 0 || s.FWVersion != "1.2.3" {
		t.Fatalf("after reset: %+v", s)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

func TestProvisioningSecretsOverride(t *testing.T) {
	p := newTestPKI(t)
	b := startBroker(t, p, "127.0.0.1:0")
	tw := freshTwin(t, p, "mqtts://"+b.addr, Config{Sec: 2, SecSet: true, Sec2User: "installer", Sec2Pass: "override-pass"})
	runTwin(t, tw)
	addr := waitProvAddr(t, tw)
	// The image's defaults no longer open the session; the overrides do.
	if _, err := provision(addr, wifiprov.Credentials{Security: 2, Username: "wifiprov", Password: "abcd1234"}, "home", "secret123"); err == nil {
		t.Fatal("prov.json's secrets accepted despite the override")
	}
	if _, err := provision(addr, wifiprov.Credentials{Security: 2, Username: "installer", Password: "override-pass"}, "home", "secret123"); err != nil {
		t.Fatal(err)
	}

	tw1 := freshTwin(t, p, "mqtts://"+b.addr, Config{PoP: "other-pop"})
	runTwin(t, tw1)
	addr = waitProvAddr(t, tw1)
	if _, err := provision(addr, credsSec1, "home", "secret123"); err == nil {
		t.Fatal("prov.json's PoP accepted despite --pop")
	}
	if _, err := provision(addr, wifiprov.Credentials{Security: 1, PoP: "other-pop"}, "home", "secret123"); err != nil {
		t.Fatal(err)
	}
}

func TestBLEWithoutAdapter(t *testing.T) {
	p := newTestPKI(t)
	tw := freshTwin(t, p, "mqtts://127.0.0.1:1", Config{})
	tw.cfg.Prov = ProvBLE
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := tw.Run(ctx)
	if err == nil {
		t.Skip("a Bluetooth adapter is present: BLE provisioning ran instead of failing")
	}
	if !errors.Is(err, ble.ErrNoAdapter) {
		t.Fatalf("want an error naming the missing adapter, got %v", err)
	}
}
