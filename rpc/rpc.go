// Package rpc delivers persistent server-side RPC: calls stored while a
// device is offline, sent when it subscribes to RPC requests, retried a
// bounded number of times, expired after their expiration time, with the
// device's answer stored as their response.
//
// Every node runs a Dispatcher. Only the node holding a device's session
// sends its calls, and every change of status is a conditional update in
// the store (store.RPCTransition), so two nodes never send the same
// attempt nor record two outcomes of one. Status changes are published on
// bus.TopicRPC (store.RPCNotice). docs/rpc.md has the state machine.
package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// Config configures a Dispatcher.
type Config struct {
	Store  store.Store
	Bus    bus.Bus
	Node   string
	Logger *slog.Logger
	// Sweep is how often expiry, stale attempts and missed wake-ups are
	// looked for; 0 means 2 s.
	Sweep time.Duration
}

// Dispatcher sends the persistent calls of the devices connected to this
// node. It implements gateway.RPCHooks.
type Dispatcher struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	stop   func()
	ready  func(device string) bool // set by Start

	// callMu orders, per call, a change of status and its notice, so that
	// the notices of one node leave in the order of the changes. Taken
	// before mu; held while calling the store and the bus.
	callMu [64]sync.Mutex

	// mu guards the fields below; a leaf lock, never held while calling
	// the store or the bus.
	mu      sync.Mutex
	running map[string]bool      // devices whose calls a goroutine is sending
	again   map[string]bool      // woken while running: run once more
	hold    map[string]time.Time // no new pass before this (after a refused send)
	timers  map[int64]*time.Timer
}

// retryHold spaces passes over a device whose session refused a call.
const retryHold = time.Second

// New returns a dispatcher, to be given to the gateway as its RPC hooks
// and then started; until then the hooks do nothing.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Store == nil || cfg.Bus == nil {
		return nil, errors.New("rpc: config needs a store and a bus")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Sweep <= 0 {
		cfg.Sweep = 2 * time.Second
	}
	d := &Dispatcher{cfg: cfg, running: map[string]bool{}, again: map[string]bool{}, hold: map[string]time.Time{},
		timers: map[int64]*time.Timer{}}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// Start takes back the attempts this node left running when it stopped,
// and begins sending. ready tells whether this node holds a session of a
// device that is subscribed to RPC requests (gateway.Server.RPCReady).
func (d *Dispatcher) Start(ready func(device string) bool) error {
	d.mu.Lock()
	d.ready = ready
	d.mu.Unlock()
	stop, err := d.cfg.Bus.Subscribe(bus.TopicRPC, d.onNotice)
	if err != nil {
		return fmt.Errorf("rpc: subscribing to notices: %w", err)
	}
	d.mu.Lock()
	d.stop = stop
	d.mu.Unlock()
	d.wg.Add(1)
	go d.sweepLoop()
	return nil
}

// isReady calls the function given to Start; false before it.
func (d *Dispatcher) isReady(device string) bool {
	d.mu.Lock()
	ready := d.ready
	d.mu.Unlock()
	return ready != nil && ready(device)
}

// Close stops the dispatcher; attempts in flight end with their session.
func (d *Dispatcher) Close() {
	d.mu.Lock()
	stop := d.stop
	d.mu.Unlock()
	if stop != nil {
		stop()
	}
	d.mu.Lock()
	d.cancel()
	for id, t := range d.timers {
		t.Stop()
		delete(d.timers, id)
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// RPCSubscribed implements gateway.RPCHooks.
func (d *Dispatcher) RPCSubscribed(device string) { d.kick(device) }

// RPCResponse implements gateway.RPCHooks: any answer of the device to one
// of its calls still waiting for one completes it, whichever attempt it
// answers and whichever node sent it.
func (d *Dispatcher) RPCResponse(ctx context.Context, deviceID int64, device string, id int64, answer json.RawMessage) {
	_, ok, err := d.transition(ctx, store.RPCTransition{ID: id, DeviceID: deviceID, Attempts: -1,
		From: []store.RPCStatus{store.RPCSent, store.RPCDelivered, store.RPCTimeout}, To: store.RPCSuccessful, Response: answer})
	if err != nil {
		d.cfg.Logger.Warn("rpc: storing an answer", "device", device, "id", id, "err", err)
		return
	}
	if !ok {
		return // unknown, another device's, already complete or expired
	}
	d.stopTimer(id)
	d.kick(device) // the next call may wait for this one
}

// onNotice wakes the sender of a device whose new call was queued by any
// node's API.
func (d *Dispatcher) onNotice(data []byte) {
	var n store.RPCNotice
	if json.Unmarshal(data, &n) != nil || n.Status != store.RPCQueued || n.Device == "" {
		return
	}
	if d.isReady(n.Device) {
		d.kick(n.Device)
	}
}

// kick makes sure a pass over the device's calls runs after now.
func (d *Dispatcher) kick(device string) {
	d.mu.Lock()
	if d.ctx.Err() != nil { // closed: no goroutine may start after Close waited
		d.mu.Unlock()
		return
	}
	if d.running[device] {
		d.again[device] = true
		d.mu.Unlock()
		return
	}
	if until, held := d.hold[device]; held {
		if wait := time.Until(until); wait > 0 {
			d.mu.Unlock()
			time.AfterFunc(wait, func() { d.kick(device) })
			return
		}
		delete(d.hold, device)
	}
	d.running[device] = true
	d.wg.Add(1)
	d.mu.Unlock()
	go d.run(device)
}

func (d *Dispatcher) run(device string) {
	defer d.wg.Done()
	for {
		d.pass(device)
		d.mu.Lock()
		if !d.again[device] || d.ctx.Err() != nil {
			delete(d.running, device)
			delete(d.again, device)
			d.mu.Unlock()
			return
		}
		d.again[device] = false
		d.mu.Unlock()
	}
}

// pass sends the device's waiting calls, oldest first, one at a time: the
// next is sent once the device acknowledged the previous one (ThingsBoard's
// SEQUENTIAL_ON_ACK_FROM_DEVICE).
func (d *Dispatcher) pass(device string) {
	ctx := d.ctx
	if !d.isReady(device) {
		return
	}
	dev, err := d.cfg.Store.GetDevice(ctx, device)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			d.cfg.Logger.Warn("rpc: reading device", "device", device, "err", err)
		}
		return
	}
	calls, err := d.cfg.Store.ListRPCs(ctx, store.RPCQuery{DeviceID: dev.ID, Limit: 100,
		Status: []store.RPCStatus{store.RPCQueued, store.RPCTimeout}})
	if err != nil {
		d.cfg.Logger.Warn("rpc: listing calls", "device", device, "err", err)
		return
	}
	slices.Reverse(calls) // oldest first
	for _, r := range calls {
		if ctx.Err() != nil {
			return
		}
		if !time.Now().Before(r.ExpiresAt) {
			d.expire(ctx, r)
			continue
		}
		if !d.attempt(ctx, r) {
			return
		}
	}
}

// attempt sends one attempt of r and tells whether the next call may be
// sent.
func (d *Dispatcher) attempt(ctx context.Context, r store.RPC) bool {
	sent, ok, err := d.transition(ctx, store.RPCTransition{ID: r.ID, From: []store.RPCStatus{r.Status},
		Attempts: r.Attempts, To: store.RPCSent, NewAttempt: true, Node: d.cfg.Node})
	if err != nil {
		d.cfg.Logger.Warn("rpc: claiming an attempt", "device", r.Device, "id", r.ID, "err", err)
		return false
	}
	if !ok {
		return true // changed meanwhile: answered, deleted, or sent by another node
	}
	n := sent.Attempts
	timeout := time.Duration(r.TimeoutMs) * time.Millisecond
	payload, _ := json.Marshal(map[string]any{"id": r.ID, "method": r.Method, "params": r.Params})
	rctx, cancel := context.WithTimeout(ctx, timeout+time.Second)
	reply, err := d.cfg.Bus.Request(rctx, r.Device, bus.Command{Kind: bus.CommandRPCSend, Payload: payload, TimeoutMs: r.TimeoutMs})
	cancel()
	var res struct {
		Delivered bool   `json:"delivered"`
		Reason    string `json:"reason"`
	}
	switch {
	case errors.Is(err, bus.ErrNoSession):
		res.Reason = "device went offline"
	case errors.Is(err, bus.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		d.timedOut(sent.ID, n, fmt.Sprintf("not acknowledged within %v", timeout))
		return false
	case err != nil:
		if ctx.Err() != nil {
			res.Reason = "node stopping"
			break
		}
		d.cfg.Logger.Warn("rpc: sending", "device", r.Device, "id", r.ID, "err", err)
		d.timedOut(sent.ID, n, "sending failed: "+err.Error())
		return false
	default:
		if json.Unmarshal(reply, &res) != nil {
			res.Reason = "malformed reply from the gateway"
		}
	}
	if !res.Delivered {
		// It never reached the device: take the attempt back.
		_, _, err := d.transition(context.Background(), store.RPCTransition{ID: r.ID,
			From: []store.RPCStatus{store.RPCSent}, Attempts: n, To: r.Status, UndoAttempt: true})
		if err != nil {
			d.cfg.Logger.Warn("rpc: taking back an attempt", "device", r.Device, "id", r.ID, "err", err)
		}
		d.mu.Lock()
		d.hold[r.Device] = time.Now().Add(retryHold)
		d.mu.Unlock()
		d.cfg.Logger.Debug("rpc: call not delivered", "device", r.Device, "id", r.ID, "reason", res.Reason)
		return false
	}
	to := store.RPCDelivered
	if r.Oneway {
		to = store.RPCSuccessful
	}
	_, ok, err = d.transition(ctx, store.RPCTransition{ID: r.ID, From: []store.RPCStatus{store.RPCSent},
		Attempts: n, To: to})
	if err != nil {
		d.cfg.Logger.Warn("rpc: recording delivery", "device", r.Device, "id", r.ID, "err", err)
	}
	// Not applied without an error: answered already, deleted or expired;
	// nothing is left to time out.
	if !r.Oneway && (ok || err != nil) {
		d.startTimer(r.ID, n, time.Until(sent.SentAt.Add(timeout)))
	}
	return true
}

// timedOut ends attempt n of call id without an answer: TIMEOUT while
// retries remain (the call is sent again), FAILED once they are exhausted.
func (d *Dispatcher) timedOut(id int64, n int, why string) {
	ctx := context.Background()
	r, err := d.cfg.Store.GetRPC(ctx, id)
	if err != nil {
		return
	}
	to, msg := store.RPCTimeout, fmt.Sprintf("attempt %d: %s", n, why)
	if n > r.Retries {
		to = store.RPCFailed
		msg = fmt.Sprintf("no answer after %d attempts (retries %d); last: %s", n, r.Retries, why)
	}
	_, ok, err := d.transition(ctx, store.RPCTransition{ID: id, Attempts: n,
		From: []store.RPCStatus{store.RPCSent, store.RPCDelivered}, To: to, Error: msg})
	if err != nil {
		d.cfg.Logger.Warn("rpc: recording a timeout", "device", r.Device, "id", id, "err", err)
		return
	}
	if !ok {
		return
	}
	if to == store.RPCTimeout && d.isReady(r.Device) {
		d.kick(r.Device)
	}
}

func (d *Dispatcher) expire(ctx context.Context, r store.RPC) {
	if _, _, err := d.transition(ctx, store.RPCTransition{ID: r.ID, Attempts: -1,
		From: []store.RPCStatus{store.RPCQueued, store.RPCSent, store.RPCDelivered, store.RPCTimeout},
		To:   store.RPCExpired, Error: "expired before completion"}); err != nil {
		d.cfg.Logger.Warn("rpc: expiring a call", "device", r.Device, "id", r.ID, "err", err)
	}
}

// startTimer ends attempt n of call id after wait unless an answer came.
func (d *Dispatcher) startTimer(id int64, n int, wait time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx.Err() != nil {
		return // closed; the sweep of whichever node runs next ends it
	}
	if old := d.timers[id]; old != nil {
		old.Stop()
	}
	d.timers[id] = time.AfterFunc(max(wait, 0), func() {
		d.mu.Lock()
		delete(d.timers, id)
		d.mu.Unlock()
		d.timedOut(id, n, "no answer in time")
	})
}

func (d *Dispatcher) stopTimer(id int64) {
	d.mu.Lock()
	if t := d.timers[id]; t != nil {
		t.Stop()
		delete(d.timers, id)
	}
	d.mu.Unlock()
}

// transition applies t and, when it applied, publishes the notice.
func (d *Dispatcher) transition(ctx context.Context, t store.RPCTransition) (store.RPC, bool, error) {
	mu := &d.callMu[uint64(t.ID)%uint64(len(d.callMu))]
	mu.Lock()
	defer mu.Unlock()
	r, ok, err := d.cfg.Store.TransitionRPC(ctx, t)
	if err == nil && ok {
		d.notify(r)
	}
	return r, ok, err
}

func (d *Dispatcher) notify(r store.RPC) {
	if err := d.cfg.Bus.Publish(context.Background(), bus.TopicRPC, r.Notice()); err != nil {
		d.cfg.Logger.Debug("rpc: publishing a notice", "id", r.ID, "err", err)
	}
}

// staleGrace is how long past its timeout an attempt may stay running
// before any node ends it: its sender had a timer, unless it stopped.
const staleGrace = 5 * time.Second

func (d *Dispatcher) sweepLoop() {
	defer d.wg.Done()
	d.sweep(true)
	t := time.NewTicker(d.cfg.Sweep)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
			d.sweep(false)
		}
	}
}

// sweep expires calls, ends attempts whose sender is gone (at start: every
// attempt this node left running), and wakes the senders of devices
// connected here that have calls waiting (a missed notice, a retry).
func (d *Dispatcher) sweep(starting bool) {
	ctx := d.ctx
	now := time.Now()
	expired, err := d.cfg.Store.ExpireRPCs(ctx, now)
	if err != nil {
		d.cfg.Logger.Warn("rpc: expiring calls", "err", err)
	}
	for _, r := range expired {
		d.stopTimer(r.ID)
		mu := &d.callMu[uint64(r.ID)%uint64(len(d.callMu))]
		mu.Lock()
		d.notify(r)
		mu.Unlock()
	}
	running, err := d.cfg.Store.ListRPCs(ctx, store.RPCQuery{Status: []store.RPCStatus{store.RPCSent, store.RPCDelivered}, Limit: 1000})
	if err != nil {
		d.cfg.Logger.Warn("rpc: listing running attempts", "err", err)
	}
	for _, r := range running {
		deadline := r.SentAt.Add(time.Duration(r.TimeoutMs)*time.Millisecond + staleGrace)
		if starting && r.Node == d.cfg.Node {
			d.timedOut(r.ID, r.Attempts, "the sending node restarted")
		} else if now.After(deadline) {
			d.timedOut(r.ID, r.Attempts, "the sending node stopped")
		}
	}
	devices, err := d.cfg.Store.PendingRPCDevices(ctx)
	if err != nil {
		d.cfg.Logger.Warn("rpc: listing devices with calls", "err", err)
		return
	}
	for _, id := range devices {
		dev, err := d.cfg.Store.GetDeviceByID(ctx, id)
		if err != nil {
			continue
		}
		if d.isReady(dev.Name) {
			d.kick(dev.Name)
		}
	}
}
