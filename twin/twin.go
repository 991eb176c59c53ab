// Package twin emulates the seed ESP32 firmware: it boots from the factory's
// SPIFFS image, is provisioned over Espressif's protocomm protocol, and then
// talks to the cloud over MQTT with TLS and its X.509 identity, as the
// firmware does. Sim runs thousands of already-provisioned twins in one
// process for demos and load.
package twin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Provisioning transports.
const (
	ProvSoftAP = "softap"
	ProvBLE    = "ble"
	ProvNone   = "none"
)

// Config configures one twin. Zero durations take the firmware's defaults.
type Config struct {
	// Where the identity comes from: SPIFFS (an image file), or Image (its
	// bytes), or Files (a reader of loose files, such as a unit directory).
	SPIFFS string
	Image  []byte
	Files  ReadFunc
	Names  FileNames

	StateDir string // holds state.json, the twin's NVS
	Broker   string // mqtts://host:port
	// ServerName is the name the server certificate must carry, when it
	// differs from the broker's host (a broker reached by IP, say).
	ServerName string

	Prov       string // softap (default), ble or none
	ProvListen string // softap: the HTTP address, 127.0.0.1:0 by default
	Sec        int    // protocomm security scheme 0, 1 or 2
	SecSet     bool   // Sec was given; otherwise 1
	PoP        string // overrides prov.json's
	Sec2User   string // overrides prov.json's
	Sec2Pass   string // defaults to the PoP
	Networks   []Network

	Interval        time.Duration // telemetry period, 1 s by default
	Keepalive       time.Duration // MQTT keepalive, 120 s (esp-mqtt's default)
	BackoffMin      time.Duration // first reconnect delay, 1 s
	BackoffMax      time.Duration // reconnect delay cap, 60 s
	AttrEvery       time.Duration // uptime attribute period, 60 s
	Timeout         time.Duration // dial, TLS and CONNECT, 10 s
	CleanupDelay    time.Duration // provisioning service shutdown delay, 1 s as in ESP-IDF
	FirmwareVersion string        // reported when the state names none
	// RotateWithin: the twin asks the cloud for a new certificate when its
	// own expires within this, and stores it in its SPIFFS image (see
	// rotate.go); 0 never rotates. The CLI's default is DefaultRotateWithin.
	RotateWithin time.Duration
	// OTAFail makes firmware updates fail on purpose (twin/ota.go:
	// download, verify, reboot, silent); "" updates normally.
	OTAFail         string
	OTAChunkSize    int           // bytes per firmware chunk request, 4096
	OTAChunkTimeout time.Duration // wait for a chunk before asking again, 10 s

	// ClaimSecret makes the twin publish a ThingsBoard claim request with
	// this secret once connected (and on each connection until the cloud
	// gives a final answer), open for ClaimWindow (10 minutes by default).
	ClaimSecret string
	ClaimWindow time.Duration

	// RPC makes chosen server-side RPC methods unanswered or failing.
	RPC RPCBehaviour

	Logf  func(format string, args ...any) // nil means silent
	Stats *Stats                           // nil means private counters
}

// Twin is one emulated device.
type Twin struct {
	cfg   Config
	cc    *cloudConfig
	stats *Stats

	mu         sync.Mutex // guards the fields below
	st         State
	id         *Identity
	dev        *device
	provAddr   string
	cancel     context.CancelFunc // ends the current phase (provisioning or cloud)
	resetAsked bool
}

func (c *Config) defaults() {
	if c.Prov == "" {
		c.Prov = ProvSoftAP
	}
	if c.ProvListen == "" {
		c.ProvListen = "127.0.0.1:0"
	}
	if !c.SecSet && c.Sec == 0 {
		c.Sec = 1
	}
	setDur := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	setDur(&c.Interval, time.Second)
	setDur(&c.Keepalive, 120*time.Second)
	setDur(&c.BackoffMin, time.Second)
	setDur(&c.BackoffMax, 60*time.Second)
	setDur(&c.AttrEvery, 60*time.Second)
	setDur(&c.Timeout, 10*time.Second)
	setDur(&c.CleanupDelay, time.Second)
	setDur(&c.ClaimWindow, 10*time.Minute)
	if c.OTAChunkSize <= 0 {
		c.OTAChunkSize = 4096
	}
	setDur(&c.OTAChunkTimeout, otaChunkTimeout)
	if c.FirmwareVersion == "" {
		c.FirmwareVersion = DefaultFirmwareVersion
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	if c.Stats == nil {
		c.Stats = new(Stats)
	}
}

// New checks cfg and loads the identity once, so that a bad image fails
// before Run.
func New(cfg Config) (*Twin, error) {
	cfg.defaults()
	switch cfg.Prov {
	case ProvSoftAP, ProvBLE, ProvNone:
	default:
		return nil, fmt.Errorf("twin: provisioning transport %q: want softap, ble or none", cfg.Prov)
	}
	if cfg.Sec < 0 || cfg.Sec > 2 {
		return nil, fmt.Errorf("twin: security scheme %d: want 0, 1 or 2", cfg.Sec)
	}
	if !ValidOTAFail(cfg.OTAFail) {
		return nil, fmt.Errorf("%w %q: want download, verify, reboot or silent", errOTAFail, cfg.OTAFail)
	}
	if cfg.StateDir == "" {
		return nil, errors.New("twin: no state directory")
	}
	bs, err := ParseBrokers(cfg.Broker, cfg.ServerName)
	if err != nil {
		return nil, err
	}
	t := &Twin{cfg: cfg, stats: cfg.Stats}
	t.cc = &cloudConfig{
		brokers: bs, keepalive: cfg.Keepalive, timeout: cfg.Timeout,
		backoffMin: cfg.BackoffMin, backoffMax: cfg.BackoffMax, attrEvery: cfg.AttrEvery,
		interval: cfg.Interval, fwVersion: cfg.FirmwareVersion, stats: cfg.Stats, logf: cfg.Logf,
		claimSecret: cfg.ClaimSecret, claimWindow: cfg.ClaimWindow,
		otaFail: cfg.OTAFail, otaChunk: cfg.OTAChunkSize, otaChunkTimeout: cfg.OTAChunkTimeout, otaRebooted: new(atomic.Bool),
		rpcBehaviour: cfg.RPC,
	}
	id, err := t.loadIdentity()
	if err != nil {
		return nil, err
	}
	st, err := LoadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	t.id, t.st = id, st
	return t, nil
}

// loadIdentity mounts the storage and loads the identity, as the firmware's
// cert_manager does at every boot.
func (t *Twin) loadIdentity() (*Identity, error) {
	read := t.cfg.Files
	if read == nil {
		t.mu.Lock() // a rotation may have replaced the image
		img := t.cfg.Image
		t.mu.Unlock()
		if img == nil {
			if t.cfg.SPIFFS == "" {
				return nil, errors.New("twin: no SPIFFS image")
			}
			var err error
			if img, err = os.ReadFile(t.cfg.SPIFFS); err != nil {
				return nil, fmt.Errorf("twin: reading SPIFFS image: %w", err)
			}
		}
		var err error
		if read, err = spiffsReader(img); err != nil {
			return nil, err
		}
	}
	return LoadIdentity(read, t.cfg.Names)
}

// Identity is the identity loaded at the last boot.
func (t *Twin) Identity() *Identity {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.id
}

// State returns a copy of the persisted state.
func (t *Twin) State() State {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.st.clone()
}

// View returns what the getState RPC would answer.
func (t *Twin) View() StateView {
	// The identity and the device are replaced by boot: read both under
	// the lock, once.
	t.mu.Lock()
	d, id := t.dev, t.id
	t.mu.Unlock()
	if d != nil {
		return d.view()
	}
	st := t.State()
	v := StateView{FWTitle: FirmwareTitle, FWVersion: st.FWVersion,
		Owner: st.Owner, IntervalMs: st.IntervalMs, BootCount: st.BootCount, PendingOTA: st.PendingOTA}
	if id != nil { // nil before the first boot loaded it
		v.SN, v.MAC = id.SN, id.MAC
	}
	if v.FWVersion == "" {
		v.FWVersion = t.cfg.FirmwareVersion
	}
	if st.WiFi != nil {
		v.SSID = st.WiFi.SSID
	}
	return v
}

// Stats returns the twin's counters.
func (t *Twin) Stats() *Stats { return t.stats }

// ProvAddr is the provisioning service's address while it listens (softap),
// or "" otherwise.
func (t *Twin) ProvAddr() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.provAddr
}

func (t *Twin) setProvAddr(a string) {
	t.mu.Lock()
	t.provAddr = a
	t.mu.Unlock()
}

// persist saves st as the new state.
func (t *Twin) persist(st State) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := SaveState(t.cfg.StateDir, st); err != nil {
		return err
	}
	t.st = st.clone()
	return nil
}

// FactoryReset clears Wi-Fi and runtime state, keeps the SPIFFS identity,
// and sends a running twin back to provisioning, as the firmware's reset
// button does.
func (t *Twin) FactoryReset() error {
	t.mu.Lock()
	t.resetAsked = true
	cancel := t.cancel
	t.mu.Unlock()
	if cancel != nil {
		cancel()
		return nil
	}
	// Not running: reset the files now.
	return t.applyReset()
}

func (t *Twin) applyReset() error {
	t.mu.Lock()
	t.resetAsked = false
	t.mu.Unlock()
	if err := ResetState(t.cfg.StateDir); err != nil {
		return err
	}
	st, err := LoadState(t.cfg.StateDir)
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.st = st
	t.mu.Unlock()
	t.cfg.Logf("factory reset: Wi-Fi and runtime state cleared, identity kept")
	return nil
}

// Run boots the twin and runs it until ctx is done; reboots and factory
// resets loop back to boot without returning.
func (t *Twin) Run(ctx context.Context) error {
	sched := newScheduler()
	t.cc.sched = sched
	sctx, stopSched := context.WithCancel(ctx)
	schedDone := make(chan struct{})
	go func() { sched.run(sctx, 1); close(schedDone) }()
	defer func() { stopSched(); <-schedDone }()

	for {
		err := t.boot(ctx)
		if ctx.Err() != nil {
			return nil
		}
		t.mu.Lock()
		reset := t.resetAsked
		t.mu.Unlock()
		switch {
		case reset || errors.Is(err, errFactoryReset):
			if err := t.applyReset(); err != nil {
				return err
			}
		case errors.Is(err, errReboot):
			t.cfg.Logf("rebooting")
		case err != nil:
			return err
		}
	}
}

// boot is one power cycle: load identity and state, provision if needed,
// join Wi-Fi, and stay on the cloud until something ends the cycle.
func (t *Twin) boot(ctx context.Context) error {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t.mu.Lock()
	t.cancel = cancel
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		t.cancel = nil
		t.dev = nil
		t.mu.Unlock()
	}()

	bootAt := time.Now()
	id, err := t.loadIdentity()
	if err != nil {
		return err
	}
	st, err := LoadState(t.cfg.StateDir)
	if err != nil {
		return err
	}
	st.BootCount++
	t.mu.Lock()
	t.id = id
	t.mu.Unlock()
	if err := t.persist(st); err != nil {
		return err
	}
	t.cfg.Logf("boot #%d: %s (%s), fw %s", st.BootCount, id.SN, id.MAC, t.View().FWVersion)

	station := &Station{Networks: t.cfg.Networks}
	if !st.Provisioned() && t.cfg.Prov != ProvNone {
		creds, owner, assoc, err := t.provision(pctx, id, station)
		if err != nil {
			return err
		}
		st = t.State()
		st.WiFi = creds
		if owner != "" {
			st.Owner = owner
		}
		if assoc != nil {
			st.Assoc = assoc
		}
		if err := t.persist(st); err != nil {
			return err
		}
	}
	if st.WiFi != nil {
		if err := t.joinWiFi(pctx, station, *st.WiFi); err != nil {
			return err
		}
	}
	d := newDevice(id, t.cc, st, t.persist)
	d.bootAt = bootAt // uptime counts from power-on, not from joining the cloud
	if t.cfg.RotateWithin > 0 && t.identityWritable() {
		d.rotateWithin, d.saveIdentity = t.cfg.RotateWithin, t.saveIdentity
	}
	t.mu.Lock()
	t.dev = d
	t.mu.Unlock()
	defer t.cc.sched.remove(d)
	return d.runCloud(pctx)
}

// joinWiFi retries the station like the firmware's event handler does until
// the network accepts the stored credentials.
func (t *Twin) joinWiFi(ctx context.Context, s *Station, c WiFiCredentials) error {
	for n := 0; ; n++ {
		nw, err := s.Connect(c.SSID, c.Passphrase)
		if err == nil {
			t.cfg.Logf("wifi: joined %q (channel %d, rssi %d)", nw.SSID, nw.Channel, nw.RSSI)
			return nil
		}
		wait := backoff(n, t.cfg.BackoffMin, t.cfg.BackoffMax)
		t.cfg.Logf("wifi: %q: %v; retrying in %v", c.SSID, err, wait.Round(time.Millisecond))
		tm := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			tm.Stop()
			return ctx.Err()
		case <-tm.C:
		}
	}
}
