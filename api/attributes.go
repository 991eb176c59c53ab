package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

func parseScope(v string, def store.Scope) (store.Scope, error) {
	switch sc := store.Scope(v); sc {
	case "":
		return def, nil
	case store.ClientScope, store.SharedScope, store.ServerScope:
		return sc, nil
	}
	return "", errorf(http.StatusBadRequest, "scope must be client, shared or server, not %q", v)
}

func (s *Server) getAttributes(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	keys := splitKeys(r.URL.Query().Get("keys"))
	scopes := []store.Scope{store.ClientScope, store.SharedScope, store.ServerScope}
	if v := r.URL.Query().Get("scope"); v != "" {
		sc, err := parseScope(v, "")
		if err != nil {
			return err
		}
		scopes = []store.Scope{sc}
	}
	out := map[store.Scope]map[string]store.Attribute{}
	for _, sc := range scopes {
		m, err := s.cfg.Store.GetAttributes(r.Context(), d.ID, sc, keys)
		if err != nil {
			return err
		}
		if m == nil {
			m = map[string]store.Attribute{}
		}
		if from := visibleFromMs(r); from > 0 {
			for k, a := range m {
				if a.UpdatedAt < from {
					delete(m, k) // set in an earlier ownership epoch
				}
			}
		}
		out[sc] = m
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// postAttributes sets attributes of one scope (shared by default) from a
// flat JSON object. Shared attributes are pushed to the device at once
// when it is online, as ThingsBoard does.
func (s *Server) postAttributes(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	scope, err := parseScope(r.URL.Query().Get("scope"), store.SharedScope)
	if err != nil {
		return err
	}
	if scope == store.ClientScope {
		return errorf(http.StatusBadRequest, "client attributes are reported by the device, not set through the API")
	}
	var kv map[string]json.RawMessage
	if err := decodeBody(w, r, &kv); err != nil {
		return err
	}
	if len(kv) == 0 {
		return errorf(http.StatusBadRequest, "body must be a non-empty JSON object of attributes")
	}
	for k, v := range kv {
		if k == "" {
			return errorf(http.StatusBadRequest, "attribute names must not be empty")
		}
		if string(v) == "null" {
			return errorf(http.StatusBadRequest, "attribute %q: null is not a value", k)
		}
	}
	now := time.Now()
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	if scope == store.SharedScope {
		// Marked before it is stored, so that a device subscribing in
		// between is told at least once (see pushShared).
		if err := s.cfg.Store.MarkShared(r.Context(), d.ID, keys, false, now); err != nil {
			return err
		}
	}
	if err := s.cfg.Store.SetAttributes(r.Context(), d.ID, scope, kv, now); err != nil {
		return err
	}
	pushed := false
	if scope == store.SharedScope {
		payload, _ := json.Marshal(kv)
		pushed = s.pushShared(r.Context(), d, payload, keys, false, now)
	}
	writeJSON(w, http.StatusOK, map[string]any{"scope": scope, "updated": len(kv), "pushed": pushed})
	return nil
}

// deleteAttributes removes keys of one scope (shared by default). A
// deletion of shared keys is pushed as {"deleted":[…]}, as ThingsBoard
// does, or when the device next subscribes if it cannot be told now.
func (s *Server) deleteAttributes(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	scope, err := parseScope(r.URL.Query().Get("scope"), store.SharedScope)
	if err != nil {
		return err
	}
	keys := splitKeys(r.URL.Query().Get("keys"))
	if len(keys) == 0 {
		return errorf(http.StatusBadRequest, "keys is required: a comma-separated list of attribute names")
	}
	now := time.Now()
	if scope == store.SharedScope {
		if err := s.cfg.Store.MarkShared(r.Context(), d.ID, keys, true, now); err != nil {
			return err
		}
	}
	if err := s.cfg.Store.DeleteAttributes(r.Context(), d.ID, scope, keys); err != nil {
		return err
	}
	pushed := false
	if scope == store.SharedScope {
		payload, _ := json.Marshal(map[string][]string{"deleted": keys})
		pushed = s.pushShared(r.Context(), d, payload, keys, true, now)
	}
	writeJSON(w, http.StatusOK, map[string]any{"scope": scope, "deleted": len(keys), "pushed": pushed})
	return nil
}

// pushShared sends a shared-attribute update to the device and, once it
// reached the session, clears the marks made for it; a device offline or
// not subscribed keeps them and gets the change when it next subscribes to
// attribute updates.
func (s *Server) pushShared(ctx context.Context, d store.Device, payload json.RawMessage, keys []string, deleted bool, at time.Time) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reply, err := s.cfg.Bus.Request(ctx, d.Name, bus.Command{Kind: bus.CommandAttributes, Payload: payload, TimeoutMs: 5000})
	switch {
	case errors.Is(err, bus.ErrNoSession):
		return false
	case err != nil:
		s.cfg.Logger.Warn("api: pushing shared attributes", "device", d.Name, "err", err)
		return false
	}
	var res struct {
		Pushed *bool `json:"pushed"`
	}
	if json.Unmarshal(reply, &res) == nil && res.Pushed != nil && !*res.Pushed {
		return false // online, not subscribed to attribute updates
	}
	cs := make([]store.SharedChange, len(keys))
	for i, k := range keys {
		cs[i] = store.SharedChange{Key: k, Deleted: deleted, At: at}
	}
	if err := s.cfg.Store.ClearShared(ctx, d.ID, cs); err != nil {
		s.cfg.Logger.Warn("api: clearing pushed shared attributes", "device", d.Name, "err", err)
	}
	return true
}
