package demo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/thingline/thingline/protocomm/httpd"
	"github.com/thingline/thingline/twin"
	"github.com/thingline/thingline/wifiprov"
)

// fleet is the running twins.
type fleet struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	twins  map[string]*twin.Twin
	stats  func() fleetStats

	mu   sync.Mutex // guards errs
	errs map[string]error
}

type fleetStats struct{ sent, acked, rpcs int64 }

// bootTwins powers on one twin per unit, each with its own state directory
// (its NVS). The state is reset first, as the reset button would, so that
// every run shows the provisioning again; the identity in the image stays.
func bootTwins(ctx context.Context, opt Options, units []unit, broker string, w *lockedWriter) (*fleet, error) {
	tctx, cancel := context.WithCancel(ctx)
	f := &fleet{cancel: cancel, twins: map[string]*twin.Twin{}, errs: map[string]error{}}
	var all []*twin.Stats
	f.stats = func() fleetStats {
		var s fleetStats
		for _, st := range all {
			s.sent += st.Sent.Load()
			s.acked += st.Acked.Load()
			s.rpcs += st.RPCs.Load()
		}
		return s
	}
	network := twin.Network{SSID: opt.SSID, Passphrase: opt.Passphrase, RSSI: -42, Channel: 6, Auth: twin.AuthWPA2PSK}
	for _, u := range units {
		stateDir := filepath.Join(opt.Dir, "twins", u.sn)
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			f.stop()
			return nil, fmt.Errorf("demo: twin %s: %w", u.sn, err)
		}
		if err := twin.ResetState(stateDir); err != nil {
			f.stop()
			return nil, fmt.Errorf("demo: twin %s: %w", u.sn, err)
		}
		st := new(twin.Stats)
		all = append(all, st)
		sn := u.sn
		tw, err := twin.New(twin.Config{
			SPIFFS:     u.image(),
			StateDir:   stateDir,
			Broker:     broker,
			Prov:       twin.ProvSoftAP,
			ProvListen: "127.0.0.1:0",
			Sec:        1,
			SecSet:     true,
			Networks:   []twin.Network{network},
			Interval:   opt.Interval,
			BackoffMin: 200 * time.Millisecond,
			BackoffMax: 5 * time.Second,
			Stats:      st,
			Logf: func(format string, args ...any) {
				// The twin names itself in its cloud lines; the column
				// already does.
				msg := strings.TrimPrefix(fmt.Sprintf(format, args...), sn+": ")
				w.printf("   %-12s twin   %s\n", sn, msg)
			},
		})
		if err != nil {
			f.stop()
			return nil, fmt.Errorf("demo: twin %s: %w", sn, err)
		}
		f.twins[sn] = tw
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			if err := tw.Run(tctx); err != nil {
				f.mu.Lock()
				f.errs[sn] = err
				f.mu.Unlock()
			}
		}()
	}
	return f, nil
}

// failed returns the error of a twin that stopped by itself.
func (f *fleet) failed() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for sn, err := range f.errs {
		return fmt.Errorf("demo: twin %s stopped: %w", sn, err)
	}
	return nil
}

func (f *fleet) stop() {
	f.cancel()
	f.wg.Wait()
}

// poll calls fn every period until it returns nil, ctx is done, a twin
// fails or total has passed; then it returns fn's last error.
func poll(ctx context.Context, f *fleet, total, period time.Duration, what string, fn func() error) error {
	deadline := time.Now().Add(total)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if ferr := f.failed(); ferr != nil {
			return ferr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: %s: not done after %v: %w", what, total, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// provisionUnit plays the phone app against one twin's SoftAP service:
// proto-ver, a security 1 session with the PoP from the unit's label,
// the Wi-Fi credentials, apply, and status until connected.
func provisionUnit(ctx context.Context, opt Options, f *fleet, u unit, w *lockedWriter) error {
	tw := f.twins[u.sn]
	var addr string
	err := poll(ctx, f, opt.Timeout, 10*time.Millisecond, u.sn+" provisioning service", func() error {
		if addr = tw.ProvAddr(); addr == "" {
			return errors.New("not listening yet")
		}
		return nil
	})
	if err != nil {
		return err
	}
	say := func(format string, args ...any) {
		w.printf("   %-12s app    %s\n", u.sn, fmt.Sprintf(format, args...))
	}
	say("found %s (SoftAP transport, http://%s)", u.prov.ServiceName, addr)
	pctx, cancel := context.WithTimeout(ctx, opt.Timeout)
	defer cancel()
	hc := httpd.NewClient(addr)
	defer hc.Close()
	c, err := wifiprov.Connect(pctx, hc, wifiprov.Credentials{Security: 1, PoP: u.prov.PoP})
	if err != nil {
		return fmt.Errorf("demo: provisioning %s: %w", u.sn, err)
	}
	say("proto-ver: %s", compact([]byte(c.Info.Raw)))
	say("session established: security 1, X25519 + AES-CTR keyed with the PoP from the label")
	if err := c.SetConfig(pctx, opt.SSID, opt.Passphrase); err != nil {
		return fmt.Errorf("demo: provisioning %s: %w", u.sn, err)
	}
	say("Wi-Fi credentials for %q sent", opt.SSID)
	if err := c.Apply(pctx); err != nil {
		return fmt.Errorf("demo: provisioning %s: %w", u.sn, err)
	}
	say("Wi-Fi config applied; the device is joining")
	st, err := c.WaitConnected(pctx, 50*time.Millisecond, nil)
	if err != nil {
		return fmt.Errorf("demo: provisioning %s: %w", u.sn, err)
	}
	say("device reports: %s", st)
	return nil
}
