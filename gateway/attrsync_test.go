package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

// TestCatchUpSkipsWritesInFlight: a key the API has marked as changed but
// not stored yet (its write is in flight when the device subscribes) is
// neither pushed as deleted nor cleared; the writer's live push is the
// device's first word of it.
func TestCatchUpSkipsWritesInFlight(t *testing.T) {
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-000031")
	c := e.v3(t, cert)
	d := e.device(t, "SN-000031")
	ctx := context.Background()
	at := time.Now()
	if err := e.st.SetAttributes(ctx, d.ID, store.SharedScope, map[string]json.RawMessage{"stored": json.RawMessage(`2`), "gone": json.RawMessage(`3`)}, at); err != nil {
		t.Fatal(err)
	}
	if err := e.st.DeleteAttributes(ctx, d.ID, store.SharedScope, []string{"gone"}); err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		key     string
		deleted bool
	}{{"writing", false}, {"stored", false}, {"gone", true}} {
		if err := e.st.MarkShared(ctx, d.ID, []string{m.key}, m.deleted, at); err != nil {
			t.Fatal(err)
		}
	}

	c.sub(t, "v1/devices/me/attributes")
	pushed := func(n int) string {
		t.Helper()
		var got []string
		tstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			c.rx.mu.Lock()
			defer c.rx.mu.Unlock()
			got = got[:0]
			for _, m := range c.rx.msgs {
				if m.topic == "v1/devices/me/attributes" {
					got = append(got, m.payload)
				}
			}
			if len(got) < n {
				return fmt.Errorf("device got %v", got)
			}
			return nil
		})
		return strings.Join(got, " ")
	}
	// The catch-up (it runs after the SUBACK) tells what is stored.
	if got, want := pushed(2), `{"stored":2} {"deleted":["gone"]}`; got != want {
		t.Fatalf("catch-up: device got %s, want %s", got, want)
	}
	// The in-flight key's mark stays for its writer to clear.
	tstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		p, err := e.st.PendingShared(ctx, d.ID)
		if err != nil || len(p) != 1 || p[0].Key != "writing" {
			return fmt.Errorf("pending after the catch-up: %+v, %v", p, err)
		}
		return nil
	})
	// The writer stores and pushes now: the device's first word of it.
	if err := e.st.SetAttributes(ctx, d.ID, store.SharedScope, map[string]json.RawMessage{"writing": json.RawMessage(`1`)}, at); err != nil {
		t.Fatal(err)
	}
	if _, err := e.bus.Request(ctx, "SN-000031", bus.Command{Kind: bus.CommandAttributes, Payload: json.RawMessage(`{"writing":1}`)}); err != nil {
		t.Fatal(err)
	}
	if got, want := pushed(3), `{"stored":2} {"deleted":["gone"]} {"writing":1}`; got != want {
		t.Errorf("device got %s, want %s", got, want)
	}
}
