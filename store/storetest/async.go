package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// testAsyncAppend checks store.AsyncAppender, where a store offers it:
// several devices append at once, each device's completions run once each
// and in the order of its calls, after which its records are readable;
// after Close an append fails with store.ErrClosed.
func testAsyncAppend(t *testing.T, s store.Store) {
	aa, ok := s.(store.AsyncAppender)
	if !ok {
		t.Skip("this store does not offer asynchronous appends")
	}
	ctx := ctxT(t)
	const devices, n = 8, 150
	var ids []int64
	for i := range devices {
		ids = append(ids, mustDevice(t, s, fmt.Sprintf("async-%d", i)).ID)
	}
	var mu sync.Mutex
	order := map[int64][]int{}
	var wg sync.WaitGroup
	for _, id := range ids {
		go func() {
			for i := range n {
				wg.Add(1)
				aa.AppendTelemetryAsync([]store.Record{{DeviceID: id, TS: int64(1000 + i), Values: []store.KV{{Key: "v", Value: raw(fmt.Sprint(i))}}}},
					func(err error) {
						defer wg.Done()
						if err != nil {
							t.Errorf("device %d append %d: %v", id, i, err)
						}
						mu.Lock()
						order[id] = append(order[id], i)
						mu.Unlock()
					})
			}
		}()
	}
	// wg.Add runs in the appending goroutines: wait until every append
	// was made before waiting for their completions.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		got := 0
		for _, o := range order {
			got += len(o)
		}
		mu.Unlock()
		if got == devices*n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d appends completed", got, devices*n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	for _, id := range ids {
		for i, v := range order[id] {
			if v != i {
				t.Fatalf("device %d: completion %d was append %d: out of order", id, i, v)
			}
		}
		got, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: id, Keys: []string{"v"}, To: 1 << 40, Limit: 1000})
		if err != nil || len(got["v"]) != n {
			t.Fatalf("device %d: %d points stored, %v; want %d", id, len(got["v"]), err, n)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	aa.AppendTelemetryAsync([]store.Record{{DeviceID: ids[0], TS: 1, Values: []store.KV{{Key: "v", Value: raw("1")}}}},
		func(err error) { errc <- err })
	if err := <-errc; !errors.Is(err, store.ErrClosed) {
		t.Errorf("append after Close: %v; want store.ErrClosed", err)
	}
}
