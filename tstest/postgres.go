package tstest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresSchema makes a fresh schema on THINGLINE_TEST_POSTGRES, dropped
// when the test ends, and returns the URL of a store using it, so that a
// test sees only its own rows. It skips the test when the variable is not
// set.
func PostgresSchema(t testing.TB) string {
	t.Helper()
	pgURL := os.Getenv("THINGLINE_TEST_POSTGRES")
	if pgURL == "" {
		t.Skip("THINGLINE_TEST_POSTGRES is not set: this test needs PostgreSQL")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	schema := fmt.Sprintf("t_%d", time.Now().UnixNano())
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		conn.Close(context.Background())
	})
	sep := "?"
	if strings.Contains(pgURL, "?") {
		sep = "&"
	}
	return pgURL + sep + "search_path=" + schema
}
