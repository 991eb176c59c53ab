package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

type rolloutBody struct {
	Package          json.RawMessage   `json:"package"`
	Devices          []string          `json:"devices"`
	Profile          string            `json:"profile"`
	Waves            []json.RawMessage `json:"waves"`
	SuccessThreshold json.RawMessage   `json:"successThreshold"`
	FailureThreshold json.RawMessage   `json:"failureThreshold"`
}

// amount reads a count (5) or a percentage ("10%", or 10 with percent
// true) of total; ok=false when raw is absent.
func amount(field string, raw json.RawMessage, total int, percentOnly bool) (n int, pct bool, ok bool, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, false, false, nil
	}
	bad := errorf(http.StatusBadRequest, `%s: %s is neither a count nor a percentage like "10%%"`, field, raw)
	var s string
	if json.Unmarshal(raw, &s) == nil {
		s = strings.TrimSpace(s)
		p, isPct := strings.CutSuffix(s, "%")
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || v < 0 {
			return 0, false, true, bad
		}
		if isPct || percentOnly {
			if v > 100 {
				return 0, false, true, errorf(http.StatusBadRequest, "%s: %s is over 100%%", field, raw)
			}
			return int((v*float64(total) + 99.999999) / 100), true, true, nil
		}
		if v != float64(int(v)) {
			return 0, false, true, bad
		}
		return int(v), false, true, nil
	}
	var v float64
	if json.Unmarshal(raw, &v) != nil || v < 0 || v != float64(int(v)) {
		return 0, false, true, bad
	}
	if percentOnly && v > 100 {
		return 0, false, true, errorf(http.StatusBadRequest, "%s: %s is over 100%%", field, raw)
	}
	return int(v), percentOnly, true, nil
}

// planWaves turns wave sizes (counts or percentages of total) into counts
// that add up to total: what the listed waves leave is one last wave.
func planWaves(raw []json.RawMessage, total int) ([]int, error) {
	var waves []int
	left := total
	for i, w := range raw {
		n, _, _, err := amount("waves["+strconv.Itoa(i)+"]", w, total, false)
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return nil, errorf(http.StatusBadRequest, "waves[%d]: a wave must hold at least one device", i)
		}
		n = min(n, left)
		if n == 0 {
			break
		}
		waves = append(waves, n)
		left -= n
	}
	if left > 0 {
		waves = append(waves, left)
	}
	return waves, nil
}

// createRollout starts a staged update of devices (named, or a profile's)
// to a package: waves in order, the next once the success threshold of
// the current one is UPDATED, paused when failures reach the threshold.
func (s *Server) createRollout(w http.ResponseWriter, r *http.Request) error {
	var body rolloutBody
	if err := decodeBody(w, r, &body); err != nil {
		return err
	}
	pkgID, err := packageRef(body.Package)
	if err != nil {
		return err
	}
	if _, err := s.pkg(r.Context(), pkgID); err != nil {
		return err
	}
	if (len(body.Devices) == 0) == (body.Profile == "") {
		return errorf(http.StatusBadRequest, `give either "devices" (names) or "profile"`)
	}
	var devs []store.Device
	if body.Profile != "" {
		if devs, err = s.profileDevices(r.Context(), body.Profile); err != nil {
			return err
		}
		if len(devs) == 0 {
			return errorf(http.StatusBadRequest, "profile %q has no devices", body.Profile)
		}
	} else {
		seen := map[string]bool{}
		var unknown []string
		for _, name := range body.Devices {
			if seen[name] {
				continue
			}
			seen[name] = true
			d, err := s.cfg.Store.GetDevice(r.Context(), name)
			if errors.Is(err, store.ErrNotFound) {
				unknown = append(unknown, name)
				continue
			}
			if err != nil {
				return err
			}
			devs = append(devs, d)
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return errorf(http.StatusBadRequest, "unknown devices: %s", strings.Join(unknown, ", "))
		}
	}
	total := len(devs)
	waves, err := planWaves(body.Waves, total)
	if err != nil {
		return err
	}
	success, _, ok, err := amount("successThreshold", body.SuccessThreshold, 100, true)
	if err != nil {
		return err
	}
	if !ok {
		success = 100
	}
	failMax, _, ok, err := amount("failureThreshold", body.FailureThreshold, total, false)
	if err != nil {
		return err
	}
	if !ok {
		failMax = max(1, (total+9)/10) // 10 %
	}
	var members []store.OTARolloutMember
	i := 0
	for wave, n := range waves {
		for range n {
			members = append(members, store.OTARolloutMember{DeviceID: devs[i].ID, Device: devs[i].Name, Wave: wave})
			i++
		}
	}
	ro, err := s.cfg.Store.CreateOTARollout(r.Context(), store.OTARollout{PackageID: pkgID, Profile: body.Profile,
		Status: store.RolloutRunning, Waves: waves, Total: total, SuccessPercent: success, FailureMax: failMax}, members)
	if err != nil {
		return err
	}
	s.announceRollout(r.Context(), ro)
	writeJSON(w, http.StatusCreated, ro)
	return nil
}

func (s *Server) listRollouts(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.cfg.Store.ListOTARollouts(r.Context(), r.URL.Query().Get("status"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"rollouts": rs})
	return nil
}

func (s *Server) rollout(r *http.Request) (store.OTARollout, error) {
	id, err := pathID(r, "rollout")
	if err != nil {
		return store.OTARollout{}, err
	}
	ro, err := s.cfg.Store.GetOTARollout(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return ro, errorf(http.StatusNotFound, "rollout %d not found", id)
	}
	return ro, err
}

// rolloutReport is GET /api/v1/ota/rollouts/{id}: the rollout, its
// package, the counts overall and per wave, and every device's outcome.
type rolloutReport struct {
	store.OTARollout
	Target   store.OTAPackage         `json:"target"`
	Progress store.OTAProgress        `json:"progress"`
	Devices  []store.OTARolloutMember `json:"devices"`
}

// report reads ro's progress from the store's counts, the same numbers
// the engines decide from, and lists its members.
func (s *Server) report(ctx context.Context, ro store.OTARollout) (rolloutReport, error) {
	progress, err := store.RolloutProgress(ctx, s.cfg.Store, ro)
	if err != nil {
		return rolloutReport{}, err
	}
	members, err := s.cfg.Store.OTARolloutMembers(ctx, ro.ID)
	if err != nil {
		return rolloutReport{}, err
	}
	p, err := s.cfg.Store.GetOTAPackage(ctx, ro.PackageID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return rolloutReport{}, err
	}
	return rolloutReport{OTARollout: ro, Target: p, Progress: progress, Devices: members}, nil
}

func (s *Server) getRollout(w http.ResponseWriter, r *http.Request) error {
	ro, err := s.rollout(r)
	if err != nil {
		return err
	}
	rep, err := s.report(r.Context(), ro)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rep)
	return nil
}

// changeRollout applies fn to the rollout until its compare-and-set wins
// (the engines of every node write it too) and answers the report.
func (s *Server) changeRollout(w http.ResponseWriter, r *http.Request, fn func(ro *store.OTARollout, p store.OTAProgress) error) error {
	ro, err := s.rollout(r)
	if err != nil {
		return err
	}
	for range 10 {
		p, err := store.RolloutProgress(r.Context(), s.cfg.Store, ro)
		if err != nil {
			return err
		}
		next := ro
		if err := fn(&next, p); err != nil {
			return err
		}
		stored, ok, err := s.cfg.Store.UpdateOTARollout(r.Context(), next)
		if err != nil {
			return err
		}
		if ok {
			s.announceRollout(r.Context(), stored)
			rep, err := s.report(r.Context(), stored)
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, rep)
			return nil
		}
		ro = stored
	}
	return errorf(http.StatusConflict, "rollout %d kept changing; try again", ro.ID)
}

func finished(ro *store.OTARollout) error {
	if ro.Status == store.RolloutCompleted || ro.Status == store.RolloutAborted {
		return errorf(http.StatusConflict, "rollout %d is %s", ro.ID, ro.Status)
	}
	return nil
}

func (s *Server) pauseRollout(w http.ResponseWriter, r *http.Request) error {
	return s.changeRollout(w, r, func(ro *store.OTARollout, _ store.OTAProgress) error {
		if err := finished(ro); err != nil {
			return err
		}
		ro.Status, ro.PauseReason = store.RolloutPaused, "paused by the operator"
		return nil
	})
}

// resumeRollout runs a paused rollout again: the failures so far no
// longer count toward the threshold, and a finished wave that fell short
// of the success threshold is accepted. With {"retryFailed":true} its
// failed devices are queued again first.
func (s *Server) resumeRollout(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		RetryFailed bool `json:"retryFailed"`
	}
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, &body); err != nil {
			return err
		}
	}
	ro, err := s.rollout(r)
	if err != nil {
		return err
	}
	if ro.Status != store.RolloutPaused {
		return errorf(http.StatusConflict, "rollout %d is %s, not paused", ro.ID, ro.Status)
	}
	if body.RetryFailed {
		rows, err := s.cfg.Store.ListOTADevices(r.Context(), store.OTADeviceQuery{RolloutID: ro.ID, States: []string{store.OTAFailed}})
		if err != nil {
			return err
		}
		for _, d := range rows {
			d.State, d.Error, d.Attempts, d.StateAt, d.Deadline = store.OTAQueued, "", 0, time.Now(), time.Time{}
			if _, _, err := s.cfg.Store.UpdateOTADevice(r.Context(), d); err != nil {
				return err
			}
		}
	}
	return s.changeRollout(w, r, func(ro *store.OTARollout, p store.OTAProgress) error {
		if ro.Status != store.RolloutPaused {
			return errorf(http.StatusConflict, "rollout %d is %s, not paused", ro.ID, ro.Status)
		}
		ro.Status, ro.PauseReason, ro.FailuresAcked = store.RolloutRunning, "", p.Failed
		if wp := p.Waves[ro.CurrentWave]; wp.Queued == 0 && wp.InProgress == 0 && ro.CurrentWave < len(ro.Waves)-1 {
			ro.CurrentWave++
		}
		return nil
	})
}

// abortRollout stops a rollout: devices not started are canceled;
// updates in progress are left to finish (a device mid-flash is not
// interrupted).
func (s *Server) abortRollout(w http.ResponseWriter, r *http.Request) error {
	return s.changeRollout(w, r, func(ro *store.OTARollout, _ store.OTAProgress) error {
		if err := finished(ro); err != nil {
			return err
		}
		if _, err := s.cfg.Store.CancelOTARolloutQueued(r.Context(), ro.ID, "rollout aborted", time.Now()); err != nil {
			return err
		}
		ro.Status, ro.PauseReason = store.RolloutAborted, ""
		return nil
	})
}

// announceRollout tells the stream a rollout changed (the engine announces
// its own changes; see docs/ota.md for the payload).
func (s *Server) announceRollout(ctx context.Context, ro store.OTARollout) {
	b, _ := json.Marshal(map[string]any{"device": "", "ts": time.Now().UnixMilli(), "rollout": ro.ID,
		"status": ro.Status, "wave": ro.CurrentWave + 1, "pauseReason": ro.PauseReason})
	s.cfg.Bus.Publish(ctx, bus.TopicOTA, b)
}
