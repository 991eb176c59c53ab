package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

func testAccounts(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	now := time.Now()
	u, err := s.CreateUser(ctx, store.User{Username: "ann", Role: store.RoleUser, PasswordHash: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if u.ID == 0 || u.CreatedAt.IsZero() {
		t.Errorf("created user %+v", u)
	}
	if _, err := s.CreateUser(ctx, store.User{Username: "ann", Role: store.RoleAdmin, PasswordHash: "h"}); !errors.Is(err, store.ErrExists) {
		t.Errorf("duplicate username: %v", err)
	}
	op, err := s.CreateUser(ctx, store.User{Username: "bob", Role: store.RoleOperator, PasswordHash: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetUserByName(ctx, "ann")
	if err != nil || got.ID != u.ID || got.Role != store.RoleUser || got.PasswordHash != "h1" {
		t.Errorf("by name: %+v %v", got, err)
	}
	if _, err := s.GetUser(ctx, 99999); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing user: %v", err)
	}
	us, err := s.ListUsers(ctx, store.ListOptions{After: "ann"})
	if err != nil || len(us) != 1 || us[0].ID != op.ID {
		t.Errorf("list after ann: %+v %v", us, err)
	}

	mk := func(kind string, h byte, exp time.Time) store.Token {
		tk, err := s.CreateToken(ctx, store.Token{UserID: u.ID, Kind: kind, Name: "n", Scopes: []string{"read", "write"}, Hash: []byte{h, 1, 2}, ExpiresAt: exp})
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	sess := mk(store.TokenSession, 1, now.Add(time.Hour))
	api := mk(store.TokenAPI, 2, now.Add(24*time.Hour))
	mk(store.TokenAPI, 3, now.Add(-time.Second)) // expired
	tk, owner, err := s.TokenByHash(ctx, []byte{1, 1, 2}, now)
	if err != nil || tk.ID != sess.ID || owner.ID != u.ID || len(tk.Scopes) != 2 {
		t.Errorf("token by hash: %+v %+v %v", tk, owner, err)
	}
	if _, _, err := s.TokenByHash(ctx, []byte{3, 1, 2}, now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("expired token: %v", err)
	}
	// A new password revokes sessions, not API tokens.
	if err := s.SetPassword(ctx, u.ID, "h3", now); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.TokenByHash(ctx, []byte{1, 1, 2}, now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("session after password change: %v", err)
	}
	if _, _, err := s.TokenByHash(ctx, []byte{2, 1, 2}, now); err != nil {
		t.Errorf("API token after password change: %v", err)
	}
	if err := s.RevokeToken(ctx, op.ID, api.ID, now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoking another user's token: %v", err)
	}
	if err := s.RevokeToken(ctx, u.ID, api.ID, now); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeToken(ctx, u.ID, api.ID, now); err != nil {
		t.Errorf("revoking twice: %v", err)
	}
	if _, _, err := s.TokenByHash(ctx, []byte{2, 1, 2}, now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoked token: %v", err)
	}
	ts, err := s.ListTokens(ctx, u.ID)
	if err != nil || len(ts) != 3 || ts[0].ID < ts[2].ID {
		t.Errorf("tokens: %+v %v", ts, err)
	}
	// Disabling revokes every token.
	live := mk(store.TokenAPI, 4, now.Add(time.Hour))
	if err := s.SetDisabled(ctx, u.ID, true, now); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDisabled(ctx, u.ID, false, now); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.TokenByHash(ctx, []byte{4, 1, 2}, now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("token %d survived disabling: %v", live.ID, err)
	}
	if err := s.DeleteUser(ctx, u.ID); err != nil {
		t.Fatal(err)
	}
	if ts, _ := s.ListTokens(ctx, u.ID); len(ts) != 0 {
		t.Errorf("tokens of a deleted user: %d", len(ts))
	}
	if err := s.DeleteUser(ctx, u.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleting twice: %v", err)
	}
}
