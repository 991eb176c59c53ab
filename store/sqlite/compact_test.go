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
	const devices = 20
	// Where the compaction stops, on the writer goroutine, as the writer
	// runs steps; and the records left in the tail then.
	for _, tc := range []struct {
		name     string
		stop     func(s *Store) error
		wantTail int
	}{
		{"moving devices", func(s *Store) error {
			for i := 0; i < 7; i++ {
				s.compactStep()
			}
			if s.cur == nil || len(s.cur.devs) != devices-7 {
				return fmt.Errorf("compaction after 7 steps: %+v", s.cur)
			}
			return nil
		}, (devices - 7) * 3},
		{"deleting the log", func(s *Store) error {
			for i := 0; i < devices; i++ {
				s.compactStep()
			}
			s.compactStep() // one piece of the log: one append's rows
			if s.cur == nil || len(s.cur.devs) != 0 || s.cur.logDone || s.cur.logFrom >= s.cur.upTo {
				return fmt.Errorf("compaction after a piece of its log: %+v", s.cur)
			}
			var rows int
			if err := s.db.QueryRow("SELECT count(*) FROM tlog").Scan(&rows); err != nil || rows != 2 {
				return fmt.Errorf("log rows after a piece deleted: %d, %v; want 2", rows, err)
			}
			return nil
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testCompactionInterrupted(t, devices, tc.stop, tc.wantTail)
		})
	}
}

func testCompactionInterrupted(t *testing.T, devices int, stop func(*Store) error, wantTail int) {
	saved, savedPiece := compactStepTime, logPiece
	compactStepTime = 0 // one device, one piece of the log per step
	logPiece = int64(devices)
	defer func() { compactStepTime, logPiece = saved, savedPiece }()

	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "thingline.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	ids := makeDevices(t, s, devices)
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
	// compaction, run it to where it stops, then abandon it.
	err = s.do(ctx, &op{exclusive: func(context.Context, *sql.Conn) error {
		s.beginCompaction()
		err := stop(s)
		s.cur = nil
		return err
	}})
	if err != nil {
		t.Fatal(err)
	}
	if n := s.tail.size(); n != wantTail {
		t.Errorf("tail holds %d records after the compaction stopped; want %d", n, wantTail)
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
	if n := s.tail.size(); n != wantTail+devices {
		t.Errorf("reloaded tail holds %d records; want %d", n, wantTail+devices)
	}
	check(s, "reopened", 4)
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	check(s, "compacted", 4)
	var marks, rows int
	if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM compacted").Scan(&marks); err != nil {
		t.Fatal(err)
	}
	if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM tlog").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.TailRecords != 0 || st.CompactFailures != 0 || marks != 0 || rows != 0 {
		t.Errorf("after a whole compaction: %+v, %d device marks and %d log rows left", st, marks, rows)
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
	for _, id := range makeDevices(t, s, devices) {
		for ts := int64(1); ts <= 3; ts++ {
			recs = append(recs, store.Record{DeviceID: id, TS: ts, Values: []store.KV{{Key: "v", Value: json.RawMessage("1")}}})
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

// TestMergeWalksDirty checks that the merge of a compaction reads dirty a
// page at a time from where its last step stopped, skipping the buckets
// this compaction wrote: with every device writing to a past hour, the
// dirty rows to skip are one per device, and a step must not read them
// all. Buckets beyond the first page that this compaction left alone are
// merged all the same.
func TestMergeWalksDirty(t *testing.T) {
	saved := compactStepTime
	compactStepTime = 0 // one bucket merged, or one page read, per step
	defer func() { compactStepTime = saved }()

	ctx := context.Background()
	s, err := OpenOptions(ctx, filepath.Join(t.TempDir(), "thingline.db"),
		Options{CompactRecords: 1_000_000, CompactInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const devices, quiet = mergePage + 40, 10 // the last quiet devices stop writing
	ids := makeDevices(t, s, devices)
	// Two days ago, one hour's bucket.
	ts := time.Now().Add(-48*time.Hour).Truncate(time.Hour).UnixMilli() + 1000
	put := func(ids []int64) {
		t.Helper()
		var recs []store.Record
		for _, id := range ids {
			recs = append(recs, store.Record{DeviceID: id, TS: ts, Values: []store.KV{{Key: "v", Value: json.RawMessage("1")}}})
		}
		ts++
		if err := s.AppendTelemetry(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	// A whole compaction, on the writer goroutine, step by step; the most
	// dirty rows a merge step read.
	compact := func() (maxScanned int) {
		t.Helper()
		err := s.do(ctx, &op{exclusive: func(context.Context, *sql.Conn) error {
			s.beginCompaction()
			for s.cur != nil {
				merging := s.cur.logDone
				c := s.cur
				s.compactStep()
				if merging {
					maxScanned = max(maxScanned, c.scanned)
				}
			}
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		return maxScanned
	}
	chunks := func(id int64) (n int) {
		t.Helper()
		if err := s.db.QueryRow("SELECT count(*) FROM chunk WHERE device=?", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	put(ids)
	compact() // a chunk each
	put(ids)
	if n := compact(); n > mergePage {
		t.Errorf("a merge step read %d dirty rows; want at most a page (%d)", n, mergePage)
	}
	put(ids[:devices-quiet])
	if n := compact(); n > mergePage {
		t.Errorf("a merge step read %d dirty rows; want at most a page (%d)", n, mergePage)
	}
	for i, id := range ids {
		want := 3 // written by the last compaction: not merged yet
		if i >= devices-quiet {
			want = 1
		}
		if got := chunks(id); got != want {
			t.Errorf("device %d: %d chunks; want %d", i, got, want)
		}
	}
	var dirty int
	if err := s.db.QueryRow("SELECT count(*) FROM dirty").Scan(&dirty); err != nil {
		t.Fatal(err)
	}
	if dirty != devices-quiet {
		t.Errorf("%d buckets left dirty; want %d", dirty, devices-quiet)
	}
	got, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: ids[devices-1], Asc: true})
	if err != nil {
		t.Fatal(err)
	}
	if ps := got["v"]; len(ps) != 2 {
		t.Errorf("a merged bucket reads %v; want its 2 points", ps)
	}
}

// makeDevices makes n devices and returns their IDs, in ascending order.
func makeDevices(t *testing.T, s *Store, n int) []int64 {
	t.Helper()
	ids := make([]int64, 0, n)
	for i := range n {
		d, _, _, err := s.EnsureDevice(context.Background(), store.Device{Name: fmt.Sprintf("d%04d", i)}, store.Credential{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.ID)
	}
	return ids
}
