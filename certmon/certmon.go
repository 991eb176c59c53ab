// Package certmon watches the certificates of the fleet from the server
// side: it raises the "certificate expiring" alarm when a device's current
// certificate expires within a threshold (and clears it once the device
// presents a newer one), and it revokes the certificates that rotations
// superseded once their grace period is over.
//
// Every node runs a Monitor. The store is the arbiter: an expiry notice is
// claimed once per certificate (store.ClaimExpiryNotice) and a retirement
// is revoked in one conditional transaction (store.RetireDue), so however
// many nodes sweep, each alarm is raised and each revocation announced
// once. See docs/certificates.md.
package certmon

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/thingline/thingline/alarm"
	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// Defaults of Config.
const (
	DefaultThreshold   = 30 * 24 * time.Hour
	DefaultExpiryEvery = time.Hour
	DefaultRetireEvery = 30 * time.Second
)

// Config configures a Monitor. Zero values take the defaults.
type Config struct {
	Store  store.Store
	Bus    bus.Bus
	Node   string
	Logger *slog.Logger
	// Threshold: a current certificate expiring within it raises the alarm.
	Threshold time.Duration
	// ExpiryEvery is the period of the expiry sweep; RetireEvery that of the
	// retirement sweep, which bounds how late after its grace a superseded
	// certificate is revoked.
	ExpiryEvery time.Duration
	RetireEvery time.Duration
	Now         func() time.Time // for tests; nil is time.Now
}

// Monitor is the background job. Start it with Start; stop it with Stop.
type Monitor struct {
	cfg    Config
	alarms *alarm.Service
	log    *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var discard = slog.New(slog.DiscardHandler)

// Start begins both sweeps; the first runs at once.
func Start(cfg Config) *Monitor {
	if cfg.Threshold <= 0 {
		cfg.Threshold = DefaultThreshold
	}
	if cfg.ExpiryEvery <= 0 {
		cfg.ExpiryEvery = DefaultExpiryEvery
	}
	if cfg.RetireEvery <= 0 {
		cfg.RetireEvery = DefaultRetireEvery
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = discard
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Monitor{cfg: cfg, alarms: alarm.NewService(cfg.Store, cfg.Bus, cfg.Logger), log: cfg.Logger, cancel: cancel}
	m.wg.Add(2)
	go m.every(ctx, cfg.ExpiryEvery, m.SweepExpiry)
	go m.every(ctx, cfg.RetireEvery, m.SweepRetirements)
	return m
}

// Stop ends the sweeps and waits for a running one to finish.
func (m *Monitor) Stop() {
	m.cancel()
	m.wg.Wait()
}

func (m *Monitor) every(ctx context.Context, d time.Duration, sweep func(context.Context) error) {
	defer m.wg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, max(d, time.Minute))
		if err := sweep(sctx); err != nil && ctx.Err() == nil {
			m.log.Warn("certmon: sweep failed", "err", err)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// expiryDetail is the detail of the alarm and of its event.
type expiryDetail struct {
	Serial   string    `json:"serial"`
	Issuer   string    `json:"issuer"`
	NotAfter time.Time `json:"notAfter"`
	DaysLeft int       `json:"daysLeft"`
}

// sweepLimit bounds the rows one sweep handles; the next takes the rest.
const sweepLimit = 1000

// SweepExpiry raises the alarm for every current certificate expiring
// within the threshold whose expiry was not announced yet, and clears the
// alarm of devices whose current certificate no longer expires soon.
func (m *Monitor) SweepExpiry(ctx context.Context) error {
	now := m.cfg.Now()
	soon, err := m.cfg.Store.CurrentCredentials(ctx, now.Add(m.cfg.Threshold), sweepLimit)
	if err != nil {
		return err
	}
	expiring := map[int64]bool{}
	for _, c := range soon {
		expiring[c.DeviceID] = true
		first, err := m.cfg.Store.ClaimExpiryNotice(ctx, c.Serial, now)
		if err != nil {
			return err
		}
		if !first {
			continue
		}
		d := expiryDetail{Serial: c.Serial, Issuer: c.Issuer, NotAfter: c.NotAfter, DaysLeft: int(c.NotAfter.Sub(now).Hours() / 24)}
		sev := store.SeverityMajor
		if !c.NotAfter.After(now) {
			sev = store.SeverityCritical
		}
		detail, _ := json.Marshal(d)
		dev := store.Device{ID: c.DeviceID, Name: c.Device}
		if _, err := m.alarms.RaiseDevice(ctx, dev, store.AlarmCertExpiry, sev, json.RawMessage(detail)); err != nil {
			return err
		}
		if err := m.cfg.Store.AddEvent(ctx, store.Event{Time: now, Device: c.Device, Kind: store.EventCertExpiring,
			Node: m.cfg.Node, Detail: detail}); err != nil {
			return err
		}
	}
	// A device that rotated has a current certificate beyond the
	// threshold: its alarm has served its purpose.
	active := true
	alarms, err := m.cfg.Store.ListAlarms(ctx, store.AlarmQuery{Type: store.AlarmCertExpiry, Active: &active, Limit: sweepLimit})
	if err != nil {
		return err
	}
	for _, a := range alarms {
		if expiring[a.DeviceID] || len(soon) == sweepLimit {
			continue
		}
		if _, _, err := m.alarms.ClearDevice(ctx, a.DeviceID, store.AlarmCertExpiry, "system"); err != nil {
			return err
		}
	}
	return nil
}

// SweepRetirements revokes the certificates whose rotation grace is over
// and announces each revocation, so that every node's gateway refuses the
// serial and closes a session still using it.
func (m *Monitor) SweepRetirements(ctx context.Context) error {
	now := m.cfg.Now()
	revs, err := m.cfg.Store.RetireDue(ctx, now, sweepLimit)
	for _, r := range revs {
		Announce(ctx, m.cfg.Bus, r)
		m.log.Info("certmon: superseded certificate revoked", "serial", r.Serial)
	}
	return err
}

// Announce publishes a revocation on bus.TopicRevocations, where every
// gateway adds it to its deny-list and closes sessions presenting it. A
// lost notice is caught up by the gateways' periodic reload.
func Announce(ctx context.Context, b bus.Bus, r store.Revocation) {
	data, err := json.Marshal(r)
	if err != nil {
		return
	}
	b.Publish(ctx, bus.TopicRevocations, data)
}
