package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/thingline/thingline/account"
	"github.com/thingline/thingline/store"
)

// Access declares who may call a route. Every entry of the route table
// declares one; the zero value is "undeclared", which the server refuses to
// serve (500) and TestRouteAccess fails on. The rules, enforced once in
// wrap, before any handler runs:
//
//	Public       anyone, no token (health, metrics, the OpenAPI document, login)
//	Self         any signed-in account; the handler acts only on the caller's
//	             own things (their tokens, their password, their claims)
//	Staff        the tenant: admins and operators
//	Admin        admins only
//	DeviceState  one device: admins, operators, and the device's current owner
//	             (record, state, certificates — what support needs)
//	DeviceData   one device's data and control: admins and the device's
//	             current owner (telemetry, attributes, RPC, events, alarms
//	             values); an operator is refused (403)
//
// The device of a Device… route is the {name} of the path, or, for a path
// without one, the query parameter "device"; staff may omit it (a
// fleet-wide listing), owners may not. A device that exists but is not the
// caller's answers 404 exactly like one that does not exist, so serials
// cannot be probed. For an owner, the request also carries the lower time
// bound of what they may see of the device — the start of their ownership
// epoch — and every handler applies it (visibleFrom): a new owner never
// sees data from before their ownership began.
//
// API tokens carry scopes on top of the role: "read" allows GET, "write"
// every other method. The admin token (and a session) has both.
type Access uint8

const (
	accessUndeclared Access = iota
	Public
	Self
	Staff
	Admin
	DeviceState
	DeviceData
)

var accessNames = [...]string{"undeclared", "public", "self", "staff", "admin", "device-state", "device-data"}

func (a Access) String() string {
	if int(a) < len(accessNames) {
		return accessNames[a]
	}
	return "invalid"
}

// Principal is who is calling: an account, or the admin token.
type Principal struct {
	UserID   int64 // 0 for the admin token
	Username string
	Role     store.Role
	TokenID  int64  // the bearer token's id; 0 for the admin token
	Kind     string // store.TokenSession, store.TokenAPI, or "admin-token"
	Scopes   []string
}

func (p Principal) has(scope string) bool {
	for _, s := range p.Scopes {
		if s == scope {
			return true
		}
	}
	return false
}

// view is what wrap established for one request.
type view struct {
	p      Principal
	dev    store.Device // the route's device, when device-scoped and named
	hasDev bool
	from   time.Time // lower bound of what the caller may see of dev; zero: everything
}

type viewKey struct{}

func viewOf(r *http.Request) *view {
	v, _ := r.Context().Value(viewKey{}).(*view)
	if v == nil {
		return &view{}
	}
	return v
}

// principal returns the caller of a non-public route.
func principal(r *http.Request) Principal { return viewOf(r).p }

// visibleFrom is the lower bound of what the caller may see of the route's
// device; zero means everything. Every listing of a device's data applies
// it (telemetry, attributes, events, alarms, RPC history…).
func visibleFrom(r *http.Request) time.Time { return viewOf(r).from }

// visibleFromMs is visibleFrom in ms since the epoch (0: everything).
func visibleFromMs(r *http.Request) int64 {
	if t := visibleFrom(r); !t.IsZero() {
		return t.UnixMilli()
	}
	return 0
}

const adminTokenKind = "admin-token"

var errUnauthenticated = errors.New("missing or invalid bearer token")

// authenticate maps the bearer token to its principal.
func (s *Server) authenticate(r *http.Request) (Principal, error) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return Principal{}, errUnauthenticated
	}
	sum := sha256.Sum256([]byte(tok))
	if subtle.ConstantTimeCompare(sum[:], s.cfg.AdminTokenHash[:]) == 1 {
		return Principal{Username: "admin", Role: store.RoleAdmin, Kind: adminTokenKind,
			Scopes: []string{account.ScopeRead, account.ScopeWrite}}, nil
	}
	if !account.LooksLikeToken(tok) || s.cfg.Store == nil {
		return Principal{}, errUnauthenticated
	}
	tk, u, err := s.cfg.Store.TokenByHash(r.Context(), sum[:], time.Now())
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, errUnauthenticated
	}
	if err != nil {
		return Principal{}, err
	}
	// A password change revokes the sessions in its own transaction;
	// comparing creation times here instead would trip over the clock
	// skew between nodes.
	if u.Disabled {
		return Principal{}, errUnauthenticated
	}
	return Principal{UserID: u.ID, Username: u.Username, Role: u.Role, TokenID: tk.ID, Kind: tk.Kind, Scopes: tk.Scopes}, nil
}

// authorize decides one request of a non-public route and fills its view.
func (s *Server) authorize(r *http.Request, rt route, v *view) error {
	p := v.p
	need := account.ScopeWrite
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		need = account.ScopeRead
	}
	if !p.has(need) {
		return errorf(http.StatusForbidden, "this token lacks the %q scope", need)
	}
	switch rt.Access {
	case Self:
		return nil
	case Staff:
		if p.Role.Staff() {
			return nil
		}
		return errorf(http.StatusForbidden, "this route is for the tenant's staff")
	case Admin:
		if p.Role == store.RoleAdmin {
			return nil
		}
		return errorf(http.StatusForbidden, "this route is for admins")
	case DeviceState, DeviceData:
	default:
		return errorf(http.StatusInternalServerError, "route %s %s declares no access", rt.Method, rt.Pattern)
	}
	if rt.Access == DeviceData && p.Role == store.RoleOperator {
		return errorf(http.StatusForbidden, "operators do not see device data")
	}
	if !p.Role.Valid() {
		return errorf(http.StatusForbidden, "unknown role %q", p.Role)
	}
	name := r.PathValue("name")
	if !strings.Contains(rt.Pattern, "{name}") {
		name = r.URL.Query().Get("device")
	}
	if name == "" {
		if p.Role.Staff() {
			return nil // fleet-wide
		}
		return errorf(http.StatusBadRequest, "device is required")
	}
	notFound := errorf(http.StatusNotFound, "device %q not found", name)
	d, err := s.cfg.Store.GetDevice(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound
	}
	if err != nil {
		return err
	}
	v.dev, v.hasDev = d, true
	if p.Role.Staff() {
		return nil
	}
	ep, err := s.cfg.Store.CurrentOwner(r.Context(), d.ID, d.Name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound
	}
	if err != nil {
		return err
	}
	if ep.UserID != p.UserID {
		return notFound
	}
	v.from = ep.Since
	return nil
}

// withView runs the route's checks and returns the request carrying its
// view, or the error to answer with.
func (s *Server) withView(r *http.Request, rt route) (*http.Request, error) {
	if rt.Access == Public {
		return r, nil
	}
	if rt.Access == accessUndeclared {
		return r, errorf(http.StatusInternalServerError, "route %s %s declares no access", rt.Method, rt.Pattern)
	}
	p, err := s.authenticate(r)
	if err != nil {
		return r, err
	}
	v := &view{p: p}
	if err := s.authorize(r, rt, v); err != nil {
		return r, err
	}
	return r.WithContext(context.WithValue(r.Context(), viewKey{}, v)), nil
}

// ownerView removes from a device record, for an owner, what belongs to
// the device's past rather than to their ownership: the address of its
// first connection (maybe a previous owner's home) and the counters
// accumulated since it was made. Staff see the whole record.
func ownerView(p Principal, d *store.Device) {
	if p.Role.Staff() {
		return
	}
	d.FirstSeenAddr, d.Counters = "", nil
}
