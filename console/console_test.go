package console_test

import (
	"context"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thingline/thingline/api"
	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/console"
	"github.com/thingline/thingline/store/sqlite"
)

// consoleServer is the console in front of a real API on a real SQLite
// store, mounted as the node mounts it.
func consoleServer(t *testing.T) *httptest.Server {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	b := inproc.New()
	t.Cleanup(func() { st.Close(); b.Close() })
	a := api.New(api.Config{Store: st, Bus: b, AdminTokenHash: api.HashToken(adminToken)})
	root := http.NewServeMux()
	root.Handle("/", a)
	c := console.New(console.Config{API: a})
	root.Handle("/console/", c)
	root.Handle("GET /{$}", c)
	srv := httptest.NewServer(root)
	t.Cleanup(srv.Close)
	return srv
}

type client struct {
	t    *testing.T
	base string
	c    *http.Client
	csrf string
}

func newClient(t *testing.T, base string) *client {
	return &client{t: t, base: base, c: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (c *client) do(method, path, body string, hdr map[string]string) (*http.Response, string) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.base+path, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if req.Header.Get("Content-Type") == "" && body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.c.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func form(v url.Values) (string, map[string]string) {
	return v.Encode(), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
}

// login signs in with the token and keeps the cookies by hand (no jar, so
// the test sees exactly what is sent).
func (c *client) login(token string) *http.Response {
	body, hdr := form(url.Values{"token": {token}, "next": {"/console/devices"}})
	resp, _ := c.do("POST", "/console/login", body, hdr)
	var cookies []string
	for _, k := range resp.Cookies() {
		cookies = append(cookies, k.Name+"="+k.Value)
		if k.Name == "thingline_csrf" {
			c.csrf = k.Value
		}
	}
	if len(cookies) > 0 {
		jar := strings.Join(cookies, "; ")
		c.c.Transport = cookieTransport(jar)
	}
	return resp
}

type cookieTransport string

func (ct cookieTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Cookie", string(ct))
	return http.DefaultTransport.RoundTrip(r)
}

func TestSignInAndProxy(t *testing.T) {
	srv := consoleServer(t)
	c := newClient(t, srv.URL)

	// Signed out: pages go to the sign-in, data calls are refused.
	resp, _ := c.do("GET", "/", "", nil)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/console/" {
		t.Errorf("/ = %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, _ = c.do("GET", "/console/devices?q=x", "", nil)
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/console/login?next="+url.QueryEscape("/console/devices?q=x") {
		t.Errorf("signed-out page = %d to %q", resp.StatusCode, loc)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP = %q", csp)
	}
	if resp, _ = c.do("GET", "/console/api/v1/devices", "", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("signed-out data call = %d", resp.StatusCode)
	}
	resp, body := c.do("GET", "/console/login", "", nil)
	if resp.StatusCode != 200 || !strings.Contains(body, `<label for="username">`) || !strings.Contains(body, `autocomplete="current-password"`) {
		t.Errorf("login page = %d %s", resp.StatusCode, body)
	}

	// A wrong token or password makes no session.
	if resp := c.login("wrong"); resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
		t.Errorf("wrong token: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	b, hdr := form(url.Values{"username": {"ann"}, "password": {"pw"}})
	if resp, body := c.do("POST", "/console/login", b, hdr); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `role="alert"`) || len(resp.Cookies()) != 0 {
		t.Errorf("password sign-in of an unknown user: %d %s", resp.StatusCode, body)
	}
	// A sign-in posted from another site is refused before anything.
	b, hdr = form(url.Values{"token": {adminToken}})
	hdr["Sec-Fetch-Site"] = "cross-site"
	if resp, _ := c.do("POST", "/console/login", b, hdr); resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Errorf("cross-site sign-in = %d", resp.StatusCode)
	}

	resp = c.login(adminToken)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/console/devices" {
		t.Fatalf("sign-in = %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, k := range resp.Cookies() {
		if !k.HttpOnly || k.SameSite != http.SameSiteStrictMode || k.Path != "/console/" || k.MaxAge <= 0 {
			t.Errorf("cookie %s = %+v; want HttpOnly, SameSite=Strict, Path=/console/, bounded", k.Name, k)
		}
	}
	if c.csrf == "" {
		t.Fatal("no CSRF cookie")
	}

	// Pages render for the signed-in user, with the CSRF token for the
	// script and no data of their own.
	for _, p := range []string{"/console/", "/console/devices", "/console/devices/SN%2F1", "/console/factory"} {
		resp, body := c.do("GET", p, "", nil)
		if resp.StatusCode != 200 || !strings.Contains(body, `<meta name="csrf-token" content="`+c.csrf+`">`) {
			t.Errorf("%s = %d", p, resp.StatusCode)
		}
	}
	if resp, body := c.do("GET", "/console/devices/SN%2F1", "", nil); !strings.Contains(body, `data-param="SN/1"`) {
		t.Errorf("device page param: %d %s", resp.StatusCode, body)
	}
	if resp, _ := c.do("GET", "/console/nope", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown page = %d", resp.StatusCode)
	}

	// Data calls are the API's own answers.
	if resp, body := c.do("GET", "/console/api/v1/devices?count=true", "", nil); resp.StatusCode != 200 || !strings.Contains(body, `"total":0`) {
		t.Errorf("devices through the console = %d %s", resp.StatusCode, body)
	}
	if resp, body := c.do("GET", "/console/api/v1/devices/none", "", nil); resp.StatusCode != 404 || !strings.Contains(body, "not found") {
		t.Errorf("missing device through the console = %d %s", resp.StatusCode, body)
	}
	if resp, body := c.do("GET", "/console/api/metrics", "", nil); resp.StatusCode != 200 || !strings.Contains(body, "# HELP") {
		t.Errorf("metrics through the console = %d", resp.StatusCode)
	}
	// Escaped path segments reach the API as they were sent.
	if resp, body := c.do("GET", "/console/api/v1/devices/a%2Fb", "", nil); resp.StatusCode != 404 || !strings.Contains(body, `\"a/b\"`) {
		t.Errorf("escaped device name through the console = %d %s", resp.StatusCode, body)
	}
	if resp, _ := c.do("GET", "/console/api/other", "", nil); resp.StatusCode != 404 {
		t.Errorf("unknown data path = %d", resp.StatusCode)
	}

	// State changes need the CSRF token and a same-origin request.
	rev := `{"serial":"abc","reason":"test"}`
	if resp, _ := c.do("POST", "/console/api/v1/revocations", rev, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST without CSRF token = %d", resp.StatusCode)
	}
	if resp, _ := c.do("POST", "/console/api/v1/revocations", rev, map[string]string{"X-CSRF-Token": "guess"}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST with a wrong CSRF token = %d", resp.StatusCode)
	}
	if resp, _ := c.do("POST", "/console/api/v1/revocations", rev, map[string]string{"X-CSRF-Token": c.csrf, "Sec-Fetch-Site": "cross-site"}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site POST = %d", resp.StatusCode)
	}
	if resp, body := c.do("POST", "/console/api/v1/revocations", rev, map[string]string{"X-CSRF-Token": c.csrf}); resp.StatusCode != http.StatusCreated {
		t.Errorf("POST with the CSRF token = %d %s", resp.StatusCode, body)
	}

	// A session whose token the API no longer accepts gets the API's 401.
	stale := newClient(t, srv.URL)
	stale.c.Transport = cookieTransport("thingline_session=revoked; thingline_csrf=x")
	if resp, _ := stale.do("GET", "/console/api/v1/devices", "", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("stale session data call = %d", resp.StatusCode)
	}

	// Sign-in never redirects out of the console.
	for _, next := range []string{"//evil.example/", "https://evil.example/", "/console/\\evil", "/api/v1/devices"} {
		b, hdr := form(url.Values{"token": {adminToken}, "next": {next}})
		if resp, _ := c.do("POST", "/console/login", b, hdr); resp.Header.Get("Location") != "/console/" {
			t.Errorf("next=%q redirected to %q", next, resp.Header.Get("Location"))
		}
	}

	// Sign-out needs the CSRF token, then clears both cookies.
	b, hdr = form(url.Values{})
	if resp, _ := c.do("POST", "/console/logout", b, hdr); resp.StatusCode != http.StatusForbidden {
		t.Errorf("sign-out without CSRF token = %d", resp.StatusCode)
	}
	b, hdr = form(url.Values{"csrf": {c.csrf}})
	resp, _ = c.do("POST", "/console/logout", b, hdr)
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 2 {
		t.Fatalf("sign-out = %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	for _, k := range resp.Cookies() {
		if k.MaxAge >= 0 || k.Value != "" {
			t.Errorf("sign-out left cookie %+v", k)
		}
	}
}

// TestAssetBudget keeps the console's own JavaScript and CSS under 150 KB
// together, and checks they are served with a long cache only when
// versioned.
func TestAssetBudget(t *testing.T) {
	total := 0
	err := fs.WalkDir(console.Static, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if ext := filepath.Ext(p); ext == ".js" || ext == ".css" {
			b, err := fs.ReadFile(console.Static, p)
			total += len(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if total == 0 || total > 150<<10 {
		t.Errorf("console JS+CSS = %d bytes; budget 150 KB", total)
	}
	t.Logf("console JS+CSS: %d bytes", total)

	srv := consoleServer(t)
	c := newClient(t, srv.URL)
	resp, body := c.do("GET", "/console/static/console.js", "", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "no-cache" || !strings.Contains(body, "use strict") {
		t.Errorf("unversioned asset = %d %q", resp.StatusCode, resp.Header.Get("Cache-Control"))
	}
}
