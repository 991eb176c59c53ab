package sqlite_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
)

// TestAppendTelemetryAsync checks the asynchronous append: every done runs
// once, in the order of the calls, after which the records are readable;
// after Close the append fails with store.ErrClosed.
func TestAppendTelemetryAsync(t *testing.T) {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "thingline.db"))
	if err != nil {
		t.Fatal(err)
	}
	dev, _, _, err := s.EnsureDevice(ctx, store.Device{Name: "async"}, store.Credential{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		s.AppendTelemetryAsync([]store.Record{{DeviceID: dev.ID, TS: int64(1000 + i), Values: []store.KV{{Key: "v", Value: json.RawMessage("1")}}}},
			func(err error) {
				defer wg.Done()
				if err != nil {
					t.Errorf("append %d: %v", i, err)
				}
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
			})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("not every append completed")
	}
	for i, v := range order {
		if v != i {
			t.Fatalf("completion %d was append %d: out of order", i, v)
		}
	}
	got, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: dev.ID, Limit: 1000})
	if err != nil || len(got["v"]) != n {
		t.Fatalf("stored %d points, %v; want %d", len(got["v"]), err, n)
	}
	s.Close()
	errc := make(chan error, 1)
	s.AppendTelemetryAsync([]store.Record{{DeviceID: dev.ID, TS: 1, Values: []store.KV{{Key: "v", Value: json.RawMessage("1")}}}},
		func(err error) { errc <- err })
	if err := <-errc; !errors.Is(err, store.ErrClosed) {
		t.Errorf("append after Close: %v; want store.ErrClosed", err)
	}
}
