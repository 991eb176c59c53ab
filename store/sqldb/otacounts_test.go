package sqldb

import (
	"context"
	"database/sql"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/storetest"
)

// migrateOTACounts: a database from before the counts (memberships, no
// ota_rollout_counts) gets them filled from its members by ota/004.
func migrateOTACounts(t *testing.T, d Dialect, sdb *sql.DB) {
	ctx := context.Background()
	db := New(Backend{Dialect: d, Read: sdb, Write: PoolWriter(sdb)})
	if _, err := NewTables(ctx, db); err != nil {
		t.Fatal(err)
	}
	// Back to before ota/004, with members written the old way.
	err := db.Write(ctx, func(ctx context.Context, tx *Tx) error {
		for _, q := range []string{"DROP TABLE ota_rollout_counts", "DELETE FROM sqldb_migrations WHERE name='ota/004'"} {
			if _, err := tx.Exec(ctx, q); err != nil {
				return err
			}
		}
		for i, m := range []struct {
			rollout int64
			wave    int
			state   string
		}{{1, 0, "UPDATED"}, {1, 0, "UPDATED"}, {1, 0, "FAILED"}, {1, 1, "DOWNLOADING"}, {1, 1, "QUEUED"}, {1, 1, "QUEUED"},
			{1, 2, "QUEUED"}, {2, 0, "CANCELED"}} {
			if _, err := tx.Exec(ctx, "INSERT INTO ota_rollout_devices(rollout_id, device_id, wave, state, updated_at) VALUES (?,?,?,?,?)",
				m.rollout, i+1, m.wave, m.state, 1); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tb, err := NewTables(ctx, db)
	if err != nil {
		t.Fatalf("migrating: %v", err)
	}
	got, err := tb.OTARolloutCounts(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.OTAStateCount{{Wave: 0, State: "FAILED", N: 1}, {Wave: 0, State: "UPDATED", N: 2},
		{Wave: 1, State: "DOWNLOADING", N: 1}, {Wave: 1, State: "QUEUED", N: 2}, {Wave: 2, State: "QUEUED", N: 1}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rollout 1 counted %+v, want %+v", got, want)
	}
	if got, _ := tb.OTARolloutCounts(ctx, 2); !reflect.DeepEqual(got, []store.OTAStateCount{{Wave: 0, State: "CANCELED", N: 1}}) {
		t.Errorf("rollout 2 counted %+v", got)
	}
}

func TestOTACountsMigrationSQLite(t *testing.T) {
	sdb, err := sql.Open("sqlite3", "file:"+filepath.Join(t.TempDir(), "t.db")+"?_journal_mode=WAL&_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	migrateOTACounts(t, SQLite, sdb)
}

func TestOTACountsMigrationPostgres(t *testing.T) {
	sdb, err := sql.Open("pgx", storetest.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	migrateOTACounts(t, Postgres, sdb)
}
