package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/thingline/thingline/ota/checksum"
	"github.com/thingline/thingline/store"
)

// Firmware packages, assignments and rollouts (docs/ota.md). The API
// writes the intent into the store; the OTA engine of some node picks it
// up at its next tick and drives the devices.

// maxPackage bounds an uploaded image: an ESP32 app partition is at most
// 16 MiB.
const maxPackage = 16 << 20

func (s *Server) otaRoutes() []route {
	return []route{
		{Method: "POST", Pattern: "/api/v1/ota/packages", Access: Staff, MaxBody: maxPackage, h: s.uploadPackage},
		{Method: "GET", Pattern: "/api/v1/ota/packages", Access: Staff, h: s.listPackages},
		{Method: "GET", Pattern: "/api/v1/ota/packages/{id}", Access: Staff, h: s.getPackage},
		{Method: "DELETE", Pattern: "/api/v1/ota/packages/{id}", Access: Admin, h: s.deletePackage},
		{Method: "GET", Pattern: "/api/v1/ota/packages/{id}/data", Access: Staff, h: s.downloadPackage},
		{Method: "PUT", Pattern: "/api/v1/ota/profiles/{profile}", Access: Staff, h: s.assignProfile},
		{Method: "DELETE", Pattern: "/api/v1/ota/profiles/{profile}", Access: Staff, h: s.unassignProfile},
		{Method: "GET", Pattern: "/api/v1/devices/{name}/ota", Access: DeviceState, h: s.deviceOTA},
		{Method: "PUT", Pattern: "/api/v1/devices/{name}/ota", Access: Staff, h: s.assignDevice},
		{Method: "DELETE", Pattern: "/api/v1/devices/{name}/ota", Access: Staff, h: s.unassignDevice},
		{Method: "POST", Pattern: "/api/v1/ota/rollouts", Access: Staff, h: s.createRollout},
		{Method: "GET", Pattern: "/api/v1/ota/rollouts", Access: Staff, h: s.listRollouts},
		{Method: "GET", Pattern: "/api/v1/ota/rollouts/{id}", Access: Staff, h: s.getRollout},
		{Method: "POST", Pattern: "/api/v1/ota/rollouts/{id}/pause", Access: Staff, h: s.pauseRollout},
		{Method: "POST", Pattern: "/api/v1/ota/rollouts/{id}/resume", Access: Staff, h: s.resumeRollout},
		{Method: "POST", Pattern: "/api/v1/ota/rollouts/{id}/abort", Access: Staff, h: s.abortRollout},
	}
}

func pathID(r *http.Request, what string) (int64, error) {
	v := r.PathValue("id")
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, errorf(http.StatusBadRequest, "%s id %q: want a positive integer", what, v)
	}
	return id, nil
}

func (s *Server) pkg(ctx context.Context, id int64) (store.OTAPackage, error) {
	p, err := s.cfg.Store.GetOTAPackage(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return p, errorf(http.StatusNotFound, "package %d not found", id)
	}
	return p, err
}

// packageRef reads a package id given as a number or a string.
func packageRef(raw json.RawMessage) (int64, error) {
	var v any
	if len(raw) == 0 || json.Unmarshal(raw, &v) != nil {
		return 0, errorf(http.StatusBadRequest, `"package" is required: the id of an uploaded package`)
	}
	var s string
	switch t := v.(type) {
	case string:
		s = t
	case float64:
		s = string(raw)
	}
	id, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || id <= 0 {
		return 0, errorf(http.StatusBadRequest, `"package": %s is not a package id`, raw)
	}
	return id, nil
}

func validName(field, v string) error {
	if strings.TrimSpace(v) == "" || len(v) > 255 {
		return errorf(http.StatusBadRequest, "%s must be 1 to 255 characters", field)
	}
	for _, c := range v {
		if c < 0x20 || c == 0x7f {
			return errorf(http.StatusBadRequest, "%s must not hold control characters", field)
		}
	}
	return nil
}

func (s *Server) uploadPackage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	title, version := q.Get("title"), q.Get("version")
	if err := validName("title", title); err != nil {
		return err
	}
	if err := validName("version", version); err != nil {
		return err
	}
	alg, err := checksum.Normalize(q.Get("checksumAlgorithm"))
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/octet-stream") {
		return errorf(http.StatusUnsupportedMediaType, "send the image as application/octet-stream, not %s", ct)
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errorf(http.StatusRequestEntityTooLarge, "package larger than %d bytes", mbe.Limit)
		}
		return errorf(http.StatusBadRequest, "reading the package: %v", err)
	}
	if len(data) == 0 {
		return errorf(http.StatusBadRequest, "the body must be the firmware image; it is empty")
	}
	sum, _ := checksum.Sum(alg, data)
	sha, _ := checksum.Sum(checksum.SHA256, data)
	p, err := s.cfg.Store.CreateOTAPackage(r.Context(), store.OTAPackage{Title: title, Version: version,
		Checksum: sum, ChecksumAlgorithm: alg, SHA256: sha}, data)
	if errors.Is(err, store.ErrExists) {
		return errorf(http.StatusConflict, "a package %s %s already exists", title, version)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, p)
	return nil
}

func (s *Server) listPackages(w http.ResponseWriter, r *http.Request) error {
	ps, err := s.cfg.Store.ListOTAPackages(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"packages": ps})
	return nil
}

// pathPackage is the package named by the path's {id}.
func (s *Server) pathPackage(r *http.Request) (store.OTAPackage, error) {
	id, err := pathID(r, "package")
	if err != nil {
		return store.OTAPackage{}, err
	}
	return s.pkg(r.Context(), id)
}

func (s *Server) getPackage(w http.ResponseWriter, r *http.Request) error {
	p, err := s.pathPackage(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) deletePackage(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "package")
	if err != nil {
		return err
	}
	err = s.cfg.Store.DeleteOTAPackage(r.Context(), id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return errorf(http.StatusNotFound, "package %d not found", id)
	case errors.Is(err, store.ErrInUse):
		return errorf(http.StatusConflict, "package %d is assigned to a device or profile or being rolled out: unassign it first", id)
	case err != nil:
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) downloadPackage(w http.ResponseWriter, r *http.Request) error {
	p, err := s.pathPackage(r)
	if err != nil {
		return err
	}
	data, err := s.cfg.Store.OTAPackageData(r.Context(), p.ID)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", p.Title+"-"+p.Version+".bin"))
	w.Header().Set("X-Checksum", p.ChecksumAlgorithm+"="+p.Checksum)
	_, err = w.Write(data)
	return err
}

type assignBody struct {
	Package json.RawMessage `json:"package"`
}

// assignDevice gives one device its own firmware target (it overrides its
// profile's), queued for the engine to initiate.
func (s *Server) assignDevice(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	var body assignBody
	if err := decodeBody(w, r, &body); err != nil {
		return err
	}
	id, err := packageRef(body.Package)
	if err != nil {
		return err
	}
	if _, err := s.pkg(r.Context(), id); err != nil {
		return err
	}
	row, err := s.cfg.Store.PutOTADevice(r.Context(), store.OTADevice{DeviceID: d.ID, PackageID: id,
		Source: store.OTASourceDevice, State: store.OTAQueued, StateAt: time.Now()})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, row)
	return nil
}

// fwAttributes are the shared attributes of an assignment, removed when it
// goes, as ThingsBoard removes them.
var fwAttributes = []string{"fw_title", "fw_version", "fw_size", "fw_checksum", "fw_checksum_algorithm"}

func (s *Server) unassignDevice(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	if err := s.cfg.Store.DeleteOTADevice(r.Context(), d.ID); errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusNotFound, "device %s has no firmware assigned", d.Name)
	} else if err != nil {
		return err
	}
	now := time.Now()
	if err := s.cfg.Store.MarkShared(r.Context(), d.ID, fwAttributes, true, now); err != nil {
		return err
	}
	if err := s.cfg.Store.DeleteAttributes(r.Context(), d.ID, store.SharedScope, fwAttributes); err != nil {
		return err
	}
	payload, _ := json.Marshal(map[string][]string{"deleted": fwAttributes})
	s.pushShared(r.Context(), d, payload, fwAttributes, true, now)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// deviceOTA is a device's firmware state and the history of its updates,
// newest first, from since on (RFC 3339 or ms since the epoch).
func (s *Server) deviceOTA(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", defaultLimit, 1, 1000)
	if err != nil {
		return err
	}
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
			since = time.UnixMilli(ms)
		} else if since, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return errorf(http.StatusBadRequest, "since must be RFC 3339 or milliseconds since the epoch")
		}
	}
	// An owner sees nothing from before their ownership began.
	if from := visibleFrom(r); since.Before(from) {
		since = from
	}
	out := map[string]any{"device": d.Name, "state": nil}
	row, err := s.cfg.Store.GetOTADevice(r.Context(), d.ID)
	switch {
	case err == nil:
		out["state"] = row
		if p, err := s.cfg.Store.GetOTAPackage(r.Context(), row.PackageID); err == nil {
			out["target"] = p
		}
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	h, err := s.cfg.Store.OTAHistory(r.Context(), d.ID, since, int(limit))
	if err != nil {
		return err
	}
	out["history"] = h
	writeJSON(w, http.StatusOK, out)
	return nil
}

// profileDevices lists the devices of a profile.
func (s *Server) profileDevices(ctx context.Context, profile string) ([]store.Device, error) {
	var out []store.Device
	after := ""
	for {
		ds, err := s.cfg.Store.ListDevices(ctx, store.ListOptions{After: after, Limit: 1000})
		if err != nil {
			return nil, err
		}
		for _, d := range ds {
			if d.Profile == profile {
				out = append(out, d)
			}
		}
		if len(ds) < 1000 {
			return out, nil
		}
		after = ds[len(ds)-1].Name
	}
}

// assignProfile assigns a package to a profile: every device of it
// without a target of its own (or of a rollout) is queued, and devices
// that join the profile later are queued when they first report.
func (s *Server) assignProfile(w http.ResponseWriter, r *http.Request) error {
	profile := r.PathValue("profile")
	var body assignBody
	if err := decodeBody(w, r, &body); err != nil {
		return err
	}
	id, err := packageRef(body.Package)
	if err != nil {
		return err
	}
	if _, err := s.pkg(r.Context(), id); err != nil {
		return err
	}
	if err := s.cfg.Store.SetOTAProfile(r.Context(), profile, id); err != nil {
		return err
	}
	devs, err := s.profileDevices(r.Context(), profile)
	if err != nil {
		return err
	}
	queued := 0
	for _, d := range devs {
		row, err := s.cfg.Store.GetOTADevice(r.Context(), d.ID)
		if err == nil && row.Source != store.OTASourceProfile && !store.OTATerminal(row.State) {
			continue // the device's own assignment, or a rollout, wins
		}
		if err == nil && row.PackageID == id && row.Source == store.OTASourceProfile {
			continue
		}
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if _, err := s.cfg.Store.PutOTADevice(r.Context(), store.OTADevice{DeviceID: d.ID, PackageID: id,
			Source: store.OTASourceProfile, State: store.OTAQueued, StateAt: time.Now()}); err != nil {
			return err
		}
		queued++
	}
	writeJSON(w, http.StatusOK, map[string]any{"profile": profile, "package": id, "queued": queued})
	return nil
}

func (s *Server) unassignProfile(w http.ResponseWriter, r *http.Request) error {
	profile := r.PathValue("profile")
	id, err := s.cfg.Store.GetOTAProfile(r.Context(), profile)
	if err != nil {
		return err
	}
	if id == 0 {
		return errorf(http.StatusNotFound, "profile %q has no firmware assigned", profile)
	}
	if err := s.cfg.Store.SetOTAProfile(r.Context(), profile, 0); err != nil {
		return err
	}
	// Devices queued for the profile's package and not started are
	// dropped; updates in progress finish.
	rows, err := s.cfg.Store.ListOTADevices(r.Context(), store.OTADeviceQuery{PackageID: id, States: []string{store.OTAQueued}})
	if err != nil {
		return err
	}
	for _, row := range rows {
		if row.Source == store.OTASourceProfile {
			if err := s.cfg.Store.DeleteOTADevice(r.Context(), row.DeviceID); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
