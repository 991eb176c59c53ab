package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// certCred is a credential of device n, version v, expiring after days.
func certCred(n, v, days int) store.Credential {
	c := cred(n*100 + v)
	c.Serial = fmt.Sprintf("c%02d%02d", n, v)
	c.NotAfter = base.AddDate(0, 0, days)
	c.FirstSeen = base.Add(time.Duration(v) * time.Hour)
	c.LastSeen = c.FirstSeen
	return c
}

func testCertificates(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	devs := map[int]store.Device{}
	ensure := func(n, v, days int) {
		t.Helper()
		d, _, _, err := s.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("cert-%d", n), Profile: "default"}, certCred(n, v, days), nil)
		if err != nil {
			t.Fatal(err)
		}
		devs[n] = d
	}
	ensure(1, 1, 10)  // rotated below: its current one expires in 400 days
	ensure(1, 2, 400) //
	ensure(2, 1, 20)  // expires soonest
	ensure(3, 1, 90)  // revoked below: not current
	ensure(4, 1, 60)
	if err := s.Revoke(ctx, store.Revocation{Serial: "c0301", Reason: "keyCompromise", RevokedAt: base}); err != nil {
		t.Fatal(err)
	}
	cur, err := s.CurrentCredentials(ctx, time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range cur {
		got = append(got, c.Device+"/"+c.Serial)
	}
	if want := "[cert-2/c0201 cert-4/c0401 cert-1/c0102]"; fmt.Sprint(got) != want {
		t.Errorf("current credentials = %v, want %s", got, want)
	}
	if len(cur) == 3 && (!cur[0].NotAfter.Equal(base.AddDate(0, 0, 20)) || cur[0].DeviceID != devs[2].ID) {
		t.Errorf("first current credential = %+v", cur[0])
	}
	soon, err := s.CurrentCredentials(ctx, base.AddDate(0, 0, 30), 0)
	if err != nil || len(soon) != 1 || soon[0].Serial != "c0201" {
		t.Errorf("expiring within 30 days = %+v, %v", soon, err)
	}
	if one, err := s.CurrentCredentials(ctx, time.Time{}, 1); err != nil || len(one) != 1 {
		t.Errorf("limit 1 = %+v, %v", one, err)
	}

	revs, err := s.RevocationsOf(ctx, []string{"c0301", "c0101", "zz"})
	if err != nil || len(revs) != 1 || revs["c0301"].Reason != "keyCompromise" {
		t.Errorf("RevocationsOf = %+v, %v", revs, err)
	}

	// Expiry notices: once per serial.
	first, err := s.ClaimExpiryNotice(ctx, "c0201", base)
	if err != nil || !first {
		t.Fatalf("first notice = %v, %v", first, err)
	}
	if again, err := s.ClaimExpiryNotice(ctx, "c0201", base.Add(time.Hour)); err != nil || again {
		t.Errorf("second notice = %v, %v", again, err)
	}

	// Retirements: scheduled, listed, revoked exactly once by racing sweepers.
	for i, r := range []store.Retirement{
		{DeviceID: devs[1].ID, Serial: "c0101", Next: "c0102", RetireAt: base.Add(time.Hour)},
		{DeviceID: devs[4].ID, Serial: "c0401", Next: "c0402", RetireAt: base.Add(48 * time.Hour)},
	} {
		if err := s.ScheduleRetirement(ctx, r); err != nil {
			t.Fatalf("retirement %d: %v", i, err)
		}
	}
	// A later schedule of the same serial keeps the earlier time.
	if err := s.ScheduleRetirement(ctx, store.Retirement{DeviceID: devs[1].ID, Serial: "c0101", Next: "c0102", RetireAt: base.Add(99 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	rs, err := s.ListRetirements(ctx, devs[1].ID)
	if err != nil || len(rs) != 1 || !rs[0].RetireAt.Equal(base.Add(time.Hour)) || rs[0].Done || rs[0].Next != "c0102" {
		t.Fatalf("retirements of cert-1 = %+v, %v", rs, err)
	}
	var mu sync.Mutex
	var retired []string
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := s.RetireDue(ctx, base.Add(2*time.Hour), 0)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			for _, r := range out {
				retired = append(retired, r.Serial+"/"+r.Reason)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if fmt.Sprint(retired) != "[c0101/superseded]" {
		t.Errorf("retired by four sweepers = %v, want c0101 once", retired)
	}
	if revs, err := s.RevocationsOf(ctx, []string{"c0101", "c0401"}); err != nil || len(revs) != 1 || revs["c0101"].Reason != "superseded" {
		t.Errorf("after retirement: %+v, %v", revs, err)
	}
	if rs, _ := s.ListRetirements(ctx, devs[1].ID); len(rs) != 1 || !rs[0].Done {
		t.Errorf("retirement not marked done: %+v", rs)
	}
	if more, err := s.RetireDue(ctx, base.Add(3*time.Hour), 0); err != nil || len(more) != 0 {
		t.Errorf("second sweep = %+v, %v", more, err)
	}

	// CRL numbers: strictly increasing per issuer, across concurrent callers.
	seen := map[int64]bool{}
	var numWG sync.WaitGroup
	for range 5 {
		numWG.Add(1)
		go func() {
			defer numWG.Done()
			n, err := s.NextCRLNumber(ctx, "ab12")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			seen[n] = true
			mu.Unlock()
		}()
	}
	numWG.Wait()
	for i := int64(1); i <= 5; i++ {
		if !seen[i] {
			t.Errorf("CRL numbers = %v, want 1..5 each once", seen)
			break
		}
	}
	if n, err := s.NextCRLNumber(ctx, "other"); err != nil || n != 1 {
		t.Errorf("another issuer's first number = %d, %v", n, err)
	}

	// A deleted device takes its retirements with it.
	if err := s.DeleteDevice(ctx, "cert-4"); err != nil {
		t.Fatal(err)
	}
	if rs, err := s.ListRetirements(ctx, devs[4].ID); err != nil || len(rs) != 0 {
		t.Errorf("retirements of a deleted device = %+v, %v", rs, err)
	}
}
