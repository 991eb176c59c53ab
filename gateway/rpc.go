package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// defaultRPCTimeout applies when neither the caller's context nor the
// command carries a deadline.
const defaultRPCTimeout = 30 * time.Second

var jsonNull = json.RawMessage("null")

// handleCommand runs bus commands addressed to this session's device.
func (ss *session) handleCommand(ctx context.Context, cmd bus.Command) (json.RawMessage, error) {
	if cmd.Kind != bus.CommandDisconnect {
		select {
		case <-ss.ready:
		case <-ss.done:
			return nil, bus.ErrNoSession
		case <-ctx.Done():
			return nil, bus.ErrTimeout
		}
		// A session that is ending still serves the bus until finish
		// stops it, but its connection is gone: it is offline to a
		// caller, not a failure of the gateway.
		if ss.closing.Load() {
			return nil, bus.ErrNoSession
		}
	}
	switch cmd.Kind {
	case bus.CommandRPC:
		return ss.serverRPC(ctx, cmd)
	case bus.CommandRPCSend:
		return ss.sendPersistentRPC(ctx, cmd)
	case bus.CommandAttributes:
		return ss.pushAttributes(cmd.Payload)
	case bus.CommandClaimResult:
		return ss.claimResult(cmd.Payload)
	case bus.CommandDisconnect:
		var p struct {
			Reason string `json:"reason"`
		}
		_ = json.Unmarshal(cmd.Payload, &p)
		if p.Reason == "session taken over" {
			// A newer session elsewhere replaced this one (the bus tells
			// the old handler). A local takeover has already closed us.
			ss.takeover("", "")
			return jsonNull, nil
		}
		if p.Reason == "" {
			p.Reason = "disconnected by operator"
		}
		ss.closeByServer(codeAdministrative, p.Reason)
		return jsonNull, nil
	}
	return nil, fmt.Errorf("gateway: unknown command %q", cmd.Kind)
}

// rpcRequest is the JSON of an RPC call, both directions.
type rpcRequest struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
}

func parseRPC(payload []byte) (rpcRequest, error) {
	var r rpcRequest
	if err := json.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("invalid RPC request: %w", err)
	}
	if r.Method == "" {
		return r, errors.New("invalid RPC request: no method")
	}
	return r, nil
}

// serverRPC publishes an RPC request to the device and waits for its
// answer on the response topic with the same id.
func (ss *session) serverRPC(ctx context.Context, cmd bus.Command) (json.RawMessage, error) {
	req, err := parseRPC(cmd.Payload)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if req.Params == nil {
		req.Params = json.RawMessage("{}")
	}
	payload, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("gateway: encoding rpc: %w", err)
	}
	if cmd.TimeoutMs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(cmd.TimeoutMs)*time.Millisecond)
		defer cancel()
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultRPCTimeout)
		defer cancel()
	}
	ch := make(chan json.RawMessage, 1)
	ss.mu.Lock()
	if ss.rpcWait == nil {
		ss.rpcWait = map[string]chan json.RawMessage{}
	}
	ss.rpcNext++
	id := strconv.FormatUint(ss.rpcNext, 10)
	for ss.rpcBusy(id) { // a persistent call has this id in flight
		ss.rpcNext++
		id = strconv.FormatUint(ss.rpcNext, 10)
	}
	ss.rpcWait[id] = ch
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		delete(ss.rpcWait, id)
		ss.mu.Unlock()
	}()
	sub, _ := ss.sub(subRPCRequest)
	if err := ss.publish(rpcRequestTopic(sub.st, id), payload, sub.qos); err != nil {
		if ss.closing.Load() { // closed while we wrote: offline, as above
			return nil, bus.ErrNoSession
		}
		return nil, fmt.Errorf("gateway: sending rpc to %s: %w", ss.dev.Name, err)
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ss.done:
		return nil, bus.ErrNoSession
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, bus.ErrTimeout
		}
		return nil, ctx.Err()
	}
}

// deliverRPC hands a device's RPC answer to the caller waiting on this
// session and tells whether there was one.
func (ss *session) deliverRPC(id string, payload []byte) bool {
	ss.mu.Lock()
	ch := ss.rpcWait[id]
	ss.mu.Unlock()
	if ch == nil {
		return false // a persistent call's, late, or unknown
	}
	select {
	case ch <- rpcAnswer(payload):
	default:
	}
	return true
}

// rpcAnswer copies a device's answer (it aliases the read buffer); an
// answer that is not JSON is passed on as a JSON string.
func rpcAnswer(payload []byte) json.RawMessage {
	if json.Valid(payload) {
		return append(json.RawMessage(nil), payload...)
	}
	r, _ := json.Marshal(string(payload))
	return r
}

// answerClientRPC answers a device's own RPC request. Only the built-in
// methods exist: there is no rule engine to forward others to.
func (ss *session) answerClientRPC(topic string, req rpcRequest) {
	var answer any
	switch req.Method {
	case "getCurrentTime":
		answer = map[string]int64{"currentTime": ss.srv.now().UnixMilli()}
	case "getSessionLimits":
		// ThingsBoard's SessionLimits. No per-device message rate is
		// enforced, so each rate limit is null, which ThingsBoard's SDKs
		// read as "no limit" (they need the rateLimits key itself).
		answer = map[string]any{
			"maxPayloadSize":      ss.srv.profile.MaxPayload,
			"maxInflightMessages": maxPending,
			"rateLimits":          map[string]any{"messages": nil, "telemetryMessages": nil, "telemetryDataPoints": nil},
		}
	default:
		answer = map[string]string{"error": "unsupported method: " + req.Method}
	}
	b, _ := json.Marshal(answer)
	sub, _ := ss.sub(subRPCResponse)
	if err := ss.publish(topic, b, sub.qos); err != nil {
		ss.srv.log.Debug("gateway: answering client rpc", "device", ss.dev.Name, "err", err)
	}
}

// takeover closes this session because a newer one for the same device
// exists (newNode may be another node). It records the takeover when the
// new address is known (the local case records it in connect).
func (ss *session) takeover(newAddr, newNode string) {
	ending := ss.over()
	ss.mu.Lock()
	already := ss.takenOver
	ss.takenOver = true
	ss.mu.Unlock()
	if already {
		return
	}
	ss.close(codeSessionTakenOver, "session taken over")
	if !ending {
		ss.srv.recordTakeover(ss.dev.Name, ss.addr, newAddr, newNode)
	}
}

// onSessionNotice closes a local session that another node took over.
func (s *Server) onSessionNotice(data []byte) {
	var n struct {
		Device  string `json:"device"`
		Node    string `json:"node"`
		Addr    string `json:"addr"`
		Session string `json:"session"`
		Started int64  `json:"started"` // ns since the epoch
	}
	if json.Unmarshal(data, &n) != nil || n.Node == s.node {
		return
	}
	s.mu.Lock()
	ss := s.sessions[n.Device]
	s.mu.Unlock()
	// Notices can arrive late (our own session may be the newer one), so
	// only a newer session takes over; ties go to the larger session id.
	if ss == nil || ss.sid == n.Session {
		return
	}
	if n.Started < ss.started.UnixNano() || (n.Started == ss.started.UnixNano() && n.Session < ss.sid) {
		return
	}
	ss.takeover(n.Addr, n.Node)
}

// recordTakeover writes the takeover event and watches for a cloned
// identity: several takeovers of one device within a minute between
// different addresses means two devices share a certificate (or a device
// reconnect-loops), either of which an operator wants to know.
func (s *Server) recordTakeover(device, oldAddr, newAddr, newNode string) {
	detail, _ := json.Marshal(map[string]string{"oldAddr": oldAddr, "newAddr": newAddr, "oldNode": s.node, "newNode": newNode})
	// Bounded like refusals: a device that keeps taking itself over writes
	// a few events a minute, not one per reconnect.
	if s.overLimit("takeover-event|"+device, s.cfg.RefusalEventsPerMinute) {
		s.met.eventsDropped.Inc()
	} else {
		s.event(store.Event{Device: device, Kind: store.EventTakeover, Addr: newAddr, Detail: detail})
	}
	if oldAddr == newAddr {
		return
	}
	now := time.Now()
	s.mu.Lock()
	if len(s.takeovers) > 10000 {
		for k, ts := range s.takeovers {
			if now.Sub(ts[len(ts)-1]) > time.Minute {
				delete(s.takeovers, k)
				delete(s.clonedAt, k)
			}
		}
	}
	var recent []time.Time
	for _, t := range s.takeovers[device] {
		if now.Sub(t) <= time.Minute {
			recent = append(recent, t)
		}
	}
	recent = append(recent, now)
	s.takeovers[device] = recent
	fire := len(recent) >= 3 && now.Sub(s.clonedAt[device]) > time.Minute
	if fire {
		s.clonedAt[device] = now
	}
	s.mu.Unlock()
	if fire {
		detail, _ := json.Marshal(map[string]any{"takeoversLastMinute": len(recent), "addrs": []string{oldAddr, newAddr}})
		s.event(store.Event{Device: device, Kind: store.EventCloned, Addr: newAddr, Detail: detail})
	}
}
