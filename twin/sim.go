package twin

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// SimConfig configures a fleet of already-provisioned twins.
type SimConfig struct {
	Units  string // the factory's output directory, one directory per unit
	Count  int    // the first Count units, by name
	Broker string
	// ServerName overrides the broker host as the expected server name.
	ServerName string
	Interval   time.Duration // telemetry period, 1 s by default
	Ramp       float64       // connection attempts per second across the fleet, 200 by default

	Keepalive  time.Duration
	BackoffMin time.Duration
	BackoffMax time.Duration
	AttrEvery  time.Duration
	Timeout    time.Duration
	Workers    int // scheduler workers, 4 per CPU by default
	Names      FileNames
	RPC        RPCBehaviour // every twin's
	// OTAFail makes firmware updates fail (one of the OTAFail* modes) on
	// a share of the twins, OTAFailShare (0 to 1; 0 means all), spread
	// evenly over them in unit order: how a rollout meets a fleet where
	// some devices cannot update.
	OTAFail      string
	OTAFailShare float64

	Logf func(format string, args ...any)
}

// Sim runs many twins in one process. They skip provisioning: each starts
// with Wi-Fi already joined and its state in memory.
type Sim struct {
	cfg   SimConfig
	cc    *cloudConfig
	stats *Stats
	devs  []*device
}

// UnitDirs lists the unit directories of a factory output directory in name
// order: those holding a device certificate or a SPIFFS image.
func UnitDirs(out string, names FileNames) ([]string, error) {
	names = names.withDefaults()
	ents, err := os.ReadDir(out)
	if err != nil {
		return nil, fmt.Errorf("twin: listing units: %w", err)
	}
	var dirs []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(out, e.Name())
		if fileExists(filepath.Join(p, "spiffs.bin")) || fileExists(filepath.Join(p, names.Cert)) {
			dirs = append(dirs, p)
		}
	}
	sort.Strings(dirs)
	return dirs, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// loadUnit loads a unit's identity from its SPIFFS image, the artifact the
// device boots from, or from the loose files when the image is absent.
func loadUnit(dir string, names FileNames) (*Identity, error) {
	img, err := os.ReadFile(filepath.Join(dir, "spiffs.bin"))
	if err == nil {
		read, err := spiffsReader(img)
		if err != nil {
			return nil, fmt.Errorf("twin: unit %s: %w", filepath.Base(dir), err)
		}
		return LoadIdentity(read, names)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("twin: unit %s: %w", filepath.Base(dir), err)
	}
	return LoadIdentity(DirReader(dir), names)
}

// NewSim loads the first cfg.Count units.
func NewSim(cfg SimConfig) (*Sim, error) {
	if cfg.Count <= 0 {
		return nil, errors.New("twin: sim needs a positive count")
	}
	bs, err := ParseBrokers(cfg.Broker, cfg.ServerName)
	if err != nil {
		return nil, err
	}
	if cfg.Ramp <= 0 {
		cfg.Ramp = 200
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4 * runtime.GOMAXPROCS(0)
	}
	if !ValidOTAFail(cfg.OTAFail) {
		return nil, fmt.Errorf("twin: unknown OTA failure mode %q", cfg.OTAFail)
	}
	if cfg.OTAFailShare < 0 || cfg.OTAFailShare > 1 {
		return nil, fmt.Errorf("twin: OTA failure share %v is not between 0 and 1", cfg.OTAFailShare)
	}
	if cfg.OTAFailShare == 0 {
		cfg.OTAFailShare = 1
	}
	tc := Config{Interval: cfg.Interval, Keepalive: cfg.Keepalive, BackoffMin: cfg.BackoffMin,
		BackoffMax: cfg.BackoffMax, AttrEvery: cfg.AttrEvery, Timeout: cfg.Timeout, Logf: cfg.Logf}
	tc.defaults()
	cfg.Logf = tc.Logf
	dirs, err := UnitDirs(cfg.Units, cfg.Names)
	if err != nil {
		return nil, err
	}
	if len(dirs) < cfg.Count {
		return nil, fmt.Errorf("twin: %s holds %d units, %d asked", cfg.Units, len(dirs), cfg.Count)
	}
	dirs = dirs[:cfg.Count]
	s := &Sim{cfg: cfg, stats: new(Stats)}
	s.cc = &cloudConfig{
		brokers: bs, keepalive: tc.Keepalive, timeout: tc.Timeout, backoffMin: tc.BackoffMin,
		backoffMax: tc.BackoffMax, attrEvery: tc.AttrEvery, interval: tc.Interval,
		fwVersion: tc.FirmwareVersion, stats: s.stats, logf: tc.Logf, sched: newScheduler(),
		ramp: newPacer(cfg.Ramp).wait, otaChunk: tc.OTAChunkSize, otaChunkTimeout: tc.OTAChunkTimeout,
		otaRebooted:  new(atomic.Bool),
		rpcBehaviour: cfg.RPC,
	}
	ids := make([]*Identity, len(dirs))
	errs := make([]error, len(dirs))
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ids[i], errs[i] = loadUnit(dirs[i], cfg.Names)
			}
		}()
	}
	for i := range dirs {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for i, id := range ids {
		d := newDevice(id, s.cc, State{WiFi: &WiFiCredentials{SSID: "sim"}}, nil)
		if cfg.OTAFail != OTAFailNone && otaFails(i, cfg.OTAFailShare) {
			d.otaFail, d.otaRebooted = cfg.OTAFail, new(atomic.Bool)
		}
		s.devs = append(s.devs, d)
	}
	return s, nil
}

// otaFails tells whether twin i of a fleet fails its updates when share of
// them do: those at which the count of failing ones so far, (i+1)×share,
// reaches a whole number (with ½, every second twin), so that any first n
// twins hold n×share of them, rounded down.
func otaFails(i int, share float64) bool {
	return math.Floor(float64(i+1)*share) > math.Floor(float64(i)*share)
}

// Stats returns the fleet's counters.
func (s *Sim) Stats() *Stats { return s.stats }

// Len is the number of twins.
func (s *Sim) Len() int { return len(s.devs) }

// Run runs every twin until ctx is done. A twin's reboot reconnects it; its
// factory reset clears its in-memory state and reconnects, since a simulated
// fleet has no installer to provision it again.
func (s *Sim) Run(ctx context.Context) error {
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	// A fresh scheduler per Run: the previous one's workers are gone.
	s.cc.sched = newScheduler()
	schedDone := make(chan struct{})
	go func() { s.cc.sched.run(sctx, s.cfg.Workers); close(schedDone) }()
	var wg sync.WaitGroup
	for _, d := range s.devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				err := d.runCloud(ctx)
				if errors.Is(err, errFactoryReset) {
					d.mu.Lock()
					d.st = State{WiFi: d.st.WiFi}
					d.mu.Unlock()
				}
				if errors.Is(err, errReboot) || errors.Is(err, errFactoryReset) {
					d.mu.Lock()
					d.bootAt = time.Now()
					d.st.BootCount++
					d.failedVersion = "" // a reboot tries a failed update again, as Twin's new device does
					d.mu.Unlock()
				}
			}
			s.cc.sched.remove(d)
		}()
	}
	wg.Wait()
	stop()
	<-schedDone
	return nil
}

// pacer spaces events at a fixed rate across goroutines.
type pacer struct {
	mu   sync.Mutex // guards next
	next time.Time
	gap  time.Duration
}

func newPacer(perSecond float64) *pacer {
	return &pacer{gap: time.Duration(float64(time.Second) / perSecond)}
}

// wait blocks until the caller's slot, or until ctx is done.
func (p *pacer) wait(ctx context.Context) error {
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	slot := p.next
	p.next = p.next.Add(p.gap)
	p.mu.Unlock()
	d := time.Until(slot)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
