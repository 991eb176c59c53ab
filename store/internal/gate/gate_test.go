package gate

import (
	"context"
	"errors"
	"testing"

	"github.com/thingline/thingline/store"
)

func TestGate(t *testing.T) {
	var g Gate
	ch := make(chan int, 1)
	if err := Send(context.Background(), &g, ch, 1); err != nil || <-ch != 1 {
		t.Fatalf("send on an open gate: %v", err)
	}

	// A caller that gives up while its operation waits gets ctx.Err().
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Do(ctx, &g, ch, 2, make(chan struct{}), new(error)); !errors.Is(err, context.Canceled) {
		t.Errorf("Do with an ended context: %v", err)
	}
	select { // queued before the wait, or not sent at all: either is allowed
	case <-ch:
	default:
	}
	ch <- 0
	if err := Send(ctx, &g, ch, 3); !errors.Is(err, context.Canceled) {
		t.Errorf("Send on a full queue with an ended context: %v", err)
	}
	<-ch

	// Do returns what the queue's owner recorded.
	want := errors.New("from the writer")
	done, res := make(chan struct{}), new(error)
	go func() {
		<-ch
		*res = want
		close(done)
	}()
	if err := Do(context.Background(), &g, ch, 4, done, res); err != want {
		t.Errorf("Do: %v, want %v", err, want)
	}

	if !g.Close() || g.Close() {
		t.Error("Close: only the first call closes")
	}
	if err := g.Open(); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Open after Close: %v", err)
	}
	if err := Send(context.Background(), &g, ch, 5); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Send after Close: %v", err)
	}
}
