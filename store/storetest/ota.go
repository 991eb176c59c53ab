package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"
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

// checkCounts compares a rollout's counts with a recount of its members,
// per wave and state, and returns the progress they make.
func checkCounts(t *testing.T, s store.Store, rollout store.OTARollout) store.OTAProgress {
	t.Helper()
	ctx := ctxT(t)
	counts, err := s.OTARolloutCounts(ctx, rollout.ID)
	if err != nil {
		t.Fatalf("counts of rollout %d: %v", rollout.ID, err)
	}
	members, err := s.OTARolloutMembers(ctx, rollout.ID)
	if err != nil {
		t.Fatalf("members of rollout %d: %v", rollout.ID, err)
	}
	type key struct {
		wave  int
		state string
	}
	got, want := map[key]int{}, map[key]int{}
	for _, c := range counts {
		if c.N != 0 {
			got[key{c.Wave, c.State}] += c.N
		}
	}
	for _, m := range members {
		want[key{m.Wave, m.State}]++
	}
	if !maps.Equal(got, want) {
		t.Fatalf("rollout %d: counts %v, a recount of the members gives %v", rollout.ID, got, want)
	}
	p := store.OTAProgressOf(rollout.Waves, counts)
	if recount := store.CountOTARollout(rollout.Waves, members); !reflect.DeepEqual(p, recount) {
		t.Fatalf("rollout %d: progress %+v, from the members %+v", rollout.ID, p, recount)
	}
	return p
}

// testOTACounts: every way a membership changes (creation, the engine's
// transitions, a retry, a newer assignment or rollout, abort, a deleted
// device) keeps the counts equal to a recount of the members.
func testOTACounts(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	p, err := s.CreateOTAPackage(ctx, store.OTAPackage{Title: "fw", Version: "2", Checksum: "c", ChecksumAlgorithm: "SHA256"}, []byte("image"))
	if err != nil {
		t.Fatal(err)
	}
	var devs []store.Device
	var members []store.OTARolloutMember
	for i := range 10 {
		d := mustDevice(t, s, fmt.Sprintf("cnt-%d", i))
		devs = append(devs, d)
		members = append(members, store.OTARolloutMember{DeviceID: d.ID, Wave: min(i/3, 2)})
	}
	r1, err := s.CreateOTARollout(ctx, store.OTARollout{PackageID: p.ID, Status: store.RolloutRunning, Waves: []int{3, 3, 4},
		Total: 10, SuccessPercent: 100, FailureMax: 5}, members)
	if err != nil {
		t.Fatal(err)
	}
	if pr := checkCounts(t, s, r1); pr.Queued != 10 || pr.Waves[2].Queued != 4 {
		t.Fatalf("created: %+v", pr)
	}

	at := base
	step := func(i int, state string, attempts int) store.OTADevice {
		t.Helper()
		row, err := s.GetOTADevice(ctx, devs[i].ID)
		if err != nil {
			t.Fatal(err)
		}
		at = at.Add(time.Second)
		row.State, row.Attempts, row.StateAt = state, attempts, at
		row.Error = ""
		if state == store.OTAFailed {
			row.Error = "boom"
		}
		stored, ok, err := s.UpdateOTADevice(ctx, row)
		if err != nil || !ok {
			t.Fatalf("device %d to %s: %v %v", i, state, ok, err)
		}
		return stored
	}
	for _, st := range []string{store.OTAInitiated, store.OTADownloading, store.OTAUpdated} {
		step(0, st, 1)
	}
	step(1, store.OTAInitiated, 1)
	step(1, store.OTAFailed, 1)
	step(2, store.OTAInitiated, 1)
	before := step(2, store.OTAInitiated, 2) // an attempt more, the same state
	step(3, store.OTAInitiated, 1)
	// A writer that lost the compare-and-set changes nothing, counts
	// included.
	stale := before
	stale.Rev--
	stale.State = store.OTAFailed
	if _, ok, err := s.UpdateOTADevice(ctx, stale); ok || err != nil {
		t.Fatalf("stale update: %v %v", ok, err)
	}
	pr := checkCounts(t, s, r1)
	if pr.Updated != 1 || pr.Failed != 1 || pr.InProgress != 2 || pr.Queued != 6 || pr.Waves[0].InProgress != 1 || pr.Waves[1].InProgress != 1 {
		t.Fatalf("after the transitions: %+v", pr)
	}

	// Resume with retryFailed queues the failed member again.
	step(1, store.OTAQueued, 0)
	if pr := checkCounts(t, s, r1); pr.Failed != 0 || pr.Queued != 7 {
		t.Fatalf("after the retry: %+v", pr)
	}
	// The queued rows of the started waves, earliest wave first.
	ids := func(q store.OTADeviceQuery) []int64 {
		t.Helper()
		rows, err := s.ListOTADevices(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		var out []int64
		for _, r := range rows {
			out = append(out, r.DeviceID)
		}
		return out
	}
	queued := []string{store.OTAQueued}
	if got := ids(store.OTADeviceQuery{RolloutID: r1.ID, FirstWaves: 1, States: queued}); !slices.Equal(got, []int64{devs[1].ID}) {
		t.Fatalf("queued in the first wave: %v, want [%d]", got, devs[1].ID)
	}
	if got := ids(store.OTADeviceQuery{RolloutID: r1.ID, FirstWaves: 2, States: queued}); !slices.Equal(got, []int64{devs[1].ID, devs[4].ID, devs[5].ID}) {
		t.Fatalf("queued in the first two waves: %v", got)
	}

	// A device's own assignment supersedes its queued membership.
	if _, err := s.PutOTADevice(ctx, store.OTADevice{DeviceID: devs[4].ID, PackageID: p.ID, Source: store.OTASourceDevice,
		State: store.OTAQueued, StateAt: at}); err != nil {
		t.Fatal(err)
	}
	if got := ids(store.OTADeviceQuery{NoRollout: true, States: queued}); !slices.Equal(got, []int64{devs[4].ID}) {
		t.Fatalf("queued of no rollout: %v, want [%d]", got, devs[4].ID)
	}
	// So does a newer rollout, except where the update is finished.
	r2, err := s.CreateOTARollout(ctx, store.OTARollout{PackageID: p.ID, Status: store.RolloutRunning, Waves: []int{3},
		Total: 3, SuccessPercent: 100, FailureMax: 1}, []store.OTARolloutMember{{DeviceID: devs[0].ID}, {DeviceID: devs[5].ID}, {DeviceID: devs[6].ID}})
	if err != nil {
		t.Fatal(err)
	}
	if pr := checkCounts(t, s, r1); pr.Canceled != 3 || pr.Updated != 1 || pr.Queued != 4 {
		t.Fatalf("r1 after being superseded: %+v", pr)
	}
	if pr := checkCounts(t, s, r2); pr.Queued != 3 {
		t.Fatalf("r2: %+v", pr)
	}

	// Abort: what is still queued is canceled; what runs goes on.
	n, err := s.CancelOTARolloutQueued(ctx, r1.ID, "rollout aborted", at.Add(time.Minute))
	if err != nil || n != 4 {
		t.Fatalf("cancel: %d %v, want 4", n, err)
	}
	if pr := checkCounts(t, s, r1); pr.Canceled != 7 || pr.Queued != 0 || pr.InProgress != 2 {
		t.Fatalf("r1 aborted: %+v", pr)
	}
	// A member of the new rollout (canceled in the old one) runs and is
	// then deleted; so is one still in progress in the aborted one.
	step(5, store.OTAInitiated, 1)
	for _, name := range []string{"cnt-5", "cnt-3"} {
		if err := s.DeleteDevice(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if pr := checkCounts(t, s, r1); pr.Total != 8 || pr.InProgress != 1 || pr.Waves[1].InProgress != 0 {
		t.Fatalf("r1 after deleting devices: %+v", pr)
	}
	if pr := checkCounts(t, s, r2); pr.Total != 2 || pr.InProgress != 0 || pr.Queued != 2 {
		t.Fatalf("r2 after deleting a device: %+v", pr)
	}
	if c, err := s.OTARolloutCounts(ctx, r2.ID+100); err != nil || len(c) != 0 {
		t.Fatalf("counts of no rollout: %+v %v", c, err)
	}
}

// testOTACountsConcurrent: engines of several nodes stepping the same
// devices (each transition written by whoever wins the compare-and-set),
// an abort and newer assignments at the same time leave counts equal to a
// recount of the members.
func testOTACountsConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	p, err := s.CreateOTAPackage(ctx, store.OTAPackage{Title: "fw", Version: "3", Checksum: "c", ChecksumAlgorithm: "SHA256"}, []byte("image"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	var devs []store.Device
	var members []store.OTARolloutMember
	for i := range n {
		d := mustDevice(t, s, fmt.Sprintf("cc-%02d", i))
		devs = append(devs, d)
		members = append(members, store.OTARolloutMember{DeviceID: d.ID, Wave: i % 2})
	}
	r, err := s.CreateOTARollout(ctx, store.OTARollout{PackageID: p.ID, Status: store.RolloutRunning, Waves: []int{n / 2, n / 2},
		Total: n, SuccessPercent: 100, FailureMax: n}, members)
	if err != nil {
		t.Fatal(err)
	}
	path := []string{store.OTAInitiated, store.OTADownloading, store.OTADownloaded, store.OTAUpdating, store.OTAUpdated}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	// Three "nodes" race over the first 30 devices: each moves a device
	// one state on from what it reads, and the loser reads again.
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 30 {
				d := devs[(i+w*7)%30]
				for {
					row, err := s.GetOTADevice(ctx, d.ID)
					if err != nil {
						errs <- err
						return
					}
					if row.RolloutID != r.ID || store.OTATerminal(row.State) {
						break
					}
					next := row
					next.StateAt = time.Now()
					switch k := slices.Index(path, row.State); {
					case i%7 == 3 && k == 2:
						next.State, next.Error = store.OTAFailed, "verify failed"
					default:
						next.State = path[k+1]
					}
					if _, _, err := s.UpdateOTADevice(ctx, next); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	// Meanwhile the operator aborts, and some devices get their own
	// assignment.
	wg.Add(2)
	go func() {
		defer wg.Done()
		if _, err := s.CancelOTARolloutQueued(ctx, r.ID, "rollout aborted", time.Now()); err != nil {
			errs <- err
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < n; i += 4 {
			if _, err := s.PutOTADevice(ctx, store.OTADevice{DeviceID: devs[i].ID, PackageID: p.ID, Source: store.OTASourceDevice,
				State: store.OTAQueued, StateAt: time.Now()}); err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	pr := checkCounts(t, s, r)
	if pr.Total != n || pr.Queued != 0 {
		t.Fatalf("progress %+v: want %d members, none queued after the abort", pr, n)
	}
}
