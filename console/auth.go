package console

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"time"
)

// Cookies. The session cookie holds the API bearer token itself: a node
// keeps no session table, so any node of a cluster serves any session, and
// the API decides on every request whether the token is still good. It is
// HttpOnly (no script reads it) and SameSite=Strict (no other site's page
// sends it). The CSRF cookie is a random value that every state-changing
// call must repeat in a header or form field, which a page of another
// origin cannot read.
const (
	sessionCookie = "thingline_session"
	csrfCookie    = "thingline_csrf"
	csrfHeader    = "X-CSRF-Token"
	sessionTTL    = 12 * time.Hour
)

type sess struct {
	token, csrf string
}

// session returns the caller's session, if the cookies hold one.
func session(r *http.Request) (sess, bool) {
	t, err := r.Cookie(sessionCookie)
	if err != nil || t.Value == "" {
		return sess{}, false
	}
	c, err := r.Cookie(csrfCookie)
	if err != nil || c.Value == "" {
		return sess{}, false
	}
	return sess{token: t.Value, csrf: c.Value}, true
}

// secure tells whether the browser reached us over HTTPS, directly or
// through a proxy that says so; cookies are then marked Secure.
func secure(r *http.Request) bool {
	return r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

func setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: Prefix, MaxAge: maxAge,
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode,
	})
}

// crossOrigin refuses state-changing requests that a browser marks as
// coming from another origin (Sec-Fetch-Site, Origin): the login form
// cannot be posted from another site to sign a victim into an attacker's
// account, and no other site can drive the API through a user's cookie.
var crossOrigin = http.NewCrossOriginProtection()

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

// safeNext keeps a post-login redirect inside the console.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.HasPrefix(next, "//") || strings.Contains(next, "\\") {
		return Prefix
	}
	return next
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := session(r); ok && r.URL.Query().Get("expired") == "" {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	s.render(w, r, http.StatusOK, "login", pageData{Title: "Sign in", Next: safeNext(r.URL.Query().Get("next"))})
}

// apiCall runs one request through the API handler in-process and returns
// its status and body.
func (s *Server) apiCall(r *http.Request, method, path, token string, body []byte) (int, []byte) {
	req := httptest.NewRequestWithContext(r.Context(), method, path, bytes.NewReader(body))
	req.RemoteAddr = r.RemoteAddr
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	s.cfg.API.ServeHTTP(rec, req)
	b, _ := io.ReadAll(io.LimitReader(rec.Result().Body, 1<<20))
	return rec.Code, b
}

// errLogin is what a failed sign-in says; it never tells which of the
// name or the password was wrong.
var errLogin = errors.New("wrong user name or password")

// signIn turns the form into a bearer token: a password login through
// the API's accounts, or an API token checked against the API.
// The session lasts as long as the API's token does (at most sessionTTL).
func (s *Server) signIn(r *http.Request) (string, time.Duration, error) {
	if tok := strings.TrimSpace(r.PostFormValue("token")); tok != "" {
		code, _ := s.apiCall(r, "GET", "/api/v1/users/me", tok, nil)
		switch code {
		case http.StatusOK:
			return tok, sessionTTL, nil
		case http.StatusUnauthorized, http.StatusForbidden:
			return "", 0, errors.New("the API refused this token")
		}
		return "", 0, errors.New("the API could not check the token; try again")
	}
	user, pass := r.PostFormValue("username"), r.PostFormValue("password")
	if user == "" || pass == "" {
		return "", 0, errors.New("enter a user name and password, or an API token")
	}
	body, _ := json.Marshal(map[string]string{"username": user, "password": pass})
	code, resp := s.apiCall(r, "POST", "/api/v1/auth/login", "", body)
	switch {
	case code == http.StatusOK || code == http.StatusCreated:
		var out struct {
			Token     string    `json:"token"`
			ExpiresAt time.Time `json:"expiresAt"`
		}
		if json.Unmarshal(resp, &out) != nil || out.Token == "" {
			return "", 0, errors.New("the API answered the login without a token")
		}
		ttl := sessionTTL
		if d := time.Until(out.ExpiresAt); !out.ExpiresAt.IsZero() && d < ttl {
			ttl = d
		}
		return out.Token, ttl, nil
	case code == http.StatusTooManyRequests:
		return "", 0, errors.New("too many failed attempts; wait a minute and try again")
	case code >= 500:
		return "", 0, errors.New("the server could not sign you in; try again")
	}
	return "", 0, errLogin
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	if err := crossOrigin.Check(r); err != nil {
		http.Error(w, "cross-origin sign-in refused", http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	next := safeNext(r.PostFormValue("next"))
	tok, ttl, err := s.signIn(r)
	if err != nil {
		s.render(w, r, http.StatusUnauthorized, "login", pageData{Title: "Sign in", Error: err.Error(), Next: next})
		return
	}
	var b [24]byte
	rand.Read(b[:])
	age := max(int(ttl/time.Second), 1)
	setCookie(w, r, sessionCookie, tok, age)
	setCookie(w, r, csrfCookie, hex.EncodeToString(b[:]), age)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if err := crossOrigin.Check(r); err != nil {
		http.Error(w, "cross-origin sign-out refused", http.StatusForbidden)
		return
	}
	if sess, ok := session(r); ok {
		if !sameToken(r.PostFormValue("csrf"), sess.csrf) {
			http.Error(w, "bad CSRF token", http.StatusForbidden)
			return
		}
		// Ends the token's life at the API too when it knows how
		// (accounts); an API token simply stays valid.
		s.apiCall(r, "POST", "/api/v1/auth/logout", sess.token, []byte("{}"))
	}
	clearSession(w, r)
	http.Redirect(w, r, Prefix+"login", http.StatusSeeOther)
}

func clearSession(w http.ResponseWriter, r *http.Request) {
	setCookie(w, r, sessionCookie, "", -1)
	setCookie(w, r, csrfCookie, "", -1)
}

func sameToken(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func jsonError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// proxy hands /console/api/v1/… to the API as /api/v1/… (and
// /console/api/metrics as /metrics) with the session's bearer token. The
// response, status and streaming included, is the API's own.
func (s *Server) proxy(w http.ResponseWriter, r *http.Request) {
	sess, ok := session(r)
	if !ok {
		jsonError(w, http.StatusUnauthorized, "not signed in")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if err := crossOrigin.Check(r); err != nil || !sameToken(r.Header.Get(csrfHeader), sess.csrf) {
			jsonError(w, http.StatusForbidden, "missing or bad CSRF token")
			return
		}
	}
	rest := strings.TrimPrefix(r.URL.Path, Prefix+"api")
	var path string
	switch {
	case strings.HasPrefix(rest, "/v1/"):
		path = "/api" + rest
	case rest == "/metrics":
		path = "/metrics"
	default:
		jsonError(w, http.StatusNotFound, "no such route")
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = path
	if r.URL.RawPath != "" && path != "/metrics" {
		r2.URL.RawPath = "/api" + strings.TrimPrefix(r.URL.RawPath, Prefix+"api")
	}
	r2.RequestURI = r2.URL.RequestURI()
	r2.Header.Del("Cookie")
	r2.Header.Del(csrfHeader)
	r2.Header.Set("Authorization", "Bearer "+sess.token)
	s.cfg.API.ServeHTTP(w, r2)
}
