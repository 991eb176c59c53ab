package sqlite_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
	"github.com/thingline/thingline/store/storetest"
)

func open(t *testing.T) store.Store {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "thingline.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) { storetest.Run(t, open) }

// TestCrashFullSync runs the kill -9 test with SQLite syncing inside COMMIT.
func TestCrashFullSync(t *testing.T) {
	storetest.Crash(t,
		func(t *testing.T) string { return filepath.Join(t.TempDir(), "thingline.db") },
		func(ctx context.Context, path string) (store.Store, error) {
			return sqlite.OpenOptions(ctx, path, sqlite.Options{FullSync: true})
		})
}

// TestReopen checks what a restart reloads: the uncompacted log (including
// records of a device deleted meanwhile, which must stay invisible) next to
// compacted chunks, and the sequence numbers continuing after both.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "thingline.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	keep, _, _, err := s.EnsureDevice(ctx, store.Device{Name: "keep"}, store.Credential{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	gone, _, _, err := s.EnsureDevice(ctx, store.Device{Name: "gone"}, store.Credential{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	put := func(s *sqlite.Store, id, ts int64) {
		t.Helper()
		err := s.AppendTelemetry(ctx, []store.Record{{DeviceID: id, TS: ts, Values: []store.KV{{Key: "v", Value: json.RawMessage(strconv.FormatInt(ts, 10))}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	put(s, keep.ID, 1)
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	put(s, keep.ID, 2)
	put(s, gone.ID, 2)
	if err := s.DeleteDevice(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	put(s, gone.ID, 3) // late, after the deletion
	if err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path + "-wal"); err != nil || fi.Size() != 0 {
		t.Errorf("WAL after a truncating checkpoint: %v, %v", fi, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st := s.Stats(); st.TailRecords != 1 {
		t.Errorf("reloaded tail holds %d records; want keep's one", st.TailRecords)
	}
	check := func(stage string) {
		t.Helper()
		got, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: keep.ID, Asc: true})
		if err != nil {
			t.Fatal(err)
		}
		if ps := got["v"]; len(ps) != 3 || ps[0].TS != 1 || ps[1].TS != 2 || ps[2].TS != 4 {
			t.Errorf("%s: keep = %v; want ts 1, 2, 4", stage, ps)
		}
		got, err = s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: gone.ID})
		if err != nil || len(got) != 0 {
			t.Errorf("%s: deleted device's telemetry = %v, %v", stage, got, err)
		}
	}
	put(s, keep.ID, 4)
	check("reopened")
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	check("compacted")
	if st := s.Stats(); st.TailRecords != 0 || st.CompactFailures != 0 {
		t.Errorf("after compaction: %+v", st)
	}
}

func TestCrash(t *testing.T) {
	storetest.Crash(t,
		func(t *testing.T) string { return filepath.Join(t.TempDir(), "thingline.db") },
		func(ctx context.Context, path string) (store.Store, error) { return sqlite.Open(ctx, path) })
}

// BenchmarkAppend: go test ./store/sqlite -run '^$' -bench Append -benchtime 400000x
func BenchmarkAppend(b *testing.B) {
	b.Run("pipelined", func(b *testing.B) { benchAppend(b, sqlite.Options{}) })
	b.Run("fullsync", func(b *testing.B) { benchAppend(b, sqlite.Options{FullSync: true}) })
}

func benchAppend(b *testing.B, opt sqlite.Options) {
	s, err := sqlite.OpenOptions(context.Background(), filepath.Join(b.TempDir(), "thingline.db"), opt)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var st0 sqlite.Stats
	storetest.BenchAppend(b, s, 1000, 1024, func() { st0 = s.Stats() })
	st := s.Stats()
	batches := float64(max(1, st.Batches-st0.Batches))
	b.ReportMetric(float64(st.Records-st0.Records)/batches, "recs/commit")
	b.ReportMetric(float64((st.CommitTime-st0.CommitTime).Microseconds())/batches, "µs/commit")
	syncs := batches // with FullSync, every commit syncs
	if st.Syncs > 0 {
		syncs = float64(max(1, st.Syncs-st0.Syncs))
	}
	b.ReportMetric(float64(st.Records-st0.Records)/syncs, "recs/sync")
	b.ReportMetric(float64((st.SyncTime-st0.SyncTime).Microseconds())/syncs, "µs/sync")
	b.ReportMetric(float64((st.CompactTime - st0.CompactTime).Milliseconds()), "compact-ms")
}

// BenchmarkQuery: go test ./store/sqlite -run '^$' -bench Query
func BenchmarkQuery(b *testing.B) {
	path := filepath.Join(b.TempDir(), "thingline.db")
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	storetest.BenchQuery(b, s, 100, 10000, func() {
		// The space a compacted record takes, WAL checkpointed.
		if err := s.Checkpoint(context.Background()); err != nil {
			b.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("database file: %d bytes for 1,000,000 records of 3 keys (%.1f bytes/record)", fi.Size(), float64(fi.Size())/1e6)
	})
}

// TestMergeQuietBuckets checks when a past bucket's chunks are merged: not
// while a device keeps writing backdated records into it (that would
// rewrite the whole bucket at every compaction), but at the first
// compaction that does not touch it.
func TestMergeQuietBuckets(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "thingline.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dev, _, _, err := s.EnsureDevice(ctx, store.Device{Name: "backfill"}, store.Credential{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	chunks := func() (n int) {
		t.Helper()
		if err := raw.QueryRow("SELECT count(*) FROM chunk WHERE device=?", dev.ID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Two days ago, one hour's bucket, filled over three compactions.
	base := time.Now().Add(-48*time.Hour).Truncate(time.Hour).UnixMilli() + 1000
	for i := range 3 {
		if err := s.AppendTelemetry(ctx, []store.Record{{DeviceID: dev.ID, TS: base + int64(i),
			Values: []store.KV{{Key: "v", Value: json.RawMessage(strconv.Itoa(i))}}}}); err != nil {
			t.Fatal(err)
		}
		if err := s.Compact(ctx); err != nil {
			t.Fatal(err)
		}
		if got := chunks(); got != i+1 {
			t.Fatalf("after compaction %d of a bucket being written: %d chunks, want %d (not merged yet)", i+1, got, i+1)
		}
	}
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if got := chunks(); got != 1 {
		t.Errorf("after a compaction that left the bucket alone: %d chunks, want 1 (merged)", got)
	}
	got, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: dev.ID, Asc: true})
	if err != nil {
		t.Fatal(err)
	}
	if ps := got["v"]; len(ps) != 3 || ps[0].TS != base || ps[2].TS != base+2 {
		t.Errorf("merged bucket reads %v", ps)
	}
}

// TestReopenKeepsAlarmRuleStates: a rule's state outlives a restart, so
// that the rule's timers do too (docs/alarms.md).
func TestReopenKeepsAlarmRuleStates(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "thingline.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	d, _, _, err := s.EnsureDevice(ctx, store.Device{Name: "hot", Profile: "default"}, store.Credential{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.AddAlarmRule(ctx, store.AlarmRule{Profile: "default", Type: "hot", Key: "temperature", Severity: store.SeverityMajor,
		Raise: store.Condition{Op: ">", Value: json.RawMessage("40"), Duration: store.Duration(time.Minute)}})
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	want := store.AlarmRuleState{DeviceID: d.ID, RuleID: r.ID, RaiseSince: since, Episode: store.RuleRaised, EpisodeTime: since.Add(time.Minute), ValueTS: 42}
	if err := s.PutAlarmRuleStates(ctx, []store.AlarmRuleState{want}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.AlarmRuleStates(ctx, []int64{d.ID})
	if err != nil || len(got) != 1 || got[0].RuleID != r.ID || !got[0].RaiseSince.Equal(since) || got[0].Episode != store.RuleRaised ||
		!got[0].EpisodeTime.Equal(want.EpisodeTime) || got[0].ValueTS != 42 {
		t.Fatalf("after reopening: %+v, %v; want [%+v]", got, err, want)
	}
}

// BenchmarkEnsureDevice: go test ./store/sqlite -run '^$' -bench EnsureDevice -benchtime 4000x
func BenchmarkEnsureDevice(b *testing.B) {
	s, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "t.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	storetest.BenchEnsureDevice(b, s, 32)
}
