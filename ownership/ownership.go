// Package ownership runs what ownership needs in the background: wiping
// the data of ended ownership epochs once the tenant's policy stops keeping
// it for their previous owner (docs/ownership.md). Claims, transfers and
// releases themselves are single store transactions (store.Ownership), made
// by the API and the gateway; this package holds no state of its own.
package ownership

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/thingline/thingline/store"
)

// Config configures the sweeper.
type Config struct {
	Store  store.Store
	Logger *slog.Logger
	// Every is the period between sweeps; default 1 minute.
	Every time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Sweeper wipes expired epochs' data. Every node runs one: the deletions
// are idempotent and an epoch is marked wiped only once its data is gone,
// so two nodes sweeping the same epoch only repeat harmless deletes.
type Sweeper struct {
	cfg    Config
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Start starts a sweeper; Stop ends it.
func Start(cfg Config) *Sweeper {
	if cfg.Every <= 0 {
		cfg.Every = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sweeper{cfg: cfg, cancel: cancel, done: make(chan struct{})}
	go s.run(ctx)
	return s
}

// Stop ends the sweeper and waits for a sweep in progress.
func (s *Sweeper) Stop() {
	s.once.Do(func() {
		s.cancel()
		<-s.done
	})
}

func (s *Sweeper) run(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.cfg.Every)
	defer t.Stop()
	for {
		if _, err := Sweep(ctx, s.cfg.Store, s.cfg.Now()); err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("ownership: wiping expired epochs", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep wipes the data of every epoch whose keeping ended before now and
// returns how many epochs it wiped. An epoch's data is what the device
// recorded before the epoch ended: telemetry, attributes last set then, and
// its events; the next owner never saw any of it.
func Sweep(ctx context.Context, st store.Store, now time.Time) (int, error) {
	n := 0
	for {
		es, err := st.ExpiredEpochs(ctx, now, 100)
		if err != nil {
			return n, err
		}
		if len(es) == 0 {
			return n, nil
		}
		for _, e := range es {
			if err := wipe(ctx, st, e); err != nil {
				return n, fmt.Errorf("ownership: wiping epoch %d of %s: %w", e.ID, e.DeviceName, err)
			}
			if err := st.MarkWiped(ctx, e.ID); err != nil {
				return n, err
			}
			n++
		}
	}
}

func wipe(ctx context.Context, st store.Store, e store.Epoch) error {
	until := e.Until.UnixMilli()
	// In bounded steps, so that a long history never holds the write path.
	for {
		_, more, err := st.DeleteTelemetryBefore(ctx, e.DeviceID, until, 10000)
		if err != nil {
			return err
		}
		if !more {
			break
		}
	}
	for _, sc := range []store.Scope{store.ClientScope, store.SharedScope, store.ServerScope} {
		attrs, err := st.GetAttributes(ctx, e.DeviceID, sc, nil)
		if err != nil {
			return err
		}
		var old []string
		for k, a := range attrs {
			if a.UpdatedAt < until {
				old = append(old, k)
			}
		}
		if len(old) > 0 {
			if err := st.DeleteAttributes(ctx, e.DeviceID, sc, old); err != nil {
				return err
			}
		}
	}
	if err := drain(func() (int64, bool, error) {
		return st.DeleteEventsBefore(ctx, store.EventPurge{Before: e.Until, Device: e.DeviceName, Limit: 1000})
	}); err != nil {
		return err
	}
	// Alarms and RPC calls begun before the epoch's end, active or not:
	// they were the old owner's; OTA history too (the current target,
	// which drives the device, stays); and the alarm rules' states begun
	// then, whose episodes raised those alarms.
	q := store.HistoryPurge{DeviceID: e.DeviceID, Before: e.Until, Limit: 1000}
	for _, del := range []func(context.Context, store.HistoryPurge) (int64, bool, error){
		st.DeleteAlarmsBefore, st.DeleteAlarmRuleStatesBefore, st.DeleteRPCsBefore, st.DeleteOTAHistoryBefore,
	} {
		if err := drain(func() (int64, bool, error) { return del(ctx, q) }); err != nil {
			return err
		}
	}
	return nil
}

// drain repeats a bounded deletion until nothing remains.
func drain(step func() (int64, bool, error)) error {
	for {
		_, more, err := step()
		if err != nil || !more {
			return err
		}
	}
}
