package alarm

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// Config configures an Engine.
type Config struct {
	Store  store.Store
	Bus    bus.Bus
	Node   string
	Logger *slog.Logger
	// InactivityTimeout applies to profiles without their own; 0 means
	// 10 minutes (ThingsBoard's default).
	InactivityTimeout time.Duration
	// BadInputLimit refused messages within BadInputWindow raise the
	// bad-payload-rate alarm; 0 means 10 within 1 minute.
	BadInputLimit  int
	BadInputWindow time.Duration
	// Tick is how often rules are re-evaluated and the bad-input windows
	// looked at; 0 means 1 s. The inactivity sweep and the activity writes
	// run every quarter of the shortest inactivity timeout, between Tick
	// and 10 s.
	Tick time.Duration
	// Reload is how often rules and profile settings are re-read (they
	// may change through any node's API); 0 means 5 s.
	Reload time.Duration
	// Queue bounds the side effects waiting for the worker; 0 means 8,192.
	Queue int
}

// Engine is one node's half of device state and alarms: it follows the
// node's sessions (it implements the gateway's Observer), writes their
// activity, sweeps for inactive devices, evaluates alarm rules and watches
// the rate of refused messages. Side effects (store writes, notices) run
// in order on one worker goroutine, so that the sessions never wait.
type Engine struct {
	cfg Config
	svc *Service
	log *slog.Logger

	// mu guards the fields below. Lock order: Engine.mu before Session.mu.
	mu       sync.Mutex
	sessions map[*Session]struct{}
	settings map[string]store.ProfileSettings
	sweepDur time.Duration

	// rules by profile, replaced whole by reload and read without a lock:
	// every message of every session looks them up.
	rules atomic.Pointer[map[string][]store.AlarmRule]

	// Connects waiting to be written, in one batch: a reconnect storm of
	// thousands of sessions costs one store call, not a queued job each
	// (which filled the queue and dropped other side effects). connMu is a
	// leaf lock; connQueued is set while a flush job is queued.
	connMu     sync.Mutex
	connects   []store.Activity
	connQueued atomic.Bool

	// Sessions waiting for their rules' stored states, read in one store
	// call for all of them (a reconnect storm again); loadMu is a leaf
	// lock, loadQueued set while a load job is queued.
	loadMu     sync.Mutex
	loads      []*Session
	loadQueued atomic.Bool

	// Rule states waiting to be written, the latest per device and rule:
	// the sessions hand over what changed at each tick and when they end,
	// and one job writes it all. stateMu is a leaf lock.
	stateMu      sync.Mutex
	states       map[ruleKey]store.AlarmRuleState
	statesQueued atomic.Bool

	jobs    chan func(ctx context.Context)
	dropped atomic.Int64
	stop    chan struct{}
	drain   chan struct{} // closed by run once it queued its last jobs
	wg      sync.WaitGroup
}

type ruleKey struct{ device, rule int64 }

// Start loads the rules and settings and starts the engine.
func Start(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.InactivityTimeout <= 0 {
		cfg.InactivityTimeout = 10 * time.Minute
	}
	if cfg.BadInputLimit <= 0 {
		cfg.BadInputLimit = 10
	}
	if cfg.BadInputWindow <= 0 {
		cfg.BadInputWindow = time.Minute
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.Reload <= 0 {
		cfg.Reload = 5 * time.Second
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 8192
	}
	e := &Engine{
		cfg: cfg, svc: NewService(cfg.Store, cfg.Bus, cfg.Logger), log: cfg.Logger,
		sessions: map[*Session]struct{}{},
		jobs:     make(chan func(ctx context.Context), cfg.Queue),
		stop:     make(chan struct{}),
		drain:    make(chan struct{}),
	}
	if err := e.reload(ctx); err != nil {
		return nil, err
	}
	e.wg.Add(2)
	go e.work()
	go e.run()
	return e, nil
}

// Service is the engine's alarm service, for the node's other engines.
func (e *Engine) Service() *Service { return e.svc }

// Close stops the engine after the queued side effects ran.
func (e *Engine) Close() {
	select {
	case <-e.stop:
		return
	default:
	}
	close(e.stop)
	e.wg.Wait()
}

// reload reads the profiles' settings and rules.
func (e *Engine) reload(ctx context.Context) error {
	ps, err := e.cfg.Store.ListProfileSettings(ctx)
	if err != nil {
		return fmt.Errorf("alarm: reading profile settings: %w", err)
	}
	rs, err := e.cfg.Store.ListAlarmRules(ctx, "")
	if err != nil {
		return fmt.Errorf("alarm: reading alarm rules: %w", err)
	}
	settings := map[string]store.ProfileSettings{}
	shortest := e.cfg.InactivityTimeout
	for _, p := range ps {
		settings[p.Profile] = p
		if t := time.Duration(p.InactivityTimeout); t > 0 && t < shortest {
			shortest = t
		}
	}
	rules := map[string][]store.AlarmRule{}
	for _, r := range rs {
		rules[r.Profile] = append(rules[r.Profile], r)
	}
	e.rules.Store(&rules)
	e.mu.Lock()
	e.settings = settings
	e.sweepDur = min(max(shortest/4, e.cfg.Tick), 10*time.Second)
	e.mu.Unlock()
	return nil
}

// inactivityTimeout is the profile's timeout. Called with e.mu held.
func (e *Engine) inactivityTimeout(profile string) time.Duration {
	if t := time.Duration(e.settings[profile].InactivityTimeout); t > 0 {
		return t
	}
	return e.cfg.InactivityTimeout
}

// do queues a side effect; a full queue drops it (counted and logged), so
// that a slow store never holds a session.
func (e *Engine) do(fn func(ctx context.Context)) { e.tryDo(fn) }

func (e *Engine) tryDo(fn func(ctx context.Context)) bool {
	select {
	case e.jobs <- fn:
		return true
	default:
		if e.dropped.Add(1)%1000 == 1 {
			e.log.Warn("alarm: side-effect queue full, dropping", "dropped", e.dropped.Load())
		}
		return false
	}
}

// queueOnce queues fn unless a job of it is queued already (queued says
// so; fn clears it when it starts). A dropped job is retried by the next
// tick.
func (e *Engine) queueOnce(queued *atomic.Bool, fn func(ctx context.Context)) {
	if queued.CompareAndSwap(false, true) && !e.tryDo(fn) {
		queued.Store(false)
	}
}

// queueConnects makes sure one job will write the pending connects. A
// dropped job is retried by the next tick.
func (e *Engine) queueConnects() {
	e.connMu.Lock()
	pending := len(e.connects) > 0
	e.connMu.Unlock()
	if pending {
		e.queueOnce(&e.connQueued, e.flushConnects)
	}
}

// queueLoads makes sure one job will load the rule states of the sessions
// waiting for them. A dropped job is retried by the next tick.
func (e *Engine) queueLoads() {
	e.loadMu.Lock()
	pending := len(e.loads) > 0
	e.loadMu.Unlock()
	if pending {
		e.queueOnce(&e.loadQueued, e.loadStates)
	}
}

// loadStates reads the stored rule states of the devices of the waiting
// sessions, one read for all of them, and hands each session its own. A
// failed read leaves them waiting for the next tick; until then their
// rules keep time but do nothing.
func (e *Engine) loadStates(ctx context.Context) {
	e.loadQueued.Store(false)
	e.loadMu.Lock()
	ws := e.loads
	e.loads = nil
	e.loadMu.Unlock()
	ids := make([]int64, 0, len(ws))
	for _, w := range ws {
		ids = append(ids, w.dev.ID)
	}
	if len(ids) == 0 {
		return
	}
	states, err := e.cfg.Store.AlarmRuleStates(ctx, ids)
	if err != nil {
		e.log.Warn("alarm: reading rule states", "devices", len(ids), "err", err)
		var live []*Session
		for _, w := range ws {
			w.mu.Lock()
			if !w.ended {
				live = append(live, w)
			}
			w.mu.Unlock()
		}
		e.loadMu.Lock()
		e.loads = append(e.loads, live...)
		e.loadMu.Unlock()
		return
	}
	byDevice := map[int64][]store.AlarmRuleState{}
	for _, st := range states {
		byDevice[st.DeviceID] = append(byDevice[st.DeviceID], st)
	}
	now := time.Now()
	for _, w := range ws {
		w.restore(byDevice[w.dev.ID], now)
	}
}

// stageStates adds changed rule states to those waiting to be written
// and makes sure a job will write them.
func (e *Engine) stageStates(changed []store.AlarmRuleState) {
	e.stateMu.Lock()
	if len(changed) > 0 && e.states == nil {
		e.states = map[ruleKey]store.AlarmRuleState{}
	}
	for _, st := range changed {
		e.states[ruleKey{st.DeviceID, st.RuleID}] = st
	}
	pending := len(e.states) > 0
	e.stateMu.Unlock()
	if pending {
		e.queueOnce(&e.statesQueued, e.writeStates)
	}
}

// writeStates writes the staged rule states. What a failed write leaves
// is staged again (unless a newer change replaced it) for the next tick.
func (e *Engine) writeStates(ctx context.Context) {
	e.statesQueued.Store(false)
	e.stateMu.Lock()
	m := e.states
	e.states = nil
	e.stateMu.Unlock()
	if len(m) == 0 {
		return
	}
	list := make([]store.AlarmRuleState, 0, len(m))
	for _, st := range m {
		list = append(list, st)
	}
	if err := e.cfg.Store.PutAlarmRuleStates(ctx, list); err != nil {
		e.log.Warn("alarm: writing rule states", "states", len(list), "err", err)
		e.stateMu.Lock()
		if e.states == nil {
			e.states = map[ruleKey]store.AlarmRuleState{}
		}
		for k, st := range m {
			if _, newer := e.states[k]; !newer {
				e.states[k] = st
			}
		}
		e.stateMu.Unlock()
	}
}

// flushConnects writes every connect recorded since the last flush.
func (e *Engine) flushConnects(ctx context.Context) {
	e.connQueued.Store(false)
	e.connMu.Lock()
	acts := e.connects
	e.connects = nil
	e.connMu.Unlock()
	if len(acts) > 0 {
		e.recordActivity(ctx, acts)
	}
}

func (e *Engine) work() {
	defer e.wg.Done()
	run := func(fn func(ctx context.Context)) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		fn(ctx)
	}
	for {
		select {
		case fn := <-e.jobs:
			run(fn)
		case <-e.drain:
			for {
				select {
				case fn := <-e.jobs:
					run(fn)
				default:
					return
				}
			}
		}
	}
}

// run ticks: rules and bad-input windows every Tick, the activity writes
// and the inactivity sweep every sweepDur, a reload every Reload.
func (e *Engine) run() {
	defer e.wg.Done()
	t := time.NewTicker(e.cfg.Tick)
	defer t.Stop()
	var lastSweep, lastReload time.Time
	for {
		select {
		case <-e.stop:
			e.queueConnects()
			e.stageStates(e.ruleChanges())
			e.flushActivity(true)
			// The worker runs what is queued until now, then stops.
			close(e.drain)
			return
		case now := <-t.C:
			e.queueConnects()
			e.tick(now)
			e.mu.Lock()
			sweepDur := e.sweepDur
			e.mu.Unlock()
			if now.Sub(lastSweep) >= sweepDur {
				lastSweep = now
				e.flushActivity(false)
				e.do(func(ctx context.Context) { e.sweep(ctx, time.Now()) })
			}
			if now.Sub(lastReload) >= e.cfg.Reload {
				lastReload = now
				e.do(func(ctx context.Context) {
					if err := e.reload(ctx); err != nil {
						e.log.Warn("alarm: reloading rules", "err", err)
					}
				})
			}
		}
	}
}

// watches returns the local sessions.
func (e *Engine) watches() []*Session {
	e.mu.Lock()
	defer e.mu.Unlock()
	ws := make([]*Session, 0, len(e.sessions))
	for w := range e.sessions {
		ws = append(ws, w)
	}
	return ws
}

// Rules returns the rules of a profile the engine applies now: a rule
// added or changed in the store takes effect at the next reload (every
// Reload), on every node.
func (e *Engine) Rules(profile string) []store.AlarmRule {
	return slices.Clone(e.rulesOf(profile))
}

func (e *Engine) rulesOf(profile string) []store.AlarmRule {
	if m := e.rules.Load(); m != nil {
		return (*m)[profile]
	}
	return nil
}

// tick re-evaluates the rules of every local session with the values it
// last sent (a condition that holds for its duration fires even when the
// device sends nothing more), hands the rule states that changed to the
// store (so a state is written at most once a tick, however often the
// readings cross a threshold) and looks at the bad-input windows.
func (e *Engine) tick(now time.Time) {
	var changed []store.AlarmRuleState
	for _, w := range e.watches() {
		rules := e.rulesOf(w.dev.Profile)
		w.mu.Lock()
		for _, r := range rules {
			if st := w.rules[r.ID]; st != nil {
				w.evaluate(r, st, now)
			}
		}
		changed = w.appendChanges(changed, rules)
		w.checkBadInput(now)
		w.mu.Unlock()
	}
	e.stageStates(changed)
	e.queueLoads()
}

// ruleChanges collects the changed rule states of every local session.
func (e *Engine) ruleChanges() []store.AlarmRuleState {
	var changed []store.AlarmRuleState
	for _, w := range e.watches() {
		rules := e.rulesOf(w.dev.Profile)
		w.mu.Lock()
		changed = w.appendChanges(changed, rules)
		w.mu.Unlock()
	}
	return changed
}

// flushActivity writes the activity of local sessions that had any since
// the last write (all of them when final).
func (e *Engine) flushActivity(final bool) {
	var acts []store.Activity
	for _, w := range e.watches() {
		w.mu.Lock()
		if w.last.After(w.written) || final {
			acts = append(acts, store.Activity{DeviceID: w.dev.ID, At: w.last})
			w.written = w.last
		}
		w.mu.Unlock()
	}
	if len(acts) > 0 {
		e.do(func(ctx context.Context) { e.recordActivity(ctx, acts) })
	}
}

// ActivityNotice is what package alarm publishes on bus.TopicState when a
// device becomes inactive (no activity for its profile's inactivity
// timeout) or active again: {"device":..,"ts":ms,"active":false,
// "lastActivity":ms,"reason":"inactivity"}.
type ActivityNotice struct {
	Device       string `json:"device"`
	TS           int64  `json:"ts"`
	Active       bool   `json:"active"`
	LastActivity int64  `json:"lastActivity"`
	Reason       string `json:"reason"` // "inactivity" or "activity"
}

func (e *Engine) publishActivity(ctx context.Context, device string, active bool, last time.Time) {
	n := ActivityNotice{Device: device, TS: time.Now().UnixMilli(), Active: active, LastActivity: last.UnixMilli(), Reason: "inactivity"}
	if active {
		n.Reason = "activity"
	}
	b, _ := json.Marshal(n)
	if err := e.cfg.Bus.Publish(ctx, bus.TopicState, b); err != nil {
		e.log.Debug("alarm: publishing state", "device", device, "err", err)
	}
}

// recordActivity writes activity; a device found inactive before is
// active again: its offline alarm is cleared and the change announced.
func (e *Engine) recordActivity(ctx context.Context, acts []store.Activity) {
	woke, err := e.cfg.Store.RecordActivity(ctx, acts)
	if err != nil {
		e.log.Warn("alarm: recording activity", "devices", len(acts), "err", err)
		return
	}
	for _, id := range woke {
		st, err := e.cfg.Store.GetDeviceState(ctx, id)
		if err != nil {
			continue
		}
		e.publishActivity(ctx, st.Device, true, st.LastActivity)
		if _, _, err := e.svc.ClearDevice(ctx, id, store.AlarmOffline, "system"); err != nil {
			e.log.Warn("alarm: clearing offline alarm", "device", st.Device, "err", err)
		}
	}
}

// sweep marks devices inactive whose last activity is older than their
// profile's timeout. Every node sweeps; the conditional MarkInactive makes
// exactly one of them raise the alarm and announce it.
func (e *Engine) sweep(ctx context.Context, now time.Time) {
	e.mu.Lock()
	shortest := e.cfg.InactivityTimeout
	for _, p := range e.settings {
		if t := time.Duration(p.InactivityTimeout); t > 0 && t < shortest {
			shortest = t
		}
	}
	e.mu.Unlock()
	stale, err := e.cfg.Store.StaleDevices(ctx, now.Add(-shortest), 1000)
	if err != nil {
		e.log.Warn("alarm: inactivity sweep", "err", err)
		return
	}
	local := map[int64]time.Time{}
	for _, w := range e.watches() {
		w.mu.Lock()
		local[w.dev.ID] = w.last
		w.mu.Unlock()
	}
	for _, s := range stale {
		e.mu.Lock()
		timeout := e.inactivityTimeout(s.Profile)
		e.mu.Unlock()
		if now.Sub(s.LastActivity) < timeout {
			continue
		}
		if l, ok := local[s.DeviceID]; ok && now.Sub(l) < timeout {
			continue // active here, its activity not written yet
		}
		ok, err := e.cfg.Store.MarkInactive(ctx, s.DeviceID, s.LastActivity, now)
		if err != nil {
			e.log.Warn("alarm: marking inactive", "device", s.Device, "err", err)
			continue
		}
		if !ok {
			continue // another node did, or the device was active meanwhile
		}
		e.publishActivity(ctx, s.Device, false, s.LastActivity)
		d := store.Device{ID: s.DeviceID, Name: s.Device, Profile: s.Profile}
		if _, err := e.svc.RaiseDevice(ctx, d, store.AlarmOffline, store.SeverityMajor, map[string]any{
			"lastActivityTime": s.LastActivity.UnixMilli(), "inactivityTimeout": timeout.String()}); err != nil {
			e.log.Warn("alarm: raising offline alarm", "device", s.Device, "err", err)
		}
	}
}

// SessionStarted implements the gateway's Observer. The stored states of
// the device's rules are loaded in the background (batched with other
// sessions starting); a profile without rules has none to load.
func (e *Engine) SessionStarted(dev store.Device, at time.Time) *Session {
	w := &Session{e: e, dev: dev, last: at, written: at, rules: map[int64]*ruleState{}, badUnknown: true, started: at,
		loaded: len(e.rulesOf(dev.Profile)) == 0}
	e.mu.Lock()
	e.sessions[w] = struct{}{}
	e.mu.Unlock()
	e.connMu.Lock()
	e.connects = append(e.connects, store.Activity{DeviceID: dev.ID, At: at, Connect: true})
	e.connMu.Unlock()
	e.queueConnects()
	if !w.loaded {
		e.loadMu.Lock()
		e.loads = append(e.loads, w)
		e.loadMu.Unlock()
		e.queueLoads()
	}
	return w
}

// Event implements the gateway's Observer: a possible cloned identity
// raises its alarm.
func (e *Engine) Event(ev store.Event) {
	if ev.Kind != store.EventCloned || ev.Device == "" {
		return
	}
	e.do(func(ctx context.Context) {
		if _, err := e.svc.Raise(ctx, ev.Device, store.AlarmCloned, store.SeverityCritical, ev.Detail); err != nil {
			e.log.Warn("alarm: raising cloned-identity alarm", "device", ev.Device, "err", err)
		}
	})
}
