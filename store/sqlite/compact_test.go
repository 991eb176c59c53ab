package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// TestCompactionInterrupted stops a compaction after a few of its steps (as
// a crash or a shutdown between steps would) and checks that every record
// is seen exactly once, before and after a restart, and that a later
// compaction finishes the job.
func TestCompactionInterrupted(t *testing.T) {
	saved := compactStepTime
	compactStepTime = 0 // one device per step
	defer func() { compactStepTime = saved }()

	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "thingline.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	const devices = 20
	var ids []int64
	for i := 0; i < devices; i++ {
		d, _, _, err := s.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("d%02d", i)}, store.Credential{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.ID)
	}
	ts := int64(1_000_000)
	put := func(s *Store) {
		t.Helper()
		var recs []store.Record
		for _, id := range ids {
			recs = append(recs, store.Record{DeviceID: id, TS: ts, Values: []store.KV{{Key: "v", Value: json.RawMessage(strconv.FormatInt(ts, 10))}}})
		}
		ts++
		if err := s.AppendTelemetry(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	check := func(s *Store, stage string, want int) {
		t.Helper()
		for _, id := range ids {
			got, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: id, Asc: true, Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			ps := got["v"]
			ok := len(ps) == want
			for i := 1; ok && i < len(ps); i++ {
				ok = ps[i].TS == ps[i-1].TS+1
			}
			if !ok {
				t.Fatalf("%s: device %d has %v; want %d consecutive points", stage, id, ps, want)
			}
			latest, err := s.LatestTelemetry(ctx, id, nil)
			if err != nil || latest["v"].TS != ts-1 {
				t.Fatalf("%s: device %d latest %v, %v; want ts %d", stage, id, latest, err, ts-1)
			}
		}
	}
	for i := 0; i < 3; i++ {
		put(s)
	}
	// On the writer goroutine, as the writer runs steps: start a
	// compaction, move a few devices, then abandon it.
	err = s.do(ctx, &op{exclusive: func(context.Context, *sql.Conn) error {
		s.beginCompaction()
		for i := 0; i < 7; i++ {
			s.compactStep()
		}
		if s.cur == nil || len(s.cur.devs) != devices-7 {
			return fmt.Errorf("compaction after 7 steps: %+v", s.cur)
		}
		s.cur = nil
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if n := s.tail.size(); n != (devices-7)*3 {
		t.Errorf("tail holds %d records after 7 devices moved; want %d", n, (devices-7)*3)
	}
	check(s, "interrupted", 3)
	put(s)
	check(s, "appended", 4)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := s.tail.size(); n != (devices-7)*3+devices {
		t.Errorf("reloaded tail holds %d records; want %d", n, (devices-7)*3+devices)
	}
	check(s, "reopened", 4)
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	check(s, "compacted", 4)
	var marks int
	if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM compacted").Scan(&marks); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.TailRecords != 0 || st.CompactFailures != 0 || marks != 0 {
		t.Errorf("after a whole compaction: %+v, %d device marks left", st, marks)
	}
}

// TestCompactionStepsSpaced checks that a compaction in progress leaves the
// writer to the appends most of the time (compactPause): its steps, run by
// the writer on its own, take at most about a fifth of the compaction's
// wall time; and that a tail grown past twice CompactRecords is compacted
// without pauses.
func TestCompactionStepsSpaced(t *testing.T) {
	saved := compactStepTime
	compactStepTime = 0 // one device per step
	defer func() { compactStepTime = saved }()

	ctx := context.Background()
	const devices = 60
	s, err := OpenOptions(ctx, filepath.Join(t.TempDir(), "thingline.db"),
		Options{CompactRecords: 1_000_000, CompactInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var recs []store.Record
	for i := 0; i < devices; i++ {
		d, _, _, err := s.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("d%02d", i)}, store.Credential{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for ts := int64(1); ts <= 3; ts++ {
			recs = append(recs, store.Record{DeviceID: d.ID, TS: ts, Values: []store.KV{{Key: "v", Value: json.RawMessage("1")}}})
		}
	}
	if err := s.AppendTelemetry(ctx, recs); err != nil {
		t.Fatal(err)
	}

	var waitAfterStep, waitBigTail time.Duration
	begin := time.Now()
	err = s.do(ctx, &op{exclusive: func(context.Context, *sql.Conn) error {
		s.beginCompaction()
		s.compactStep()
		waitAfterStep = s.stepWait(time.Now())
		// The same tail against a CompactRecords it is twice over.
		saved := s.opt.CompactRecords
		s.opt.CompactRecords = devices
		waitBigTail = s.stepWait(time.Now())
		s.opt.CompactRecords = saved
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if waitAfterStep <= 0 {
		t.Errorf("right after a step the next waits %v; want a pause", waitAfterStep)
	}
	if waitBigTail != 0 {
		t.Errorf("with the tail twice CompactRecords the next step waits %v; want none", waitBigTail)
	}
	// The writer runs the remaining steps on its own.
	deadline := time.Now().Add(30 * time.Second)
	for s.Stats().Compactions == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the compaction did not finish in 30s: %+v", s.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	wall, busy := time.Since(begin), s.Stats().CompactTime
	if wall < 3*busy {
		t.Errorf("compaction of %d devices took %v, %v of it in steps; want steps at most a third of the time", devices, wall, busy)
	}
	if n := s.tail.size(); n != 0 {
		t.Errorf("tail holds %d records after the compaction; want 0", n)
	}
}
