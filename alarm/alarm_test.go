package alarm

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
	"github.com/thingline/thingline/tstest"
)

// notices collects what is announced on bus.TopicAlarms.
type notices struct {
	mu sync.Mutex
	ns []store.AlarmNotice
}

func watchAlarms(t *testing.T, b bus.Bus) *notices {
	n := &notices{}
	stop, err := b.Subscribe(bus.TopicAlarms, func(data []byte) {
		var a store.AlarmNotice
		if err := json.Unmarshal(data, &a); err != nil {
			t.Errorf("bad alarm notice %s: %v", data, err)
			return
		}
		n.mu.Lock()
		n.ns = append(n.ns, a)
		n.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return n
}

func (n *notices) ops() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, a := range n.ns {
		out = append(out, a.Op+":"+a.Alarm.Type+":"+a.Device)
	}
	return out
}

func openSQLite(t *testing.T) store.Store {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestServiceLifecycle(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	b := inproc.New()
	t.Cleanup(func() { b.Close() })
	seen := watchAlarms(t, b)
	if _, _, _, err := st.EnsureDevice(ctx, store.Device{Name: "SN-1", Profile: "default"}, store.Credential{SHA256: "aa"}, nil); err != nil {
		t.Fatal(err)
	}
	s := NewService(st, b, nil)
	a, err := s.Raise(ctx, "SN-1", store.AlarmOTAFailed, store.SeverityMajor, map[string]string{"error": "checksum"})
	if err != nil || a.Status != store.AlarmActiveUnack || string(a.Detail) != `{"error":"checksum"}` {
		t.Fatalf("Raise = %+v, %v", a, err)
	}
	if b2, err := s.Raise(ctx, "SN-1", store.AlarmOTAFailed, store.SeverityMajor, nil); err != nil || b2.ID != a.ID || b2.Count != 2 {
		t.Fatalf("second Raise = %+v, %v; want folded", b2, err)
	}
	if _, err := s.Raise(ctx, "SN-404", store.AlarmOTAFailed, store.SeverityMajor, nil); err == nil {
		t.Fatal("raise on an unknown device succeeded")
	}
	if a, err := s.Ack(ctx, a.ID, "ops"); err != nil || a.Status != store.AlarmActiveAck {
		t.Fatalf("Ack = %+v, %v", a, err)
	}
	if _, err := s.Ack(ctx, a.ID, "ops"); err != nil {
		t.Fatalf("second Ack: %v", err)
	}
	c, cleared, err := s.Clear(ctx, "SN-1", store.AlarmOTAFailed)
	if err != nil || !cleared || c.Status != store.AlarmClearedAck || c.ClearBy != "system" {
		t.Fatalf("Clear = %+v, %v, %v", c, cleared, err)
	}
	if _, cleared, err := s.Clear(ctx, "SN-1", store.AlarmOTAFailed); err != nil || cleared {
		t.Fatalf("Clear with none active: cleared %v, err %v", cleared, err)
	}
	want := []string{"raised:ota-failed:SN-1", "updated:ota-failed:SN-1", "acknowledged:ota-failed:SN-1", "cleared:ota-failed:SN-1"}
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		got := seen.ops()
		if len(got) != len(want) {
			return fmt.Errorf("notices %v; want %v", got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				return fmt.Errorf("notices %v; want %v", got, want)
			}
		}
		return nil
	})
}
