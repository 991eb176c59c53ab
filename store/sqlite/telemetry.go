package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/internal/gate"
	"github.com/thingline/thingline/store/sqldb"
)

const (
	// bucketMS is the time span a chunk may cover: chunks never straddle a
	// bucket, so a device sending one very old timestamp cannot create a
	// chunk spanning years that every query would have to read.
	bucketMS = 3_600_000
	// chunkRecords bounds a chunk so that reading the newest points of a
	// busy device reads one small blob.
	chunkRecords = 1024
	// mergeBuckets bounds the buckets merged per compaction, so that one
	// compaction cannot stall appends for long.
	mergeBuckets = 256
)

// tail is the uncompacted telemetry, per device in seq order, mirroring the
// tlog table. It is appended to and emptied only by the writer goroutine
// (after the commits that make it true); queries read it.
type tail struct {
	mu      sync.RWMutex
	byDev   map[int64][]tailRec
	n       int
	deleted map[int64]bool // devices deleted since open: their late records are dropped
}

type tailRec struct {
	seq, ts int64
	kvs     []byte
}

type tailAdd struct {
	dev int64
	rec tailRec
}

func (t *tail) add(adds []tailAdd) {
	if len(adds) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byDev == nil {
		t.byDev = make(map[int64][]tailRec)
	}
	for _, a := range adds {
		if t.deleted[a.dev] {
			continue
		}
		t.byDev[a.dev] = append(t.byDev[a.dev], a.rec)
		t.n++
	}
}

func (t *tail) dropDevice(id int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.deleted == nil {
		t.deleted = make(map[int64]bool)
	}
	t.deleted[id] = true
	t.n -= len(t.byDev[id])
	delete(t.byDev, id)
}

// device returns a copy of the device's tail; the records are immutable.
func (t *tail) device(id int64) []tailRec {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.Clone(t.byDev[id])
}

// upTo returns the device's records with seq ≤ seq (a prefix: they are in
// seq order); the records are immutable.
func (t *tail) upTo(id, seq int64) []tailRec {
	t.mu.RLock()
	defer t.mu.RUnlock()
	recs := t.byDev[id]
	i := sort.Search(len(recs), func(i int) bool { return recs[i].seq > seq })
	return recs[:i:i]
}

// cut drops the records with seq ≤ seq of devs, once they are in chunks.
func (t *tail) cut(devs []int64, seq int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, d := range devs {
		recs := t.byDev[d]
		i := sort.Search(len(recs), func(i int) bool { return recs[i].seq > seq })
		t.n -= i
		if i == len(recs) {
			delete(t.byDev, d)
		} else {
			// A copy, so that the moved records' memory goes.
			t.byDev[d] = slices.Clone(recs[i:])
		}
	}
}

func (t *tail) size() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.n
}

func (s *Store) loadTail(ctx context.Context) error {
	var w int64
	if err := s.db.QueryRowContext(ctx, "SELECT v FROM meta WHERE k='compacted'").Scan(&w); err != nil {
		return fmt.Errorf("sqlite: reading compaction mark: %w", err)
	}
	// Records of devices deleted before a crash stay out of the tail and are
	// dropped from the log by the next compaction.
	devs := map[int64]bool{}
	rows, err := s.db.QueryContext(ctx, "SELECT id FROM devices")
	if err != nil {
		return fmt.Errorf("sqlite: loading devices: %w", err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return fmt.Errorf("sqlite: loading devices: %w", err)
		}
		devs[id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlite: loading devices: %w", err)
	}
	// Devices an unfinished compaction moved: their records up to their
	// mark are in chunks already.
	marks, err := s.compactedMarks(ctx)
	if err != nil {
		return err
	}
	rows, err = s.db.QueryContext(ctx, "SELECT seq, n, data FROM tlog ORDER BY seq")
	if err != nil {
		return fmt.Errorf("sqlite: loading telemetry log: %w", err)
	}
	defer rows.Close()
	var adds []tailAdd
	maxSeq := int64(0)
	for rows.Next() {
		var seq, n int64
		var data []byte
		if err := rows.Scan(&seq, &n, &data); err != nil {
			return fmt.Errorf("sqlite: loading telemetry log: %w", err)
		}
		i := int64(0)
		err := eachLogRecord(data, func(dev, ts int64, kvs []byte) {
			if devs[dev] && seq+i > marks[dev] {
				adds = append(adds, tailAdd{dev: dev, rec: tailRec{seq: seq + i, ts: ts, kvs: kvs}})
			}
			i++
		})
		if err == nil && i != n {
			err = errCorrupt
		}
		if err != nil {
			return fmt.Errorf("sqlite: loading telemetry log row %d: %w", seq, err)
		}
		maxSeq = max(maxSeq, seq+n-1)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlite: loading telemetry log: %w", err)
	}
	s.tail.add(adds)
	s.nextSeq = max(w, maxSeq) + 1
	return nil
}

func (s *Store) compactedMarks(ctx context.Context) (map[int64]int64, error) {
	marks := map[int64]int64{}
	rows, err := s.db.QueryContext(ctx, "SELECT device, seq FROM compacted")
	if err != nil {
		return nil, fmt.Errorf("sqlite: loading compaction marks: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var d, seq int64
		if err := rows.Scan(&d, &seq); err != nil {
			return nil, fmt.Errorf("sqlite: loading compaction marks: %w", err)
		}
		marks[d] = seq
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: loading compaction marks: %w", err)
	}
	return marks, nil
}

// AppendTelemetry appends recs to the log and returns once they are committed.
func (s *Store) AppendTelemetry(ctx context.Context, recs []store.Record) error {
	if len(recs) == 0 {
		return nil
	}
	return s.do(ctx, &op{recs: recs})
}

// AppendTelemetryAsync implements store.AsyncAppender: done runs on the
// syncer goroutine once the WAL holding recs is on disk (on the writer
// goroutine with FullSync, or when the commit fails).
func (s *Store) AppendTelemetryAsync(recs []store.Record, done func(error)) {
	if len(recs) == 0 {
		done(nil)
		return
	}
	o := &op{ctx: context.Background(), recs: recs, cb: done}
	if err := gate.Send(o.ctx, &s.gate, s.ops, o); err != nil {
		done(err)
	}
}

var _ store.AsyncAppender = (*Store)(nil)

// Compact moves the whole telemetry log into chunks now and merges buckets
// that received late chunks. The store also does it on its own; tests and
// benchmarks call it to reach a known layout.
func (s *Store) Compact(ctx context.Context) error {
	o := &op{compact: true, fn: func(context.Context, *sql.Tx) error { return nil }}
	if err := s.do(ctx, o); err != nil {
		return err
	}
	// The compaction runs right after the op's batch; a second empty op
	// queued behind it returns once that compaction is over.
	return s.do(ctx, &op{fn: func(context.Context, *sql.Tx) error { return nil }})
}

// compactStepTime bounds one step of a compaction: the writer commits the
// appends that arrived meanwhile between steps, so an acknowledgement waits
// for at most one step, not for a whole compaction (which, with ten
// thousand devices each sending a reading a second, takes a second or more:
// every device costs a few statements whatever its record count).
var compactStepTime = 2 * time.Millisecond

// compactPause spaces the steps of a compaction: after a step that took d,
// the next waits 4d (the writer commits appends meanwhile), so compaction
// uses at most a fifth of the writer's time. Back to back, the steps of
// one compaction at 10,000 devices × 1 msg/s filled a second with 2–13 ms
// steps, each followed by a group commit whose fsync carried the step's
// pages too: a fifth of that run's acknowledgements over 8 ms came from
// that one second, up to 28 ms (docs/benchmarks.md). Spaced, the same
// compaction takes about five seconds of the thirty between two, and an
// acknowledgement meets at most one step. A tail grown past twice
// CompactRecords (ingest faster than spaced steps move it) is compacted
// back to back, as before.
const compactPause = 4

// compaction is a compaction in progress, owned by the writer goroutine: the
// log up to upTo moves into chunks a few devices per step, each step its own
// transaction recording the devices' marks (table compacted), then steps
// delete the log up to upTo a piece at a time and the last moves the global
// mark, then buckets needing a merge are merged a few per step.
type compaction struct {
	upTo       int64
	devs       []int64 // still to move, ascending
	logFrom    int64   // the log is deleted up to here
	logStarted bool    // logFrom is set
	logDone    bool    // the log is deleted up to upTo and the mark moved
	touched    map[[2]int64]bool
	after      [2]int64 // the merge's place in dirty: the last (device, bucket) read
	merged     int      // buckets merged
	scanned    int      // dirty rows read by the last step, for tests
	start      time.Time
}

// compactDue tells whether a compaction should start: the tail is large, or
// old.
func (s *Store) compactDue() bool {
	n := s.tail.size()
	return n >= s.opt.CompactRecords || (n > 0 && time.Since(s.lastCompact) >= s.opt.CompactInterval)
}

// maybeCompact starts a compaction when one is due and runs a step of the
// one in progress; with force it runs a whole compaction (after finishing
// the one in progress).
func (s *Store) maybeCompact(force bool) {
	if force {
		// Finish the one in progress (it moves an older part of the log),
		// then move everything.
		for s.cur != nil {
			s.compactStep()
		}
		s.beginCompaction()
		for s.cur != nil {
			s.compactStep()
		}
		return
	}
	if s.cur == nil {
		if !s.compactDue() {
			return
		}
		s.beginCompaction()
	} else if s.stepWait(time.Now()) > 0 {
		return
	}
	s.compactStep()
}

// stepWait is how long the next step of the compaction in progress is
// still to wait (see compactPause).
func (s *Store) stepWait(now time.Time) time.Duration {
	if s.tail.size() >= 2*s.opt.CompactRecords {
		return 0
	}
	return s.nextStep.Sub(now)
}

func (s *Store) beginCompaction() {
	s.lastCompact = time.Now()
	s.tail.mu.RLock()
	devs := make([]int64, 0, len(s.tail.byDev))
	for d := range s.tail.byDev {
		devs = append(devs, d)
	}
	s.tail.mu.RUnlock()
	slices.Sort(devs)
	s.cur = &compaction{upTo: s.nextSeq - 1, devs: devs, touched: map[[2]int64]bool{},
		after: [2]int64{math.MinInt64, math.MinInt64}, start: time.Now()}
}

// compactStep runs one step of the compaction in progress.
func (s *Store) compactStep() {
	c := s.cur
	start := time.Now()
	var err error
	done := false
	switch {
	case len(c.devs) > 0:
		err = s.compactDevices(context.Background(), c)
	case !c.logDone:
		err = s.compactLog(context.Background(), c)
	default:
		done, err = s.merge(context.Background(), c)
	}
	took := time.Since(start)
	s.compactNanos.Add(int64(took))
	s.nextStep = time.Now().Add(compactPause * took)
	if err != nil {
		// What was committed is consistent (marks and chunks together);
		// the next compaction moves the rest.
		s.compactFailures.Add(1)
		s.cur = nil
		return
	}
	if done {
		s.compactions.Add(1)
		s.cur = nil
	}
}

// compactDevices moves the log records up to c.upTo of the next few devices
// into chunks and the latest table, in one transaction, then drops them
// from the tail.
func (s *Store) compactDevices(ctx context.Context, c *compaction) error {
	start := time.Now()
	tx, err := s.wconn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: compacting: %w", err)
	}
	defer tx.Rollback()
	st, err := prepareCompaction(ctx, tx)
	if err != nil {
		return err
	}
	var moved []int64
	for len(c.devs) > 0 && (len(moved) == 0 || time.Since(start) < compactStepTime) {
		d := c.devs[0]
		c.devs = c.devs[1:]
		moved = append(moved, d)
		if err := st.device(ctx, d, s.tail.upTo(d, c.upTo), c); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: committing compaction: %w", err)
	}
	s.tail.cut(moved, c.upTo)
	return nil
}

// compactionStmts are the statements of a compaction step.
type compactionStmts struct {
	ins, markDirty, upLatest, exists, mark *sql.Stmt
}

func prepareCompaction(ctx context.Context, tx *sql.Tx) (*compactionStmts, error) {
	var st compactionStmts
	for _, p := range []struct {
		dst **sql.Stmt
		q   string
	}{
		{&st.ins, "INSERT INTO chunk(device, bucket, t_start, t_end, n, data) VALUES (?, ?, ?, ?, ?, ?)"},
		// Chunks written by one compaction never overlap; a bucket that
		// already had one needs a merge once it is closed.
		{&st.markDirty, "INSERT OR IGNORE INTO dirty(device, bucket) SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM chunk WHERE device=?1 AND bucket=?2)"},
		{&st.upLatest, `INSERT INTO latest(device, key, ts, value) VALUES (?, ?, ?, ?)
		ON CONFLICT(device, key) DO UPDATE SET ts=excluded.ts, value=excluded.value WHERE excluded.ts >= latest.ts`},
		{&st.exists, "SELECT EXISTS (SELECT 1 FROM devices WHERE id=?)"},
		{&st.mark, "INSERT OR REPLACE INTO compacted(device, seq) VALUES (?, ?)"},
	} {
		var err error
		if *p.dst, err = tx.PrepareContext(ctx, p.q); err != nil {
			return nil, fmt.Errorf("sqlite: compacting: %w", err)
		}
	}
	return &st, nil
}

// device writes one device's records (its log records up to c.upTo, in seq
// order) as chunks and latest values, and its mark.
func (st *compactionStmts) device(ctx context.Context, d int64, recs []tailRec, c *compaction) error {
	var ok bool
	if err := st.exists.QueryRowContext(ctx, d).Scan(&ok); err != nil {
		return fmt.Errorf("sqlite: compacting: %w", err)
	}
	if !ok || len(recs) == 0 {
		return nil // deleted: its log rows go with the others at the end
	}
	type lv struct {
		ts int64
		v  []byte
	}
	// Group by bucket, keeping seq order inside each.
	byBucket := map[int64][]tailRec{}
	var buckets []int64
	latest := map[string]*lv{}
	for _, r := range recs {
		b := bucketOf(r.ts)
		if _, seen := byBucket[b]; !seen {
			buckets = append(buckets, b)
		}
		byBucket[b] = append(byBucket[b], r)
		eachKV(r.kvs, func(k, v []byte) {
			if cur := latest[string(k)]; cur == nil {
				latest[string(k)] = &lv{r.ts, v}
			} else if r.ts >= cur.ts {
				cur.ts, cur.v = r.ts, v
			}
		})
	}
	slices.Sort(buckets)
	for _, b := range buckets {
		c.touched[[2]int64{d, b}] = true
		if _, err := st.markDirty.ExecContext(ctx, d, b); err != nil {
			return fmt.Errorf("sqlite: compacting: %w", err)
		}
		if err := insertChunks(ctx, st.ins, d, b, byBucket[b]); err != nil {
			return err
		}
	}
	keys := make([]string, 0, len(latest))
	for k := range latest {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if _, err := st.upLatest.ExecContext(ctx, d, k, latest[k].ts, latest[k].v); err != nil {
			return fmt.Errorf("sqlite: compacting latest: %w", err)
		}
	}
	if _, err := st.mark.ExecContext(ctx, d, c.upTo); err != nil {
		return fmt.Errorf("sqlite: compacting: %w", err)
	}
	return nil
}

// logPiece is the log deleted per statement by compactLog, in records:
// deleting a 10,000-device fleet's thirty seconds (300,000 records) in one
// statement took 4 ms, twice a step's budget. A variable for tests.
var logPiece int64 = 32_768

// compactLog ends the moving part of a compaction: every device's records
// up to c.upTo are in chunks, so the log rows go, a piece at a time until
// the step's time is spent, and then the global mark replaces the
// devices' own. A crash between pieces loses nothing: every device's own
// mark already covers the rows deleted, and the rest are deleted by the
// next compaction.
func (s *Store) compactLog(ctx context.Context, c *compaction) error {
	start := time.Now()
	tx, err := s.wconn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: compacting: %w", err)
	}
	defer tx.Rollback()
	if !c.logStarted {
		// From the oldest row: rows an interrupted compaction left are
		// older than the last mark.
		if err := tx.QueryRowContext(ctx, "SELECT coalesce(min(seq)-1, ?1) FROM tlog WHERE seq <= ?1", c.upTo).Scan(&c.logFrom); err != nil {
			return fmt.Errorf("sqlite: compacting: %w", err)
		}
		c.logStarted = true
	}
	from := c.logFrom
	for from < c.upTo && (from == c.logFrom || time.Since(start) < compactStepTime) {
		to := min(c.upTo, from+logPiece)
		// A row holds seqs seq..seq+n-1, all at most upTo: rows are
		// deleted by their first seq.
		if _, err := tx.ExecContext(ctx, "DELETE FROM tlog WHERE seq > ?1 AND seq <= ?2", from, to); err != nil {
			return fmt.Errorf("sqlite: compacting: %w", err)
		}
		from = to
	}
	// The mark moves in this step if time is left, or in the next.
	last := from == c.upTo && (from == c.logFrom || time.Since(start) < compactStepTime)
	if last {
		for _, q := range []string{
			"UPDATE meta SET v=?1 WHERE k='compacted'",
			"DELETE FROM compacted WHERE seq <= ?1",
		} {
			if _, err := tx.ExecContext(ctx, q, c.upTo); err != nil {
				return fmt.Errorf("sqlite: compacting: %w", err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: committing compaction: %w", err)
	}
	c.logFrom = from
	c.logDone = last
	return nil
}

func bucketOf(ts int64) int64 {
	b := ts / bucketMS
	if ts < 0 && ts%bucketMS != 0 {
		b--
	}
	return b
}

// insertChunks writes rs (one device, one bucket) as chunks, sorted by time
// so that a chunk's points come out in order without sorting on reads.
func insertChunks(ctx context.Context, ins *sql.Stmt, dev, bucket int64, rs []tailRec) error {
	rs = slices.Clone(rs)
	slices.SortStableFunc(rs, func(a, b tailRec) int {
		switch {
		case a.ts < b.ts:
			return -1
		case a.ts > b.ts:
			return 1
		}
		return 0
	})
	for len(rs) > 0 {
		n := min(len(rs), chunkRecords)
		var recs []byte
		for _, r := range rs[:n] {
			recs = appendRecord(recs, r.ts, r.kvs)
		}
		if _, err := ins.ExecContext(ctx, dev, bucket, rs[0].ts, rs[n-1].ts, n, encodeChunk(recs)); err != nil {
			return fmt.Errorf("sqlite: writing chunk: %w", err)
		}
		rs = rs[n:]
	}
	return nil
}

// mergePage is the rows of dirty read at once by a merge.
const mergePage = 256

// merge rewrites buckets holding several chunks into as few full chunks as
// possible, once the bucket is in the past and was not written by this
// compaction: a bucket still being written (the current hour, or a past
// one a device is filling with backdated records) would need merging again
// at every compaction, rewriting all its records each time. One step
// merges what fits in compactStepTime, up to mergeBuckets per compaction;
// done tells that no bucket is left for this compaction.
//
// The steps walk dirty in key order from where the last one stopped, a
// page at a time: a fleet whose every device writes to a past bucket (one
// uploading what it buffered, or backdated readings) leaves a dirty row per
// device that this compaction touched and must skip, and reading them all
// in one step took 4–5 ms for 10,000 devices.
func (s *Store) merge(ctx context.Context, c *compaction) (done bool, err error) {
	start := time.Now()
	c.scanned = 0
	tx, err := s.wconn.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("sqlite: merging: %w", err)
	}
	defer tx.Rollback()
	now := bucketOf(time.Now().UnixMilli())
	var ins *sql.Stmt
	for !done && (c.scanned == 0 || time.Since(start) < compactStepTime) {
		page, err := dirtyPage(ctx, tx, c.after, now)
		if err != nil {
			return false, err
		}
		c.scanned += len(page)
		done = len(page) < mergePage
		for k, x := range page {
			c.after = x
			if c.touched[x] {
				continue
			}
			if ins == nil {
				if ins, err = tx.PrepareContext(ctx, "INSERT INTO chunk(device, bucket, t_start, t_end, n, data) VALUES (?, ?, ?, ?, ?, ?)"); err != nil {
					return false, fmt.Errorf("sqlite: merging: %w", err)
				}
			}
			if err := mergeBucket(ctx, tx, ins, x[0], x[1]); err != nil {
				return false, err
			}
			c.merged++
			if c.merged >= mergeBuckets {
				done = true
				break
			}
			if time.Since(start) >= compactStepTime {
				done = done && k == len(page)-1
				break
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("sqlite: committing merge: %w", err)
	}
	return done, nil
}

// dirtyPage reads up to mergePage buckets of dirty after the one given,
// in key order, of hours before now.
func dirtyPage(ctx context.Context, tx *sql.Tx, after [2]int64, now int64) ([][2]int64, error) {
	rows, err := tx.QueryContext(ctx, `SELECT device, bucket FROM dirty
		WHERE (device, bucket) > (?1, ?2) AND bucket < ?3 ORDER BY device, bucket LIMIT ?4`,
		after[0], after[1], now, mergePage)
	if err != nil {
		return nil, fmt.Errorf("sqlite: merging: %w", err)
	}
	defer rows.Close()
	var page [][2]int64
	for rows.Next() {
		var x [2]int64
		if err := rows.Scan(&x[0], &x[1]); err != nil {
			return nil, fmt.Errorf("sqlite: merging: %w", err)
		}
		page = append(page, x)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: merging: %w", err)
	}
	return page, nil
}

// mergeBucket rewrites the chunks of one device's bucket.
func mergeBucket(ctx context.Context, tx *sql.Tx, ins *sql.Stmt, d, b int64) error {
	var rs []tailRec
	crows, err := tx.QueryContext(ctx, "SELECT data FROM chunk WHERE device=? AND bucket=? ORDER BY id", d, b)
	if err != nil {
		return fmt.Errorf("sqlite: merging: %w", err)
	}
	for crows.Next() {
		var data []byte
		if err := crows.Scan(&data); err != nil {
			crows.Close()
			return fmt.Errorf("sqlite: merging: %w", err)
		}
		recs, err := chunkRecordsOf(data)
		if err == nil {
			err = eachRecord(recs, func(ts int64, kvs []byte) error {
				rs = append(rs, tailRec{ts: ts, kvs: kvs})
				return nil
			})
		}
		if err != nil {
			crows.Close()
			return fmt.Errorf("sqlite: merging: %w", err)
		}
	}
	crows.Close()
	if err := crows.Err(); err != nil {
		return fmt.Errorf("sqlite: merging: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM chunk WHERE device=? AND bucket=?", d, b); err != nil {
		return fmt.Errorf("sqlite: merging: %w", err)
	}
	if err := insertChunks(ctx, ins, d, b, rs); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM dirty WHERE device=? AND bucket=?", d, b); err != nil {
		return fmt.Errorf("sqlite: merging: %w", err)
	}
	return nil
}

// snapshotTail returns the device's uncompacted records not yet in chunks as
// seen by tx. The tail is copied before tx's first read: a compaction
// committing in between then shows up as a higher mark in tx, and the
// records it moved are filtered out here instead of being counted twice.
func (s *Store) readTx(ctx context.Context, dev int64) (*sql.Tx, []tailRec, error) {
	t := s.tail.device(dev)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, nil, err
	}
	// The device's mark: the global one, or its own if a compaction in
	// progress moved it already.
	var w int64
	if err := tx.QueryRowContext(ctx, `SELECT max(v, coalesce((SELECT seq FROM compacted WHERE device=?), 0))
		FROM meta WHERE k='compacted'`, dev).Scan(&w); err != nil {
		tx.Rollback()
		return nil, nil, err
	}
	i := sort.Search(len(t), func(i int) bool { return t[i].seq > w })
	return tx, t[i:], nil
}

// LatestTelemetry returns the newest point of each key.
func (s *Store) LatestTelemetry(ctx context.Context, deviceID int64, keys []string) (map[string]store.Point, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	tx, t, err := s.readTx(ctx, deviceID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: reading latest telemetry: %w", err)
	}
	defer tx.Rollback()
	want := keySet(keys)
	out := map[string]store.Point{}
	rows, err := tx.QueryContext(ctx, "SELECT key, ts, value FROM latest WHERE device=?", deviceID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: reading latest telemetry: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var p store.Point
		var v []byte
		if err := rows.Scan(&k, &p.TS, &v); err != nil {
			return nil, fmt.Errorf("sqlite: reading latest telemetry: %w", err)
		}
		if want == nil || want[k] {
			p.Value = v
			out[k] = p
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: reading latest telemetry: %w", err)
	}
	for _, r := range t {
		eachKV(r.kvs, func(k, v []byte) {
			if want != nil && !want[string(k)] {
				return
			}
			if cur, ok := out[string(k)]; !ok || r.ts >= cur.TS {
				out[string(k)] = store.Point{TS: r.ts, Value: clone(v)}
			}
		})
	}
	return out, nil
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

func keySet(keys []string) map[string]bool {
	if len(keys) == 0 {
		return nil
	}
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// QueryTelemetry returns up to q.Limit points per key in [q.From, q.To]
// (q.To of 0 means no upper bound).
func (s *Store) QueryTelemetry(ctx context.Context, q store.TelemetryQuery) (map[string][]store.Point, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	limit := sqldb.Limit(q.Limit)
	to := q.To
	if to == 0 {
		to = math.MaxInt64
	}
	tx, t, err := s.readTx(ctx, q.DeviceID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: querying telemetry: %w", err)
	}
	defer tx.Rollback()
	want := keySet(q.Keys)
	acc := newAccumulator(limit, q.Asc)
	for _, r := range t {
		if r.ts < q.From || r.ts > to {
			continue
		}
		acc.addRecord(r.ts, r.kvs, want)
	}
	// Only compacted keys (all in latest) can be in chunks: the stop rule
	// waits for those alone, so that asking for a key the device never sent
	// does not read its whole history.
	rows, err := tx.QueryContext(ctx, "SELECT key FROM latest WHERE device=?", q.DeviceID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: querying telemetry: %w", err)
	}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sqlite: querying telemetry: %w", err)
		}
		if want == nil || want[k] {
			acc.need(k)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: querying telemetry: %w", err)
	}
	// Chunks are read in the order of the answer; once every key has enough
	// points beyond the next chunk's bound, no further chunk can change it.
	query := "SELECT t_end, data FROM chunk WHERE device=? AND t_end >= ? AND t_start <= ? ORDER BY t_end DESC"
	if q.Asc {
		query = "SELECT t_start, data FROM chunk WHERE device=? AND t_start <= ? AND t_end >= ? ORDER BY t_start ASC"
	}
	if q.Asc {
		rows, err = tx.QueryContext(ctx, query, q.DeviceID, to, q.From)
	} else {
		rows, err = tx.QueryContext(ctx, query, q.DeviceID, q.From, to)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: querying telemetry: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var bound int64
		var data []byte
		if err := rows.Scan(&bound, &data); err != nil {
			return nil, fmt.Errorf("sqlite: querying telemetry: %w", err)
		}
		if acc.complete(bound) {
			break
		}
		recs, err := chunkRecordsOf(data)
		if err != nil {
			return nil, fmt.Errorf("sqlite: querying telemetry: %w", err)
		}
		err = eachRecord(recs, func(ts int64, kvs []byte) error {
			if ts >= q.From && ts <= to {
				acc.addRecord(ts, kvs, want)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("sqlite: querying telemetry: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: querying telemetry: %w", err)
	}
	return acc.result(), nil
}

// accumulator collects points per key and knows when a query has enough.
type accumulator struct {
	limit  int
	asc    bool
	pts    map[string][]store.Point
	needed []string // the keys chunks may still hold points of
}

func newAccumulator(limit int, asc bool) *accumulator {
	return &accumulator{limit: limit, asc: asc, pts: map[string][]store.Point{}}
}

func (a *accumulator) need(k string) { a.needed = append(a.needed, k) }

func (a *accumulator) addRecord(ts int64, kvs []byte, want map[string]bool) {
	eachKV(kvs, func(k, v []byte) {
		if want == nil || want[string(k)] {
			a.pts[string(k)] = append(a.pts[string(k)], store.Point{TS: ts, Value: clone(v)})
		}
	})
}

// complete tells whether every key already has limit points strictly beyond
// bound (newer for descending, older for ascending): every point still unread
// lies at or before bound, so it could not make the cut.
func (a *accumulator) complete(bound int64) bool {
	for _, k := range a.needed {
		ps := a.pts[k]
		n := 0
		for _, p := range ps {
			if (!a.asc && p.TS > bound) || (a.asc && p.TS < bound) {
				n++
			}
		}
		if n < a.limit {
			return false
		}
	}
	return true
}

func (a *accumulator) result() map[string][]store.Point {
	out := make(map[string][]store.Point, len(a.pts))
	for k, ps := range a.pts {
		if len(ps) == 0 {
			continue
		}
		slices.SortStableFunc(ps, func(x, y store.Point) int {
			switch {
			case x.TS < y.TS:
				return -1
			case x.TS > y.TS:
				return 1
			}
			return 0
		})
		if !a.asc {
			slices.Reverse(ps)
		}
		if len(ps) > a.limit {
			ps = ps[:a.limit]
		}
		out[k] = ps
	}
	return out
}
