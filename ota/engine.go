// Package ota runs firmware updates the ThingsBoard way: it pushes the
// fw_* shared attributes to a device, follows the fw_state the device
// reports (QUEUED → INITIATED → DOWNLOADING → DOWNLOADED → VERIFIED →
// UPDATING → UPDATED | FAILED) with a timeout in every state, retries
// after a reboot mid-update, and drives staged rollouts (waves, a success
// threshold that starts the next wave, a failure threshold that pauses).
//
// The gateway serves the chunks (gateway/ota.go) and tells the engine, on
// bus.TopicOTAReport, what devices reported once it is stored. Every node
// runs an engine; the store is the arbiter: a transition is written with a
// compare-and-set on the row's revision, and only the writer that won
// pushes attributes, raises alarms and announces on bus.TopicOTA. See
// docs/ota.md.
package ota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thingline/thingline/alarm"
	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// Config configures an engine. Store and Bus are required.
type Config struct {
	Store  store.Store
	Bus    bus.Bus
	Alarms *alarm.Service // nil: one on Store and Bus
	Logger *slog.Logger
	Timeouts
	// MaxAttempts bounds the pushes of one target: the first, and the
	// retries after a reboot mid-update or silence. Default 3.
	MaxAttempts int
	// Tick is how often timeouts and rollouts are looked at; default 1 s.
	Tick time.Duration
	Now  func() time.Time
}

// Engine is a running OTA engine.
type Engine struct {
	cfg     Config
	m       machine
	log     *slog.Logger
	reports chan []byte
	kick    chan struct{}
	pushes  chan struct{} // bounds concurrent attribute pushes
	stop    context.CancelFunc
	done    chan struct{}
	unsub   []func()
	wg      sync.WaitGroup
	missed  atomic.Bool // a report was dropped: reconcile at the next sweep
}

// Start subscribes to the device reports and starts the engine's loop.
func Start(cfg Config) (*Engine, error) {
	if cfg.Store == nil || cfg.Bus == nil {
		return nil, errors.New("ota: Store and Bus are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Alarms == nil {
		cfg.Alarms = alarm.NewService(cfg.Store, cfg.Bus, cfg.Logger)
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Timeouts.defaults()
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		cfg: cfg, m: machine{t: cfg.Timeouts, maxAttempts: cfg.MaxAttempts}, log: cfg.Logger,
		reports: make(chan []byte, 4096), kick: make(chan struct{}, 1), pushes: make(chan struct{}, 16),
		stop: cancel, done: make(chan struct{}),
	}
	stop, err := cfg.Bus.Subscribe(bus.TopicOTAReport, func(b []byte) {
		select {
		case e.reports <- b:
		default:
			// Full: the report is stored; the timeout sweep reconciles
			// from the stored telemetry (see reconcile).
			e.missed.Store(true)
			e.log.Warn("ota: report queue full, deferring to the sweep")
		}
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("ota: subscribing to reports: %w", err)
	}
	e.unsub = append(e.unsub, stop)
	go e.run(ctx)
	return e, nil
}

// Kick asks for a sweep now (after an assignment or a rollout change),
// instead of at the next tick.
func (e *Engine) Kick() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Close stops the engine and waits for its work in flight.
func (e *Engine) Close() {
	for _, u := range e.unsub {
		u()
	}
	e.stop()
	<-e.done
	e.wg.Wait()
}

func (e *Engine) run(ctx context.Context) {
	defer close(e.done)
	t := time.NewTicker(e.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-e.reports:
			e.handleReport(ctx, b)
		case <-t.C:
			e.sweep(ctx)
		case <-e.kick:
			e.sweep(ctx)
		}
	}
}

// report is the gateway's bus.TopicOTAReport notice.
type report struct {
	Device  string                     `json:"device"`
	TS      int64                      `json:"ts"`
	At      int64                      `json:"at"`
	Values  map[string]json.RawMessage `json:"values"`
	Package int64                      `json:"package"`
	Sent    int64                      `json:"sent"`
	Size    int64                      `json:"size"`
}

func str(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw) // a number as version, say
}

func (e *Engine) handleReport(ctx context.Context, b []byte) {
	var r report
	if err := json.Unmarshal(b, &r); err != nil || r.Device == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	dev, err := e.cfg.Store.GetDevice(ctx, r.Device)
	if err != nil {
		return
	}
	ev := event{kind: evReport}
	var progress int
	if r.Values == nil {
		ev.kind = evActivity
		if r.Size > 0 {
			progress = int(r.Sent * 100 / r.Size)
		}
	} else {
		state := r.Values["fw_state"]
		if state == nil {
			// Older Arduino SDKs report it as current_fw_state.
			state = r.Values["current_fw_state"]
		}
		ev.state = str(state)
		ev.errText = str(r.Values["fw_error"])
		ev.title = str(r.Values["current_fw_title"])
		ev.version = str(r.Values["current_fw_version"])
		if r.At > 0 {
			ev.at = time.Unix(0, r.At)
		}
		if state == nil {
			ev.state = ""
		}
	}
	if _, err := e.cfg.Store.GetOTADevice(ctx, dev.ID); errors.Is(err, store.ErrNotFound) && ev.kind == evReport {
		e.adoptFromProfile(ctx, dev, ev.version)
		return
	}
	if err := e.apply(ctx, dev, ev, progress); err != nil {
		e.log.Warn("ota: applying a device report", "device", dev.Name, "err", err)
	}
}

// adoptFromProfile queues a device that reports its firmware, has no
// target of its own and belongs to a profile with a package assigned
// (a device made after the profile assignment, say).
func (e *Engine) adoptFromProfile(ctx context.Context, dev store.Device, version string) {
	pkgID, err := e.cfg.Store.GetOTAProfile(ctx, dev.Profile)
	if err != nil || pkgID == 0 {
		return
	}
	pkg, err := e.cfg.Store.GetOTAPackage(ctx, pkgID)
	if err != nil || pkg.Version == version {
		return
	}
	if _, err := e.cfg.Store.PutOTADevice(ctx, store.OTADevice{DeviceID: dev.ID, PackageID: pkgID, Source: store.OTASourceProfile,
		State: store.OTAQueued, CurrentVersion: version, StateAt: e.cfg.Now()}); err != nil {
		e.log.Warn("ota: queueing a device of an assigned profile", "device", dev.Name, "err", err)
		return
	}
	e.Kick()
}

// apply runs ev against the device's row until it is stored or moot: a
// lost compare-and-set (another node, or a newer report) reads again.
func (e *Engine) apply(ctx context.Context, dev store.Device, ev event, progress int) error {
	for range 5 {
		row, err := e.cfg.Store.GetOTADevice(ctx, dev.ID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		pkg, err := e.cfg.Store.GetOTAPackage(ctx, row.PackageID)
		if err != nil {
			return err
		}
		next, act, changed := e.m.step(row, pkg, ev, e.cfg.Now())
		if !changed {
			return nil
		}
		stored, ok, err := e.cfg.Store.UpdateOTADevice(ctx, next)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		e.after(ctx, dev, row, stored, pkg, act, progress)
		return nil
	}
	return fmt.Errorf("ota: device %s: row kept changing", dev.Name)
}

// Notice is the bus.TopicOTA payload for one device's update.
type Notice struct {
	Device    string `json:"device"`
	TS        int64  `json:"ts"` // ms
	State     string `json:"state"`
	Previous  string `json:"previous,omitempty"`
	Package   int64  `json:"package"`
	Title     string `json:"title"`
	Version   string `json:"version"`
	RolloutID int64  `json:"rollout,omitempty"`
	Attempts  int    `json:"attempts"`
	Error     string `json:"error,omitempty"`
	Progress  int    `json:"progress,omitempty"` // percent of the package served
}

// after does what a stored transition calls for: announce it, push the
// attributes, write the server's states as ThingsBoard's telemetry, raise
// or clear the OTA alarm.
func (e *Engine) after(ctx context.Context, dev store.Device, old, cur store.OTADevice, pkg store.OTAPackage, act action, progress int) {
	now := e.cfg.Now()
	if cur.State != old.State || progress > 0 || cur.Attempts != old.Attempts {
		n := Notice{Device: dev.Name, TS: now.UnixMilli(), State: cur.State, Package: pkg.ID, Title: pkg.Title,
			Version: pkg.Version, RolloutID: cur.RolloutID, Attempts: cur.Attempts, Error: cur.Error, Progress: progress}
		if cur.State != old.State {
			n.Previous = old.State
		}
		b, _ := json.Marshal(n)
		e.cfg.Bus.Publish(ctx, bus.TopicOTA, b)
	}
	if act == actPush {
		e.push(dev, pkg)
	}
	if cur.State == old.State {
		return
	}
	e.log.Info("ota: state", "device", dev.Name, "state", cur.State, "from", old.State, "package", pkg.Title+" "+pkg.Version, "error", cur.Error)
	// The states the server decides are written as telemetry the way
	// ThingsBoard does, so that dashboards reading fw_state see them.
	if cur.State == store.OTAInitiated || cur.State == store.OTAQueued || (cur.State == store.OTAFailed && cur.Error != "" && old.State != store.OTAFailed) {
		vals := []store.KV{{Key: "fw_state", Value: jsonString(cur.State)},
			{Key: "target_fw_title", Value: jsonString(pkg.Title)}, {Key: "target_fw_version", Value: jsonString(pkg.Version)}}
		if cur.State == store.OTAFailed {
			vals = append(vals, store.KV{Key: "fw_error", Value: jsonString(cur.Error)})
		}
		if err := e.cfg.Store.AppendTelemetry(ctx, []store.Record{{DeviceID: dev.ID, TS: now.UnixMilli(), Values: vals}}); err != nil {
			e.log.Warn("ota: writing fw_state telemetry", "device", dev.Name, "err", err)
		}
	}
	switch cur.State {
	case store.OTAFailed:
		detail := map[string]any{"package": pkg.ID, "title": pkg.Title, "version": pkg.Version, "error": cur.Error,
			"rollout": cur.RolloutID, "attempts": cur.Attempts, "failedIn": old.State}
		if _, err := e.cfg.Alarms.RaiseDevice(ctx, dev, store.AlarmOTAFailed, store.SeverityMajor, detail); err != nil {
			e.log.Warn("ota: raising the OTA alarm", "device", dev.Name, "err", err)
		}
	case store.OTAUpdated:
		if _, _, err := e.cfg.Alarms.ClearDevice(ctx, dev.ID, store.AlarmOTAFailed, "ota"); err != nil {
			e.log.Warn("ota: clearing the OTA alarm", "device", dev.Name, "err", err)
		}
	}
}

func jsonString(s string) json.RawMessage {
	b, _ := json.Marshal(s)
	return b
}

// Attributes are the shared attributes that announce pkg, as ThingsBoard
// sets them.
func Attributes(pkg store.OTAPackage) map[string]json.RawMessage {
	size, _ := json.Marshal(pkg.Size)
	return map[string]json.RawMessage{
		"fw_title":              jsonString(pkg.Title),
		"fw_version":            jsonString(pkg.Version),
		"fw_size":               size,
		"fw_checksum":           jsonString(pkg.Checksum),
		"fw_checksum_algorithm": jsonString(pkg.ChecksumAlgorithm),
	}
}

// push stores the fw attributes as shared attributes (an attribute request
// answers them) and pushes them to the device if it is connected, in the
// background and at most 16 at a time. It follows the shared-attribute
// protocol of docs/rpc.md: the change is marked before it is stored and
// cleared once pushed, so a device not told now is told when it next
// subscribes to attribute updates.
func (e *Engine) push(dev store.Device, pkg store.OTAPackage) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.pushes <- struct{}{}
		defer func() { <-e.pushes }()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		attrs := Attributes(pkg)
		keys := make([]string, 0, len(attrs))
		for k := range attrs {
			keys = append(keys, k)
		}
		now := e.cfg.Now()
		if err := e.cfg.Store.MarkShared(ctx, dev.ID, keys, false, now); err != nil {
			e.log.Warn("ota: marking fw attributes", "device", dev.Name, "err", err)
			return
		}
		if err := e.cfg.Store.SetAttributes(ctx, dev.ID, store.SharedScope, attrs, now); err != nil {
			e.log.Warn("ota: setting fw attributes", "device", dev.Name, "err", err)
			return
		}
		payload, _ := json.Marshal(attrs)
		reply, err := e.cfg.Bus.Request(ctx, dev.Name, bus.Command{Kind: bus.CommandAttributes, Payload: payload, TimeoutMs: 5000})
		if err != nil {
			if !errors.Is(err, bus.ErrNoSession) {
				e.log.Warn("ota: pushing fw attributes", "device", dev.Name, "err", err)
			}
			return
		}
		var res struct {
			Pushed *bool `json:"pushed"`
		}
		if json.Unmarshal(reply, &res) == nil && res.Pushed != nil && !*res.Pushed {
			return // connected, not subscribed: told when it subscribes
		}
		cs := make([]store.SharedChange, len(keys))
		for i, k := range keys {
			cs[i] = store.SharedChange{Key: k, At: now}
		}
		if err := e.cfg.Store.ClearShared(ctx, dev.ID, cs); err != nil {
			e.log.Warn("ota: clearing pushed fw attributes", "device", dev.Name, "err", err)
		}
	}()
}

// RolloutNotice is the bus.TopicOTA payload for a rollout's change of
// status or wave; Device is empty.
type RolloutNotice struct {
	Device      string            `json:"device"`
	TS          int64             `json:"ts"`
	RolloutID   int64             `json:"rollout"`
	Status      string            `json:"status"`
	Wave        int               `json:"wave"` // 1-based
	PauseReason string            `json:"pauseReason,omitempty"`
	Progress    store.OTAProgress `json:"progress"`
}

// AnnounceRollout publishes a rollout's state on bus.TopicOTA.
func AnnounceRollout(ctx context.Context, b bus.Bus, r store.OTARollout, p store.OTAProgress) {
	n, _ := json.Marshal(RolloutNotice{TS: time.Now().UnixMilli(), RolloutID: r.ID, Status: r.Status,
		Wave: r.CurrentWave + 1, PauseReason: r.PauseReason, Progress: p})
	b.Publish(ctx, bus.TopicOTA, n)
}
