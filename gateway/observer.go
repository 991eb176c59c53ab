package gateway

import (
	"context"
	"encoding/json"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// Observer watches what the sessions of this node do, for the concepts
// that react to devices without being part of the gateway: device state
// (activity, inactivity), alarm rules on telemetry, alarms on the
// gateway's own findings. Package alarm implements it and node wires it;
// the gateway knows only this interface.
//
// Every method is called on a session's goroutines and must return at
// once: no store or bus call inline, no waiting.
type Observer interface {
	// SessionStarted is called once a session is registered and its
	// device marked online; the SessionObserver it returns (nil: none)
	// follows that session.
	SessionStarted(dev store.Device, at time.Time) SessionObserver
	// Event sees every audit event the gateway records (the possible
	// cloned identity among them), before any is dropped by a full queue.
	Event(e store.Event)
}

// SessionObserver follows one session.
type SessionObserver interface {
	// Handled is called after each batch of the device's messages was
	// stored and acknowledged, with the telemetry records of the batch
	// (none for attributes, requests and answers).
	Handled(recs []store.Record, at time.Time)
	// Rejected is called for each message refused for its content.
	Rejected(reason string, at time.Time)
	// Ended is called once, after the device was marked offline (or, when
	// takenOver, after a newer session of it replaced this one).
	Ended(at time.Time, takenOver bool)
}

// StateNotice is what the gateway publishes on bus.TopicState when a
// session starts or ends (package alarm publishes the activity changes):
// {"device":..,"ts":ms,"connected":true,"node":..,"reason":"connect"}.
type StateNotice struct {
	Device    string `json:"device"`
	TS        int64  `json:"ts"`
	Connected bool   `json:"connected"`
	Node      string `json:"node"`
	Reason    string `json:"reason"` // "connect" or "disconnect"
}

// observeStart announces the new session and hands it to the observer.
func (ss *session) observeStart(ctx context.Context, at time.Time) {
	s := ss.srv
	s.publishState(ctx, ss.dev.Name, true, at)
	if s.cfg.Observer != nil {
		ss.obs = s.cfg.Observer.SessionStarted(ss.dev, at)
	}
}

// observeEnd announces the end of the session (unless a newer one took
// over: the device is still connected) and tells the observer.
func (ss *session) observeEnd(ctx context.Context, at time.Time, takenOver bool) {
	if !takenOver {
		ss.srv.publishState(ctx, ss.dev.Name, false, at)
	}
	if ss.obs != nil {
		ss.obs.Ended(at, takenOver)
	}
}

func (s *Server) publishState(ctx context.Context, device string, connected bool, at time.Time) {
	n := StateNotice{Device: device, TS: at.UnixMilli(), Connected: connected, Node: s.node, Reason: "disconnect"}
	if connected {
		n.Reason = "connect"
	}
	b, _ := json.Marshal(n)
	if err := s.bus.Publish(ctx, bus.TopicState, b); err != nil {
		s.log.Debug("gateway: publishing state", "device", device, "err", err)
	}
}
