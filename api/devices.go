package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

const (
	defaultLimit = 100
	maxLimit     = 10000
)

func queryInt(r *http.Request, name string, def, lo, hi int64) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, errorf(http.StatusBadRequest, "%s must be an integer between %d and %d", name, lo, hi)
	}
	return n, nil
}

func splitKeys(v string) []string {
	var keys []string
	for _, k := range strings.Split(v, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// device returns the device named in the path, as authorization resolved
// it (a device-scoped route never reaches its handler for a device the
// caller may not see).
func (s *Server) device(r *http.Request) (store.Device, error) {
	if v := viewOf(r); v.hasDev {
		return v.dev, nil
	}
	name := r.PathValue("name")
	d, err := s.cfg.Store.GetDevice(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		return d, errorf(http.StatusNotFound, "device %q not found", name)
	}
	return d, err
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	ownerView(principal(r), &d)
	writeJSON(w, http.StatusOK, d)
	return nil
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	if err := s.removeDevice(r.Context(), d); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// removeDevice deletes a device's record and data, closes its session
// wherever it is (a deleted device must not keep streaming into a record
// that no longer exists), and announces the deletion.
func (s *Server) removeDevice(ctx context.Context, d store.Device) error {
	if err := s.cfg.Store.DeleteDevice(ctx, d.Name); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := s.cfg.Bus.Request(cctx, d.Name, bus.Command{Kind: bus.CommandDisconnect, Payload: json.RawMessage(`{"reason":"device deleted"}`)})
	if err != nil && !errors.Is(err, bus.ErrNoSession) {
		s.cfg.Logger.Warn("api: disconnecting deleted device", "device", d.Name, "err", err)
	}
	note, _ := json.Marshal(map[string]string{"device": d.Name, "op": "deleted"})
	s.cfg.Bus.Publish(ctx, bus.TopicDevices, note)
	return nil
}

func (s *Server) latestTelemetry(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	pts, err := s.cfg.Store.LatestTelemetry(r.Context(), d.ID, splitKeys(r.URL.Query().Get("keys")))
	if err != nil {
		return err
	}
	if pts == nil {
		pts = map[string]store.Point{}
	}
	if from := visibleFromMs(r); from > 0 {
		for k, p := range pts {
			if p.TS < from {
				delete(pts, k) // nothing of this key since the caller's epoch began
			}
		}
	}
	writeJSON(w, http.StatusOK, pts)
	return nil
}

func (s *Server) queryTelemetry(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	const maxTS = 1<<63 - 1
	from, err := queryInt(r, "from", 0, 0, maxTS)
	if err != nil {
		return err
	}
	to, err := queryInt(r, "to", maxTS, 0, maxTS)
	if err != nil {
		return err
	}
	if from > to {
		return errorf(http.StatusBadRequest, "from (%d) is after to (%d)", from, to)
	}
	from = max(from, visibleFromMs(r))
	limit, err := queryInt(r, "limit", defaultLimit, 1, maxLimit)
	if err != nil {
		return err
	}
	var asc bool
	switch o := r.URL.Query().Get("order"); o {
	case "", "desc":
	case "asc":
		asc = true
	default:
		return errorf(http.StatusBadRequest, "order must be asc or desc, not %q", o)
	}
	res, err := s.cfg.Store.QueryTelemetry(r.Context(), store.TelemetryQuery{
		DeviceID: d.ID, Keys: splitKeys(r.URL.Query().Get("keys")),
		From: from, To: to, Limit: int(limit), Asc: asc,
	})
	if err != nil {
		return err
	}
	if res == nil {
		res = map[string][]store.Point{}
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		var te interface{ Timeout() bool }
		if errors.As(err, &mbe) {
			return errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", mbe.Limit)
		} else if errors.As(err, &te) && te.Timeout() {
			return errorf(http.StatusRequestTimeout, "request body not received in time")
		}
		return errorf(http.StatusBadRequest, "malformed JSON body: %v", err)
	}
	// One JSON value and nothing after it but white space.
	if _, err := dec.Token(); err != io.EOF {
		return errorf(http.StatusBadRequest, "malformed JSON body: data after the JSON value")
	}
	return nil
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) error {
	limit, err := queryInt(r, "limit", defaultLimit, 1, 1000)
	if err != nil {
		return err
	}
	before, err := queryInt(r, "before", 0, 0, 1<<63-1)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	evs, err := s.cfg.Store.ListEvents(r.Context(), store.EventQuery{
		Device: q.Get("device"), Kind: q.Get("kind"), Before: before, Limit: int(limit),
	})
	if err != nil {
		return err
	}
	if v := viewOf(r); v.hasDev {
		// An owner sees the events of their epoch only; events come newest
		// first, so the first older one ends the page and the listing.
		for i, e := range evs {
			if e.Time.Before(v.from) {
				evs, limit = evs[:i], -1
				break
			}
		}
	}
	writePage(w, "events", evs, limit, func(e store.Event) int64 { return e.ID })
	return nil
}

func (s *Server) listRevocations(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.cfg.Store.ListRevocations(r.Context())
	if err != nil {
		return err
	}
	if rs == nil {
		rs = []store.Revocation{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"revocations": rs})
	return nil
}

// normalizeSerial accepts a serial as hex with or without colons and
// leading zeros, the forms openssl and browsers print.
func normalizeSerial(s string) (string, bool) {
	s = strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(strings.TrimSpace(s), "0x"), ":", ""))
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	s = strings.TrimLeft(s, "0")
	if s == "" {
		return "0", true
	}
	return s, true
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) error {
	var req store.Revocation
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	serial, ok := normalizeSerial(req.Serial)
	if !ok || req.Serial == "" {
		return errorf(http.StatusBadRequest, "serial must be a hexadecimal certificate serial number")
	}
	req.Serial = serial
	if req.Reason == "" {
		req.Reason = "unspecified"
	}
	req.RevokedAt = time.Now().UTC()
	if err := s.cfg.Store.Revoke(r.Context(), req); err != nil {
		return err
	}
	s.announceRevocation(r.Context(), req)
	writeJSON(w, http.StatusCreated, req)
	return nil
}

func (s *Server) addUnits(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Units []store.Unit `json:"units"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if len(req.Units) == 0 {
		return errorf(http.StatusBadRequest, "units must be a non-empty array")
	}
	if len(req.Units) > 10000 {
		return errorf(http.StatusRequestEntityTooLarge, "at most 10000 units per request")
	}
	for i, u := range req.Units {
		if u.SN == "" {
			return errorf(http.StatusBadRequest, "units[%d]: sn is required", i)
		}
		if u.Serial != "" {
			sn, ok := normalizeSerial(u.Serial)
			if !ok {
				return errorf(http.StatusBadRequest, "units[%d]: certSerial must be hexadecimal", i)
			}
			req.Units[i].Serial = sn
		}
	}
	if err := s.cfg.Store.AddUnits(r.Context(), req.Units); err != nil {
		return err
	}
	// Gateways cache whether the registry is in use; tell them it grew.
	s.cfg.Bus.Publish(r.Context(), bus.TopicDevices, []byte(`{"op":"units-added"}`))
	writeJSON(w, http.StatusOK, map[string]int{"accepted": len(req.Units)})
	return nil
}
