package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/thingline/thingline/store"
)

// Claiming, device side. ThingsBoard's device publishes
// {"secretKey":"…","durationMs":…} on v1/devices/me/claim; a user then
// claims the device through the API with the same key within the window.
// The zero-touch association of provisioning (docs/ownership.md) is the
// same message with the user the app named: {"userId":"…","secretKey":"…"}.
// Either may carry "reset":true, a factory reset's mark, which lets the
// device change owner. Unlike ThingsBoard, the device learns the outcome on
// v1/devices/me/claim/response when it subscribed to it.

const claimResponseTopic = v1Prefix + "claim/response"

// ThingsBoard's server default (security.claim.duration) when durationMs is
// absent or not positive; the longest window a device may ask for.
const (
	defaultClaimWindow = 24 * time.Hour
	maxClaimWindow     = 7 * 24 * time.Hour
	maxClaimSecret     = 256
)

type claimRequest struct {
	SecretKey  string          `json:"secretKey"`
	DurationMs int64           `json:"durationMs"`
	UserID     json.RawMessage `json:"userId"` // association only: a number or a decimal string
	Reset      bool            `json:"reset"`

	user int64
}

func parseClaim(payload []byte) (claimRequest, error) {
	var r claimRequest
	if len(payload) == 0 {
		// ThingsBoard accepts an empty message as an empty key.
		return r, nil
	}
	if err := json.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("invalid claim request: %w", err)
	}
	if len(r.SecretKey) > maxClaimSecret {
		return r, fmt.Errorf("invalid claim request: secretKey longer than %d bytes", maxClaimSecret)
	}
	if r.DurationMs < 0 || time.Duration(r.DurationMs)*time.Millisecond > maxClaimWindow {
		return r, fmt.Errorf("invalid claim request: durationMs must be between 0 and %d", maxClaimWindow.Milliseconds())
	}
	if len(r.UserID) > 0 && string(r.UserID) != "null" {
		var s string
		if err := json.Unmarshal(r.UserID, &s); err != nil {
			s = string(r.UserID)
		}
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			return r, errors.New("invalid claim request: userId must be a positive integer")
		}
		if r.SecretKey == "" {
			return r, errors.New("invalid claim request: an association needs a secretKey")
		}
		r.user = id
	}
	return r, nil
}

// recordClaim stores the device's half of a claim, before the PUBACK, and
// tells the device at once when it cannot succeed.
func (ss *session) recordClaim(ctx context.Context, r claimRequest) {
	s := ss.srv
	now := s.now()
	kind := store.ClaimDevice
	if r.user != 0 {
		kind = store.ClaimAssociation
	}
	window := defaultClaimWindow
	if r.DurationMs > 0 {
		window = time.Duration(r.DurationMs) * time.Millisecond
	}
	h := sha256.Sum256([]byte(r.SecretKey))
	cur, err := s.st.CurrentOwner(ctx, ss.dev.ID, ss.dev.Name)
	switch {
	case err == nil && !r.Reset && (r.user == 0 || r.user == cur.UserID) && subtle.ConstantTimeCompare(cur.SecretHash, h[:]) == 1:
		// A device repeating the claim or association that made its
		// owner (it missed the answer, say, offline or across a
		// reconnection) hears SUCCESS again. Nothing is recorded: a
		// pending request of the owner's would outlive its purpose and,
		// after a reset within its window, stand in the way of the next
		// user's association (their claim would meet it and fail).
		ss.claimResult(json.RawMessage(`{"result":"SUCCESS"}`))
		return
	case err == nil && !r.Reset && cur.UserID != r.user:
		// Owned, no reset, and not the owner's own association: as in
		// ThingsBoard, nothing to record — but the device is told.
		ss.claimResult(json.RawMessage(`{"result":"CLAIMED"}`))
		return
	case err != nil && !errors.Is(err, store.ErrNotFound):
		s.log.Warn("gateway: claim request: owner lookup", "device", ss.dev.Name, "err", err)
		ss.claimResult(json.RawMessage(`{"result":"FAILURE","error":"try again"}`))
		return
	}
	err = s.st.PutClaimRequest(ctx, store.ClaimRequest{
		DeviceID: ss.dev.ID, DeviceName: ss.dev.Name, Kind: kind, SecretHash: h[:], UserID: r.user,
		Reset: r.Reset, CreatedAt: now, ExpiresAt: now.Add(window),
	})
	if err != nil {
		s.log.Warn("gateway: recording claim request", "device", ss.dev.Name, "err", err)
		ss.claimResult(json.RawMessage(`{"result":"FAILURE","error":"try again"}`))
		return
	}
	b, _ := json.Marshal(map[string]any{"result": "PENDING", "kind": kind, "expiresAt": now.Add(window).UnixMilli()})
	ss.claimResult(b)
	ss.watchClaim(window)
}

// claimWatch tells the device when its claim request expires unmatched.
// Its fields are guarded by session.mu.
type claimWatch struct {
	stop    chan struct{} // ends the watch of the previous request
	matched bool          // a SUCCESS went out for the current request
}

// watchClaim waits, until the session ends or another request replaces
// this one, for the window to pass; then, if no user matched the request,
// the device is told {"result":"EXPIRED"}.
func (ss *session) watchClaim(window time.Duration) {
	stop := make(chan struct{})
	ss.mu.Lock()
	if ss.claim.stop != nil {
		close(ss.claim.stop)
	}
	ss.claim = claimWatch{stop: stop}
	ss.mu.Unlock()
	go func() {
		t := time.NewTimer(window)
		defer t.Stop()
		select {
		case <-t.C:
		case <-stop:
			return
		case <-ss.done:
			return
		}
		ss.mu.Lock()
		current, matched := ss.claim.stop == stop, ss.claim.matched
		ss.mu.Unlock()
		if current && !matched {
			ss.claimResult(json.RawMessage(`{"result":"EXPIRED"}`))
		}
	}()
}

// claimResult publishes an outcome to the device if it listens for one.
func (ss *session) claimResult(payload json.RawMessage) (json.RawMessage, error) {
	var r struct {
		Result string `json:"result"`
	}
	if json.Unmarshal(payload, &r) == nil && r.Result == "SUCCESS" {
		ss.mu.Lock()
		ss.claim.matched = true
		ss.mu.Unlock()
	}
	sub, ok := ss.sub(subClaimResponse)
	if !ok {
		return jsonNull, nil
	}
	if err := ss.publish(claimResponseTopic, payload, sub.qos); err != nil {
		return nil, fmt.Errorf("gateway: claim result to %s: %w", ss.dev.Name, err)
	}
	return jsonNull, nil
}
