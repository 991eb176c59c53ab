// Package sqlite is the embedded store: one SQLite file in WAL mode.
//
// Every write goes through one writer goroutine holding the only write
// connection. It commits whatever callers are waiting in one transaction
// (group commit), so that one fsync acknowledges many MQTT messages, and no
// two writers ever contend for SQLite's single write lock.
//
// Telemetry is first appended to an ingest log keyed only by its sequence
// number (cheap to append, durable at commit) and kept in memory as a "tail"
// per device; a compactor moves the log into per-device chunks and the
// latest-value table. Queries merge chunks with the tail. See docs/storage.md.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/internal/gate"
	"github.com/thingline/thingline/store/sqldb"
)

// Options tunes a Store; the zero value gives the defaults.
type Options struct {
	// MaxBatch bounds the records (or other writes) committed in one
	// transaction. Default 4096.
	MaxBatch int
	// CompactRecords starts a compaction once the uncompacted tail holds
	// this many records. Default 300,000 (about 30 MB of memory).
	CompactRecords int
	// CompactInterval starts a compaction when the tail is this old.
	// Default 30s. A compaction costs a few statements per device whatever
	// its record count: with ten thousand devices each sending a reading a
	// second, compacting every 10 s cost 10–16 µs of CPU per message, every
	// 30 s a third of that.
	CompactInterval time.Duration
	// FullSync makes SQLite fsync the WAL inside every COMMIT
	// (synchronous=FULL) instead of the store syncing it on the side while
	// the next batch is written: as fast when fsyncs are quick, slower when
	// they are slow; kept to compare and as a fallback.
	FullSync bool
	// CommitGap spaces commits under load: a commit starts at least this
	// long after the previous one (unless its batch is already large), so
	// that the messages of many devices share a commit and an fsync instead
	// of a few each. A commit after a quiet spell does not wait. Default
	// 1 ms (2 ms measured a little less CPU and a millisecond more latency
	// at every percentile); negative: no gap.
	CommitGap time.Duration
}

func (o *Options) defaults() {
	if o.MaxBatch <= 0 {
		o.MaxBatch = 4096
	}
	if o.CompactRecords <= 0 {
		o.CompactRecords = 300_000
	}
	if o.CompactInterval <= 0 {
		o.CompactInterval = 30 * time.Second
	}
	if o.CommitGap == 0 {
		o.CommitGap = time.Millisecond
	}
}

// Store is a store.Store on one SQLite file.
type Store struct {
	// The device store and the control-plane tables shared with
	// store/postgres; their writes go through the writer goroutine like
	// every other write.
	*sqldb.Tables

	opt   Options
	db    *sql.DB   // readers
	wconn *sql.Conn // the writer goroutine's only connection

	gate gate.Gate // sends on ops end before Close stops the writer
	ops  chan *op
	quit chan struct{}
	done chan struct{}

	// Pipelined sync: the writer hands committed batches to the syncer,
	// which fsyncs the WAL through its own descriptor and only then wakes
	// their callers. See docs/storage.md for why this is as durable as
	// synchronous=FULL.
	wal        *os.File
	walSync    walSyncer
	syncq      chan []*op
	syncerDone chan struct{}
	syncBusy   atomic.Bool   // an fsync runs or batches wait for one
	syncIdle   chan struct{} // signalled (cap 1) when the syncer runs dry

	// Checkpoints run on a connection of their own (see checkpointer).
	ckConn *sql.Conn
	ckWake chan struct{} // capacity 1: the writer committed
	ckQuit chan struct{}
	ckDone chan struct{}

	tail tail

	// Owned by the writer goroutine.
	addBuf      []tailAdd // a batch's records, reused
	endBuf      []int     // where each record's values end in the batch's chunk
	logBuf      []byte    // a batch's encoded log rows, reused
	nextSeq     int64
	lastCompact time.Time
	cur         *compaction // in progress, or nil
	nextStep    time.Time   // the earliest of its next step (compactPause)

	batches, records, syncs, compactions, compactFailures atomic.Int64
	commitNanos, syncNanos, compactNanos                  atomic.Int64
}

// Stats are counters of the write path since Open, for metrics and for
// tuning.
type Stats struct {
	Batches         int64         // transactions committed by the writer
	Records         int64         // telemetry records committed
	CommitTime      time.Duration // total time spent committing batches
	SyncTime        time.Duration // time spent making the WAL durable (in COMMIT with FullSync)
	Syncs           int64         // WAL fsyncs by the store (0 with FullSync)
	Compactions     int64
	CompactFailures int64
	CompactTime     time.Duration
	TailRecords     int // records in the log, not yet compacted
}

// Stats returns the write path's counters.
func (s *Store) Stats() Stats {
	return Stats{
		Batches:         s.batches.Load(),
		Records:         s.records.Load(),
		CommitTime:      time.Duration(s.commitNanos.Load()),
		SyncTime:        time.Duration(s.syncNanos.Load()),
		Syncs:           s.syncs.Load(),
		Compactions:     s.compactions.Load(),
		CompactFailures: s.compactFailures.Load(),
		CompactTime:     time.Duration(s.compactNanos.Load()),
		TailRecords:     s.tail.size(),
	}
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the store at path with default options.
func Open(ctx context.Context, path string) (*Store, error) {
	return OpenOptions(ctx, path, Options{})
}

// OpenOptions opens the store at path.
func OpenOptions(ctx context.Context, path string, opt Options) (*Store, error) {
	opt.defaults()
	if err := privateFiles(path); err != nil {
		return nil, fmt.Errorf("sqlite: opening %s: %w", path, err)
	}
	// In WAL mode, synchronous=NORMAL does not fsync the WAL at commit (it
	// still syncs the WAL before and the database after every checkpoint).
	// The syncer then fsyncs the WAL before any caller is acknowledged:
	// recovery replays a prefix of the committed transactions, and that
	// prefix includes every transaction written before the fsync.
	q := url.Values{}
	q.Set("_journal_mode", "WAL")
	if opt.FullSync {
		q.Set("_synchronous", "FULL")
	} else {
		q.Set("_synchronous", "NORMAL")
	}
	q.Set("_busy_timeout", "10000")
	// Reuse prepared statements per connection: without the cache every
	// statement of every group commit is compiled again, a quarter of the
	// writer's time under a reconnect storm.
	q.Set("_stmt_cache_size", "64")
	q.Set("_foreign_keys", "0")
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: opening %s: %w", path, err)
	}
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(8)
	db.SetConnMaxLifetime(0)
	wconn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite: opening %s: %w", path, err)
	}
	s := &Store{
		opt:   opt,
		db:    db,
		wconn: wconn,
		ops:   make(chan *op, 4*opt.MaxBatch),
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	if err := s.migrate(ctx); err != nil {
		wconn.Close()
		db.Close()
		return nil, err
	}
	if err := s.loadTail(ctx); err != nil {
		wconn.Close()
		db.Close()
		return nil, err
	}
	if !opt.FullSync {
		// The migration's write transaction created the WAL; it stays (same
		// file, reset in place) as long as a connection is open.
		if s.wal, err = os.Open(path + "-wal"); err != nil {
			wconn.Close()
			db.Close()
			return nil, fmt.Errorf("sqlite: opening the write-ahead log: %w", err)
		}
		if s.walSync, err = newWALSyncer(s.wal); err != nil {
			s.wal.Close()
			wconn.Close()
			db.Close()
			return nil, err
		}
		s.syncq = make(chan []*op, 64)
		s.syncIdle = make(chan struct{}, 1)
		s.syncerDone = make(chan struct{})
		go s.syncer()
	}
	if s.ckConn, err = db.Conn(ctx); err != nil {
		if s.wal != nil {
			close(s.syncq)
			<-s.syncerDone
			s.walSync.Close()
			s.wal.Close()
		}
		wconn.Close()
		db.Close()
		return nil, fmt.Errorf("sqlite: opening %s: %w", path, err)
	}
	s.ckWake = make(chan struct{}, 1)
	s.ckQuit = make(chan struct{})
	s.ckDone = make(chan struct{})
	go s.checkpointer()
	s.lastCompact = time.Now()
	go s.writer()
	s.Tables, err = sqldb.NewTables(ctx, sqldb.New(sqldb.Backend{
		Dialect: sqldb.SQLite,
		Read:    db,
		Write:   s.sqlWrite,
		Open:    s.readable,
		// A deleted device's compacted telemetry goes with it; its log rows
		// go at the next compaction, which skips devices that are gone, and
		// its records in the tail (and any late ones) once the deletion
		// committed.
		DeviceTables:  []string{"latest", "chunk", "dirty", "compacted"},
		DeviceDeleted: s.tail.dropDevice,
	}))
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	return s, nil
}

// sqlWrite is the shared tables' Writer: the function runs in the writer's
// batch transaction, under its own savepoint unless it is a single
// statement, and After on the writer goroutine after the commit.
func (s *Store) sqlWrite(ctx context.Context, o sqldb.Op) error {
	return s.do(ctx, &op{single: o.Single, after: o.After, fn: func(ctx context.Context, tx *sql.Tx) error {
		return o.Fn(ctx, sqldb.SQLExecutor(tx))
	}})
}

// Close stops the writer after committing the writes already queued.
func (s *Store) Close() error {
	if !s.gate.Close() {
		return nil
	}
	close(s.quit)
	<-s.done
	close(s.ckQuit)
	<-s.ckDone
	s.ckConn.Close()
	var err0 error
	if s.wal != nil {
		close(s.syncq)
		<-s.syncerDone
		err0 = errors.Join(s.walSync.Close(), s.wal.Close())
	}
	err1 := s.wconn.Close()
	err2 := s.db.Close()
	if err := errors.Join(err0, err1, err2); err != nil {
		return fmt.Errorf("sqlite: closing: %w", err)
	}
	return nil
}

// migrations are applied in order; PRAGMA user_version records how many
// have been. Never edit one that shipped: append a new one.
var migrations = []string{
	`
CREATE TABLE devices (
	id INTEGER PRIMARY KEY AUTOINCREMENT, -- AUTOINCREMENT: a deleted device's ID is never reused
	name TEXT NOT NULL UNIQUE,
	profile TEXT NOT NULL DEFAULT '',
	created_at INTEGER NOT NULL,
	first_seen_addr TEXT NOT NULL DEFAULT '',
	last_seen_at INTEGER NOT NULL DEFAULT 0,
	last_seen_addr TEXT NOT NULL DEFAULT '',
	online INTEGER NOT NULL DEFAULT 0,
	node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX devices_node ON devices(node) WHERE online;
CREATE TABLE counters (
	device INTEGER NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
	PRIMARY KEY (device, name)
) WITHOUT ROWID;
CREATE TABLE credentials (
	device INTEGER NOT NULL,
	sha256 TEXT NOT NULL,
	serial TEXT NOT NULL, issuer TEXT NOT NULL, subject TEXT NOT NULL,
	not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,
	credential_id TEXT NOT NULL, pem TEXT NOT NULL,
	first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
	UNIQUE (device, sha256)
);
CREATE INDEX credentials_serial ON credentials(serial);
CREATE TABLE attributes (
	device INTEGER NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,
	value TEXT NOT NULL, updated_at INTEGER NOT NULL,
	PRIMARY KEY (device, scope, key)
) WITHOUT ROWID;
CREATE TABLE events (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	time INTEGER NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL,
	reason TEXT NOT NULL, addr TEXT NOT NULL, node TEXT NOT NULL, detail TEXT
);
CREATE INDEX events_device ON events(device, id);
CREATE INDEX events_kind ON events(kind, id);
CREATE TABLE revocations (
	serial TEXT PRIMARY KEY, reason TEXT NOT NULL, revoked_at INTEGER NOT NULL
);
CREATE TABLE units (
	sn TEXT PRIMARY KEY, serial TEXT NOT NULL, sha256 TEXT NOT NULL,
	not_after INTEGER NOT NULL, batch TEXT NOT NULL, produced_at INTEGER NOT NULL,
	test_passed INTEGER
);
CREATE INDEX units_serial ON units(serial);
-- The ingest log: the durable record of telemetry not yet compacted. One
-- row holds the n records of seqs seq..seq+n-1 (assigned by the writer) of
-- one commit, so that an append costs one row whatever the batch size.
CREATE TABLE tlog (
	seq INTEGER PRIMARY KEY, n INTEGER NOT NULL, data BLOB NOT NULL
);
-- Compacted telemetry: many records of one device and one time bucket.
CREATE TABLE chunk (
	id INTEGER PRIMARY KEY,
	device INTEGER NOT NULL, bucket INTEGER NOT NULL,
	t_start INTEGER NOT NULL, t_end INTEGER NOT NULL, n INTEGER NOT NULL,
	data BLOB NOT NULL
);
CREATE INDEX chunk_bucket ON chunk(device, bucket, id);
CREATE INDEX chunk_end ON chunk(device, t_end);
CREATE INDEX chunk_start ON chunk(device, t_start);
CREATE TABLE latest (
	device INTEGER NOT NULL, key TEXT NOT NULL, ts INTEGER NOT NULL, value BLOB NOT NULL,
	PRIMARY KEY (device, key)
) WITHOUT ROWID;
-- Buckets that received more than their first chunk; the compactor merges them.
CREATE TABLE dirty (
	device INTEGER NOT NULL, bucket INTEGER NOT NULL, PRIMARY KEY (device, bucket)
) WITHOUT ROWID;
CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
-- Every log seq up to compacted is in chunk/latest, every later one in tlog.
INSERT INTO meta VALUES ('compacted', 0);
`,
	// Retention removes events oldest first.
	`CREATE INDEX events_time ON events(time)`,
	`
-- Device listings page by key in each order and filter (sqldb.DeviceList).
CREATE INDEX devices_last_seen ON devices(last_seen_at, name);
CREATE INDEX devices_online ON devices(online, name);
CREATE INDEX devices_profile ON devices(profile, name);
`,
	// A compaction moves devices a few at a time (docs/storage.md): a
	// device's log records up to its seq here are in chunk/latest too, until
	// the global mark passes it and the row goes.
	`CREATE TABLE compacted (device INTEGER PRIMARY KEY, seq INTEGER NOT NULL)`,
}

func (s *Store) migrate(ctx context.Context) error {
	// The writer connection is the only writer, and BEGIN IMMEDIATE makes a
	// second process opening the same file wait instead of racing.
	// Checkpoints are the checkpointer's, not the writer's.
	if _, err := s.wconn.ExecContext(ctx, "PRAGMA wal_autocheckpoint=0"); err != nil {
		return fmt.Errorf("sqlite: configuring: %w", err)
	}
	if _, err := s.wconn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("sqlite: migrating: %w", err)
	}
	err := func() error {
		var v int
		if err := s.wconn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
			return err
		}
		if v > len(migrations) {
			return fmt.Errorf("database schema version %d is newer than this program's %d", v, len(migrations))
		}
		for i := v; i < len(migrations); i++ {
			if _, err := s.wconn.ExecContext(ctx, migrations[i]); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
		}
		_, err := s.wconn.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version=%d", len(migrations)))
		return err
	}()
	if err != nil {
		s.wconn.ExecContext(context.Background(), "ROLLBACK")
		return fmt.Errorf("sqlite: migrating: %w", err)
	}
	if _, err := s.wconn.ExecContext(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("sqlite: migrating: %w", err)
	}
	return nil
}

// op is one queued write: telemetry records or a function run inside the
// batch transaction (under its own savepoint, so its failure does not undo
// the others). Functions get the writer's context, never their caller's:
// interrupting a statement inside a transaction makes SQLite roll back the
// whole transaction, everybody's batch with it.
type op struct {
	ctx  context.Context
	recs []store.Record
	fn   func(ctx context.Context, tx *sql.Tx) error
	// single: fn changes the database with at most one statement. SQLite
	// undoes a failed statement by itself, so fn needs no savepoint of its
	// own to leave the batch's other operations intact.
	single  bool
	after   func() // run by the writer after a successful commit
	compact bool   // force a compaction after this batch
	// exclusive runs on the write connection outside any transaction,
	// after the batch it came with (PRAGMA wal_checkpoint needs that).
	exclusive func(ctx context.Context, c *sql.Conn) error
	err       error
	done      chan struct{}
	// cb, when set, is called instead of closing done (AppendTelemetryAsync).
	cb func(error)
}

// finish reports o's outcome to its caller.
func (o *op) finish() {
	if o.cb != nil {
		o.cb(o.err)
		return
	}
	close(o.done)
}

// do queues o and waits for its commit or for ctx. A caller that gives up
// does not disturb the batch: the writer skips the op if it has not started.
func (s *Store) do(ctx context.Context, o *op) error {
	o.ctx = ctx
	o.done = make(chan struct{})
	return gate.Do(ctx, &s.gate, s.ops, o, o.done, &o.err)
}

// Checkpoint copies the WAL into the database file and truncates it, so
// that the file alone holds everything (before a backup by file copy, say).
func (s *Store) Checkpoint(ctx context.Context) error {
	var busy, frames, done int
	err := s.write(ctx, func(context.Context, *sql.Tx) error { return nil }) // let queued writes land first
	if err == nil {
		// A checkpoint cannot run inside a transaction: run it on the writer
		// goroutine's connection between batches.
		err = s.do(ctx, &op{exclusive: func(ctx context.Context, c *sql.Conn) error {
			if err := c.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &frames, &done); err != nil {
				return err
			}
			if busy != 0 {
				return errors.New("readers kept the checkpoint from completing")
			}
			return nil
		}})
	}
	if err != nil {
		return fmt.Errorf("sqlite: checkpointing: %w", err)
	}
	return nil
}

// readable makes reads fail with store.ErrClosed after Close.
func (s *Store) readable() error { return s.gate.Open() }

// write runs fn in the writer's transaction.
func (s *Store) write(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return s.do(ctx, &op{fn: fn})
}

func (s *Store) writer() {
	defer close(s.done)
	batch := make([]*op, 0, s.opt.MaxBatch)
	stepNow := make(chan time.Time)
	close(stepNow)
	timer := time.NewTimer(s.opt.CompactInterval)
	gap := time.NewTimer(time.Hour)
	gap.Stop()
	defer gap.Stop()
	stepT := time.NewTimer(time.Hour)
	stepT.Stop()
	defer stepT.Stop()
	var lastCommit time.Time
	defer timer.Stop()
	for {
		var first *op
		// While a compaction is in progress its steps run between batches,
		// and whenever no write waits, spaced (compactPause).
		var step <-chan time.Time
		if s.cur != nil {
			if w := s.stepWait(time.Now()); w <= 0 {
				step = stepNow
			} else {
				stepT.Reset(w)
				step = stepT.C
			}
		}
		select {
		case first = <-s.ops:
		case <-step:
			s.maybeCompact(false)
			continue
		case <-timer.C:
			timer.Reset(s.opt.CompactInterval)
			s.maybeCompact(false)
			continue
		case <-s.quit:
			// Close holds no sender any more: drain what was queued.
			for {
				select {
				case o := <-s.ops:
					s.commit([]*op{o})
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
		n := max(1, len(first.recs))
	collect:
		for n < s.opt.MaxBatch {
			select {
			case o := <-s.ops:
				batch = append(batch, o)
				n += max(1, len(o.recs))
			default:
				break collect
			}
		}
		// While an fsync runs, committing a handful of records at a time
		// would only write more WAL pages (each commit writes whole pages)
		// for the next fsync to flush: wait until the batch is worth a
		// commit or the syncer has nothing left to do.
		minCommit := s.opt.MaxBatch / 8
		// Under load (the previous commit began less than CommitGap ago),
		// gather more before committing: at the fleet's shape a group
		// commit otherwise holds the few messages that arrived during one
		// fsync, and every commit costs the writer, the syncer and their
		// wake-ups as much as its messages do.
		if gapEnd := lastCommit.Add(s.opt.CommitGap); s.wal != nil && n < minCommit && time.Now().Before(gapEnd) {
			gap.Reset(time.Until(gapEnd))
		gather:
			for n < minCommit {
				select {
				case o := <-s.ops:
					batch = append(batch, o)
					n += max(1, len(o.recs))
				case <-gap.C:
					break gather
				case <-s.quit:
					break gather
				}
			}
			gap.Stop()
		}
	wait:
		for s.wal != nil && n < minCommit && s.syncBusy.Load() {
			select {
			case o := <-s.ops:
				batch = append(batch, o)
				n += max(1, len(o.recs))
			case <-s.syncIdle:
			case <-s.quit:
				break wait
			}
		}
		lastCommit = time.Now()
		force := s.commit(batch)
		select {
		case s.ckWake <- struct{}{}:
		default:
		}
		s.maybeCompact(force)
	}
}

// commit commits the transactional ops of batch, then runs its exclusive ones.
func (s *Store) commit(batch []*op) (compact bool) {
	var txOps, exclusive []*op
	for _, o := range batch {
		if o.exclusive != nil {
			exclusive = append(exclusive, o)
		} else {
			txOps = append(txOps, o)
		}
	}
	if len(txOps) > 0 {
		compact = s.commitTx(txOps)
	}
	for _, o := range exclusive {
		if o.err = o.ctx.Err(); o.err == nil {
			o.err = o.exclusive(context.Background(), s.wconn)
		}
		o.finish()
	}
	return compact
}

// commitTx runs batch in one transaction and wakes its callers. It reports
// whether one of them asked for a compaction.
func (s *Store) commitTx(batch []*op) (compact bool) {
	ctx := context.Background() // a caller's cancellation must not abort the others
	var live []*op
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			o.err = err
			o.finish()
			continue
		}
		live = append(live, o)
	}
	if len(live) == 0 {
		return false
	}
	fail := func(err error) bool {
		for _, o := range live {
			o.err = err
			o.finish()
		}
		return false
	}
	seq0 := s.nextSeq
	start := time.Now()
	tx, err := s.wconn.BeginTx(ctx, nil)
	if err != nil {
		return fail(fmt.Errorf("sqlite: beginning: %w", err))
	}
	// The batch's records, their encoded values in one allocation (they
	// live in the tail until the next compaction, and a few large objects
	// cost the collector less than one small one per record).
	added := s.addBuf[:0]
	chunk := make([]byte, 0, 64*max(len(live), 16))
	ends := s.endBuf[:0]
	var sp, release, rollback *sql.Stmt
	for _, o := range live {
		compact = compact || o.compact
		if o.fn == nil {
			for _, r := range o.recs {
				chunk = appendKVs(chunk, r.Values)
				ends = append(ends, len(chunk))
				added = append(added, tailAdd{dev: r.DeviceID, rec: tailRec{seq: s.nextSeq, ts: r.TS}})
				s.nextSeq++
			}
			continue
		}
		if o.single {
			o.err = o.fn(ctx, tx)
			continue
		}
		if sp == nil {
			// Prepared once per batch (and cached across batches by the
			// driver): a statement without arguments would otherwise be
			// parsed again for every operation.
			if sp, release, rollback, err = prepareSavepoints(ctx, tx); err != nil {
				tx.Rollback()
				s.nextSeq = seq0
				return fail(err)
			}
		}
		if _, err := sp.ExecContext(ctx); err != nil {
			tx.Rollback()
			s.nextSeq = seq0
			return fail(fmt.Errorf("sqlite: savepoint: %w", err))
		}
		o.err = o.fn(ctx, tx)
		if o.err != nil {
			if _, err := rollback.ExecContext(ctx); err != nil {
				tx.Rollback()
				s.nextSeq = seq0
				return fail(fmt.Errorf("sqlite: rolling back: %w", err))
			}
		}
		if _, err := release.ExecContext(ctx); err != nil {
			tx.Rollback()
			s.nextSeq = seq0
			return fail(fmt.Errorf("sqlite: releasing savepoint: %w", err))
		}
	}
	start0 := 0
	for i, end := range ends {
		added[i].rec.kvs = chunk[start0:end:end]
		start0 = end
	}
	s.addBuf, s.endBuf = added[:0], ends[:0]
	defer clear(added) // the writer's buffer must not keep records alive
	if s.logBuf, err = insertLog(ctx, tx, added, s.logBuf[:0]); err != nil {
		tx.Rollback()
		s.nextSeq = seq0
		return fail(err)
	}
	commitStart := time.Now()
	if err := tx.Commit(); err != nil {
		s.nextSeq = seq0
		return fail(fmt.Errorf("sqlite: committing: %w", err))
	}
	s.batches.Add(1)
	s.records.Add(int64(len(added)))
	s.commitNanos.Add(int64(time.Since(start)))
	if s.wal == nil {
		s.syncNanos.Add(int64(time.Since(commitStart)))
	}
	s.tail.add(added)
	for _, o := range live {
		if o.err == nil && o.after != nil {
			o.after()
		}
	}
	if s.wal == nil {
		for _, o := range live {
			o.finish()
		}
		return compact
	}
	s.syncBusy.Store(true)
	s.syncq <- live
	return compact
}

// prepareSavepoints prepares the statements that isolate one operation of
// a batch from the others.
func prepareSavepoints(ctx context.Context, tx *sql.Tx) (sp, release, rollback *sql.Stmt, err error) {
	if sp, err = tx.PrepareContext(ctx, "SAVEPOINT op"); err != nil {
		return nil, nil, nil, fmt.Errorf("sqlite: preparing savepoint: %w", err)
	}
	if release, err = tx.PrepareContext(ctx, "RELEASE op"); err != nil {
		return nil, nil, nil, fmt.Errorf("sqlite: preparing release: %w", err)
	}
	if rollback, err = tx.PrepareContext(ctx, "ROLLBACK TO op"); err != nil {
		return nil, nil, nil, fmt.Errorf("sqlite: preparing rollback: %w", err)
	}
	return sp, release, rollback, nil
}

// syncer acknowledges committed batches once the WAL holding them is on
// disk. One fsync covers every batch committed before it started, so
// batches committed while an fsync runs share the next one.
func (s *Store) syncer() {
	defer close(s.syncerDone)
	var waiting []*op
	for first := range s.syncq {
		waiting = append(waiting[:0], first...)
	more:
		for {
			select {
			case b, ok := <-s.syncq:
				if !ok {
					break more
				}
				waiting = append(waiting, b...)
			default:
				break more
			}
		}
		start := time.Now()
		err := s.walSync.Sync()
		s.syncNanos.Add(int64(time.Since(start)))
		s.syncs.Add(1)
		for _, o := range waiting {
			if err != nil && o.err == nil {
				o.err = fmt.Errorf("sqlite: syncing the write-ahead log: %w", err)
			}
			o.finish()
		}
		if len(s.syncq) == 0 {
			s.syncBusy.Store(false)
			select {
			case s.syncIdle <- struct{}{}:
			default:
			}
		}
	}
}

// checkpointDelay is how long the checkpointer lets commits gather in the
// WAL before copying them into the database file.
const checkpointDelay = 200 * time.Millisecond

// checkpointer copies the WAL into the database file a little after writes,
// on a connection of its own. SQLite's automatic checkpoint would run inside
// the commit that crosses 1,000 WAL pages, on the writer goroutine, with an
// fsync of the WAL and one of the database file: every acknowledgement
// waiting meanwhile (about once a second at the fleet's shape). A PASSIVE
// checkpoint needs no write lock, so appends go on while it runs. But the
// WAL is restarted from its beginning (instead of growing) only by a write
// transaction that begins when a checkpoint has copied all of it, and under
// load new commits always arrive meanwhile: so, once the bulk is copied
// here, the writer runs a second checkpoint between two batches, which
// copies only the few pages committed since.
func (s *Store) checkpointer() {
	defer close(s.ckDone)
	delay := time.NewTimer(time.Hour)
	delay.Stop()
	defer delay.Stop()
	for {
		select {
		case <-s.ckWake:
		case <-s.ckQuit:
			return
		}
		delay.Reset(checkpointDelay)
		select {
		case <-delay.C:
		case <-s.ckQuit:
			return
		}
		// Busy (another checkpoint, Checkpoint's TRUNCATE) is no error:
		// the next commit asks again.
		var busy, frames, done int
		if err := s.ckConn.QueryRowContext(context.Background(), "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &done); err != nil || busy != 0 {
			continue
		}
		s.do(context.Background(), &op{exclusive: func(ctx context.Context, c *sql.Conn) error {
			return c.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &done)
		}})
	}
}

// logRecordsPerRow bounds the records of one log row, keeping rows (and
// the memory a reader of one needs) moderate.
const logRecordsPerRow = 1024

// insertLog writes rows (consecutive seqs) as log rows, encoding them in
// buf, which it returns for the next batch.
func insertLog(ctx context.Context, tx *sql.Tx, rows []tailAdd, buf []byte) ([]byte, error) {
	for len(rows) > 0 {
		n := min(len(rows), logRecordsPerRow)
		buf = buf[:0]
		for _, r := range rows[:n] {
			buf = appendLogRecord(buf, r.dev, r.rec.ts, r.rec.kvs)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO tlog(seq, n, data) VALUES (?, ?, ?)", rows[0].rec.seq, n, buf); err != nil {
			return buf, fmt.Errorf("sqlite: appending telemetry: %w", err)
		}
		rows = rows[n:]
	}
	return buf, nil
}
