package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/thingline/thingline/bus"
)

// RPCHooks connect the sessions of a node to persistent server-side RPC
// (package rpc, wired by node). Sending goes through the bus
// (CommandRPCSend); these carry what only a session sees. Both may be
// called from session goroutines and must not block for long.
type RPCHooks interface {
	// RPCSubscribed: a device's session on this node subscribed to
	// server-side RPC requests, so its queued calls can be sent.
	RPCSubscribed(device string)
	// RPCResponse: the device answered an RPC id no caller on its session
	// waits for, which is a persistent call's (possibly sent by an earlier
	// session or another node). It returns once the answer is stored: the
	// device's PUBACK waits for it.
	RPCResponse(ctx context.Context, deviceID int64, device string, id int64, answer json.RawMessage)
}

// RPCReady tells whether a session on this node holds device and is
// subscribed to server-side RPC requests.
func (s *Server) RPCReady(device string) bool {
	s.mu.Lock()
	ss := s.sessions[device]
	s.mu.Unlock()
	if ss == nil || ss.closing.Load() {
		return false
	}
	_, ok := ss.sub(subRPCRequest)
	return ok
}

// maxRPCID is the largest request id a device accepts in a topic (validID).
const maxRPCID = 9999999999

// sendPersistentRPC publishes one attempt of a persistent call with its id
// as the request id, and waits for the device's acknowledgement.
func (ss *session) sendPersistentRPC(ctx context.Context, cmd bus.Command) (json.RawMessage, error) {
	var p struct {
		ID     int64           `json:"id"`
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
	}
	if err := json.Unmarshal(cmd.Payload, &p); err != nil || p.ID <= 0 || p.ID > maxRPCID || p.Method == "" {
		return nil, fmt.Errorf("gateway: invalid persistent rpc command")
	}
	if len(p.Params) == 0 {
		p.Params = json.RawMessage("{}")
	}
	notDelivered := func(reason string) (json.RawMessage, error) {
		b, _ := json.Marshal(map[string]any{"delivered": false, "reason": reason})
		return b, nil
	}
	sub, ok := ss.sub(subRPCRequest)
	if !ok {
		return notDelivered("not subscribed to RPC requests")
	}
	payload, err := json.Marshal(rpcRequest{Method: p.Method, Params: p.Params})
	if err != nil {
		return nil, fmt.Errorf("gateway: encoding rpc: %w", err)
	}
	id := strconv.FormatInt(p.ID, 10)
	pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: sub.qos},
		TopicName: rpcRequestTopic(sub.st, id), Payload: payload}
	var acked chan struct{}
	ss.mu.Lock()
	if _, busy := ss.rpcWait[id]; busy {
		ss.mu.Unlock()
		return notDelivered("request id in use on the session")
	}
	if ss.rpcSent == nil {
		ss.rpcSent = map[string]struct{}{}
	}
	ss.rpcSent[id] = struct{}{}
	if sub.qos > 0 {
		pk.PacketID = ss.nextPID()
		acked = make(chan struct{})
		if ss.ackWait == nil {
			ss.ackWait = map[uint16]chan struct{}{}
		}
		ss.ackWait[pk.PacketID] = acked
	}
	ss.mu.Unlock()
	defer func() {
		if acked != nil {
			ss.mu.Lock()
			delete(ss.ackWait, pk.PacketID)
			ss.mu.Unlock()
		}
	}()
	if err := ss.write(pk); err != nil {
		return nil, fmt.Errorf("gateway: sending rpc to %s: %w", ss.dev.Name, err)
	}
	if acked != nil {
		if cmd.TimeoutMs > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, time.Duration(cmd.TimeoutMs)*time.Millisecond)
			defer cancel()
		}
		select {
		case <-acked:
		case <-ss.done:
			// Written, never acknowledged: it may have reached the
			// device, so the attempt counts (unlike ErrNoSession).
			return nil, bus.ErrTimeout
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, bus.ErrTimeout
			}
			return nil, ctx.Err()
		}
	}
	return json.RawMessage(`{"delivered":true}`), nil
}

// outboundAcked wakes whoever waits for the PUBACK of packet id.
func (ss *session) outboundAcked(typ byte, id uint16) {
	if typ != packets.Puback {
		return
	}
	ss.mu.Lock()
	ch := ss.ackWait[id]
	delete(ss.ackWait, id)
	ss.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// rpcBusy tells whether a persistent call with this id awaits its answer
// on the session; ss.mu must be held.
func (ss *session) rpcBusy(id string) bool {
	_, ok := ss.rpcSent[id]
	return ok
}

// persistentRPCResponse returns the pipeline step that hands an answer
// nobody on this session waits for to persistent RPC, or nil.
func (ss *session) persistentRPCResponse(id string, payload []byte) func(context.Context) {
	hooks := ss.srv.cfg.RPC
	n, err := strconv.ParseInt(id, 10, 64)
	if hooks == nil || err != nil {
		return nil
	}
	answer := rpcAnswer(payload)
	return func(ctx context.Context) {
		ss.mu.Lock()
		delete(ss.rpcSent, id)
		ss.mu.Unlock()
		hooks.RPCResponse(ctx, ss.dev.ID, ss.dev.Name, n, answer)
	}
}

// subscribed acts on new subscriptions: persistent RPC learns that the
// device can take calls; shared attributes it missed are pushed.
func (ss *session) subscribed(filters packets.Subscriptions) {
	hooks := ss.srv.cfg.RPC
	for _, f := range filters {
		kind, _, ok := classifyFilter(f.Filter)
		switch {
		case !ok:
		case kind == subRPCRequest && hooks != nil:
			hooks.RPCSubscribed(ss.dev.Name)
		case kind == subAttributes:
			go ss.catchUpShared()
		}
	}
}
