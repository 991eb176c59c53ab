package tstest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresSchema returns the URL of THINGLINE_TEST_POSTGRES on a fresh
// schema (named prefix_<ns>) dropped when the test ends, so that tests and
// concurrent runs sharing one database see only their own rows. It skips
// the test when the variable is not set.
func PostgresSchema(t testing.TB, prefix string) string {
	t.Helper()
	base := os.Getenv("THINGLINE_TEST_POSTGRES")
	if base == "" {
		t.Skip("THINGLINE_TEST_POSTGRES is not set: PostgreSQL variant skipped")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	defer conn.Close(ctx)
	schema := fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano())
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("postgres: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("THINGLINE_TEST_POSTGRES: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// NATSURL returns THINGLINE_TEST_NATS with a subject prefix of its own
// (nats://host:port?prefix=test_<ns>), or "" when the variable is not set.
// Concurrent test processes share one NATS server and reuse device names:
// on the default prefix one run's nodes would take over another run's
// sessions (claims) and hear its notices. Nodes of one cluster must share
// the URL returned by one call.
func NATSURL() string {
	base := os.Getenv("THINGLINE_TEST_NATS")
	if base == "" {
		return ""
	}
	return fmt.Sprintf("%s?prefix=test_%d_%d", base, os.Getpid(), natsSeq.Add(1))
}

var natsSeq atomic.Int64
