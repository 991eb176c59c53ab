package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/account"
	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
)

// The callers every route is tried with.
const (
	callerAnon       = "anonymous"
	callerAdminToken = "admin-token"
	callerAdmin      = "admin"
	callerOperator   = "operator"
	callerOwner      = "owner"    // a user who owns the device of the request
	callerStranger   = "stranger" // a user who owns nothing
)

var callers = []string{callerAnon, callerAdminToken, callerAdmin, callerOperator, callerOwner, callerStranger}

// Outcomes as the caller sees them.
const (
	allowed   = "allowed"    // the handler ran (whatever it answered)
	unauth    = "401"        // no valid token
	forbidden = "403"        // role or scope refused
	hidden    = "device-404" // the device is not the caller's: as if it did not exist
)

// expected is the rule of access.go written out as a table, independently
// of the code that enforces it.
var expected = map[Access]map[string]string{
	Public:      {callerAnon: allowed, callerAdminToken: allowed, callerAdmin: allowed, callerOperator: allowed, callerOwner: allowed, callerStranger: allowed},
	Self:        {callerAnon: unauth, callerAdminToken: allowed, callerAdmin: allowed, callerOperator: allowed, callerOwner: allowed, callerStranger: allowed},
	Staff:       {callerAnon: unauth, callerAdminToken: allowed, callerAdmin: allowed, callerOperator: allowed, callerOwner: forbidden, callerStranger: forbidden},
	Admin:       {callerAnon: unauth, callerAdminToken: allowed, callerAdmin: allowed, callerOperator: forbidden, callerOwner: forbidden, callerStranger: forbidden},
	DeviceState: {callerAnon: unauth, callerAdminToken: allowed, callerAdmin: allowed, callerOperator: allowed, callerOwner: allowed, callerStranger: hidden},
	DeviceData:  {callerAnon: unauth, callerAdminToken: allowed, callerAdmin: allowed, callerOperator: forbidden, callerOwner: allowed, callerStranger: hidden},
}

const testAdminToken = "test-admin-token"

type accessFixture struct {
	st     store.Store
	srv    *httptest.Server
	tokens map[string]string
	device string
}

// newAccessFixture starts the API on a fresh SQLite store with one device
// owned by "owner", and a session token for each caller.
func newAccessFixture(t *testing.T) *accessFixture {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "thingline.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &accessFixture{st: st, tokens: map[string]string{callerAdminToken: testAdminToken}, device: "SN-000001"}
	dev, _, _, err := st.EnsureDevice(ctx, store.Device{Name: f.device, Profile: "default"}, store.Credential{Serial: "1", SHA256: "aa"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		role store.Role
	}{{callerAdmin, store.RoleAdmin}, {callerOperator, store.RoleOperator}, {callerOwner, store.RoleUser}, {callerStranger, store.RoleUser}} {
		u, err := st.CreateUser(ctx, store.User{Username: c.name, Role: c.role, PasswordHash: "$argon2id$unused"})
		if err != nil {
			t.Fatal(err)
		}
		secret, hash, err := account.NewSecret(account.PrefixSession)
		if err != nil {
			t.Fatal(err)
		}
		_, err = st.CreateToken(ctx, store.Token{UserID: u.ID, Kind: store.TokenSession, Scopes: []string{account.ScopeRead, account.ScopeWrite},
			Hash: hash, ExpiresAt: time.Now().Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		f.tokens[c.name] = secret
		if c.name == callerOwner {
			if err := st.PutClaimRequest(ctx, store.ClaimRequest{DeviceID: dev.ID, DeviceName: dev.Name, Kind: store.ClaimDevice,
				SecretHash: account.HashSecret("s"), ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := st.Claim(ctx, store.Claim{DeviceID: dev.ID, DeviceName: dev.Name, UserID: u.ID, Kind: store.ClaimDevice,
				SecretHash: account.HashSecret("s"), At: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	f.srv = httptest.NewServer(New(Config{Store: st, Bus: inproc.New(), AdminTokenHash: HashToken(testAdminToken)}))
	t.Cleanup(f.srv.Close)
	return f
}

// call tries one documented operation as one caller and classifies the
// answer.
func (f *accessFixture) call(t *testing.T, method, path, caller string) (string, int, string) {
	t.Helper()
	p := strings.NewReplacer("{name}", f.device, "{username}", callerStranger, "{id}", "1").Replace(path)
	var body io.Reader
	if method != "GET" && method != "DELETE" {
		body = strings.NewReader("{}")
	}
	if !strings.Contains(path, "{name}") {
		p += "?device=" + f.device // routes naming their device in the query
	}
	req, err := http.NewRequest(method, f.srv.URL+p, body)
	if err != nil {
		t.Fatal(err)
	}
	if tok := f.tokens[caller]; tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return allowed, resp.StatusCode, "" // an endless stream: its headers are the answer
	}
	b, _ := io.ReadAll(resp.Body)
	switch {
	case resp.StatusCode == http.StatusUnauthorized && !strings.HasSuffix(path, "/auth/login"):
		return unauth, resp.StatusCode, string(b)
	case resp.StatusCode == http.StatusForbidden && !strings.HasSuffix(path, "/password"):
		return forbidden, resp.StatusCode, string(b)
	case resp.StatusCode == http.StatusNotFound && strings.Contains(string(b), "device \\\""+f.device+"\\\" not found"):
		return hidden, resp.StatusCode, string(b)
	case resp.StatusCode == http.StatusInternalServerError:
		t.Errorf("%s %s as %s: 500: %s", method, path, caller, b)
	}
	return allowed, resp.StatusCode, string(b)
}

// TestRouteAccess walks every operation of the OpenAPI document with every
// role and checks that exactly the callers its Access allows get through;
// a route that declares no access fails here.
func TestRouteAccess(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openapiJSON, &doc); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Bus: inproc.New()})
	access := map[string]Access{}
	for _, rt := range s.routes {
		if rt.Access == accessUndeclared || expected[rt.Access] == nil {
			t.Errorf("route %s %s declares no access: give it one (see access.go)", rt.Method, rt.Pattern)
		}
		access[rt.Method+" "+rt.Pattern] = rt.Access
	}
	var ops []string
	for p, ms := range doc.Paths {
		for m := range ms {
			ops = append(ops, strings.ToUpper(m)+" "+p)
		}
	}
	sort.Strings(ops)
	shared := newAccessFixture(t) // for reads; every write gets a fresh one per caller
	for _, op := range ops {
		a, ok := access[op]
		if !ok {
			continue // TestOpenAPIMatchesRoutes reports it
		}
		method, path, _ := strings.Cut(op, " ")
		t.Run(strings.ReplaceAll(op, "/", "_"), func(t *testing.T) {
			for _, c := range callers {
				f := shared
				if method != "GET" {
					f = newAccessFixture(t)
				}
				got, code, body := f.call(t, method, path, c)
				if want := expected[a][c]; got != want {
					t.Errorf("%s (%s) as %s: %s (%d %s), want %s", op, a, c, got, code, strings.TrimSpace(body), want)
				}
			}
		})
	}
}

// TestTokenScopes: a read-only API token reads but does not write.
func TestTokenScopes(t *testing.T) {
	f := newAccessFixture(t)
	do := func(method, path, tok, body string) (int, string) {
		req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := do("POST", "/api/v1/tokens", f.tokens[callerOwner], `{"name":"ro","scopes":["read"],"expiresIn":"1h"}`)
	if code != http.StatusCreated {
		t.Fatalf("creating token: %d %s", code, body)
	}
	var tk struct {
		ID     int64    `json:"id"`
		Token  string   `json:"token"`
		Scopes []string `json:"scopes"`
	}
	json.Unmarshal([]byte(body), &tk)
	if !strings.HasPrefix(tk.Token, account.PrefixAPI) || len(tk.Scopes) != 1 {
		t.Fatalf("token answer %s", body)
	}
	if code, body := do("GET", "/api/v1/devices/"+f.device, tk.Token, ""); code != 200 {
		t.Errorf("read with read token: %d %s", code, body)
	}
	if code, body := do("POST", "/api/v1/devices/"+f.device+"/attributes", tk.Token, `{"a":1}`); code != http.StatusForbidden {
		t.Errorf("write with read token: %d %s, want 403", code, body)
	}
	// A read-only token cannot mint a writing one.
	if code, _ := do("POST", "/api/v1/tokens", tk.Token, `{"scopes":["write"]}`); code != http.StatusForbidden {
		t.Errorf("read token made a token: %d", code)
	}
	if code, body := do("DELETE", "/api/v1/tokens/"+itoa(tk.ID), f.tokens[callerOwner], ""); code != http.StatusNoContent {
		t.Fatalf("revoking: %d %s", code, body)
	}
	if code, _ := do("GET", "/api/v1/devices/"+f.device, tk.Token, ""); code != http.StatusUnauthorized {
		t.Errorf("revoked token: %d, want 401", code)
	}
	// Another user cannot revoke it (nor learn it exists).
	if code, _ := do("DELETE", "/api/v1/tokens/"+itoa(tk.ID), f.tokens[callerStranger], ""); code != http.StatusNotFound {
		t.Errorf("stranger revoking: %d, want 404", code)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestStreamFilter: a live stream shows an owner their device from their
// epoch on, and stops at once when the device changes hands.
func TestStreamFilter(t *testing.T) {
	f := newAccessFixture(t)
	ctx := context.Background()
	s := f.srv.Config.Handler.(*Server)
	req := func(caller string) *http.Request {
		r := httptest.NewRequest("GET", "/api/v1/devices", nil)
		r.Header.Set("Authorization", "Bearer "+f.tokens[caller])
		r, err := s.withView(r, route{Method: "GET", Pattern: "/api/v1/devices", Access: Self})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	dev, err := f.st.GetDevice(ctx, f.device)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := f.st.CurrentOwner(ctx, dev.ID, dev.Name)
	if err != nil {
		t.Fatal(err)
	}
	since := ep.Since.UnixMilli()
	owner, stranger, staff := s.streamFilter(req(callerOwner)), s.streamFilter(req(callerStranger)), s.streamFilter(req(callerOperator))
	if !owner(f.device, since) || owner(f.device, since-1) || owner("SN-OTHER", since) {
		t.Error("owner's filter: wrong bounds")
	}
	if stranger(f.device, since) || !staff(f.device, 0) {
		t.Error("stranger sees the device, or staff does not")
	}
	// The device is reset and claimed by the stranger: the owner's filter
	// must refuse at once, though it cached its answer.
	su, _ := f.st.GetUserByName(ctx, callerStranger)
	f.st.PutClaimRequest(ctx, store.ClaimRequest{DeviceID: dev.ID, DeviceName: dev.Name, Kind: store.ClaimDevice,
		SecretHash: account.HashSecret("r"), Reset: true, ExpiresAt: time.Now().Add(time.Minute)})
	if _, _, err := f.st.Claim(ctx, store.Claim{DeviceID: dev.ID, DeviceName: dev.Name, UserID: su.ID, Kind: store.ClaimDevice,
		SecretHash: account.HashSecret("r"), Policy: store.OwnershipPolicy{OnReset: store.PolicyTransfer}, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	s.ownersChanged(ctx, f.device, store.OutcomeTransferred)
	now := time.Now().UnixMilli() + 1
	if owner(f.device, now) {
		t.Error("the previous owner's stream still shows the device")
	}
	if !s.streamFilter(req(callerStranger))(f.device, now) {
		t.Error("the new owner's stream does not show the device")
	}
}

// TestOperatorStreamHasNoData: an operator's live stream carries device
// state but no telemetry, and asking for telemetry is refused; the owner's
// carries both.
func TestOperatorStreamHasNoData(t *testing.T) {
	f := newAccessFixture(t)
	s := f.srv.Config.Handler.(*Server)
	if code, _ := f.req(t, "GET", "/api/v1/stream?types=telemetry", f.tokens[callerOperator], ""); code != http.StatusForbidden {
		t.Errorf("operator asking for telemetry: %d, want 403", code)
	}
	read := func(caller string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/api/v1/stream?device="+f.device, nil)
		req.Header.Set("Authorization", "Bearer "+f.tokens[caller])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		if _, err := br.ReadString('\n'); err != nil { // the opening comment: subscribed
			t.Fatal(err)
		}
		now := time.Now().UnixMilli()
		s.cfg.Bus.Publish(ctx, bus.TopicTelemetry, []byte(fmt.Sprintf(`{"device":%q,"ts":%d,"values":{"t":1}}`, f.device, now)))
		s.cfg.Bus.Publish(ctx, bus.TopicState, []byte(fmt.Sprintf(`{"device":%q,"ts":%d,"online":true}`, f.device, now)))
		var got strings.Builder
		for !strings.Contains(got.String(), "event: state") {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%s's stream ended before the state notice: %v\n%s", caller, err, got.String())
			}
			got.WriteString(line)
		}
		return got.String()
	}
	if out := read(callerOperator); strings.Contains(out, "event: telemetry") {
		t.Errorf("operator's stream carries telemetry:\n%s", out)
	}
	if out := read(callerOwner); !strings.Contains(out, "event: telemetry") {
		t.Errorf("owner's stream lacks telemetry:\n%s", out)
	}
}

// TestOwnerViewOfRecord: an owner's view of the device record leaves out
// its past (first address, counters); staff see them.
func TestOwnerViewOfRecord(t *testing.T) {
	f := newAccessFixture(t)
	ctx := context.Background()
	d, _ := f.st.GetDevice(ctx, f.device)
	if err := f.st.SetOnline(ctx, d.ID, "n", true, "198.51.100.7:4000", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := f.st.AddCounter(ctx, d.ID, "rejected", 3); err != nil {
		t.Fatal(err)
	}
	_, owner := f.req(t, "GET", "/api/v1/devices/"+f.device, f.tokens[callerOwner], "")
	_, list := f.req(t, "GET", "/api/v1/devices", f.tokens[callerOwner], "")
	_, staff := f.req(t, "GET", "/api/v1/devices/"+f.device, f.tokens[callerOperator], "")
	for _, b := range []string{owner, list} {
		if strings.Contains(b, "firstSeenAddr") || strings.Contains(b, "counters") {
			t.Errorf("owner's view shows the device's past: %s", b)
		}
	}
	if !strings.Contains(staff, "counters") {
		t.Errorf("staff's view lacks the counters: %s", staff)
	}
}
