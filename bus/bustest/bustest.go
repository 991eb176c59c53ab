// Package bustest is the conformance suite every bus.Bus implementation
// passes. Run gets two buses of one fabric: for a single-process bus both
// are the same value; for a networked bus they are two nodes.
package bustest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/tstest"
)

// Run runs the suite. newPair returns two buses of one fabric; the suite
// closes them.
func Run(t *testing.T, newPair func(t *testing.T) (a, b bus.Bus)) {
	t.Run("RequestReachesServingNode", func(t *testing.T) {
		a, b := newPair(t)
		stop, err := a.Serve("SN-1", func(ctx context.Context, cmd bus.Command) (json.RawMessage, error) {
			if cmd.Kind != bus.CommandRPC {
				return nil, fmt.Errorf("unexpected kind %q", cmd.Kind)
			}
			return json.RawMessage(`{"echo":` + string(cmd.Payload) + `}`), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := b.Request(ctx, "SN-1", bus.Command{Kind: bus.CommandRPC, Payload: json.RawMessage(`{"method":"m"}`)})
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != `{"echo":{"method":"m"}}` {
			t.Errorf("reply = %s", got)
		}
	})
	t.Run("NoSession", func(t *testing.T) {
		a, b := newPair(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := b.Request(ctx, "nobody", bus.Command{Kind: bus.CommandRPC}); !errors.Is(err, bus.ErrNoSession) {
			t.Errorf("request to unserved device: err = %v, want ErrNoSession", err)
		}
		stop, err := a.Serve("SN-2", func(context.Context, bus.Command) (json.RawMessage, error) { return nil, nil })
		if err != nil {
			t.Fatal(err)
		}
		stop()
		tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if _, err := b.Request(ctx, "SN-2", bus.Command{Kind: bus.CommandRPC}); !errors.Is(err, bus.ErrNoSession) {
				return fmt.Errorf("after stop: err = %v, want ErrNoSession", err)
			}
			return nil
		})
	})
	t.Run("Timeout", func(t *testing.T) {
		a, b := newPair(t)
		stop, err := a.Serve("slow", func(ctx context.Context, cmd bus.Command) (json.RawMessage, error) {
			<-ctx.Done()
			return nil, bus.ErrTimeout
		})
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := b.Request(ctx, "slow", bus.Command{Kind: bus.CommandRPC, TimeoutMs: 200}); !errors.Is(err, bus.ErrTimeout) {
			t.Errorf("err = %v, want ErrTimeout", err)
		}
	})
	t.Run("HandlerError", func(t *testing.T) {
		a, b := newPair(t)
		stop, err := a.Serve("err", func(context.Context, bus.Command) (json.RawMessage, error) {
			return nil, errors.New("device refused")
		})
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		_, err = b.Request(context.Background(), "err", bus.Command{Kind: bus.CommandRPC})
		if err == nil || err.Error() != "device refused" {
			t.Errorf("err = %v, want device refused", err)
		}
	})
	t.Run("TakeoverDisconnectsOlder", func(t *testing.T) {
		a, b := newPair(t)
		var mu sync.Mutex
		var oldGot []bus.Command
		stopOld, err := a.Serve("dup", func(ctx context.Context, cmd bus.Command) (json.RawMessage, error) {
			mu.Lock()
			oldGot = append(oldGot, cmd)
			mu.Unlock()
			return json.RawMessage(`"old"`), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		defer stopOld()
		stopNew, err := b.Serve("dup", func(ctx context.Context, cmd bus.Command) (json.RawMessage, error) {
			return json.RawMessage(`"new"`), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		defer stopNew()
		tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			mu.Lock()
			defer mu.Unlock()
			for _, c := range oldGot {
				if c.Kind == bus.CommandDisconnect {
					return nil
				}
			}
			return errors.New("older handler got no disconnect")
		})
		for _, requester := range []bus.Bus{a, b} {
			got, err := requester.Request(context.Background(), "dup", bus.Command{Kind: bus.CommandRPC})
			if err != nil || string(got) != `"new"` {
				t.Errorf("after takeover: reply %s, %v; want \"new\"", got, err)
			}
		}
	})
	t.Run("Broadcast", func(t *testing.T) {
		a, b := newPair(t)
		var mu sync.Mutex
		var got []string
		for _, x := range []bus.Bus{a, b} {
			stop, err := x.Subscribe(bus.TopicDevices, func(d []byte) {
				mu.Lock()
				got = append(got, string(d))
				mu.Unlock()
			})
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
		}
		if err := a.Publish(context.Background(), bus.TopicDevices, []byte("x")); err != nil {
			t.Fatal(err)
		}
		const want = 2 // one per subscription, whether a and b are one bus or two
		tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(got) != want {
				return fmt.Errorf("got %d deliveries, want %d", len(got), want)
			}
			return nil
		})
	})
	t.Run("NamesWithOddCharacters", func(t *testing.T) {
		a, b := newPair(t)
		names := []string{"a.b", "a b", "*", ">", "ü-ä", "SN-000001"}
		for _, n := range names {
			n := n
			stop, err := a.Serve(n, func(context.Context, bus.Command) (json.RawMessage, error) {
				v, _ := json.Marshal(n)
				return v, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
		}
		for _, n := range names {
			got, err := b.Request(context.Background(), n, bus.Command{Kind: bus.CommandRPC})
			want, _ := json.Marshal(n)
			if err != nil || string(got) != string(want) {
				t.Errorf("%q: reply %s, %v", n, got, err)
			}
		}
	})
}
