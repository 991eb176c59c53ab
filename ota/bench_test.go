package ota

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/postgres"
	"github.com/thingline/thingline/store/sqlite"
	"github.com/thingline/thingline/tstest"
)

// benchMembers is the size of the benchmarked rollout: a whole fleet.
const benchMembers = 10000

// BenchmarkRolloutTick measures the engine's periodic work with one
// running rollout of 10,000 devices in the middle of its first wave (a
// tenth of them): some devices updating, some done, some failed, the rest
// queued for the second wave. The tick changes nothing, so every
// iteration does the same reads. "tick" is the whole sweep, "progress"
// the rollout's counts it decides from.
//
//	go test -run '^$' -bench RolloutTick -benchtime 50x ./ota
func BenchmarkRolloutTick(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		st, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "t.db"))
		if err != nil {
			b.Fatal(err)
		}
		benchRolloutTick(b, st)
	})
	b.Run("postgres", func(b *testing.B) {
		st, err := postgres.Open(context.Background(), tstest.PostgresSchema(b, "otabench"))
		if err != nil {
			b.Fatal(err)
		}
		benchRolloutTick(b, st)
	})
}

func benchRolloutTick(b *testing.B, st store.Store) {
	ctx := context.Background()
	bus := inproc.New()
	e, err := Start(Config{Store: st, Bus: bus, Tick: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close(); bus.Close(); st.Close() })
	pkg, err := st.CreateOTAPackage(ctx, store.OTAPackage{Title: "fw", Version: "2", Checksum: "x", ChecksumAlgorithm: "SHA256"}, []byte("image"))
	if err != nil {
		b.Fatal(err)
	}
	first := benchMembers / 10
	members := make([]store.OTARolloutMember, benchMembers)
	for i := range members {
		d, _, _, err := st.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("SN-%05d", i), Profile: "default"}, store.Credential{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		members[i] = store.OTARolloutMember{DeviceID: d.ID, Device: d.Name}
		if i >= first {
			members[i].Wave = 1
		}
	}
	r, err := st.CreateOTARollout(ctx, store.OTARollout{PackageID: pkg.ID, Status: store.RolloutRunning,
		Waves: []int{first, benchMembers - first}, Total: benchMembers, SuccessPercent: 100, FailureMax: benchMembers}, members)
	if err != nil {
		b.Fatal(err)
	}
	// The first wave is under way: half in progress, a third updated,
	// the rest failed; nothing is due for a long time.
	later := time.Now().Add(24 * time.Hour)
	for i, m := range members[:first] {
		row, err := st.GetOTADevice(ctx, m.DeviceID)
		if err != nil {
			b.Fatal(err)
		}
		row.Attempts, row.StateAt, row.Deadline = 1, time.Now(), later
		switch {
		case i < first/2:
			row.State = store.OTAInitiated
		case i < first/2+first/3:
			row.State, row.Deadline = store.OTAUpdated, time.Time{}
		default:
			row.State, row.Error, row.Deadline = store.OTAFailed, "bench", time.Time{}
		}
		if _, ok, err := st.UpdateOTADevice(ctx, row); err != nil || !ok {
			b.Fatalf("setting up %s: %v %v", m.Device, ok, err)
		}
	}
	check := func(p store.OTAProgress) {
		if p.Total != benchMembers || p.Queued != benchMembers-first || p.InProgress != first/2 || p.Waves[0].Updated != first/3 {
			b.Fatalf("progress %+v", p)
		}
	}
	b.Run("tick", func(b *testing.B) {
		for b.Loop() {
			e.sweep(ctx)
		}
		b.StopTimer()
		got, err := st.GetOTARollout(ctx, r.ID)
		if err != nil || got.Status != store.RolloutRunning || got.CurrentWave != 0 {
			b.Fatalf("the tick moved the rollout: %+v %v", got, err)
		}
	})
	b.Run("progress", func(b *testing.B) {
		for b.Loop() {
			p, err := e.rolloutProgress(ctx, r)
			if err != nil {
				b.Fatal(err)
			}
			check(p)
		}
	})
}
