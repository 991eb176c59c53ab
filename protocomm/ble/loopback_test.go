package ble_test

import (
	"bufio"
	"context"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/thingline/thingline/protocomm/ble"
	"github.com/thingline/thingline/protocomm/security"
	"github.com/thingline/thingline/wifiprov"
)

// This test runs the BLE server and client over a real D-Bus daemon, with
// a small stand-in for bluetoothd in the middle: it mirrors the GATT
// application the server registers under a device object, as BlueZ shows a
// remote device's GATT database to a central, and forwards reads and
// writes. No radio is involved, but both halves talk real D-Bus to the
// interfaces and paths BlueZ uses.

type objects map[dbus.ObjectPath]map[string]map[string]dbus.Variant

const (
	hci0 = dbus.ObjectPath("/org/bluez/hci0")
	dev0 = dbus.ObjectPath("/org/bluez/hci0/dev_24_0A_C4_00_00_01")
)

type fakeBlueZ struct {
	t    *testing.T
	conn *dbus.Conn

	mu       sync.Mutex
	objs     objects
	appOwner string
	resolved bool
}

func startDaemon(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		t.Skip("BLE loopback: dbus-daemon not installed")
	}
	sock := filepath.Join(t.TempDir(), "bus")
	cmd := exec.Command("dbus-daemon", "--session", "--nofork", "--print-address=1", "--address=unix:path="+sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon: %v", err)
	}
	return strings.TrimSpace(line)
}

func startBlueZ(t *testing.T, addr string) *fakeBlueZ {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if r, err := conn.RequestName("org.bluez", dbus.NameFlagDoNotQueue); err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("owning org.bluez: %v %v", r, err)
	}
	b := &fakeBlueZ{t: t, conn: conn, objs: objects{hci0: {
		"org.bluez.Adapter1": {}, "org.bluez.GattManager1": {}, "org.bluez.LEAdvertisingManager1": {},
	}}}
	for _, iface := range []string{"org.bluez.Adapter1", "org.bluez.GattManager1", "org.bluez.LEAdvertisingManager1"} {
		if err := conn.Export(adapterObj{b}, hci0, iface); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Export(rootObj{b}, "/", "org.freedesktop.DBus.ObjectManager"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Export(deviceObj{b}, dev0, "org.bluez.Device1"); err != nil {
		t.Fatal(err)
	}
	return b
}

type rootObj struct{ b *fakeBlueZ }

func (r rootObj) GetManagedObjects() (objects, *dbus.Error) {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	out := objects{}
	for p, ifs := range r.b.objs {
		out[p] = ifs
	}
	if d, ok := out[dev0]; ok {
		d["org.bluez.Device1"]["ServicesResolved"] = dbus.MakeVariant(r.b.resolved)
	}
	return out, nil
}

type adapterObj struct{ b *fakeBlueZ }

func (adapterObj) StartDiscovery() *dbus.Error                            { return nil }
func (adapterObj) StopDiscovery() *dbus.Error                             { return nil }
func (adapterObj) SetDiscoveryFilter(map[string]dbus.Variant) *dbus.Error { return nil }
func (adapterObj) UnregisterApplication(dbus.ObjectPath) *dbus.Error      { return nil }
func (adapterObj) UnregisterAdvertisement(dbus.ObjectPath) *dbus.Error    { return nil }
func (a adapterObj) RegisterApplication(s dbus.Sender, app dbus.ObjectPath, _ map[string]dbus.Variant) *dbus.Error {
	var appObjs objects
	if err := a.b.conn.Object(string(s), app).Call("org.freedesktop.DBus.ObjectManager.GetManagedObjects", 0).Store(&appObjs); err != nil {
		return dbus.MakeFailedError(err)
	}
	mirror := func(p dbus.ObjectPath) dbus.ObjectPath {
		return dev0 + dbus.ObjectPath(strings.TrimPrefix(string(p), string(app)))
	}
	a.b.mu.Lock()
	defer a.b.mu.Unlock()
	a.b.appOwner = string(s)
	for p, ifs := range appObjs {
		for iface, props := range ifs {
			cp := map[string]dbus.Variant{}
			for k, v := range props {
				if op, ok := v.Value().(dbus.ObjectPath); ok {
					v = dbus.MakeVariant(mirror(op))
				}
				cp[k] = v
			}
			switch iface {
			case "org.bluez.GattService1":
			case "org.bluez.GattCharacteristic1", "org.bluez.GattDescriptor1":
				if err := a.b.conn.Export(proxy{a.b, string(s), p, iface}, mirror(p), iface); err != nil {
					return dbus.MakeFailedError(err)
				}
			default:
				continue
			}
			a.b.objs[mirror(p)] = map[string]map[string]dbus.Variant{iface: cp}
		}
	}
	return nil
}

func (a adapterObj) RegisterAdvertisement(s dbus.Sender, adv dbus.ObjectPath, _ map[string]dbus.Variant) *dbus.Error {
	v, err := a.b.conn.Object(string(s), adv).GetProperty("org.bluez.LEAdvertisement1.LocalName")
	if err != nil {
		return dbus.MakeFailedError(err)
	}
	a.b.mu.Lock()
	defer a.b.mu.Unlock()
	a.b.objs[dev0] = map[string]map[string]dbus.Variant{"org.bluez.Device1": {"Name": v}}
	return nil
}

type deviceObj struct{ b *fakeBlueZ }

func (d deviceObj) Connect() *dbus.Error {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	d.b.resolved = true
	return nil
}

func (d deviceObj) Disconnect() *dbus.Error { return nil }

// proxy forwards a central's GATT call to the peripheral application, adding
// the "device" option bluetoothd adds.
type proxy struct {
	b     *fakeBlueZ
	owner string
	path  dbus.ObjectPath
	iface string
}

func (p proxy) ReadValue(opts map[string]dbus.Variant) ([]byte, *dbus.Error) {
	opts["device"] = dbus.MakeVariant(dev0)
	var v []byte
	if err := p.b.conn.Object(p.owner, p.path).Call(p.iface+".ReadValue", 0, opts).Store(&v); err != nil {
		return nil, dbus.MakeFailedError(err)
	}
	return v, nil
}

func (p proxy) WriteValue(value []byte, opts map[string]dbus.Variant) *dbus.Error {
	opts["device"] = dbus.MakeVariant(dev0)
	if err := p.b.conn.Object(p.owner, p.path).Call(p.iface+".WriteValue", 0, value, opts).Err; err != nil {
		return dbus.MakeFailedError(err)
	}
	return nil
}

func TestProvisionOverDBus(t *testing.T) {
	addr := startDaemon(t)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	startBlueZ(t, addr)

	salt, ver, err := security.GenSaltVerifier("wifiprov", "abcd1234", 16)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := security.NewSec2(salt, ver, 1)
	if err != nil {
		t.Fatal(err)
	}
	joined := make(chan string, 1)
	dev, err := wifiprov.NewDevice(wifiprov.DeviceConfig{Security: sec, WiFi: radio{},
		OnProvisioned: func(ssid, _ string) { joined <- ssid }})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.AddCustomEndpoint("custom-data", func(_ uint32, b []byte) ([]byte, error) { return b, nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- ble.Serve(sctx, dev.Protocomm(), ble.ServerConfig{Name: "PROV_C40001", Endpoints: dev.Endpoints()})
	}()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()

	c, err := ble.Dial(ctx, "PROV_C40001", ble.DialOptions{})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if got := strings.Join(sorted(c.Endpoints()), ","); got != "custom-data,proto-ver,prov-config,prov-ctrl,prov-scan,prov-session" {
		t.Fatalf("endpoints found through descriptors: %s", got)
	}
	st, err := wifiprov.Provision(ctx, c, wifiprov.Options{
		Credentials: wifiprov.Credentials{Security: wifiprov.SecurityAuto, Username: "wifiprov", Password: "abcd1234"},
		SSID:        "home", Passphrase: "secret", Scan: true,
		Custom:       []wifiprov.CustomData{{Endpoint: "custom-data", Data: []byte("hi")}},
		PollInterval: 10 * time.Millisecond,
	})
	if err != nil || st.State != wifiprov.Connected {
		t.Fatalf("provision over BLE: %+v, %v", st, err)
	}
	if got := <-joined; got != "home" {
		t.Fatalf("joined %q", got)
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

type radio struct{}

func (radio) Scan() []wifiprov.AP {
	return []wifiprov.AP{{SSID: "home", Channel: 1, RSSI: -30}, {SSID: "a"}, {SSID: "b"}, {SSID: "c"}, {SSID: "d"}}
}

func (radio) Connect(ssid, pass string) wifiprov.Result {
	if ssid == "home" && pass == "secret" {
		return wifiprov.Result{Connected: true, IP: "10.1.1.1"}
	}
	return wifiprov.Result{Reason: wifiprov.AuthError}
}
