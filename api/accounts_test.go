package api

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// req is one REST call against the fixture's server.
func (f *accessFixture) req(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	r, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (f *accessFixture) login(t *testing.T, user, pw string) (int, string) {
	t.Helper()
	code, body := f.req(t, "POST", "/api/v1/auth/login", "", `{"username":"`+user+`","password":"`+pw+`"}`)
	var v struct {
		Token string `json:"token"`
	}
	json.Unmarshal([]byte(body), &v)
	return code, v.Token
}

// TestAccountLifecycle: an admin makes a user, who logs in, changes their
// password (ending their sessions), logs out; a disabled user is refused;
// a deleted one is gone.
func TestAccountLifecycle(t *testing.T) {
	f := newAccessFixture(t)
	admin := testAdminToken
	if code, body := f.req(t, "POST", "/api/v1/users", admin, `{"username":"zoe","password":"first-pass","role":"user"}`); code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	if code, _ := f.req(t, "POST", "/api/v1/users", admin, `{"username":"zoe","password":"first-pass"}`); code != 409 {
		t.Errorf("duplicate: %d", code)
	}
	for _, bad := range []string{`{"username":"x","password":"short"}`, `{"username":"me","password":"long enough"}`, `{"username":"y","password":"long enough","role":"root"}`} {
		if code, _ := f.req(t, "POST", "/api/v1/users", admin, bad); code != 400 {
			t.Errorf("%s: %d, want 400", bad, code)
		}
	}
	if code, _ := f.req(t, "POST", "/api/v1/users", f.tokens[callerOperator], `{"username":"op2","password":"long enough"}`); code != 403 {
		t.Errorf("operator creates a user: %d", code)
	}
	code, tok := f.login(t, "zoe", "first-pass")
	if code != 200 || !strings.HasPrefix(tok, "tls_") {
		t.Fatalf("login: %d %q", code, tok)
	}
	if code, body := f.req(t, "GET", "/api/v1/users/me", tok, ""); code != 200 || !strings.Contains(body, `"role":"user"`) || strings.Contains(body, "argon2") {
		t.Errorf("me: %d %s", code, body)
	}
	if code, _ := f.req(t, "PUT", "/api/v1/users/me/password", tok, `{"oldPassword":"wrong","password":"second-pass"}`); code != 403 {
		t.Errorf("password change with a wrong old one: %d", code)
	}
	if code, _ := f.req(t, "PUT", "/api/v1/users/me/password", tok, `{"oldPassword":"first-pass","password":"second-pass"}`); code != 204 {
		t.Fatalf("password change: %d", code)
	}
	if code, _ := f.req(t, "GET", "/api/v1/users/me", tok, ""); code != 401 {
		t.Errorf("session after a password change: %d, want 401", code)
	}
	if code, _ := f.login(t, "zoe", "first-pass"); code != 401 {
		t.Errorf("old password: %d", code)
	}
	_, tok = f.login(t, "zoe", "second-pass")
	if code, _ := f.req(t, "POST", "/api/v1/auth/logout", tok, ""); code != 204 {
		t.Errorf("logout: %d", code)
	}
	if code, _ := f.req(t, "GET", "/api/v1/users/me", tok, ""); code != 401 {
		t.Errorf("after logout: %d", code)
	}
	_, tok = f.login(t, "zoe", "second-pass")
	if code, _ := f.req(t, "PATCH", "/api/v1/users/zoe", admin, `{"disabled":true}`); code != 200 {
		t.Fatalf("disable: %d", code)
	}
	if code, _ := f.req(t, "GET", "/api/v1/users/me", tok, ""); code != 401 {
		t.Errorf("disabled user's session: %d", code)
	}
	if code, _ := f.login(t, "zoe", "second-pass"); code != 401 {
		t.Errorf("disabled user logs in: %d", code)
	}
	if code, body := f.req(t, "GET", "/api/v1/users", admin, ""); code != 200 || !strings.Contains(body, `"zoe"`) {
		t.Errorf("list: %d %s", code, body)
	}
	if code, _ := f.req(t, "DELETE", "/api/v1/users/zoe", admin, ""); code != 204 {
		t.Errorf("delete: %d", code)
	}
	if code, _ := f.req(t, "GET", "/api/v1/users/zoe", admin, ""); code != 404 {
		t.Errorf("deleted user: %d", code)
	}
}

// TestLoginLimits: failed logins are limited per account, and a wrong
// username answers like a wrong password.
func TestLoginLimits(t *testing.T) {
	f := newAccessFixture(t)
	if code, body := f.req(t, "POST", "/api/v1/users", testAdminToken, `{"username":"kim","password":"right-pass"}`); code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	if code, _ := f.login(t, "nobody", "whatever1"); code != 401 {
		t.Errorf("unknown user: %d, want 401", code)
	}
	for i := 0; i < loginBurstAccount; i++ {
		if code, _ := f.login(t, "kim", "wrong-pass"); code != 401 {
			t.Fatalf("failure %d: %d", i, code)
		}
	}
	code, body := f.req(t, "POST", "/api/v1/auth/login", "", `{"username":"kim","password":"right-pass"}`)
	if code != 429 {
		t.Errorf("after %d failures, the right password: %d %s, want 429", loginBurstAccount, code, body)
	}
	// The address limit is wider: another account from the same address
	// still logs in.
	if code, body := f.req(t, "POST", "/api/v1/users", testAdminToken, `{"username":"lee","password":"right-pass"}`); code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	if code, _ := f.login(t, "lee", "right-pass"); code != 200 {
		t.Errorf("another account: %d", code)
	}
	// Spraying many accounts from one address hits the address limit.
	for i := 0; i < loginBurstAddr; i++ {
		f.login(t, "spray"+itoa(int64(i)), "wrong-pass")
	}
	if code, _ := f.login(t, "lee", "right-pass"); code != 429 {
		t.Errorf("after a spray from this address: %d, want 429", code)
	}
}

// TestClaimLimit: a user guessing claim secrets is stopped.
func TestClaimLimit(t *testing.T) {
	f := newAccessFixture(t)
	for i := 0; i < claimBurst; i++ {
		if code, _ := f.req(t, "POST", "/api/v1/devices/SN-GUESS-"+itoa(int64(i))+"/claim", f.tokens[callerStranger], `{"secretKey":"x"}`); code != 400 {
			t.Fatalf("claim %d: %d, want 400", i, code)
		}
	}
	if code, _ := f.req(t, "POST", "/api/v1/devices/"+f.device+"/claim", f.tokens[callerStranger], `{"secretKey":"x"}`); code != 429 {
		t.Errorf("after %d failed claims: %d, want 429", claimBurst, code)
	}
	if code, _ := f.req(t, "POST", "/api/v1/devices/"+f.device+"/claim", f.tokens[callerOwner], `{"secretKey":"x"}`); code != 400 {
		t.Errorf("another user is limited too: %d", code)
	}
}
