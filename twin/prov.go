package twin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/thingline/thingline/protocomm/ble"
	"github.com/thingline/thingline/protocomm/httpd"
	"github.com/thingline/thingline/protocomm/security"
	"github.com/thingline/thingline/wifiprov"
)

// autoStop is how long the service waits, after the station joined, for the
// phone to read the Connected status before stopping anyway (ESP-IDF's
// auto-stop covers a phone that went away).
const autoStop = 30 * time.Second

// OwnerEndpoint is the custom provisioning endpoint through which the phone
// app tells the device who provisions it, as RainMaker's user–node
// association does: the request is the user id, the answer the SN. The
// twin keeps it as State.Owner and reports it as the "owner" attribute, so
// that the cloud can see an ownership change after a factory reset (seed
// 001, case B).
const OwnerEndpoint = "owner"

// radio adapts the simulated station to wifiprov's interface.
type radio struct{ s *Station }

func (r radio) Scan() []wifiprov.AP {
	nets := r.s.Scan()
	out := make([]wifiprov.AP, len(nets))
	for i, n := range nets {
		out[i] = wifiprov.AP{SSID: n.SSID, BSSID: bssidFor(n.SSID), Channel: int(n.Channel), RSSI: int(n.RSSI), Auth: wifiprov.AuthMode(n.Auth)}
	}
	return out
}

func (r radio) Connect(ssid, pass string) wifiprov.Result {
	n, err := r.s.Connect(ssid, pass)
	switch {
	case errors.Is(err, ErrAuth):
		return wifiprov.Result{Reason: wifiprov.AuthError}
	case err != nil:
		return wifiprov.Result{Reason: wifiprov.NetworkNotFound}
	}
	return wifiprov.Result{Connected: true, IP: "192.168.4.2",
		AP: wifiprov.AP{SSID: n.SSID, BSSID: bssidFor(n.SSID), Channel: int(n.Channel), RSSI: int(n.RSSI), Auth: wifiprov.AuthMode(n.Auth)}}
}

// bssidFor makes a stable, locally administered BSSID for a simulated AP.
func bssidFor(ssid string) []byte {
	m := macFor("ap:" + ssid)
	var b [6]byte
	fmt.Sscanf(m, "%02X:%02X:%02X:%02X:%02X:%02X", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5])
	b[0] = 0x02
	return b[:]
}

// securityScheme builds the device side of the configured scheme. The PoP
// is the unit's own from prov.json unless overridden; the security 2
// password defaults to the PoP, as the factory's QR code carries it.
func (t *Twin) securityScheme(id *Identity) (security.Scheme, string, error) {
	pop := t.cfg.PoP
	if pop == "" {
		pop = id.Prov.PoP
	}
	switch t.cfg.Sec {
	case 0:
		return security.NewSec0(), "security 0", nil
	case 1:
		return security.NewSec1([]byte(pop)), "security 1", nil
	}
	user := t.cfg.Sec2User
	if user == "" {
		user = id.Prov.Sec2Username
	}
	if user == "" {
		user = "wifiprov"
	}
	pass := t.cfg.Sec2Pass
	if pass == "" {
		pass = pop
	}
	if pass == "" {
		return nil, "", errors.New("twin: security 2 needs a password (--sec2-pass or a PoP)")
	}
	salt, verifier, err := security.GenSaltVerifier(user, pass, 16)
	if err != nil {
		return nil, "", fmt.Errorf("twin: security 2 credentials: %w", err)
	}
	s, err := security.NewSec2(salt, verifier, 1)
	if err != nil {
		return nil, "", fmt.Errorf("twin: security 2: %w", err)
	}
	return s, "security 2 (user " + user + ")", nil
}

// provision runs the provisioning service until a phone (or esp_prov, or
// wifiprov.Provision) gave credentials the station accepted, then stops it
// after ESP-IDF's cleanup delay and returns them.
// The owner is the user id the app sent to OwnerEndpoint, if any.
func (t *Twin) provision(ctx context.Context, id *Identity, s *Station) (_ *WiFiCredentials, owner string, assoc *Association, _ error) {
	sec, secName, err := t.securityScheme(id)
	if err != nil {
		return nil, "", nil, err
	}
	var (
		mu    sync.Mutex
		creds *WiFiCredentials
		got   = make(chan struct{})
	)
	dev, err := wifiprov.NewDevice(wifiprov.DeviceConfig{
		Security: sec,
		WiFi:     radio{s},
		OnProvisioned: func(ssid, pass string) {
			mu.Lock()
			defer mu.Unlock()
			if creds == nil {
				creds = &WiFiCredentials{SSID: ssid, Passphrase: pass}
				close(got)
			}
		},
	})
	if err != nil {
		return nil, "", nil, fmt.Errorf("twin: provisioning: %w", err)
	}
	err = dev.AddCustomEndpoint(OwnerEndpoint, func(_ uint32, req []byte) ([]byte, error) {
		if len(req) == 0 || len(req) > 64 || !utf8.Valid(req) {
			return nil, errors.New("twin: owner must be 1 to 64 bytes of UTF-8")
		}
		mu.Lock()
		owner = string(req)
		mu.Unlock()
		return []byte(id.SN), nil
	})
	if err != nil {
		return nil, "", nil, fmt.Errorf("twin: provisioning: %w", err)
	}
	err = dev.AddCustomEndpoint(wifiprov.AssocEndpoint, func(_ uint32, req []byte) ([]byte, error) {
		user, secret, err := wifiprov.DecodeAssocRequest(req)
		if err != nil {
			return wifiprov.EncodeAssocResponse(wifiprov.AssocInvalidParam, id.SN), nil
		}
		mu.Lock()
		assoc = &Association{UserID: user, Secret: secret}
		mu.Unlock()
		return wifiprov.EncodeAssocResponse(wifiprov.AssocSuccess, id.SN), nil
	})
	if err != nil {
		return nil, "", nil, fmt.Errorf("twin: provisioning: %w", err)
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	served := make(chan error, 1)
	name := serviceName(id)
	switch t.cfg.Prov {
	case ProvSoftAP:
		ln, err := net.Listen("tcp", t.cfg.ProvListen)
		if err != nil {
			return nil, "", nil, fmt.Errorf("twin: provisioning listener: %w", err)
		}
		srv := httpd.NewServer(dev.Protocomm(), nil)
		go func() { served <- srv.Serve(sctx, ln) }()
		t.setProvAddr(ln.Addr().String())
		defer t.setProvAddr("")
		t.cfg.Logf("provisioning: %s on http://%s (softap), %s", name, ln.Addr(), secName)
	case ProvBLE:
		go func() {
			served <- ble.Serve(sctx, dev.Protocomm(), ble.ServerConfig{Name: name, Endpoints: dev.Endpoints()})
		}()
		t.cfg.Logf("provisioning: starting BLE advertising as %s, %s", name, secName)
	}
	select {
	case <-got:
	case err := <-served:
		if err == nil {
			err = errors.New("service stopped")
		}
		return nil, "", nil, fmt.Errorf("twin: provisioning over %s: %w", t.cfg.Prov, err)
	case <-ctx.Done():
		return nil, "", nil, ctx.Err()
	}
	mu.Lock()
	c := *creds
	who, as := owner, assoc
	mu.Unlock()
	t.cfg.Logf("provisioning: joined %q; stopping the service", c.SSID)
	// The manager keeps serving until the phone has read the Connected
	// status, then lingers for its cleanup delay so that the reply gets out.
	wait := time.NewTimer(autoStop)
	defer wait.Stop()
	select {
	case <-dev.Done():
	case <-wait.C:
	case <-ctx.Done():
		return nil, "", nil, ctx.Err()
	}
	linger := time.NewTimer(t.cfg.CleanupDelay)
	defer linger.Stop()
	select {
	case <-linger.C:
	case <-ctx.Done():
		return nil, "", nil, ctx.Err()
	}
	stop()
	<-served
	return &c, who, as, nil
}
