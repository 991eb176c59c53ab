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

type rpcRequest struct {
	Method     string          `json:"method"`
	Params     json.RawMessage `json:"params,omitempty"`
	TimeoutMs  int64           `json:"timeoutMs,omitempty"`
	Persistent bool            `json:"persistent,omitempty"`
	// Persistent calls only (ThingsBoard's names).
	Oneway         bool   `json:"oneway,omitempty"`
	Retries        *int   `json:"retries,omitempty"`
	ExpirationTime *int64 `json:"expirationTime,omitempty"` // ms since the epoch
}

const (
	defaultRPCTimeout = 10 * time.Second
	maxRPCTimeout     = 5 * time.Minute
	// A persistent call waits this long for its device unless told.
	defaultRPCExpiry = 24 * time.Hour
	maxRPCExpiry     = 30 * 24 * time.Hour
	defaultRPCRetry  = 2
	maxRPCRetries    = 10
)

func (s *Server) rpc(w http.ResponseWriter, r *http.Request) error {
	var req rpcRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if req.Method == "" {
		return errorf(http.StatusBadRequest, "method is required")
	}
	timeout := defaultRPCTimeout
	if req.TimeoutMs != 0 {
		if req.TimeoutMs < 0 || time.Duration(req.TimeoutMs)*time.Millisecond > maxRPCTimeout {
			return errorf(http.StatusBadRequest, "timeoutMs must be between 1 and %d", maxRPCTimeout.Milliseconds())
		}
		timeout = time.Duration(req.TimeoutMs) * time.Millisecond
	}
	d, err := s.device(r)
	if err != nil {
		return err
	}
	params := req.Params
	if len(params) == 0 {
		params = json.RawMessage(`{}`)
	}
	if req.Persistent {
		return s.persistentRPC(w, r, d, req, params, timeout)
	}
	if req.Oneway || req.Retries != nil || req.ExpirationTime != nil {
		return errorf(http.StatusBadRequest, "oneway, retries and expirationTime apply to persistent calls (\"persistent\":true)")
	}
	payload, err := json.Marshal(struct {
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
	}{req.Method, params})
	if err != nil {
		return errorf(http.StatusBadRequest, "params: %v", err)
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	reply, err := s.cfg.Bus.Request(ctx, d.Name, bus.Command{Kind: bus.CommandRPC, Payload: payload, TimeoutMs: timeout.Milliseconds()})
	switch {
	case errors.Is(err, bus.ErrNoSession):
		return errorf(http.StatusConflict, "device %q is offline", d.Name)
	case errors.Is(err, bus.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return errorf(http.StatusGatewayTimeout, "device %q did not answer within %v", d.Name, timeout)
	case err != nil:
		return errorf(http.StatusBadGateway, "rpc to %q failed: %v", d.Name, err)
	}
	if len(reply) == 0 {
		reply = json.RawMessage("null")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(reply)
	return nil
}

// persistentRPC stores the call and answers 202 at once, online or not;
// the dispatcher of the node holding the device's session sends it (the
// QUEUED notice wakes it).
func (s *Server) persistentRPC(w http.ResponseWriter, r *http.Request, d store.Device, req rpcRequest,
	params json.RawMessage, timeout time.Duration) error {
	if !json.Valid(params) {
		return errorf(http.StatusBadRequest, "params must be JSON")
	}
	retries := defaultRPCRetry
	if req.Retries != nil {
		if *req.Retries < 0 || *req.Retries > maxRPCRetries {
			return errorf(http.StatusBadRequest, "retries must be between 0 and %d", maxRPCRetries)
		}
		retries = *req.Retries
	}
	now := time.Now()
	expires := now.Add(defaultRPCExpiry)
	if req.ExpirationTime != nil {
		expires = time.UnixMilli(*req.ExpirationTime)
		if !expires.After(now) || expires.Sub(now) > maxRPCExpiry {
			return errorf(http.StatusBadRequest, "expirationTime must be in the future, at most %v ahead (ms since the epoch)", maxRPCExpiry)
		}
	}
	call, err := s.cfg.Store.CreateRPC(r.Context(), store.RPC{DeviceID: d.ID, Device: d.Name, Method: req.Method,
		Params: params, Oneway: req.Oneway, Retries: retries, TimeoutMs: timeout.Milliseconds(), CreatedAt: now, ExpiresAt: expires})
	if err != nil {
		return err
	}
	if err := s.cfg.Bus.Publish(r.Context(), bus.TopicRPC, call.Notice()); err != nil {
		// Stored: the dispatchers' sweep finds it without the notice.
		s.cfg.Logger.Warn("api: announcing a persistent rpc", "device", d.Name, "err", err)
	}
	writeJSON(w, http.StatusAccepted, call)
	return nil
}

func (s *Server) rpcByID(r *http.Request) (store.RPC, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return store.RPC{}, errorf(http.StatusBadRequest, "rpc id must be a positive integer")
	}
	notFound := errorf(http.StatusNotFound, "rpc %d not found", id)
	call, err := s.cfg.Store.GetRPC(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return call, notFound
	}
	if err != nil {
		return call, err
	}
	// The route names no device: an owner names theirs (?device=), and a
	// call of another device, or from before their ownership, is absent.
	if v := viewOf(r); v.hasDev && call.DeviceID != v.dev.ID || call.CreatedAt.Before(visibleFrom(r)) {
		return store.RPC{}, notFound
	}
	return call, nil
}

func (s *Server) getRPC(w http.ResponseWriter, r *http.Request) error {
	call, err := s.rpcByID(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, call)
	return nil
}

// deleteRPC removes a call, which cancels it if it has not completed
// (ThingsBoard deletes persistent calls the same way).
func (s *Server) deleteRPC(w http.ResponseWriter, r *http.Request) error {
	call, err := s.rpcByID(r)
	if err != nil {
		return err
	}
	if err := s.cfg.Store.DeleteRPC(r.Context(), call.ID); err != nil {
		return err
	}
	call.Status, call.UpdatedAt = store.RPCDeleted, time.Now()
	if err := s.cfg.Bus.Publish(r.Context(), bus.TopicRPC, call.Notice()); err != nil {
		s.cfg.Logger.Warn("api: announcing a deleted rpc", "id", call.ID, "err", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// listRPCs lists a device's persistent calls, newest first; since (ms)
// bounds them below by creation time.
func (s *Server) listRPCs(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	limit, before, since, err := pageParams(r)
	if err != nil {
		return err
	}
	q := store.RPCQuery{DeviceID: d.ID, Before: before, Limit: int(limit), Since: visibleFrom(r)}
	if since > 0 && time.UnixMilli(since).After(q.Since) {
		q.Since = time.UnixMilli(since)
	}
	for _, st := range splitKeys(r.URL.Query().Get("status")) {
		st := store.RPCStatus(strings.ToUpper(st))
		switch st {
		case store.RPCQueued, store.RPCSent, store.RPCDelivered, store.RPCSuccessful, store.RPCTimeout, store.RPCExpired, store.RPCFailed:
		default:
			return errorf(http.StatusBadRequest, "unknown rpc status %q", st)
		}
		q.Status = append(q.Status, st)
	}
	calls, err := s.cfg.Store.ListRPCs(r.Context(), q)
	if err != nil {
		return err
	}
	resp := struct {
		RPC  []store.RPC `json:"rpc"`
		Next int64       `json:"next,omitempty"`
	}{RPC: calls}
	if resp.RPC == nil {
		resp.RPC = []store.RPC{}
	}
	if len(calls) == int(limit) {
		resp.Next = calls[len(calls)-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}
