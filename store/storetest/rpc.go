package storetest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

func testRPC(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "rpc-dev")
	other := mustDevice(t, s, "rpc-other")
	now := time.Now().Truncate(time.Millisecond)
	mk := func(dev store.Device, method string, created time.Time, expires time.Duration) store.RPC {
		t.Helper()
		r, err := s.CreateRPC(ctx, store.RPC{DeviceID: dev.ID, Device: dev.Name, Method: method, Params: raw(`{"pin":23}`),
			Retries: 2, TimeoutMs: 5000, CreatedAt: created, ExpiresAt: created.Add(expires)})
		if err != nil {
			t.Fatalf("CreateRPC: %v", err)
		}
		return r
	}
	a := mk(d, "setGpio", now.Add(-time.Hour), 24*time.Hour)
	if a.ID == 0 || a.Status != store.RPCQueued || a.Attempts != 0 || string(a.Params) != `{"pin":23}` || a.Device != "rpc-dev" {
		t.Fatalf("created %+v", a)
	}
	got, err := s.GetRPC(ctx, a.ID)
	if err != nil || got.Method != "setGpio" || !got.CreatedAt.Equal(a.CreatedAt) || !got.ExpiresAt.Equal(a.ExpiresAt) ||
		got.Retries != 2 || got.TimeoutMs != 5000 || got.Response != nil || !got.SentAt.IsZero() {
		t.Fatalf("GetRPC = %+v, %v", got, err)
	}
	if _, err := s.GetRPC(ctx, a.ID+1000); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetRPC(missing) err = %v, want ErrNotFound", err)
	}
	b := mk(d, "reboot", now, time.Hour)
	c := mk(other, "getState", now, time.Hour)

	// Listing: newest first, per device, bounded below by time, by status.
	list, err := s.ListRPCs(ctx, store.RPCQuery{DeviceID: d.ID})
	if err != nil || len(list) != 2 || list[0].ID != b.ID || list[1].ID != a.ID {
		t.Fatalf("ListRPCs(device) = %v, %v", ids(list), err)
	}
	list, _ = s.ListRPCs(ctx, store.RPCQuery{DeviceID: d.ID, Since: now.Add(-time.Minute)})
	if len(list) != 1 || list[0].ID != b.ID {
		t.Errorf("ListRPCs(since) = %v, want [%d]", ids(list), b.ID)
	}
	list, _ = s.ListRPCs(ctx, store.RPCQuery{Before: c.ID, Limit: 1})
	if len(list) != 1 || list[0].ID != b.ID {
		t.Errorf("ListRPCs(before, limit) = %v, want [%d]", ids(list), b.ID)
	}

	// A transition applies only from the state the caller saw.
	sent, ok, err := s.TransitionRPC(ctx, store.RPCTransition{ID: a.ID, From: []store.RPCStatus{store.RPCQueued, store.RPCTimeout},
		Attempts: 0, To: store.RPCSent, NewAttempt: true, Node: "n1", At: now})
	if err != nil || !ok || sent.Status != store.RPCSent || sent.Attempts != 1 || sent.Node != "n1" || !sent.SentAt.Equal(now) {
		t.Fatalf("claim: %+v %v %v", sent, ok, err)
	}
	if _, ok, err := s.TransitionRPC(ctx, store.RPCTransition{ID: a.ID, From: []store.RPCStatus{store.RPCQueued},
		Attempts: 0, To: store.RPCSent, NewAttempt: true, Node: "n2"}); ok || err != nil {
		t.Errorf("second claim of the same attempt: ok=%v err=%v, want refused", ok, err)
	}
	if _, ok, _ := s.TransitionRPC(ctx, store.RPCTransition{ID: a.ID, From: []store.RPCStatus{store.RPCSent},
		Attempts: -1, DeviceID: other.ID, To: store.RPCSuccessful}); ok {
		t.Error("another device completed the call")
	}
	undone, ok, _ := s.TransitionRPC(ctx, store.RPCTransition{ID: a.ID, From: []store.RPCStatus{store.RPCSent},
		Attempts: 1, To: store.RPCQueued, UndoAttempt: true})
	if !ok || undone.Attempts != 0 || undone.Status != store.RPCQueued {
		t.Errorf("undo: %+v %v", undone, ok)
	}
	done, ok, err := s.TransitionRPC(ctx, store.RPCTransition{ID: a.ID, From: []store.RPCStatus{store.RPCQueued},
		Attempts: -1, DeviceID: d.ID, To: store.RPCSuccessful, Response: raw(`{"ok":true}`)})
	if err != nil || !ok || string(done.Response) != `{"ok":true}` || !done.Status.Final() {
		t.Fatalf("complete: %+v %v %v", done, ok, err)
	}

	// Only one of many concurrent claims of one attempt wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, ok, err := s.TransitionRPC(ctx, store.RPCTransition{ID: b.ID, From: []store.RPCStatus{store.RPCQueued},
				Attempts: 0, To: store.RPCSent, NewAttempt: true, Node: "n"})
			if err != nil {
				t.Error(err)
			}
			if ok {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d concurrent claims won, want 1", wins)
	}

	pend, err := s.PendingRPCDevices(ctx)
	if err != nil || len(pend) != 2 {
		t.Errorf("PendingRPCDevices = %v, %v; want both devices", pend, err)
	}
	exp, err := s.ExpireRPCs(ctx, now.Add(2*time.Hour))
	if err != nil || len(exp) != 2 {
		t.Fatalf("ExpireRPCs = %v, %v; want b and c", ids(exp), err)
	}
	for _, r := range exp {
		if r.Status != store.RPCExpired {
			t.Errorf("expired %d has status %s", r.ID, r.Status)
		}
	}
	if exp, _ := s.ExpireRPCs(ctx, now.Add(3*time.Hour)); len(exp) != 0 {
		t.Errorf("ExpireRPCs expired %v again", ids(exp))
	}
	if got, _ := s.GetRPC(ctx, a.ID); got.Status != store.RPCSuccessful {
		t.Errorf("a final call was touched by expiry: %s", got.Status)
	}
	if pend, _ := s.PendingRPCDevices(ctx); len(pend) != 0 {
		t.Errorf("PendingRPCDevices after expiry = %v", pend)
	}
	list, _ = s.ListRPCs(ctx, store.RPCQuery{Status: []store.RPCStatus{store.RPCExpired}})
	if len(list) != 2 {
		t.Errorf("ListRPCs(EXPIRED) = %v", ids(list))
	}

	if err := s.DeleteRPC(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRPC(ctx, c.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteRPC err = %v, want ErrNotFound", err)
	}
	// A deleted device's calls go with it.
	if err := s.DeleteDevice(ctx, d.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetRPC(ctx, b.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("rpc of a deleted device: err = %v, want ErrNotFound", err)
	}
}

func ids(rs []store.RPC) []int64 {
	var out []int64
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}
