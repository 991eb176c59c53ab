package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/thingline/thingline/account"
	"github.com/thingline/thingline/store"
)

// Account limits.
const (
	defaultSessionTTL  = time.Hour
	defaultAPITokenTTL = 90 * 24 * time.Hour
	maxAPITokenTTL     = 366 * 24 * time.Hour
	maxTokensPerUser   = 100
	// Failed logins allowed per account and per source address within
	// loginWindow before further attempts are refused with 429.
	loginBurstAccount = 5
	loginBurstAddr    = 20
	loginWindow       = 5 * time.Minute
)

func (s *Server) accountRoutes() []route {
	return []route{
		{Method: "POST", Pattern: "/api/v1/auth/login", Access: Public, h: s.login},
		{Method: "POST", Pattern: "/api/v1/auth/logout", Access: Self, h: s.logout},
		{Method: "GET", Pattern: "/api/v1/users/me", Access: Self, h: s.me},
		{Method: "PUT", Pattern: "/api/v1/users/me/password", Access: Self, h: s.changeOwnPassword},
		{Method: "POST", Pattern: "/api/v1/users", Access: Admin, h: s.createUser},
		{Method: "GET", Pattern: "/api/v1/users", Access: Admin, h: s.listUsers},
		{Method: "GET", Pattern: "/api/v1/users/{username}", Access: Admin, h: s.getUser},
		{Method: "PATCH", Pattern: "/api/v1/users/{username}", Access: Admin, h: s.patchUser},
		{Method: "DELETE", Pattern: "/api/v1/users/{username}", Access: Admin, h: s.deleteUser},
		{Method: "POST", Pattern: "/api/v1/tokens", Access: Self, h: s.createToken},
		{Method: "GET", Pattern: "/api/v1/tokens", Access: Self, h: s.listTokens},
		{Method: "DELETE", Pattern: "/api/v1/tokens/{id}", Access: Self, h: s.revokeToken},
	}
}

// clientAddr is the request's source address without the port: the key
// for per-address login limits. X-Forwarded-For is not trusted (a client
// would pick its own key); a proxy in front must limit on its own.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func validUsername(u string) bool {
	if u == "" || len(u) > 64 || u == "me" {
		return false
	}
	for _, c := range u {
		if !(unicode.IsLetter(c) || unicode.IsDigit(c) || strings.ContainsRune("._-@+", c)) {
			return false
		}
	}
	return true
}

type userJSON struct {
	store.User
	Devices []string `json:"devices,omitempty"`
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if req.Username == "" || req.Password == "" {
		return errorf(http.StatusBadRequest, "username and password are required")
	}
	now := time.Now()
	addr := clientAddr(r)
	for _, l := range []struct {
		lim *account.Limiter
		key string
	}{{s.loginsAddr, addr}, {s.loginsUser, req.Username}} {
		if ok, wait := l.lim.Allow(l.key, now); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
			return errorf(http.StatusTooManyRequests, "too many failed logins: try again in %v", wait.Round(time.Second))
		}
	}
	refuse := func() error {
		s.loginsAddr.Fail(addr, now)
		s.loginsUser.Fail(req.Username, now)
		return errorf(http.StatusUnauthorized, "wrong username or password")
	}
	u, err := s.cfg.Store.GetUserByName(r.Context(), req.Username)
	if errors.Is(err, store.ErrNotFound) {
		account.BurnPasswordCheck(req.Password)
		return refuse()
	}
	if err != nil {
		return err
	}
	if err := account.CheckPassword(u.PasswordHash, req.Password); err != nil {
		if !errors.Is(err, account.ErrMismatch) {
			s.cfg.Logger.Error("api: checking password", "user", u.Username, "err", err)
		}
		return refuse()
	}
	if u.Disabled {
		return refuse()
	}
	s.loginsUser.Reset(req.Username)
	secret, hash, err := account.NewSecret(account.PrefixSession)
	if err != nil {
		return err
	}
	tk, err := s.cfg.Store.CreateToken(r.Context(), store.Token{
		UserID: u.ID, Kind: store.TokenSession, Name: "login from " + clientAddr(r),
		Scopes: []string{account.ScopeRead, account.ScopeWrite}, Hash: hash,
		CreatedAt: now, ExpiresAt: now.Add(s.sessionTTL()),
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"token": secret, "expiresAt": tk.ExpiresAt, "user": u})
	return nil
}

func (s *Server) sessionTTL() time.Duration {
	if s.cfg.SessionTTL > 0 {
		return s.cfg.SessionTTL
	}
	return defaultSessionTTL
}

// accountOf returns the caller's account; the admin token has none.
func (s *Server) accountOf(r *http.Request) (store.User, error) {
	p := principal(r)
	if p.UserID == 0 {
		return store.User{}, errorf(http.StatusBadRequest, "the admin token has no account: log in as a user")
	}
	return s.cfg.Store.GetUser(r.Context(), p.UserID)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	if p.TokenID == 0 {
		return errorf(http.StatusBadRequest, "the admin token cannot be revoked through the API")
	}
	if err := s.cfg.Store.RevokeToken(r.Context(), p.UserID, p.TokenID, time.Now()); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) me(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	if p.UserID == 0 {
		writeJSON(w, http.StatusOK, map[string]any{"username": p.Username, "role": p.Role, "kind": p.Kind})
		return nil
	}
	u, err := s.cfg.Store.GetUser(r.Context(), p.UserID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, u)
	return nil
}

func (s *Server) changeOwnPassword(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Old string `json:"oldPassword"`
		New string `json:"password"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	u, err := s.accountOf(r)
	if err != nil {
		return err
	}
	if err := account.CheckPassword(u.PasswordHash, req.Old); err != nil {
		return errorf(http.StatusForbidden, "oldPassword is wrong")
	}
	if err := s.setPassword(r.Context(), u.ID, req.New); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) setPassword(ctx context.Context, id int64, pw string) error {
	if err := account.CheckPasswordPolicy(pw); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	hash, err := account.HashPassword(pw)
	if err != nil {
		return err
	}
	return s.cfg.Store.SetPassword(ctx, id, hash, time.Now())
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Username string     `json:"username"`
		Password string     `json:"password"`
		Role     store.Role `json:"role"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if !validUsername(req.Username) {
		return errorf(http.StatusBadRequest, "username must be 1 to 64 letters, digits or ._-@+ (and not \"me\")")
	}
	if req.Role == "" {
		req.Role = store.RoleUser
	}
	if !req.Role.Valid() {
		return errorf(http.StatusBadRequest, "role must be admin, operator or user, not %q", req.Role)
	}
	if err := account.CheckPasswordPolicy(req.Password); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	hash, err := account.HashPassword(req.Password)
	if err != nil {
		return err
	}
	u, err := s.cfg.Store.CreateUser(r.Context(), store.User{Username: req.Username, Role: req.Role, PasswordHash: hash})
	if errors.Is(err, store.ErrExists) {
		return errorf(http.StatusConflict, "user %q exists", req.Username)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, u)
	return nil
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) error {
	limit, err := queryInt(r, "limit", defaultLimit, 1, 1000)
	if err != nil {
		return err
	}
	us, err := s.cfg.Store.ListUsers(r.Context(), store.ListOptions{After: r.URL.Query().Get("after"), Limit: int(limit)})
	if err != nil {
		return err
	}
	resp := struct {
		Users []store.User `json:"users"`
		Next  string       `json:"next,omitempty"`
	}{Users: us}
	if resp.Users == nil {
		resp.Users = []store.User{}
	}
	if len(us) == int(limit) {
		resp.Next = us[len(us)-1].Username
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) userByPath(r *http.Request) (store.User, error) {
	name := r.PathValue("username")
	u, err := s.cfg.Store.GetUserByName(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		return u, errorf(http.StatusNotFound, "user %q not found", name)
	}
	return u, err
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request) error {
	u, err := s.userByPath(r)
	if err != nil {
		return err
	}
	out := userJSON{User: u}
	ids, err := s.cfg.Store.OwnedDevices(r.Context(), u.ID)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if d, err := s.cfg.Store.GetDeviceByID(r.Context(), id); err == nil {
			out.Devices = append(out.Devices, d.Name)
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// patchUser disables or enables an account, or sets its password (an
// admin's reset: the user's sessions end).
func (s *Server) patchUser(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Disabled *bool  `json:"disabled"`
		Password string `json:"password"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if req.Disabled == nil && req.Password == "" {
		return errorf(http.StatusBadRequest, "nothing to change: give disabled and/or password")
	}
	u, err := s.userByPath(r)
	if err != nil {
		return err
	}
	if req.Password != "" {
		if err := s.setPassword(r.Context(), u.ID, req.Password); err != nil {
			return err
		}
	}
	if req.Disabled != nil {
		if err := s.cfg.Store.SetDisabled(r.Context(), u.ID, *req.Disabled, time.Now()); err != nil {
			return err
		}
	}
	if u, err = s.cfg.Store.GetUser(r.Context(), u.ID); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, u)
	return nil
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request) error {
	u, err := s.userByPath(r)
	if err != nil {
		return err
	}
	if err := s.releaseAll(r.Context(), u.ID); err != nil {
		return err
	}
	if err := s.cfg.Store.DeleteUser(r.Context(), u.ID); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// releaseAll ends the ownerships of a user being deleted, so that their
// devices can be claimed again.
func (s *Server) releaseAll(ctx context.Context, userID int64) error {
	ids, err := s.cfg.Store.OwnedDevices(ctx, userID)
	if err != nil {
		return err
	}
	pol, err := s.cfg.Store.GetPolicy(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if _, err := s.cfg.Store.Release(ctx, id, userID, 0, pol, time.Now()); err != nil && !errors.Is(err, store.ErrNotOwner) {
			return err
		}
	}
	return nil
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Name      string   `json:"name"`
		Scopes    []string `json:"scopes"`
		ExpiresIn string   `json:"expiresIn"` // a Go duration, e.g. "720h"; default 90 days
	}
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	u, err := s.accountOf(r)
	if err != nil {
		return err
	}
	if len(req.Name) > 100 {
		return errorf(http.StatusBadRequest, "name must have at most 100 bytes")
	}
	if len(req.Scopes) == 0 {
		req.Scopes = []string{account.ScopeRead}
	}
	seen := map[string]bool{}
	for _, sc := range req.Scopes {
		if !account.ValidScope(sc) {
			return errorf(http.StatusBadRequest, "scope %q: want read or write", sc)
		}
		// A token never holds more than the token that made it.
		if !principal(r).has(sc) {
			return errorf(http.StatusForbidden, "this token lacks the %q scope it would grant", sc)
		}
		seen[sc] = true
	}
	scopes := []string{}
	for _, sc := range []string{account.ScopeRead, account.ScopeWrite} {
		if seen[sc] {
			scopes = append(scopes, sc)
		}
	}
	ttl := defaultAPITokenTTL
	if req.ExpiresIn != "" {
		ttl, err = time.ParseDuration(req.ExpiresIn)
		if err != nil || ttl <= 0 || ttl > maxAPITokenTTL {
			return errorf(http.StatusBadRequest, "expiresIn must be a duration between 1s and %v", maxAPITokenTTL)
		}
	}
	existing, err := s.cfg.Store.ListTokens(r.Context(), u.ID)
	if err != nil {
		return err
	}
	live := 0
	now := time.Now()
	for _, t := range existing {
		if t.Kind == store.TokenAPI && t.RevokedAt.IsZero() && t.ExpiresAt.After(now) {
			live++
		}
	}
	if live >= maxTokensPerUser {
		return errorf(http.StatusConflict, "at most %d live API tokens per user: revoke some", maxTokensPerUser)
	}
	secret, hash, err := account.NewSecret(account.PrefixAPI)
	if err != nil {
		return err
	}
	tk, err := s.cfg.Store.CreateToken(r.Context(), store.Token{
		UserID: u.ID, Kind: store.TokenAPI, Name: req.Name, Scopes: scopes, Hash: hash,
		CreatedAt: now, ExpiresAt: now.Add(ttl),
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, struct {
		store.Token
		Secret string `json:"token"`
	}{tk, secret})
	return nil
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) error {
	u, err := s.accountOf(r)
	if err != nil {
		return err
	}
	ts, err := s.cfg.Store.ListTokens(r.Context(), u.ID)
	if err != nil {
		return err
	}
	if ts == nil {
		ts = []store.Token{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": ts})
	return nil
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return errorf(http.StatusBadRequest, "token id must be a positive integer")
	}
	u, err := s.accountOf(r)
	if err != nil {
		return err
	}
	if err := s.cfg.Store.RevokeToken(r.Context(), u.ID, id, time.Now()); errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusNotFound, "token %d not found", id)
	} else if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
