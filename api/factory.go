package api

import (
	"errors"
	"net/http"
	"strings"

	"github.com/thingline/thingline/factory"
	"github.com/thingline/thingline/store"
)

// The factory's read views: the registry's units and batches, a unit's
// traveller, and per-station yield and throughput from the station events
// that `thingline factory push` sends with the units. Labels are not
// served: their QR code carries the unit's proof of possession, which
// stays at the factory.

func (s *Server) listUnits(w http.ResponseWriter, r *http.Request) error {
	limit, err := queryInt(r, "limit", defaultLimit, 1, 1000)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	us, err := s.cfg.Store.ListUnits(r.Context(), store.UnitQuery{Batch: q.Get("batch"),
		Search: strings.TrimSpace(q.Get("q")), After: q.Get("after"), Limit: int(limit)})
	if err != nil {
		return err
	}
	resp := struct {
		Units []store.Unit `json:"units"`
		Next  string       `json:"next,omitempty"`
	}{Units: us}
	if resp.Units == nil {
		resp.Units = []store.Unit{}
	}
	if len(us) == int(limit) {
		resp.Next = us[len(us)-1].SN
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) getUnit(w http.ResponseWriter, r *http.Request) error {
	sn := r.PathValue("sn")
	u, err := s.cfg.Store.GetUnit(r.Context(), sn)
	if errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusNotFound, "unit %q not found", sn)
	}
	if err != nil {
		return err
	}
	evs, err := s.cfg.Store.UnitEvents(r.Context(), store.UnitEventQuery{SN: sn})
	if err != nil {
		return err
	}
	if evs == nil {
		evs = []store.UnitEvent{}
	}
	dev, err := s.cfg.Store.UnitDevice(r.Context(), sn)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	writeJSON(w, http.StatusOK, struct {
		store.Unit
		Device    string            `json:"device,omitempty"`
		Traveller []store.UnitEvent `json:"traveller"`
	}{u, dev, evs})
	return nil
}

func (s *Server) listBatches(w http.ResponseWriter, r *http.Request) error {
	bs, err := s.cfg.Store.UnitBatches(r.Context())
	if err != nil {
		return err
	}
	if bs == nil {
		bs = []store.Batch{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"batches": bs})
	return nil
}

// stationStats is one station's yield and throughput.
type stationStats struct {
	Station       int     `json:"station"`
	Name          string  `json:"name"`
	UnitsIn       int     `json:"unitsIn"`
	UnitsOut      int     `json:"unitsOut"`
	Failed        int     `json:"failed"`
	Passes        int     `json:"passes"`
	Fails         int     `json:"fails"`
	Yield         float64 `json:"yield"`
	FirstPass     float64 `json:"firstPass"`
	ActiveSeconds float64 `json:"activeSeconds"`
	PerHour       float64 `json:"perHour"`
}

func (s *Server) stationReport(w http.ResponseWriter, r *http.Request) error {
	evs, err := s.cfg.Store.UnitEvents(r.Context(), store.UnitEventQuery{Batch: r.URL.Query().Get("batch")})
	if err != nil {
		return err
	}
	fe := make([]factory.Event, len(evs))
	for i, e := range evs {
		fe[i] = factory.Event{SN: e.SN, Board: e.Board, Station: factory.Station(e.Station), Result: factory.Result(e.Result),
			Operator: e.Operator, Batch: e.Batch, Time: e.Time, Detail: e.Detail}
	}
	out := []stationStats{}
	for _, st := range factory.StationReport(fe) {
		out = append(out, stationStats{Station: int(st.Station), Name: st.Station.String(), UnitsIn: st.UnitsIn, UnitsOut: st.UnitsOut,
			Failed: st.Failed, Passes: st.Passes, Fails: st.Fails, Yield: st.Yield, FirstPass: st.FirstPass,
			ActiveSeconds: st.Active.Seconds(), PerHour: st.PerHour})
	}
	writeJSON(w, http.StatusOK, map[string]any{"stations": out, "events": len(evs)})
	return nil
}

// addUnitEvents takes station events from a factory ledger.
func (s *Server) addUnitEvents(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Events []store.UnitEvent `json:"events"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if len(req.Events) == 0 {
		return errorf(http.StatusBadRequest, "events must be a non-empty array")
	}
	if len(req.Events) > 10000 {
		return errorf(http.StatusRequestEntityTooLarge, "at most 10000 events per request")
	}
	for i, e := range req.Events {
		switch {
		case e.SN == "" && e.Board == "":
			return errorf(http.StatusBadRequest, "events[%d]: sn or board is required", i)
		case !factory.Station(e.Station).Valid():
			return errorf(http.StatusBadRequest, "events[%d]: station must be 1 to 5", i)
		case e.Result != string(factory.Pass) && e.Result != string(factory.Fail):
			return errorf(http.StatusBadRequest, "events[%d]: result must be pass or fail", i)
		case e.Time.IsZero():
			return errorf(http.StatusBadRequest, "events[%d]: time is required", i)
		}
	}
	n, err := s.cfg.Store.AddUnitEvents(r.Context(), req.Events)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int{"accepted": len(req.Events), "added": n})
	return nil
}
