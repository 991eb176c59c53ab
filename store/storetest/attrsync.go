package storetest

import (
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

func testSharedSync(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "sync-dev")
	other := mustDevice(t, s, "sync-other")
	t0 := time.Now().Truncate(time.Microsecond)
	if err := s.MarkShared(ctx, d.ID, []string{"a", "b"}, false, t0); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkShared(ctx, other.ID, []string{"a"}, true, t0); err != nil {
		t.Fatal(err)
	}
	// A later mark replaces: b deleted after being set.
	t1 := t0.Add(time.Second)
	if err := s.MarkShared(ctx, d.ID, []string{"b"}, true, t1); err != nil {
		t.Fatal(err)
	}
	got, err := s.PendingShared(ctx, d.ID)
	if err != nil || len(got) != 2 || got[0].Key != "a" || got[0].Deleted || !got[0].At.Equal(t0) ||
		got[1].Key != "b" || !got[1].Deleted || !got[1].At.Equal(t1) {
		t.Fatalf("PendingShared = %+v, %v", got, err)
	}
	// A change marked again after it was read stays.
	t2 := t1.Add(time.Second)
	if err := s.MarkShared(ctx, d.ID, []string{"a"}, false, t2); err != nil {
		t.Fatal(err)
	}
	if err := s.ClearShared(ctx, d.ID, got); err != nil {
		t.Fatal(err)
	}
	got, _ = s.PendingShared(ctx, d.ID)
	if len(got) != 1 || got[0].Key != "a" || !got[0].At.Equal(t2) {
		t.Errorf("after clear: %+v, want only a at t2", got)
	}
	if o, _ := s.PendingShared(ctx, other.ID); len(o) != 1 {
		t.Errorf("the other device's marks: %+v", o)
	}
	if err := s.DeleteDevice(ctx, d.Name); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.PendingShared(ctx, d.ID); len(got) != 0 {
		t.Errorf("marks of a deleted device: %+v", got)
	}
}
