package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

// TestClaimRequest: a device's claim request is stored (secret hashed,
// ThingsBoard's default window when none is given) and answered PENDING;
// a user's match is pushed as SUCCESS; an owned device that was not reset
// hears CLAIMED at once, and the claim that made its owner SUCCESS again;
// an association names its user; bad payloads are refused.
func TestClaimRequest(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	cert, _ := e.inter.device(t, "SN-000042")
	c := e.v3(t, cert)
	c.sub(t, claimResponseTopic)
	c.pub(t, "v1/devices/me/claim", `{"secretKey":"abc"}`)
	m := c.rx.wait(t, claimResponseTopic)
	var pending struct {
		Result    string `json:"result"`
		ExpiresAt int64  `json:"expiresAt"`
	}
	json.Unmarshal([]byte(m.payload), &pending)
	if pending.Result != "PENDING" {
		t.Fatalf("answer %s", m.payload)
	}
	if d := time.Until(time.UnixMilli(pending.ExpiresAt)); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("default window ends in %v, want ThingsBoard's 24 h", d)
	}
	dev := e.device(t, "SN-000042")
	r, err := e.st.GetClaimRequest(ctx, dev.ID, time.Now())
	h := sha256.Sum256([]byte("abc"))
	if err != nil || string(r.SecretHash) != string(h[:]) || r.Kind != store.ClaimDevice || r.Reset {
		t.Fatalf("stored request %+v %v", r, err)
	}
	u, _ := e.st.CreateUser(ctx, store.User{Username: "u", Role: store.RoleUser, PasswordHash: "x"})
	if _, _, err := e.st.Claim(ctx, store.Claim{DeviceID: dev.ID, DeviceName: dev.Name, UserID: u.ID, Kind: store.ClaimDevice, SecretHash: h[:], At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	c.rx.mu.Lock()
	c.rx.msgs = nil
	c.rx.mu.Unlock()
	if _, err := e.bus.Request(ctx, dev.Name, bus.Command{Kind: bus.CommandClaimResult, Payload: json.RawMessage(`{"result":"SUCCESS"}`)}); err != nil {
		t.Fatal(err)
	}
	if m := c.rx.wait(t, claimResponseTopic); m.payload != `{"result":"SUCCESS"}` {
		t.Errorf("pushed result %s", m.payload)
	}
	for _, tc := range []struct{ payload, want string }{
		{`{"secretKey":"other"}`, `{"result":"CLAIMED"}`}, // owned, not reset
		{`{"secretKey":"abc"}`, `{"result":"SUCCESS"}`},   // the claim that made the owner, repeated
	} {
		c.rx.mu.Lock()
		c.rx.msgs = nil
		c.rx.mu.Unlock()
		c.pub(t, "v1/devices/me/claim", tc.payload)
		if m := c.rx.wait(t, claimResponseTopic); m.payload != tc.want {
			t.Errorf("%s: answer %s, want %s", tc.payload, m.payload, tc.want)
		}
	}
	// The owner's association repeated with the secret that made the
	// owner (the device missed SUCCESS): SUCCESS again, nothing left
	// pending. With another secret it is a new request of the owner's.
	for _, tc := range []struct {
		secret, want string
		pending      bool
	}{{"abc", `"result":"SUCCESS"`, false}, {"new", `"result":"PENDING"`, true}} {
		c.rx.mu.Lock()
		c.rx.msgs = nil
		c.rx.mu.Unlock()
		c.pub(t, "v1/devices/me/claim", fmt.Sprintf(`{"userId":"%d","secretKey":%q}`, u.ID, tc.secret))
		if m := c.rx.wait(t, claimResponseTopic); !strings.Contains(m.payload, tc.want) {
			t.Errorf("owner's association with %q: answer %s, want %s", tc.secret, m.payload, tc.want)
		}
		if _, err := e.st.GetClaimRequest(ctx, dev.ID, time.Now()); (err == nil) != tc.pending {
			t.Errorf("owner's association with %q: pending request %v, want %v (%v)", tc.secret, err == nil, tc.pending, err)
		}
	}
	// A reset device's association, with its user.
	c.pub(t, "v1/devices/me/claim", `{"userId":"77","secretKey":"s","durationMs":60000,"reset":true}`)
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		r, err := e.st.GetClaimRequest(ctx, dev.ID, time.Now())
		if err != nil || r.Kind != store.ClaimAssociation || r.UserID != 77 || !r.Reset || time.Until(r.ExpiresAt) > time.Minute {
			return errors.New("association not stored")
		}
		return nil
	})
}

func TestParseClaim(t *testing.T) {
	for _, ok := range []string{``, `{}`, `{"secretKey":""}`, `{"secretKey":"k","durationMs":0}`, `{"userId":5,"secretKey":"k"}`} {
		if _, err := parseClaim([]byte(ok)); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{`[`, `{"durationMs":-1}`, `{"durationMs":999999999999}`, `{"userId":"x","secretKey":"k"}`, `{"userId":"5"}`, `{"userId":-2,"secretKey":"k"}`} {
		if _, err := parseClaim([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
