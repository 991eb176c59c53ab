package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// alarmStatuses maps the status filter of GET /api/v1/alarms to the two
// flags: ThingsBoard's four statuses, and its search statuses ACTIVE,
// CLEARED, ACK, UNACK and ANY.
var alarmStatuses = map[string][2]*bool{
	"ANY":           {nil, nil},
	"ACTIVE":        {ptr(true), nil},
	"CLEARED":       {ptr(false), nil},
	"ACK":           {nil, ptr(true)},
	"UNACK":         {nil, ptr(false)},
	"ACTIVE_UNACK":  {ptr(true), ptr(false)},
	"ACTIVE_ACK":    {ptr(true), ptr(true)},
	"CLEARED_UNACK": {ptr(false), ptr(false)},
	"CLEARED_ACK":   {ptr(false), ptr(true)},
}

func ptr[T any](v T) *T { return &v }

func (s *Server) listAlarms(w http.ResponseWriter, r *http.Request) error {
	limit, before, since, err := pageParams(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	aq := store.AlarmQuery{Type: q.Get("type"), Severity: store.Severity(q.Get("severity")), Before: before, Limit: int(limit)}
	if since > 0 {
		aq.Since = time.UnixMilli(since)
	}
	// An owner sees nothing from before their ownership began.
	if from := visibleFrom(r); from.After(aq.Since) {
		aq.Since = from
	}
	if st := q.Get("status"); st != "" {
		f := alarmStatuses[st]
		aq.Active, aq.Acked = f[0], f[1]
	}
	if v := viewOf(r); v.hasDev {
		aq.DeviceID = v.dev.ID
	} else if name := q.Get("device"); name != "" {
		d, err := s.cfg.Store.GetDevice(r.Context(), name)
		if errors.Is(err, store.ErrNotFound) {
			return errorf(http.StatusNotFound, "device %q not found", name)
		} else if err != nil {
			return err
		}
		aq.DeviceID = d.ID
	}
	as, err := s.cfg.Store.ListAlarms(r.Context(), aq)
	if err != nil {
		return err
	}
	writePage(w, "alarms", as, limit, func(a store.Alarm) int64 { return a.ID })
	return nil
}

func alarmID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, errorf(http.StatusBadRequest, "alarm id must be a positive integer")
	}
	return id, nil
}

func (s *Server) getAlarm(w http.ResponseWriter, r *http.Request) error {
	id, err := alarmID(r)
	if err != nil {
		return err
	}
	a, err := s.cfg.Store.GetAlarm(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, a)
	return nil
}

// ackAlarm and clearAlarm change an alarm once; a repeat answers the
// alarm as it is. The change is announced on bus.TopicAlarms.
func (s *Server) ackAlarm(w http.ResponseWriter, r *http.Request) error {
	return s.alarmAction(w, r, store.AlarmOpAcked, s.cfg.Store.AckAlarm)
}

func (s *Server) clearAlarm(w http.ResponseWriter, r *http.Request) error {
	return s.alarmAction(w, r, store.AlarmOpCleared, s.cfg.Store.ClearAlarm)
}

func (s *Server) alarmAction(w http.ResponseWriter, r *http.Request, op string,
	fn func(ctx context.Context, id int64, by string, at time.Time) (store.Alarm, bool, error)) error {
	id, err := alarmID(r)
	if err != nil {
		return err
	}
	a, changed, err := fn(r.Context(), id, s.caller(r), time.Now())
	if err != nil {
		return err
	}
	if changed {
		b, _ := json.Marshal(store.AlarmNotice{Device: a.Device, TS: time.Now().UnixMilli(), Op: op, Alarm: a})
		if err := s.cfg.Bus.Publish(r.Context(), bus.TopicAlarms, b); err != nil {
			s.cfg.Logger.Warn("api: announcing alarm", "id", a.ID, "err", err)
		}
	}
	writeJSON(w, http.StatusOK, a)
	return nil
}

// caller names who acts, for the alarm's ackBy and clearBy.
func (s *Server) caller(r *http.Request) string {
	if u := principal(r).Username; u != "" {
		return u
	}
	return "api"
}

func (s *Server) deviceState(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	st, err := s.cfg.Store.GetDeviceState(r.Context(), d.ID)
	if errors.Is(err, store.ErrNotFound) {
		st = store.DeviceState{DeviceID: d.ID, Device: d.Name, Profile: d.Profile}
	} else if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct {
		store.DeviceState
		Connected bool   `json:"connected"`
		Node      string `json:"node,omitempty"`
	}{st, d.Online, d.Node})
	return nil
}

func (s *Server) listAlarmRules(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.cfg.Store.ListAlarmRules(r.Context(), r.PathValue("profile"))
	if err != nil {
		return err
	}
	if rs == nil {
		rs = []store.AlarmRule{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"rules": rs})
	return nil
}

func (s *Server) addAlarmRule(w http.ResponseWriter, r *http.Request) error {
	var rule store.AlarmRule
	if err := decodeBody(w, r, &rule); err != nil {
		return err
	}
	if p := r.PathValue("profile"); rule.Profile == "" {
		rule.Profile = p
	} else if rule.Profile != p {
		return errorf(http.StatusBadRequest, "rule names profile %q but the path %q", rule.Profile, p)
	}
	if err := rule.Validate(); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	rule, err := s.cfg.Store.AddAlarmRule(r.Context(), rule)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, rule)
	return nil
}

func (s *Server) deleteAlarmRule(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return errorf(http.StatusBadRequest, "rule id must be a positive integer")
	}
	rs, err := s.cfg.Store.ListAlarmRules(r.Context(), r.PathValue("profile"))
	if err != nil {
		return err
	}
	found := false
	for _, x := range rs {
		found = found || x.ID == id
	}
	if !found {
		return errorf(http.StatusNotFound, "profile %q has no alarm rule %d", r.PathValue("profile"), id)
	}
	if err := s.cfg.Store.DeleteAlarmRule(r.Context(), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) getProfileSettings(w http.ResponseWriter, r *http.Request) error {
	p := r.PathValue("profile")
	ps, err := s.cfg.Store.ListProfileSettings(r.Context())
	if err != nil {
		return err
	}
	out := store.ProfileSettings{Profile: p}
	for _, x := range ps {
		if x.Profile == p {
			out = x
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) putProfileSettings(w http.ResponseWriter, r *http.Request) error {
	var ps store.ProfileSettings
	if err := decodeBody(w, r, &ps); err != nil {
		return err
	}
	p := r.PathValue("profile")
	if ps.Profile != "" && ps.Profile != p {
		return errorf(http.StatusBadRequest, "settings name profile %q but the path %q", ps.Profile, p)
	}
	ps.Profile = p
	if strings.TrimSpace(p) == "" || len(p) > 100 {
		return errorf(http.StatusBadRequest, "profile name must have 1 to 100 characters")
	}
	if err := s.cfg.Store.PutProfileSettings(r.Context(), ps); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ps)
	return nil
}
