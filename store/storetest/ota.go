package storetest

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

func testOTA(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	data := bytes.Repeat([]byte{0xE9, 1, 2, 3}, 1000)
	p, err := s.CreateOTAPackage(ctx, store.OTAPackage{Title: "fw", Version: "1.1", Checksum: "abc", ChecksumAlgorithm: "SHA256", SHA256: "abc"}, data)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID == 0 || p.Size != int64(len(data)) {
		t.Fatalf("created %+v", p)
	}
	if _, err := s.CreateOTAPackage(ctx, store.OTAPackage{Title: "fw", Version: "1.1"}, data); !errors.Is(err, store.ErrExists) {
		t.Fatalf("same title and version: %v, want ErrExists", err)
	}
	got, err := s.OTAPackageData(ctx, p.ID)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data: %d bytes, %v", len(got), err)
	}
	if g, err := s.GetOTAPackage(ctx, p.ID); err != nil || g.Title != "fw" || g.Checksum != "abc" || g.CreatedAt.IsZero() {
		t.Fatalf("get: %+v %v", g, err)
	}
	if _, err := s.GetOTAPackage(ctx, p.ID+100); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing package: %v", err)
	}

	a, b := mustDevice(t, s, "ota-a"), mustDevice(t, s, "ota-b")
	at := base
	d, err := s.PutOTADevice(ctx, store.OTADevice{DeviceID: a.ID, PackageID: p.ID, Source: store.OTASourceDevice, State: store.OTAQueued, StateAt: at})
	if err != nil {
		t.Fatal(err)
	}
	if d.Device != "ota-a" || d.State != store.OTAQueued || d.Rev == 0 {
		t.Fatalf("put: %+v", d)
	}
	if err := s.DeleteOTAPackage(ctx, p.ID); !errors.Is(err, store.ErrInUse) {
		t.Fatalf("deleting an assigned package: %v, want ErrInUse", err)
	}

	// Compare-and-set: a second writer with the old revision loses.
	next := d
	next.State, next.StateAt, next.Deadline, next.Attempts = store.OTAInitiated, at.Add(time.Second), at.Add(time.Hour), 1
	next.ReportAt = at.Add(1500 * time.Millisecond)
	d2, ok, err := s.UpdateOTADevice(ctx, next)
	if err != nil || !ok || d2.State != store.OTAInitiated || d2.Rev == d.Rev || !d2.ReportAt.Equal(next.ReportAt) {
		t.Fatalf("update: %+v %v %v", d2, ok, err)
	}
	stale := d
	stale.State = store.OTAFailed
	if cur, ok, err := s.UpdateOTADevice(ctx, stale); err != nil || ok || cur.State != store.OTAInitiated {
		t.Fatalf("stale update: %+v ok=%v %v, want refused", cur, ok, err)
	}
	due, err := s.ListOTADevices(ctx, store.OTADeviceQuery{DueBefore: at.Add(2 * time.Hour)})
	if err != nil || len(due) != 1 || due[0].DeviceID != a.ID {
		t.Fatalf("due: %+v %v", due, err)
	}
	if due, _ := s.ListOTADevices(ctx, store.OTADeviceQuery{DueBefore: at.Add(time.Minute)}); len(due) != 0 {
		t.Fatalf("not due yet: %+v", due)
	}
	h, err := s.OTAHistory(ctx, a.ID, time.Time{}, 0)
	if err != nil || len(h) != 2 || h[0].State != store.OTAInitiated || h[1].State != store.OTAQueued {
		t.Fatalf("history: %+v %v", h, err)
	}
	// The lower bound (an ownership epoch) hides older entries.
	if h, _ := s.OTAHistory(ctx, a.ID, at.Add(500*time.Millisecond), 0); len(h) != 1 {
		t.Fatalf("history since: %+v", h)
	}

	// A rollout queues its members and cancels an older membership.
	r, err := s.CreateOTARollout(ctx, store.OTARollout{PackageID: p.ID, Status: store.RolloutRunning, Waves: []int{1, 1}, Total: 2,
		SuccessPercent: 100, FailureMax: 1}, []store.OTARolloutMember{{DeviceID: a.ID, Wave: 0}, {DeviceID: b.ID, Wave: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID == 0 || len(r.Waves) != 2 || r.Rev == 0 {
		t.Fatalf("rollout: %+v", r)
	}
	members, err := s.OTARolloutMembers(ctx, r.ID)
	if err != nil || len(members) != 2 || members[0].Device != "ota-a" || members[1].Wave != 1 || members[1].State != store.OTAQueued {
		t.Fatalf("members: %+v %v", members, err)
	}
	rows, err := s.ListOTADevices(ctx, store.OTADeviceQuery{RolloutID: r.ID, States: []string{store.OTAQueued}})
	if err != nil || len(rows) != 2 || rows[0].Source != store.OTASourceRollout {
		t.Fatalf("rollout rows: %+v %v", rows, err)
	}
	// A member's state change shows in the membership.
	ra := rows[0]
	ra.State, ra.StateAt = store.OTAFailed, at.Add(time.Minute)
	if _, ok, err := s.UpdateOTADevice(ctx, ra); !ok || err != nil {
		t.Fatalf("member update: %v %v", ok, err)
	}
	members, _ = s.OTARolloutMembers(ctx, r.ID)
	if members[0].State != store.OTAFailed {
		t.Fatalf("membership not updated: %+v", members)
	}
	r.Status, r.PauseReason = store.RolloutPaused, "1 failure"
	r2, ok, err := s.UpdateOTARollout(ctx, r)
	if err != nil || !ok || r2.Status != store.RolloutPaused {
		t.Fatalf("rollout update: %+v %v %v", r2, ok, err)
	}
	if _, ok, _ := s.UpdateOTARollout(ctx, r); ok {
		t.Fatal("stale rollout update accepted")
	}
	if rs, err := s.ListOTARollouts(ctx, store.RolloutPaused); err != nil || len(rs) != 1 {
		t.Fatalf("list paused: %+v %v", rs, err)
	}
	if n, err := s.CancelOTARolloutQueued(ctx, r.ID, "rollout aborted", at.Add(2*time.Minute)); err != nil || n != 1 {
		t.Fatalf("cancel: %d %v", n, err)
	}
	if d, _ := s.GetOTADevice(ctx, b.ID); d.State != store.OTACanceled {
		t.Fatalf("canceled: %+v", d)
	}

	if err := s.SetOTAProfile(ctx, "default", p.ID); err != nil {
		t.Fatal(err)
	}
	if id, err := s.GetOTAProfile(ctx, "default"); err != nil || id != p.ID {
		t.Fatalf("profile: %d %v", id, err)
	}
	if id, err := s.GetOTAProfile(ctx, "other"); err != nil || id != 0 {
		t.Fatalf("no profile assignment: %d %v", id, err)
	}
	if err := s.SetOTAProfile(ctx, "default", 0); err != nil {
		t.Fatal(err)
	}

	// Deleting a device purges its rows.
	if err := s.DeleteDevice(ctx, "ota-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetOTADevice(ctx, a.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.DeleteOTADevice(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	// Aborted rollout, no assignment left: the package can go.
	r3, _ := s.GetOTARollout(ctx, r.ID)
	r3.Status = store.RolloutAborted
	if _, ok, err := s.UpdateOTARollout(ctx, r3); !ok || err != nil {
		t.Fatalf("abort: %v %v", ok, err)
	}
	if err := s.DeleteOTAPackage(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteOTAPackage(ctx, p.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}
