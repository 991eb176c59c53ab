// Package console is thingline's web console: server-rendered page shells
// (html/template) filled by plain JavaScript from the REST API, with the
// assets embedded in the binary and no build step.
//
// The console holds no data of its own and decides nothing about who may
// see what. Every piece of data a page shows is fetched by the browser
// through /console/api/…, which hands the request, unchanged but for the
// bearer token taken from the session cookie, to the API's own handler.
// So a user sees in the console exactly what the API would give that user,
// and nothing else.
package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Static is the console's JavaScript and CSS, as served under
// /console/static/.
var Static, _ = fs.Sub(staticFS, "static")

// Prefix is where the console is mounted.
const Prefix = "/console/"

// Config configures the console.
type Config struct {
	// API is the REST API's handler; data calls and logins go through it.
	API    http.Handler
	Logger *slog.Logger
}

// Server serves the console.
type Server struct {
	cfg   Config
	mux   *http.ServeMux
	pages *template.Template
	// assetVersion is a digest of the embedded assets, appended to their
	// URLs so that a browser may cache them for long and still never run
	// a stale script against a newer server.
	assetVersion string
}

// view is one page of the console's navigation.
type view struct {
	Path, Title, Template string
	// For says who the page is for: "" everyone, "staff" admins and
	// operators, "admin" admins, "account" callers with an account (not
	// the admin token). It only decides what the navigation offers and
	// spares a page of refusals: the API alone decides what data anyone
	// gets.
	For string
}

// views are the console's pages, in navigation order.
var views = []view{
	{"/console/", "Overview", "overview", ""},
	{"/console/devices", "Devices", "devices", ""},
	{"/console/alarms", "Alarms", "alarms", "staff"},
	{"/console/ota", "Firmware", "ota", "staff"},
	{"/console/factory", "Factory", "factory", "staff"},
	{"/console/users", "Users", "users", "admin"},
	{"/console/account", "Account", "account", "account"},
}

// me is the caller as the API sees them.
type me struct {
	ID       int64  `json:"id"`
	Username string `json:"username"`
	Role     string `json:"role"`
}

func (m me) may(forWhom string) bool {
	switch forWhom {
	case "staff":
		return m.Role == "admin" || m.Role == "operator"
	case "admin":
		return m.Role == "admin"
	case "account":
		return m.ID != 0
	}
	return true
}

// New returns the console's handler, to be mounted at Prefix (and, for the
// redirect from "/", at the root).
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), assetVersion: assetDigest()}
	s.pages = template.Must(template.New("").Funcs(template.FuncMap{
		"asset": func(name string) string { return Prefix + "static/" + name + "?v=" + s.assetVersion },
	}).ParseFS(templateFS, "templates/*.html"))

	files := http.StripPrefix(Prefix+"static/", http.FileServerFS(Static))
	s.mux.Handle("GET "+Prefix+"static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("v") == s.assetVersion {
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			w.Header().Set("Cache-Control", "no-cache")
		}
		files.ServeHTTP(w, r)
	}))
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix, http.StatusFound)
	})
	s.mux.HandleFunc("GET /console", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
	})
	s.mux.HandleFunc("GET "+Prefix+"login", s.loginPage)
	s.mux.HandleFunc("POST "+Prefix+"login", s.login)
	s.mux.HandleFunc("POST "+Prefix+"logout", s.logout)
	s.mux.HandleFunc(Prefix+"api/", s.proxy)
	for _, v := range views {
		pattern := "GET " + v.Path
		if strings.HasSuffix(v.Path, "/") {
			pattern += "{$}"
		}
		s.mux.Handle(pattern, s.page(v))
	}
	s.mux.Handle("GET "+Prefix+"devices/{name}", s.page(view{Template: "device", Title: "Device"}))
	s.mux.Handle("GET "+Prefix+"factory/units/{sn}", s.page(view{Template: "unit", Title: "Unit", For: "staff"}))
	s.mux.HandleFunc(Prefix, func(w http.ResponseWriter, r *http.Request) {
		s.render(w, r, http.StatusNotFound, "notfound", pageData{Title: "Not found"})
	})
	return s
}

// ServeHTTP implements http.Handler, with the headers every answer of the
// console carries: no inline script may run, no other origin may frame it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	s.mux.ServeHTTP(w, r)
}

// pageData is what every page template receives.
type pageData struct {
	Title   string
	View    string // the template of the page, which the script fills
	Active  string // the view the navigation marks as current
	Nav     []view
	CSRF    string
	User    string // who is signed in, and their role
	Role    string
	Account bool   // the caller has an account (not the admin token)
	Param   string // the device name or unit SN of a detail page
	Error   string
	Next    string
}

// page serves a view's shell to a signed-in user; others go to the login.
// The API says who the session is (GET /api/v1/users/me) on every page, so
// a session the API no longer accepts goes back to the sign-in at once.
func (s *Server) page(v view) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		login := Prefix + "login?next=" + urlQueryEscape(r.URL.RequestURI())
		sess, ok := session(r)
		if !ok {
			http.Redirect(w, r, login, http.StatusSeeOther)
			return
		}
		code, body := s.apiCall(r, "GET", "/api/v1/users/me", sess.token, nil)
		var who me
		if code != http.StatusOK || json.Unmarshal(body, &who) != nil {
			if code == http.StatusUnauthorized {
				clearSession(w, r)
				http.Redirect(w, r, login+"&expired=1", http.StatusSeeOther)
				return
			}
			s.render(w, r, http.StatusBadGateway, "notfound", pageData{Title: "The API is not answering", Error: "The API could not say who you are; try again."})
			return
		}
		d := pageData{Title: v.Title, View: v.Template, Active: v.Template, CSRF: sess.csrf, User: who.Username, Role: who.Role, Account: who.ID != 0}
		for _, nv := range views {
			if who.may(nv.For) {
				d.Nav = append(d.Nav, nv)
			}
		}
		if !who.may(v.For) {
			d.View, d.Title = "forbidden", "Not for your role"
			s.render(w, r, http.StatusForbidden, "forbidden", d)
			return
		}
		if n := r.PathValue("name"); n != "" {
			d.Param, d.Title = n, n
		}
		if sn := r.PathValue("sn"); sn != "" {
			d.Param, d.Title = sn, sn
		}
		switch v.Template {
		case "device":
			d.Active = "devices"
		case "unit":
			d.Active = "factory"
		}
		s.render(w, r, http.StatusOK, v.Template, d)
	})
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, tmpl string, d pageData) {
	var buf bytes.Buffer
	if err := s.pages.ExecuteTemplate(&buf, tmpl, d); err != nil {
		s.cfg.Logger.Error("console: rendering", "template", tmpl, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// assetDigest is a short digest of every embedded asset.
func assetDigest() string {
	h := sha256.New()
	fs.WalkDir(staticFS, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := staticFS.ReadFile(p)
		h.Write([]byte(p))
		h.Write(b)
		return err
	})
	return hex.EncodeToString(h.Sum(nil)[:6])
}
