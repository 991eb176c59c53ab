package postgres_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/postgres"
	"github.com/thingline/thingline/store/storetest"
)

func schemaURL(t testing.TB) string { return storetest.PostgresURL(t) }

func open(t *testing.T) store.Store {
	s, err := postgres.Open(context.Background(), schemaURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) { storetest.Run(t, open) }

func TestCrash(t *testing.T) {
	storetest.Crash(t,
		func(t *testing.T) string { return schemaURL(t) },
		func(ctx context.Context, url string) (store.Store, error) { return postgres.Open(ctx, url) })
}

// TestConcurrentOpen opens one schema from several "nodes" at once: the
// migrations must run exactly once.
func TestConcurrentOpen(t *testing.T) {
	u := schemaURL(t)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			s, err := postgres.Open(context.Background(), u)
			if err == nil {
				err = s.Close()
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	s, err := postgres.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, _, err := s.EnsureDevice(context.Background(), store.Device{Name: "x"}, store.Credential{}, nil); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkAppend: THINGLINE_TEST_POSTGRES=… go test ./store/postgres -run '^$' -bench Append -benchtime 200000x
func BenchmarkAppend(b *testing.B) {
	s, err := postgres.Open(context.Background(), schemaURL(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var st0 postgres.Stats
	storetest.BenchAppend(b, s, 1000, 1024, func() { st0 = s.Stats() })
	st := s.Stats()
	b.ReportMetric(float64(st.Records-st0.Records)/float64(max(1, st.Batches-st0.Batches)), "recs/commit")
}

// BenchmarkQuery: THINGLINE_TEST_POSTGRES=… go test ./store/postgres -run '^$' -bench Query
func BenchmarkQuery(b *testing.B) {
	u := schemaURL(b)
	s, err := postgres.Open(context.Background(), u)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	// Autovacuum would have analyzed a table this size in a running system;
	// without statistics the planner sorts all of a device's rows.
	analyze := func() {
		conn, err := pgx.Connect(context.Background(), u)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "ANALYZE telemetry"); err != nil {
			b.Fatal(err)
		}
	}
	storetest.BenchQuery(b, s, 100, 10000, analyze)
}

// BenchmarkEnsureDevice: THINGLINE_TEST_POSTGRES=… go test ./store/postgres -run '^$' -bench EnsureDevice -benchtime 4000x
func BenchmarkEnsureDevice(b *testing.B) {
	s, err := postgres.Open(context.Background(), schemaURL(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	storetest.BenchEnsureDevice(b, s, 32)
}
