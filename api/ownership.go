package api

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// Ownership routes: claiming (ThingsBoard's way and the provisioning
// association), whose device this is, release, the owners' history and the
// tenant's policy. docs/ownership.md has the rules.
func (s *Server) ownershipRoutes() []route {
	return []route{
		{Method: "POST", Pattern: "/api/v1/devices/{name}/claim", Access: Self, h: s.claimDevice},
		{Method: "POST", Pattern: "/api/v1/claims", Access: Self, h: s.claimAssociation},
		{Method: "GET", Pattern: "/api/v1/devices/{name}/whose", Access: Self, h: s.whose},
		{Method: "POST", Pattern: "/api/v1/devices/{name}/release", Access: DeviceData, h: s.release},
		{Method: "GET", Pattern: "/api/v1/devices/{name}/owners", Access: Admin, h: s.owners},
		{Method: "GET", Pattern: "/api/v1/ownership/policy", Access: Admin, h: s.getPolicy},
		{Method: "PUT", Pattern: "/api/v1/ownership/policy", Access: Admin, h: s.putPolicy},
		{Method: "GET", Pattern: "/api/v1/ownership/epochs", Access: Self, h: s.myEpochs},
		{Method: "GET", Pattern: "/api/v1/ownership/epochs/{id}/telemetry", Access: Self, h: s.epochTelemetry},
	}
}

// claimAnswer is the body of every claim answer. Result follows
// ThingsBoard's words (SUCCESS, FAILURE, CLAIMED) plus PENDING for an
// association whose device half has not arrived yet.
type claimAnswer struct {
	Result  string `json:"result"`
	Outcome string `json:"outcome,omitempty"` // claimed, same-owner, transferred, delete
	Device  string `json:"device,omitempty"`
	Error   string `json:"error,omitempty"`
}

// claimFailure answers a failed claim: 400 FAILURE for anything about the
// request (no request pending, expired, wrong secret, no such device — all
// alike, so that a user learns nothing about devices that are not theirs),
// 409 CLAIMED for a device owned by someone else.
func claimFailure(w http.ResponseWriter, err error) {
	if errors.Is(err, store.ErrOwned) {
		writeJSON(w, http.StatusConflict, claimAnswer{Result: "CLAIMED", Error: "the device is owned by another user"})
		return
	}
	writeJSON(w, http.StatusBadRequest, claimAnswer{Result: "FAILURE", Error: "no matching claim request: check the secret, or ask the device to claim again"})
}

// claimUser is the account a claim is for; the admin token owns nothing.
func claimUser(r *http.Request) (Principal, error) {
	p := principal(r)
	if p.UserID == 0 {
		return p, errorf(http.StatusBadRequest, "the admin token has no account to own a device: log in as a user")
	}
	return p, nil
}

func (s *Server) claimDevice(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		SecretKey string `json:"secretKey"`
	}
	// ThingsBoard accepts an empty body as an empty key (its #3031).
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, &req); err != nil {
			return err
		}
	}
	return s.claim(w, r, r.PathValue("name"), store.ClaimDevice, req.SecretKey)
}

func (s *Server) claimAssociation(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Device    string `json:"device"`
		SecretKey string `json:"secretKey"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if req.Device == "" || req.SecretKey == "" {
		return errorf(http.StatusBadRequest, "device and secretKey are required")
	}
	return s.claim(w, r, req.Device, store.ClaimAssociation, req.SecretKey)
}

// Failed claims a user may make within claimWindow before being refused
// with 429: enough for typos, too few to guess another device's secret (a
// request itself survives 5 wrong secrets, see store/sqldb).
const (
	claimBurst  = 20
	claimWindow = 10 * time.Minute
)

func (s *Server) claim(w http.ResponseWriter, r *http.Request, name, kind, secret string) error {
	p, err := claimUser(r)
	if err != nil {
		return err
	}
	key := strconv.FormatInt(p.UserID, 10)
	if ok, wait := s.claimFails.Allow(key, time.Now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		return errorf(http.StatusTooManyRequests, "too many failed claims: try again in %v", wait.Round(time.Second))
	}
	ctx := r.Context()
	d, err := s.cfg.Store.GetDevice(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		if kind == store.ClaimAssociation {
			// The device has not connected yet: the app asks again.
			writeJSON(w, http.StatusAccepted, claimAnswer{Result: "PENDING", Device: name})
			return nil
		}
		s.claimFails.Fail(key, time.Now())
		claimFailure(w, store.ErrNoClaim)
		return nil
	}
	if err != nil {
		return err
	}
	if kind == store.ClaimAssociation {
		if _, err := s.cfg.Store.GetClaimRequest(ctx, d.ID, time.Now()); errors.Is(err, store.ErrNotFound) {
			writeJSON(w, http.StatusAccepted, claimAnswer{Result: "PENDING", Device: name})
			return nil
		} else if err != nil {
			return err
		}
	}
	pol, err := s.cfg.Store.GetPolicy(ctx)
	if err != nil {
		return err
	}
	h := sha256.Sum256([]byte(secret))
	outcome, _, err := s.cfg.Store.Claim(ctx, store.Claim{DeviceID: d.ID, DeviceName: d.Name, UserID: p.UserID,
		Kind: kind, SecretHash: h[:], Policy: pol, At: time.Now()})
	if err != nil {
		if errors.Is(err, store.ErrNoClaim) || errors.Is(err, store.ErrWrongSecret) || errors.Is(err, store.ErrOwned) {
			// The device is not told: a user's wrong guess leaves its
			// request open for the right one.
			s.claimFails.Fail(key, time.Now())
			claimFailure(w, err)
			return nil
		}
		return err
	}
	s.tellDevice(ctx, d.Name, "SUCCESS")
	s.ownersChanged(ctx, d.Name, outcome)
	if outcome == store.OutcomeDelete {
		// Case B under the delete policy: the record goes with its data;
		// the device's next connection provisions it afresh, bound to
		// the claimant.
		if err := s.removeDevice(ctx, d); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	writeJSON(w, http.StatusOK, claimAnswer{Result: "SUCCESS", Outcome: outcome, Device: d.Name})
	return nil
}

// tellDevice publishes a claim's outcome to the device wherever its
// session is. A device offline or not listening misses it, as it would
// under ThingsBoard, and learns its owner from the next claim it makes.
func (s *Server) tellDevice(ctx context.Context, name, result string) {
	payload, _ := json.Marshal(map[string]string{"result": result})
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := s.cfg.Bus.Request(ctx, name, bus.Command{Kind: bus.CommandClaimResult, Payload: payload, TimeoutMs: 5000})
	if err != nil && !errors.Is(err, bus.ErrNoSession) {
		s.cfg.Logger.Warn("api: telling the device its claim result", "device", name, "err", err)
	}
}

// ownersChanged announces an ownership change on the bus, so that live
// streams re-check what their callers may see.
func (s *Server) ownersChanged(ctx context.Context, name, op string) {
	note, _ := json.Marshal(map[string]any{"device": name, "op": "owner-" + op, "ts": time.Now().UnixMilli()})
	if err := s.cfg.Bus.Publish(ctx, bus.TopicDevices, note); err != nil {
		s.cfg.Logger.Warn("api: announcing an ownership change", "device", name, "err", err)
	}
}

// whose tells the provisioning app, before it sends Wi-Fi credentials,
// whether the device is the caller's, nobody's, or someone else's — and
// nothing more (not who). A name never seen is unowned: it will be created
// when it first connects.
func (s *Server) whose(w http.ResponseWriter, r *http.Request) error {
	p, err := claimUser(r)
	if err != nil {
		return err
	}
	answer := "unowned"
	d, err := s.cfg.Store.GetDevice(r.Context(), r.PathValue("name"))
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return err
	default:
		ep, err := s.cfg.Store.CurrentOwner(r.Context(), d.ID, d.Name)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return err
		case ep.UserID == p.UserID:
			answer = "mine"
		default:
			answer = "someone-else"
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"owner": answer})
	return nil
}

func (s *Server) release(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	p := principal(r)
	pol, err := s.cfg.Store.GetPolicy(r.Context())
	if err != nil {
		return err
	}
	owner := p.UserID
	if p.Role == store.RoleAdmin {
		owner = 0 // any owner
	}
	ep, err := s.cfg.Store.Release(r.Context(), d.ID, owner, p.UserID, pol, time.Now())
	if errors.Is(err, store.ErrNotOwner) {
		return errorf(http.StatusConflict, "device %q has no owner to release", d.Name)
	}
	if err != nil {
		return err
	}
	s.ownersChanged(r.Context(), d.Name, "released")
	writeJSON(w, http.StatusOK, ep)
	return nil
}

func (s *Server) owners(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	es, err := s.cfg.Store.Owners(r.Context(), name)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", defaultLimit, 1, 1000)
	if err != nil {
		return err
	}
	audit, err := s.cfg.Store.Audit(r.Context(), name, int(limit))
	if err != nil {
		return err
	}
	if es == nil {
		es = []store.Epoch{}
	}
	if audit == nil {
		audit = []store.AuditEntry{}
	}
	resp := map[string]any{"device": name, "owners": es, "audit": audit}
	// A claim request in waiting, for support ("the app says it is
	// claiming; did the device ask?"). The secret's hash stays inside.
	if d, err := s.cfg.Store.GetDevice(r.Context(), name); err == nil {
		if cr, err := s.cfg.Store.GetClaimRequest(r.Context(), d.ID, time.Now()); err == nil {
			resp["pendingClaim"] = map[string]any{"kind": cr.Kind, "reset": cr.Reset, "createdAt": cr.CreatedAt, "expiresAt": cr.ExpiresAt}
		}
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request) error {
	p, err := s.cfg.Store.GetPolicy(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) putPolicy(w http.ResponseWriter, r *http.Request) error {
	var p store.OwnershipPolicy
	if err := decodeBody(w, r, &p); err != nil {
		return err
	}
	if p.OnReset != store.PolicyTransfer && p.OnReset != store.PolicyDelete {
		return errorf(http.StatusBadRequest, "onReset must be %s or %s", store.PolicyTransfer, store.PolicyDelete)
	}
	if p.KeepDays < 0 || p.KeepDays > 3650 {
		return errorf(http.StatusBadRequest, "keepDays must be between 0 and 3650")
	}
	if err := s.cfg.Store.SetPolicy(r.Context(), p); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

// myEpochs lists the caller's ownerships, current and past: where a
// previous owner finds what they may still export.
func (s *Server) myEpochs(w http.ResponseWriter, r *http.Request) error {
	p, err := claimUser(r)
	if err != nil {
		return err
	}
	es, err := s.cfg.Store.UserEpochs(r.Context(), p.UserID)
	if err != nil {
		return err
	}
	if es == nil {
		es = []store.Epoch{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"epochs": es})
	return nil
}

// epochTelemetry is a previous owner's export: the telemetry of one of
// their ended epochs, bounded to it, while the policy keeps it. Anything
// else — another user's epoch, a current one (use the device's own
// routes), a wiped or expired one — answers 404.
func (s *Server) epochTelemetry(w http.ResponseWriter, r *http.Request) error {
	p, err := claimUser(r)
	if err != nil {
		return err
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return errorf(http.StatusBadRequest, "epoch id must be a positive integer")
	}
	notFound := errorf(http.StatusNotFound, "epoch %d not found", id)
	ep, err := s.cfg.Store.GetEpoch(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return notFound
	}
	if err != nil {
		return err
	}
	now := time.Now()
	if ep.UserID != p.UserID || ep.Until.IsZero() || ep.Wiped || !ep.KeepUntil.After(now) || ep.Ended == store.EndDeleted {
		return notFound
	}
	limit, err := queryInt(r, "limit", defaultLimit, 1, maxLimit)
	if err != nil {
		return err
	}
	res, err := s.cfg.Store.QueryTelemetry(r.Context(), store.TelemetryQuery{
		DeviceID: ep.DeviceID, Keys: splitKeys(r.URL.Query().Get("keys")),
		From: ep.Since.UnixMilli(), To: ep.Until.UnixMilli() - 1, Limit: int(limit), Asc: true,
	})
	if err != nil {
		return err
	}
	if res == nil {
		res = map[string][]store.Point{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"epoch": ep, "telemetry": res})
	return nil
}
