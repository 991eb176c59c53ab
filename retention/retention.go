// Package retention removes telemetry and events older than their
// configured age: a global age per kind, overridden per device profile
// (store.ProfileSettings); and cleared alarms, finished RPC calls and OTA
// history older than a global age. It works in small steps with pauses between
// them, so that the store's write path (and so the acknowledgements of
// device messages) never waits long for it. One node of a cluster runs a
// pass at a time, under a lease. See docs/retention.md.
package retention

import (
	"context"
	"log/slog"
	"time"

	"github.com/thingline/thingline/store"
)

// Config configures the retention engine.
type Config struct {
	Store  store.Store
	Node   string
	Logger *slog.Logger
	// Telemetry and Events are the global ages; 0 keeps forever (unless
	// a profile sets its own).
	Telemetry, Events time.Duration
	// Alarms (cleared ones, by clear time), RPCs (calls in a final
	// status, by last update) and OTAHistory (state changes) are global
	// ages; 0 keeps forever. What is still under way is never removed.
	Alarms, RPCs, OTAHistory time.Duration
	// Interval is the time between the starts of two passes; 0 means 10
	// minutes. The first pass starts after Delay (0 means 30 s).
	Interval, Delay time.Duration
	// Step is the most records (or events) one step removes; 0 means
	// 2,000. Pause is the rest between steps; 0 means 20 ms.
	Step  int
	Pause time.Duration
}

// Engine runs retention passes in the background.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	stop chan struct{}
	done chan struct{}
}

// Result counts what a pass removed.
type Result struct {
	Telemetry int64 // records (SQLite) or rows (PostgreSQL)
	Events    int64
	Alarms    int64
	RPCs      int64
	OTA       int64 // OTA history entries
	Steps     int
}

const leaseName = "retention"

// Start starts the engine.
func Start(cfg Config) *Engine {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Minute
	}
	if cfg.Delay <= 0 {
		cfg.Delay = 30 * time.Second
	}
	if cfg.Step <= 0 {
		cfg.Step = 2000
	}
	if cfg.Pause <= 0 {
		cfg.Pause = 20 * time.Millisecond
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, stop: make(chan struct{}), done: make(chan struct{})}
	go e.run()
	return e
}

// Close stops the engine, interrupting a pass between two steps.
func (e *Engine) Close() {
	select {
	case <-e.stop:
	default:
		close(e.stop)
	}
	<-e.done
}

func (e *Engine) run() {
	defer close(e.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-e.stop
		cancel()
	}()
	wait := e.cfg.Delay
	for {
		select {
		case <-e.stop:
			return
		case <-time.After(wait):
		}
		wait = e.cfg.Interval
		// The lease outlives a pass that runs long; its holder renews it
		// at each pass, and a crashed holder's lease expires.
		ok, err := e.cfg.Store.TryLease(ctx, leaseName, e.cfg.Node, e.cfg.Interval+time.Minute)
		if err != nil {
			e.log.Warn("retention: taking the lease", "err", err)
			continue
		}
		if !ok {
			continue
		}
		start := time.Now()
		res, err := e.Pass(ctx, start)
		if err != nil && ctx.Err() == nil {
			e.log.Warn("retention: pass failed", "err", err)
		}
		if res.Telemetry > 0 || res.Events > 0 || res.Alarms > 0 || res.RPCs > 0 || res.OTA > 0 {
			e.log.Info("retention: removed old data", "telemetry", res.Telemetry, "events", res.Events,
				"alarms", res.Alarms, "rpcs", res.RPCs, "ota", res.OTA, "steps", res.Steps, "took", time.Since(start).Round(time.Millisecond))
		}
	}
}

// Pass removes what is older than its age at now, step by step.
func (e *Engine) Pass(ctx context.Context, now time.Time) (Result, error) {
	var res Result
	ps, err := e.cfg.Store.ListProfileSettings(ctx)
	if err != nil {
		return res, err
	}
	byProfile := map[string]store.ProfileSettings{}
	var keepEvents []string // profiles whose events have their own age
	// perDevice: some age applies device by device. Without one, the walk
	// over every device (a listing of the whole fleet, with each device's
	// latest values) is skipped: at ten thousand devices it cost a few
	// percent of a busy server's CPU for nothing.
	perDevice := e.cfg.Telemetry > 0
	for _, p := range ps {
		byProfile[p.Profile] = p
		if p.EventRetention > 0 {
			keepEvents = append(keepEvents, p.Profile)
			perDevice = true
		}
		if p.TelemetryRetention > 0 {
			perDevice = true
		}
	}
	pause := func() bool {
		res.Steps++
		select {
		case <-ctx.Done():
			return false
		case <-time.After(e.cfg.Pause):
			return true
		}
	}
	after := ""
	for perDevice {
		ds, err := e.cfg.Store.ListDevices(ctx, store.ListOptions{After: after, Limit: 500})
		if err != nil {
			return res, err
		}
		for _, d := range ds {
			p := byProfile[d.Profile]
			if age := pick(time.Duration(p.TelemetryRetention), e.cfg.Telemetry); age > 0 {
				before := now.Add(-age).UnixMilli()
				for more := true; more; {
					var n int64
					n, more, err = e.cfg.Store.DeleteTelemetryBefore(ctx, d.ID, before, e.cfg.Step)
					if err != nil {
						return res, err
					}
					res.Telemetry += n
					if n > 0 && !pause() {
						return res, ctx.Err()
					}
				}
			}
			if age := time.Duration(p.EventRetention); age > 0 {
				n, err := e.events(ctx, store.EventPurge{Before: now.Add(-age), Device: d.Name, Limit: e.cfg.Step}, pause)
				res.Events += n
				if err != nil {
					return res, err
				}
			}
		}
		if len(ds) < 500 {
			break
		}
		after = ds[len(ds)-1].Name
	}
	if e.cfg.Events > 0 {
		n, err := e.events(ctx, store.EventPurge{Before: now.Add(-e.cfg.Events), KeepProfiles: keepEvents, Limit: e.cfg.Step}, pause)
		res.Events += n
		if err != nil {
			return res, err
		}
	}
	st := e.cfg.Store
	for _, h := range []struct {
		age   time.Duration
		del   func(context.Context, store.HistoryPurge) (int64, bool, error)
		count *int64
	}{
		{e.cfg.Alarms, st.DeleteAlarmsBefore, &res.Alarms},
		{e.cfg.RPCs, st.DeleteRPCsBefore, &res.RPCs},
		{e.cfg.OTAHistory, st.DeleteOTAHistoryBefore, &res.OTA},
	} {
		if h.age <= 0 {
			continue
		}
		q := store.HistoryPurge{Before: now.Add(-h.age), Finished: true, Limit: e.cfg.Step}
		n, err := steps(ctx, func() (int64, bool, error) { return h.del(ctx, q) }, pause)
		*h.count += n
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

func (e *Engine) events(ctx context.Context, q store.EventPurge, pause func() bool) (int64, error) {
	return steps(ctx, func() (int64, bool, error) { return e.cfg.Store.DeleteEventsBefore(ctx, q) }, pause)
}

// steps repeats a bounded deletion, pausing between steps, until nothing
// remains.
func steps(ctx context.Context, step func() (int64, bool, error), pause func() bool) (int64, error) {
	var total int64
	for {
		n, more, err := step()
		total += n
		if err != nil || !more {
			return total, err
		}
		if !pause() {
			return total, ctx.Err()
		}
	}
}

func pick(profile, global time.Duration) time.Duration {
	if profile > 0 {
		return profile
	}
	return global
}
