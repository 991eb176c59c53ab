package alarm

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/thingline/thingline/store"
)

// Session follows one device session on this node: its activity, the
// state of each alarm rule of its profile and its refused messages. It is
// the gateway's SessionObserver (through node's adapter).
type Session struct {
	e       *Engine
	dev     store.Device
	started time.Time

	// mu guards the fields below; see Engine.mu for the order.
	mu         sync.Mutex
	last       time.Time // last activity
	written    time.Time // last activity handed to the store
	rules      map[int64]*ruleState
	loaded     bool        // the rule states stored by earlier sessions are in rules
	rejects    []time.Time // the latest refusals, at most BadInputLimit
	badRaised  bool        // this session raised the bad-payload-rate alarm
	badUnknown bool        // an earlier session may have left it active
	ended      bool
}

// ruleState is where one rule stands for one device. The timers start at
// the arrival of the first message meeting a condition, on the clock of
// the node that received it. They are kept in the store (written at the
// next tick after they change, read when a session starts), so that a
// reconnect, a move to another node or a restart continues them.
type ruleState struct {
	value      json.RawMessage // the key's latest value; nil until this session has one
	valueTS    int64
	raiseSince time.Time // zero while the raise condition does not hold
	clearSince time.Time
	episode    store.RuleEpisode
	episodeAt  time.Time

	// Until the stored state is loaded: whether a reading of this session
	// failed the raise (clear) condition, which ends the stored episode
	// of that condition.
	raiseBroke, clearBroke bool
	// stored is the state as last read from or handed to the store.
	stored store.AlarmRuleState
}

// snapshot is the state to keep in the store.
func (st *ruleState) snapshot(device, rule int64) store.AlarmRuleState {
	s := store.AlarmRuleState{DeviceID: device, RuleID: rule, RaiseSince: st.raiseSince, ClearSince: st.clearSince,
		Episode: st.episode, EpisodeTime: st.episodeAt, ValueTS: st.valueTS}
	if s.Episode == store.RuleUnknown {
		s.EpisodeTime = time.Time{}
	}
	return s
}

// sameRuleState tells whether a and b say the same about a rule. The
// reading's timestamp is left out: it moves with every message, and
// writing it alone would be a write per message.
func sameRuleState(a, b store.AlarmRuleState) bool {
	return a.RaiseSince.Equal(b.RaiseSince) && a.ClearSince.Equal(b.ClearSince) &&
		a.Episode == b.Episode && a.EpisodeTime.Equal(b.EpisodeTime)
}

// Handled implements the gateway's SessionObserver.
func (s *Session) Handled(recs []store.Record, at time.Time) {
	rules := s.e.rulesOf(s.dev.Profile)
	s.mu.Lock()
	defer s.mu.Unlock()
	if at.After(s.last) {
		s.last = at
	}
	if len(recs) == 0 || len(rules) == 0 {
		return
	}
	for _, r := range rules {
		st := s.rules[r.ID]
		for _, rec := range recs {
			for _, kv := range rec.Values {
				if kv.Key != r.Key {
					continue
				}
				if st == nil {
					st = &ruleState{}
					s.rules[r.ID] = st
				} else if rec.TS < st.valueTS {
					continue // an older reading arriving late
				}
				st.value, st.valueTS = kv.Value, rec.TS
			}
		}
		if st != nil {
			s.evaluate(r, st, at)
		}
	}
}

// evaluate moves a rule's state with the key's latest value at now.
// Until the session has loaded the stored states, the timers move but the
// rule does nothing: what it should do depends on the stored episode.
// Called with s.mu held.
func (s *Session) evaluate(r store.AlarmRule, st *ruleState, now time.Time) {
	if s.ended || st.value == nil {
		return
	}
	if r.Raise.Holds(st.value) {
		if st.raiseSince.IsZero() {
			st.raiseSince = now
		}
		if s.loaded && st.episode != store.RuleRaised && now.Sub(st.raiseSince) >= time.Duration(r.Raise.Duration) {
			st.episode, st.episodeAt = store.RuleRaised, now
			detail := map[string]any{"rule": r.ID, "key": r.Key, "value": st.value, "ts": st.valueTS,
				"condition": conditionText(r.Key, r.Raise)}
			d := s.dev
			s.e.do(func(ctx context.Context) {
				if _, err := s.e.svc.RaiseDevice(ctx, d, r.Type, r.Severity, detail); err != nil {
					s.e.log.Warn("alarm: raising rule alarm", "device", d.Name, "rule", r.ID, "err", err)
				}
			})
		}
	} else {
		st.raiseSince = time.Time{}
		st.raiseBroke = st.raiseBroke || !s.loaded
		if st.episode == store.RuleRaised && r.Clear == nil {
			// Without a clear condition the alarm stays until a person
			// clears it; the condition holding again raises it again
			// (folded into the alarm if it is still active).
			st.episode, st.episodeAt = store.RuleUnknown, time.Time{}
		}
	}
	if r.Clear == nil {
		return
	}
	if !r.Clear.Holds(st.value) {
		st.clearSince = time.Time{}
		st.clearBroke = st.clearBroke || !s.loaded
		return
	}
	if st.clearSince.IsZero() {
		st.clearSince = now
	}
	if s.loaded && st.episode != store.RuleCleared && now.Sub(st.clearSince) >= time.Duration(r.Clear.Duration) {
		st.episode, st.episodeAt = store.RuleCleared, now
		s.clearActive(r.Type)
	}
}

// restore installs the states stored for the device by earlier sessions
// (of any node) and lets the rules act. A rule this session has no
// reading for yet takes its stored state whole: its next reading decides
// whether the stored condition still holds (then its timer counts from
// the stored start, across the gap) or not (then it starts again). A rule
// with readings already keeps a stored timer only if every one of them
// met its condition.
func (s *Session) restore(states []store.AlarmRuleState, now time.Time) {
	rules := s.e.rulesOf(s.dev.Profile)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loaded || s.ended {
		return
	}
	s.loaded = true
	stored := make(map[int64]store.AlarmRuleState, len(states))
	for _, st := range states {
		stored[st.RuleID] = st
	}
	if s.last.After(now) {
		now = s.last
	}
	for _, r := range rules {
		l, ok := stored[r.ID]
		st := s.rules[r.ID]
		if st == nil {
			if !ok {
				continue
			}
			st = &ruleState{}
			s.rules[r.ID] = st
		}
		st.stored = l
		if st.value == nil {
			st.raiseSince, st.clearSince, st.valueTS = l.RaiseSince, l.ClearSince, l.ValueTS
		} else {
			if !st.raiseBroke && !st.raiseSince.IsZero() && !l.RaiseSince.IsZero() && l.RaiseSince.Before(st.raiseSince) {
				st.raiseSince = l.RaiseSince
			}
			if !st.clearBroke && !st.clearSince.IsZero() && !l.ClearSince.IsZero() && l.ClearSince.Before(st.clearSince) {
				st.clearSince = l.ClearSince
			}
		}
		st.episode, st.episodeAt = l.Episode, l.EpisodeTime
		st.raiseBroke, st.clearBroke = false, false
		s.evaluate(r, st, now)
	}
}

// appendChanges appends the states of rules that changed since they were
// last read from or handed to the store, and counts them as handed.
// Nothing before the stored states are loaded: this session's states are
// incomplete until then. Called with s.mu held.
func (s *Session) appendChanges(out []store.AlarmRuleState, rules []store.AlarmRule) []store.AlarmRuleState {
	if !s.loaded {
		return out
	}
	for _, r := range rules {
		st := s.rules[r.ID]
		if st == nil {
			continue
		}
		if snap := st.snapshot(s.dev.ID, r.ID); !sameRuleState(snap, st.stored) {
			out = append(out, snap)
			st.stored = snap
		}
	}
	return out
}

// clearActive queues the clearing of the device's active alarm of typ,
// reading first: after a reconnect the session does not know whether one
// is active, and a read is cheaper than a write that changes nothing.
// Called with s.mu held.
func (s *Session) clearActive(typ string) {
	d := s.dev
	s.e.do(func(ctx context.Context) {
		yes := true
		as, err := s.e.cfg.Store.ListAlarms(ctx, store.AlarmQuery{DeviceID: d.ID, Type: typ, Active: &yes, Limit: 1})
		if err != nil || len(as) == 0 {
			return
		}
		if _, _, err := s.e.svc.ClearDevice(ctx, d.ID, typ, "system"); err != nil {
			s.e.log.Warn("alarm: clearing", "device", d.Name, "type", typ, "err", err)
		}
	})
}

func conditionText(key string, c store.Condition) string {
	t := fmt.Sprintf("%s %s %s", key, c.Op, c.Value)
	if c.Duration > 0 {
		t += " for " + time.Duration(c.Duration).String()
	}
	return t
}

// Rejected implements the gateway's SessionObserver: BadInputLimit
// refusals within BadInputWindow raise the bad-payload-rate alarm.
func (s *Session) Rejected(reason string, at time.Time) {
	limit, window := s.e.cfg.BadInputLimit, s.e.cfg.BadInputWindow
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	if len(s.rejects) == limit {
		copy(s.rejects, s.rejects[1:])
		s.rejects = s.rejects[:limit-1]
	}
	s.rejects = append(s.rejects, at)
	if len(s.rejects) < limit || at.Sub(s.rejects[0]) > window || s.badRaised {
		return
	}
	s.badRaised, s.badUnknown = true, false
	d := s.dev
	detail := map[string]any{"refused": limit, "within": window.String(), "lastReason": reason}
	s.e.do(func(ctx context.Context) {
		if _, err := s.e.svc.RaiseDevice(ctx, d, store.AlarmBadPayloads, store.SeverityWarning, detail); err != nil {
			s.e.log.Warn("alarm: raising bad-payload alarm", "device", d.Name, "err", err)
		}
	})
}

// checkBadInput clears the bad-payload-rate alarm after a whole window
// without refusals. Called with s.mu held.
func (s *Session) checkBadInput(now time.Time) {
	if s.ended || !s.badRaised && !s.badUnknown {
		return
	}
	window := s.e.cfg.BadInputWindow
	quietSince := s.started
	if n := len(s.rejects); n > 0 {
		quietSince = s.rejects[n-1]
	}
	if now.Sub(quietSince) < window {
		return
	}
	s.badRaised, s.badUnknown = false, false
	s.clearActive(store.AlarmBadPayloads)
}

// Ended implements the gateway's SessionObserver. The rules' states
// changed since the last tick are handed to the store now, for the next
// session.
func (s *Session) Ended(at time.Time, takenOver bool) {
	e := s.e
	e.mu.Lock()
	delete(e.sessions, s)
	e.mu.Unlock()
	rules := e.rulesOf(s.dev.Profile)
	s.mu.Lock()
	var changed []store.AlarmRuleState
	if !s.ended {
		changed = s.appendChanges(nil, rules)
	}
	s.ended = true
	act := store.Activity{DeviceID: s.dev.ID}
	if s.last.After(s.written) {
		act.At = s.last
	}
	if !takenOver {
		act.Disconnect = at
	}
	s.mu.Unlock()
	e.stageStates(changed)
	if act.At.IsZero() && act.Disconnect.IsZero() {
		return
	}
	e.do(func(ctx context.Context) { e.recordActivity(ctx, []store.Activity{act}) })
}
