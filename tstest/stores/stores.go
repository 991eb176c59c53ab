// Package stores runs a test against each store backend: a fresh SQLite
// file and a fresh PostgreSQL schema (skipped without
// THINGLINE_TEST_POSTGRES). It is for tests of packages built on
// store.Store; the backends' own conformance lives in store/storetest.
package stores

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/postgres"
	"github.com/thingline/thingline/store/sqlite"
	"github.com/thingline/thingline/tstest"
)

// Each runs fn as the subtests "sqlite" and "postgres", each on its own
// fresh store, closed when the subtest ends. prefix names the PostgreSQL
// schema.
func Each(t *testing.T, prefix string, fn func(t *testing.T, st store.Store)) {
	t.Run("sqlite", func(t *testing.T) {
		st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "t.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		fn(t, st)
	})
	t.Run("postgres", func(t *testing.T) {
		st, err := postgres.Open(context.Background(), tstest.PostgresSchema(t, prefix))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		fn(t, st)
	})
}
