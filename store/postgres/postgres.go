// Package postgres is the store shared by several thingline nodes: one
// PostgreSQL database, reached through a pgx connection pool.
//
// Telemetry appends are grouped: writer goroutines collect the records
// waiting callers bring, COPY them in one transaction and wake the callers
// once it committed. synchronous_commit stays on, so a commit is on the
// server's disk before any caller is acknowledged. Several writers run at
// once, so that one batch is being built while another waits for its WAL
// flush (which PostgreSQL itself groups across sessions).
package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/internal/gate"
	"github.com/thingline/thingline/store/sqldb"
)

// Options tunes a Store; the zero value gives the defaults.
type Options struct {
	// MaxBatch bounds the records committed in one transaction. Default 4096.
	MaxBatch int
	// Writers is the number of concurrent committing transactions. Default 3.
	Writers int
}

func (o *Options) defaults() {
	if o.MaxBatch <= 0 {
		o.MaxBatch = 4096
	}
	if o.Writers <= 0 {
		o.Writers = 3
	}
}

// Store is a store.Store on PostgreSQL.
type Store struct {
	// The device store and the control-plane tables shared with
	// store/sqlite, through database/sql on the same pool.
	*sqldb.Tables

	opt   Options
	pool  *pgxpool.Pool
	sqlDB *sql.DB

	gate gate.Gate // sends on ops and async end before Close stops the writers
	ops  chan *appendOp
	// async holds each writer's queue of AppendTelemetryAsync: a device's
	// appends always go to the same writer, which commits its batches one
	// after the other, so that their completions run in order.
	async []chan *appendOp
	quit  chan struct{}
	wg    sync.WaitGroup

	batches, records atomic.Int64
	commitNanos      atomic.Int64

	// knownKeys caches device_keys rows this node has seen committed, so
	// that a batch only inserts keys that may be new.
	knownMu   sync.Mutex
	knownKeys map[deviceKey]struct{}
}

var _ store.Store = (*Store)(nil)

// Stats are counters of the telemetry write path since Open.
type Stats struct {
	Batches    int64
	Records    int64
	CommitTime time.Duration // summed over writers
}

// Stats returns the telemetry write path's counters.
func (s *Store) Stats() Stats {
	return Stats{Batches: s.batches.Load(), Records: s.records.Load(), CommitTime: time.Duration(s.commitNanos.Load())}
}

// Open connects to url (postgres://…), applies the schema migrations and
// starts the telemetry writers.
func Open(ctx context.Context, url string) (*Store, error) {
	return OpenOptions(ctx, url, Options{})
}

// OpenOptions is Open with options.
func OpenOptions(ctx context.Context, url string, opt Options) (*Store, error) {
	opt.defaults()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: parsing url: %w", err)
	}
	if cfg.MaxConns < int32(opt.Writers)+4 {
		cfg.MaxConns = int32(opt.Writers) + 4
	}
	// The durable path depends on it: refuse a server or URL that turned it off.
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	// pgx prepares statements, and after five runs PostgreSQL may switch to
	// a generic plan that cannot see that ts bounds and LIMIT make a walk
	// of the (device, ts) index the right plan; it then sorts a device's
	// whole history for each query (measured: 30 ms instead of 0.7 ms).
	if _, set := cfg.ConnConfig.RuntimeParams["plan_cache_mode"]; !set {
		cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_custom_plan"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connecting: %w", err)
	}
	s := &Store{
		opt:  opt,
		pool: pool,
		ops:  make(chan *appendOp, 4*opt.MaxBatch),
		quit: make(chan struct{}),

		knownKeys: map[deviceKey]struct{}{},
	}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	s.sqlDB = stdlib.OpenDBFromPool(pool)
	s.Tables, err = sqldb.NewTables(ctx, sqldb.New(sqldb.Backend{
		Dialect: sqldb.Postgres,
		Read:    s.sqlDB,
		Reader:  pgxExecutor{pool},
		Write:   s.sqlWrite,
		Open:    s.checkOpen,
		// A deleted device's telemetry goes with it. An append still in
		// flight may land afterwards; no read returns it, since reads ask
		// for existing devices and IDs are never reused.
		DeviceTables: []string{"device_keys", "telemetry"},
	}))
	if err != nil {
		s.sqlDB.Close()
		pool.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	for i := range opt.Writers {
		s.async = append(s.async, make(chan *appendOp, opt.MaxBatch))
		s.wg.Add(1)
		go s.writer(s.async[i])
	}
	return s, nil
}

// Close commits the appends already queued and closes the pool.
func (s *Store) Close() error {
	if !s.gate.Close() {
		return nil
	}
	close(s.quit)
	s.wg.Wait()
	s.sqlDB.Close()
	s.pool.Close()
	return nil
}

// migrations are applied in order; schema_version records how many have
// been. Never edit one that shipped: append a new one.
var migrations = []string{
	`
CREATE TABLE devices (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- never reused: old telemetry stays unreachable
	name text NOT NULL UNIQUE,
	profile text NOT NULL DEFAULT '',
	created_at bigint NOT NULL,            -- times: Unix nanoseconds, 0 for none
	first_seen_addr text NOT NULL DEFAULT '',
	last_seen_at bigint NOT NULL DEFAULT 0,
	last_seen_addr text NOT NULL DEFAULT '',
	online boolean NOT NULL DEFAULT false,
	node text NOT NULL DEFAULT ''
);
CREATE INDEX devices_node ON devices(node) WHERE online;
CREATE TABLE counters (
	device bigint NOT NULL, name text NOT NULL, value bigint NOT NULL,
	PRIMARY KEY (device, name)
);
CREATE TABLE credentials (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	device bigint NOT NULL,
	sha256 text NOT NULL,
	serial text NOT NULL, issuer text NOT NULL, subject text NOT NULL,
	not_before bigint NOT NULL, not_after bigint NOT NULL,
	credential_id text NOT NULL, pem text NOT NULL,
	first_seen bigint NOT NULL, last_seen bigint NOT NULL,
	UNIQUE (device, sha256)
);
CREATE INDEX credentials_serial ON credentials(serial);
CREATE TABLE attributes (
	device bigint NOT NULL, scope text NOT NULL, key text NOT NULL,
	value text NOT NULL, updated_at bigint NOT NULL,
	PRIMARY KEY (device, scope, key)
);
CREATE TABLE events (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	time bigint NOT NULL, device text NOT NULL, kind text NOT NULL,
	reason text NOT NULL, addr text NOT NULL, node text NOT NULL, detail text
);
CREATE INDEX events_device ON events(device, id);
CREATE INDEX events_kind ON events(kind, id);
CREATE TABLE revocations (
	serial text PRIMARY KEY, reason text NOT NULL, revoked_at bigint NOT NULL
);
CREATE TABLE units (
	sn text PRIMARY KEY, serial text NOT NULL, sha256 text NOT NULL,
	not_after bigint NOT NULL, batch text NOT NULL, produced_at bigint NOT NULL,
	test_passed boolean
);
CREATE INDEX units_serial ON units(serial);
-- One row per message; values stay JSON text, parallel to their keys.
CREATE TABLE telemetry (
	device bigint NOT NULL, ts bigint NOT NULL, keys text[] NOT NULL, vals text[] NOT NULL
);
CREATE INDEX telemetry_device_ts ON telemetry(device, ts);
-- Every key a device ever sent, so that "all keys" queries know what to
-- look for; the newest value of a key is found through telemetry_device_ts.
CREATE TABLE device_keys (
	device bigint NOT NULL, key text NOT NULL, PRIMARY KEY (device, key)
);
`,
	// Retention removes events oldest first.
	`CREATE INDEX events_time ON events(time)`,
	`
-- Device listings page by key in each order and filter (sqldb.DeviceList).
CREATE INDEX devices_name_c ON devices(name COLLATE "C");
CREATE INDEX devices_last_seen ON devices(last_seen_at, name COLLATE "C");
CREATE INDEX devices_online ON devices(online, name COLLATE "C");
CREATE INDEX devices_profile ON devices(profile, name COLLATE "C");
`,
}

func (s *Store) migrate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Nodes starting together take turns; the lock is per schema, so
		// that independent schemas of one database do not wait on each other.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('thingline-migrate:' || current_schema()))"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)"); err != nil {
			return err
		}
		var v int
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_version").Scan(&v); err != nil {
			return err
		}
		if v > len(migrations) {
			return fmt.Errorf("database schema version %d is newer than this program's %d", v, len(migrations))
		}
		for i := v; i < len(migrations); i++ {
			if _, err := tx.Exec(ctx, migrations[i]); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
		}
		if v < len(migrations) {
			if _, err := tx.Exec(ctx, "DELETE FROM schema_version"); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "INSERT INTO schema_version VALUES ($1)", len(migrations)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("postgres: migrating: %w", err)
	}
	return nil
}

// appendOp is one caller's records waiting for a commit.
type appendOp struct {
	ctx  context.Context
	recs []store.Record
	err  error
	done chan struct{}
	cb   func(error) // instead of done: AppendTelemetryAsync
}

// finish reports o's outcome to its caller.
func (o *appendOp) finish() {
	if o.cb != nil {
		o.cb(o.err)
		return
	}
	close(o.done)
}

// writer commits the appends of the shared queue and of its own (async).
func (s *Store) writer(async chan *appendOp) {
	defer s.wg.Done()
	batch := make([]*appendOp, 0, s.opt.MaxBatch)
	for {
		var first *appendOp
		select {
		case first = <-s.ops:
		case first = <-async:
		case <-s.quit:
			// Close holds no sender any more: commit what was queued.
			for {
				select {
				case o := <-s.ops:
					s.commit([]*appendOp{o})
				case o := <-async:
					s.commit([]*appendOp{o})
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
		n := len(first.recs)
	collect:
		for n < s.opt.MaxBatch {
			select {
			case o := <-s.ops:
				batch = append(batch, o)
				n += len(o.recs)
			case o := <-async:
				batch = append(batch, o)
				n += len(o.recs)
			default:
				break collect
			}
		}
		s.commit(batch)
	}
}

type deviceKey struct {
	dev int64
	key string
}

// commit COPYs the batch, with any key new to this node, in one transaction.
// The latest value of a key is not maintained here: upserting a row per key
// per message made commits ten times slower (docs/storage.md).
func (s *Store) commit(batch []*appendOp) {
	var live []*appendOp
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			o.err = err
			o.finish()
			continue
		}
		live = append(live, o)
	}
	if len(live) == 0 {
		return
	}
	start := time.Now()
	var rows [][]any
	var newKeys []deviceKey
	seen := map[deviceKey]bool{}
	s.knownMu.Lock()
	for _, o := range live {
		for _, r := range o.recs {
			keys := make([]string, len(r.Values))
			vals := make([]string, len(r.Values))
			for i, kv := range r.Values {
				keys[i], vals[i] = kv.Key, string(kv.Value)
				dk := deviceKey{r.DeviceID, kv.Key}
				if _, ok := s.knownKeys[dk]; !ok && !seen[dk] {
					seen[dk] = true
					newKeys = append(newKeys, dk)
				}
			}
			rows = append(rows, []any{r.DeviceID, r.TS, keys, vals})
		}
	}
	s.knownMu.Unlock()
	// Sorted, so that concurrent writers inserting the same keys wait for
	// each other instead of deadlocking.
	sort.Slice(newKeys, func(i, j int) bool {
		if newKeys[i].dev != newKeys[j].dev {
			return newKeys[i].dev < newKeys[j].dev
		}
		return newKeys[i].key < newKeys[j].key
	})
	ctx := context.Background() // a caller's cancellation must not abort the others
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"telemetry"}, []string{"device", "ts", "keys", "vals"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("copying telemetry: %w", err)
		}
		if len(newKeys) == 0 {
			return nil
		}
		devs := make([]int64, len(newKeys))
		keys := make([]string, len(newKeys))
		for i, k := range newKeys {
			devs[i], keys[i] = k.dev, k.key
		}
		_, err := tx.Exec(ctx, `INSERT INTO device_keys(device, key) SELECT * FROM unnest($1::bigint[], $2::text[])
			ON CONFLICT DO NOTHING`, devs, keys)
		if err != nil {
			return fmt.Errorf("recording telemetry keys: %w", err)
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("postgres: appending telemetry: %w", err)
	} else {
		s.batches.Add(1)
		s.records.Add(int64(len(rows)))
		s.commitNanos.Add(int64(time.Since(start)))
		s.knownMu.Lock()
		for _, k := range newKeys {
			s.knownKeys[k] = struct{}{}
		}
		s.knownMu.Unlock()
	}
	for _, o := range live {
		o.err = err
		o.finish()
	}
}

// AppendTelemetry returns once recs are committed.
func (s *Store) AppendTelemetry(ctx context.Context, recs []store.Record) error {
	if len(recs) == 0 {
		return nil
	}
	o := &appendOp{ctx: ctx, recs: recs, done: make(chan struct{})}
	return gate.Do(ctx, &s.gate, s.ops, o, o.done, &o.err)
}

// AppendTelemetryAsync implements store.AsyncAppender: done runs on a
// writer goroutine once the transaction holding recs committed (or
// failed). The records of one call are one device's; a device's appends go
// to one writer, whose batches commit one after the other.
func (s *Store) AppendTelemetryAsync(recs []store.Record, done func(error)) {
	if len(recs) == 0 {
		done(nil)
		return
	}
	o := &appendOp{ctx: context.Background(), recs: recs, cb: done}
	if err := gate.Send(o.ctx, &s.gate, s.async[uint64(recs[0].DeviceID)%uint64(len(s.async))], o); err != nil {
		done(err)
	}
}

var _ store.AsyncAppender = (*Store)(nil)

// checkOpen makes every other method fail with store.ErrClosed after Close.
func (s *Store) checkOpen() error { return s.gate.Open() }
