package storetest

import (
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

func secretHash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

func testOwnership(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	now := time.Now()
	dev, _, _, err := s.EnsureDevice(ctx, store.Device{Name: "own-1", Profile: "default"}, cred(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	var users []store.User
	for _, n := range []string{"u1", "u2", "u3", "u4"} {
		u, err := s.CreateUser(ctx, store.User{Username: n, Role: store.RoleUser, PasswordHash: "h"})
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	pol, err := s.GetPolicy(ctx)
	if err != nil || pol.OnReset != store.PolicyTransfer {
		t.Fatalf("default policy %+v %v", pol, err)
	}
	claim := func(u store.User, secret string, at time.Time) (string, error) {
		out, _, err := s.Claim(ctx, store.Claim{DeviceID: dev.ID, DeviceName: dev.Name, UserID: u.ID, Kind: store.ClaimDevice,
			SecretHash: secretHash(secret), Policy: pol, At: at})
		return out, err
	}
	request := func(secret string, reset bool, exp time.Time) {
		if err := s.PutClaimRequest(ctx, store.ClaimRequest{DeviceID: dev.ID, DeviceName: dev.Name, Kind: store.ClaimDevice,
			SecretHash: secretHash(secret), Reset: reset, CreatedAt: now, ExpiresAt: exp}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := claim(users[0], "x", now); !errors.Is(err, store.ErrNoClaim) {
		t.Errorf("claim without request: %v", err)
	}
	request("k1", false, now.Add(time.Minute))
	if _, err := claim(users[0], "k1", now.Add(2*time.Minute)); !errors.Is(err, store.ErrNoClaim) {
		t.Errorf("claim after expiry: %v", err)
	}
	if _, err := claim(users[0], "wrong", now); !errors.Is(err, store.ErrWrongSecret) {
		t.Errorf("wrong secret: %v", err)
	}
	// Racing users: exactly one wins.
	var wg sync.WaitGroup
	results := make([]error, len(users))
	for i, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, results[i] = claim(u, "k1", now)
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range results {
		if err == nil {
			if winner >= 0 {
				t.Fatalf("users %d and %d both won", winner, i)
			}
			winner = i
		} else if !errors.Is(err, store.ErrNoClaim) {
			t.Errorf("loser %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("nobody won the race")
	}
	owner := users[winner]
	other := users[(winner+1)%len(users)]
	ep, err := s.CurrentOwner(ctx, dev.ID, dev.Name)
	if err != nil || ep.UserID != owner.ID || ep.Username != owner.Username || !ep.Until.IsZero() {
		t.Fatalf("current owner %+v %v", ep, err)
	}
	if ids, err := s.OwnedDevices(ctx, owner.ID); err != nil || len(ids) != 1 || ids[0] != dev.ID {
		t.Errorf("owned devices %v %v", ids, err)
	}
	// Owned and not reset: another user cannot take it.
	request("k2", false, now.Add(time.Minute))
	if _, err := claim(other, "k2", now); !errors.Is(err, store.ErrOwned) {
		t.Errorf("claiming an owned device: %v", err)
	}
	// Case A: same owner after a reset keeps the epoch.
	request("k3", true, now.Add(time.Minute))
	if out, err := claim(owner, "k3", now.Add(time.Second)); err != nil || out != store.OutcomeSameOwner {
		t.Errorf("case A: %q %v", out, err)
	}
	if ep2, _ := s.CurrentOwner(ctx, dev.ID, dev.Name); ep2.ID != ep.ID {
		t.Errorf("case A made a new epoch %d (was %d)", ep2.ID, ep.ID)
	}
	// Case B, transfer: a new epoch from the claim on.
	request("k4", true, now.Add(time.Minute))
	at := now.Add(2 * time.Second)
	if out, err := claim(other, "k4", at); err != nil || out != store.OutcomeTransferred {
		t.Fatalf("case B: %q %v", out, err)
	}
	ep3, err := s.CurrentOwner(ctx, dev.ID, dev.Name)
	if err != nil || ep3.UserID != other.ID || ep3.Since.UnixNano() != at.UnixNano() {
		t.Errorf("after transfer %+v %v", ep3, err)
	}
	if ids, _ := s.OwnedDevices(ctx, owner.ID); len(ids) != 0 {
		t.Errorf("previous owner still owns %v", ids)
	}
	if es, err := s.UserEpochs(ctx, owner.ID); err != nil || len(es) != 1 || es[0].Ended != store.EndTransferred {
		t.Errorf("previous owner's epochs %+v %v", es, err)
	} else if e, err := s.GetEpoch(ctx, es[0].ID); err != nil || e.UserID != owner.ID || e.Until.IsZero() {
		t.Errorf("epoch %d: %+v %v", es[0].ID, e, err)
	}
	if _, err := s.GetEpoch(ctx, 1<<40); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing epoch: %v", err)
	}
	hist, err := s.Owners(ctx, dev.Name)
	if err != nil || len(hist) != 2 || hist[0].Ended != store.EndTransferred || hist[0].KeepUntil.IsZero() || hist[1].UserID != other.ID {
		t.Errorf("history %+v %v", hist, err)
	}
	// Release, then the device is free.
	if _, err := s.Release(ctx, dev.ID, owner.ID, owner.ID, pol, at); !errors.Is(err, store.ErrNotOwner) {
		t.Errorf("release by a former owner: %v", err)
	}
	if _, err := s.Release(ctx, dev.ID, other.ID, other.ID, store.OwnershipPolicy{OnReset: store.PolicyTransfer}, at); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CurrentOwner(ctx, dev.ID, dev.Name); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("owner after release: %v", err)
	}
	if es, err := s.ExpiredEpochs(ctx, at.Add(time.Second), 10); err != nil || len(es) != 1 || es[0].Ended != store.EndReleased {
		t.Errorf("expired epochs (keep 0 days): %+v %v", es, err)
	} else if err := s.MarkWiped(ctx, es[0].ID); err != nil {
		t.Fatal(err)
	} else if es, _ := s.ExpiredEpochs(ctx, at.Add(time.Second), 10); len(es) != 0 {
		t.Errorf("wiped epoch still listed")
	}

	// Case B, delete policy: the record's epoch ends, the next record of
	// the name belongs to the new owner.
	pol = store.OwnershipPolicy{OnReset: store.PolicyDelete, KeepDays: 0}
	if err := s.SetPolicy(ctx, pol); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.GetPolicy(ctx); p != pol {
		t.Errorf("policy read back %+v", p)
	}
	if err := s.SetPolicy(ctx, store.OwnershipPolicy{OnReset: "bogus"}); err == nil {
		t.Error("bogus policy accepted")
	}
	request("k5", false, now.Add(time.Minute))
	if _, err := claim(owner, "k5", at); err != nil {
		t.Fatal(err)
	}
	request("k6", true, now.Add(time.Minute))
	if out, err := claim(other, "k6", at); err != nil || out != store.OutcomeDelete {
		t.Fatalf("delete policy: %q %v", out, err)
	}
	if _, err := s.CurrentOwner(ctx, dev.ID, dev.Name); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("old record still owned: %v", err)
	}
	if err := s.DeleteDevice(ctx, dev.Name); err != nil {
		t.Fatal(err)
	}
	dev2, _, _, err := s.EnsureDevice(ctx, store.Device{Name: "own-1", Profile: "default"}, cred(1), nil)
	if err != nil || dev2.ID == dev.ID {
		t.Fatalf("recreated %+v %v", dev2, err)
	}
	ep4, err := s.CurrentOwner(ctx, dev2.ID, dev2.Name)
	if err != nil || ep4.UserID != other.ID {
		t.Errorf("fresh record's owner %+v %v", ep4, err)
	}
	audit, err := s.Audit(ctx, dev.Name, 100)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, a := range audit {
		kinds[a.Action]++
	}
	for _, k := range []string{store.AuditClaim, store.AuditReclaim, store.AuditTransfer, store.AuditRelease, store.AuditDelete, store.AuditClaimFailed} {
		if kinds[k] == 0 {
			t.Errorf("audit has no %s: %v", k, kinds)
		}
	}
}
