// Package api is thingline's REST API: devices, telemetry, attributes, RPC,
// events and the factory's unit registry, as JSON over HTTP with bearer
// tokens.
//
// Authorization is central and declarative: every entry of the route table
// below declares its Access — Public, Self, Staff, Admin, DeviceState or
// DeviceData (the rules are in access.go) — and wrap enforces it before the
// handler runs. A device-scoped route resolves its device once (a device
// that is not the caller's answers 404), and carries the lower time bound
// of what the caller may see of it: handlers get the device with s.device
// and apply visibleFrom to every listing. A new route must declare its
// Access (and the same x-access in openapi.json); TestRouteAccess fails on
// one that does not. docs/accounts.md describes the roles.
//
// The API reads from the store and sends commands through the bus, so any
// node's API reaches a device connected to any other node.
package api

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/thingline/thingline/account"
	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
)

// Config configures the API.
type Config struct {
	Store store.Store
	Bus   bus.Bus
	// AdminTokenHash is the SHA-256 of the admin token. Only the hash is
	// kept, so that a memory dump or a log line never shows the token.
	AdminTokenHash [32]byte
	Node           string
	Logger         *slog.Logger
	Gatherer       prometheus.Gatherer   // for /metrics; nil means the default registry
	Registerer     prometheus.Registerer // for the API's own counters; nil: kept, not registered
	// BodyTimeout bounds the reading of a request body; 0 means 30 s.
	BodyTimeout time.Duration
	// StreamKeepAlive is the period of the stream's keep-alive comments;
	// 0 means 15 s.
	StreamKeepAlive time.Duration
	// Health reports whether the node is ready; nil means always.
	Health func(ctx context.Context) error
	// SessionTTL is the lifetime of a login's session token; default 1 h.
	SessionTTL time.Duration
	// CRLIssuer is the online issuing CA that signs the server's CRL
	// (GET /crl/device-ca.crl); nil: no CRL is published.
	CRLIssuer *pki.CA
	// CRLAnchors verify imported CRLs: the configured device CAs.
	CRLAnchors []*x509.Certificate
}

// HashToken returns the value to put in Config.AdminTokenHash.
func HashToken(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// Server serves the API.
type Server struct {
	cfg    Config
	mux    *http.ServeMux
	routes []route
	met    *apiMetrics
	// Failed logins per account and per source address.
	loginsUser, loginsAddr *account.Limiter
	claimFails             *account.Limiter // failed claims per user: secrets are not for guessing
	ownerWatch             ownerWatch       // ownership changes, for live streams
	crl                    crlCache
}

// route is one entry of the API's route table; openapi.json documents each
// of them (a test keeps the two in step). Access says who may call it (see
// access.go): every route declares it, and TestRouteAccess walks every
// documented route with every role.
type route struct {
	Method, Pattern string
	Access          Access
	MaxBody         int64 // largest request body; 0 means 1 MiB
	h               func(w http.ResponseWriter, r *http.Request) error
	query           []queryParam // from openapi.json (see params.go)
}

//go:embed openapi.json
var openapiJSON []byte

// New returns the API's HTTP handler.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = defaultBodyTimeout
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.DefaultGatherer
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), met: newAPIMetrics(cfg.Registerer),
		loginsUser: account.NewLimiter(loginBurstAccount, loginWindow),
		loginsAddr: account.NewLimiter(loginBurstAddr, loginWindow),
		claimFails: account.NewLimiter(claimBurst, claimWindow)}
	queries, err := documentedQueries(openapiJSON)
	if err != nil {
		panic(err) // the embedded document; TestOpenAPIMatchesRoutes reads it too
	}
	metrics := promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})
	s.routes = []route{
		{Method: "GET", Pattern: "/healthz", Access: Public, h: s.healthz},
		{Method: "GET", Pattern: "/metrics", Access: Public, h: func(w http.ResponseWriter, r *http.Request) error {
			metrics.ServeHTTP(w, r)
			return nil
		}},
		{Method: "GET", Pattern: "/api/v1/openapi.json", Access: Public, h: func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "application/json")
			_, err := w.Write(openapiJSON)
			return err
		}},
		{Method: "GET", Pattern: "/api/v1/devices", Access: Self, h: s.listDevices},
		{Method: "GET", Pattern: "/api/v1/fleet", Access: Staff, h: s.fleetSummary},
		{Method: "GET", Pattern: "/api/v1/devices/{name}", Access: DeviceState, h: s.getDevice},
		{Method: "DELETE", Pattern: "/api/v1/devices/{name}", Access: Admin, h: s.deleteDevice},
		{Method: "GET", Pattern: "/api/v1/devices/{name}/credentials", Access: DeviceState, h: s.listCredentials},
		{Method: "POST", Pattern: "/api/v1/devices/{name}/credentials/revoke", Access: Admin, h: s.revokeCredential},
		{Method: "GET", Pattern: "/api/v1/certificates/expiry", Access: Staff, h: s.certificateExpiry},
		{Method: "POST", Pattern: "/api/v1/crls", Access: Admin, MaxBody: maxCRL, h: s.importCRL},
		{Method: "GET", Pattern: "/crl/{file}", Access: Public, h: s.serverCRL},
		{Method: "GET", Pattern: "/api/v1/devices/{name}/telemetry/latest", Access: DeviceData, h: s.latestTelemetry},
		{Method: "GET", Pattern: "/api/v1/devices/{name}/telemetry", Access: DeviceData, h: s.queryTelemetry},
		{Method: "GET", Pattern: "/api/v1/devices/{name}/attributes", Access: DeviceData, h: s.getAttributes},
		{Method: "POST", Pattern: "/api/v1/devices/{name}/attributes", Access: DeviceData, h: s.postAttributes},
		{Method: "DELETE", Pattern: "/api/v1/devices/{name}/attributes", Access: DeviceData, h: s.deleteAttributes},
		{Method: "POST", Pattern: "/api/v1/devices/{name}/rpc", Access: DeviceData, h: s.rpc},
		{Method: "GET", Pattern: "/api/v1/devices/{name}/rpc", Access: DeviceData, h: s.listRPCs},
		{Method: "GET", Pattern: "/api/v1/rpc/{id}", Access: DeviceData, h: s.getRPC},
		{Method: "DELETE", Pattern: "/api/v1/rpc/{id}", Access: DeviceData, h: s.deleteRPC},
		{Method: "GET", Pattern: "/api/v1/events", Access: DeviceData, h: s.listEvents},
		{Method: "GET", Pattern: "/api/v1/revocations", Access: Staff, h: s.listRevocations},
		{Method: "POST", Pattern: "/api/v1/revocations", Access: Admin, h: s.revoke},
		{Method: "POST", Pattern: "/api/v1/factory/units", Access: Admin, h: s.addUnits},
		{Method: "GET", Pattern: "/api/v1/factory/units", Access: Staff, h: s.listUnits},
		{Method: "GET", Pattern: "/api/v1/factory/units/{sn}", Access: Staff, h: s.getUnit},
		{Method: "GET", Pattern: "/api/v1/factory/batches", Access: Staff, h: s.listBatches},
		{Method: "GET", Pattern: "/api/v1/factory/stations", Access: Staff, h: s.stationReport},
		{Method: "POST", Pattern: "/api/v1/factory/events", Access: Admin, h: s.addUnitEvents},
		{Method: "GET", Pattern: "/api/v1/alarms", Access: DeviceState, h: s.listAlarms},
		{Method: "GET", Pattern: "/api/v1/alarms/{id}", Access: Staff, h: s.getAlarm},
		{Method: "POST", Pattern: "/api/v1/alarms/{id}/ack", Access: Staff, h: s.ackAlarm},
		{Method: "POST", Pattern: "/api/v1/alarms/{id}/clear", Access: Staff, h: s.clearAlarm},
		{Method: "GET", Pattern: "/api/v1/devices/{name}/state", Access: DeviceState, h: s.deviceState},
		{Method: "GET", Pattern: "/api/v1/profiles/{profile}/alarm-rules", Access: Staff, h: s.listAlarmRules},
		{Method: "POST", Pattern: "/api/v1/profiles/{profile}/alarm-rules", Access: Admin, h: s.addAlarmRule},
		{Method: "DELETE", Pattern: "/api/v1/profiles/{profile}/alarm-rules/{id}", Access: Admin, h: s.deleteAlarmRule},
		{Method: "GET", Pattern: "/api/v1/profiles/{profile}/settings", Access: Staff, h: s.getProfileSettings},
		{Method: "PUT", Pattern: "/api/v1/profiles/{profile}/settings", Access: Admin, h: s.putProfileSettings},
		{Method: "GET", Pattern: "/api/v1/stream", Access: Self, h: s.stream},
	}
	s.routes = append(s.routes, s.accountRoutes()...)
	s.routes = append(s.routes, s.ownershipRoutes()...)
	s.routes = append(s.routes, s.otaRoutes()...)
	for _, rt := range s.routes {
		rt.query = queries[rt.Method+" "+rt.Pattern]
		s.mux.Handle(rt.Method+" "+rt.Pattern, s.wrap(rt))
	}
	// Anything else under /api/ answers in JSON, not with the mux's text.
	s.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such route: "+r.Method+" "+r.URL.Path)
	})
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// httpError is an error with the status it should be answered with.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (s *Server) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r, err := s.withView(r, rt)
		if err == nil {
			err = checkQuery(r, rt.query)
			if err != nil {
				s.met.refused.WithLabelValues("bad-query").Inc()
			}
		}
		if err == nil {
			s.limitBody(w, r, rt.MaxBody)
			err = rt.h(w, r)
		}
		if err == nil {
			return
		}
		var he *httpError
		switch {
		case errors.Is(err, errUnauthenticated):
			w.Header().Set("WWW-Authenticate", `Bearer realm="thingline"`)
			writeError(w, http.StatusUnauthorized, err.Error())
		case errors.As(err, &he):
			writeError(w, he.status, he.msg)
		case errors.Is(err, store.ErrNotFound):
			writeError(w, http.StatusNotFound, err.Error())
		default:
			s.cfg.Logger.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			writeError(w, http.StatusInternalServerError, "internal error")
		}
	})
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Health != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.cfg.Health(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unhealthy", "error": err.Error()})
			return nil
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "node": s.cfg.Node})
	return nil
}
