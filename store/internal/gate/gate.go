// Package gate is the front door of a store backend's write queue:
// callers send operations on its channels until the store is closed and
// never after, so that the goroutines draining the queue can stop once
// Close got through. Both backends queue writes this way (SQLite every
// write, PostgreSQL telemetry) and wait for them the same way.
package gate

import (
	"context"
	"sync"

	"github.com/thingline/thingline/store"
)

// Gate guards the sends on a queue's channels against its closing. The
// zero value is open.
type Gate struct {
	// Senders hold mu shared while sending, Close exclusively: once Close
	// returned, no send is under way and none will start.
	mu     sync.RWMutex
	closed bool
}

// Open returns store.ErrClosed once the gate is closed.
func (g *Gate) Open() error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return store.ErrClosed
	}
	return nil
}

// Close closes the gate and reports whether this call closed it.
func (g *Gate) Close() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.closed = true
	return true
}

// Send sends v on ch unless the gate is closed (store.ErrClosed) or ctx
// ends first.
func Send[T any](ctx context.Context, g *Gate, ch chan<- T, v T) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return store.ErrClosed
	}
	select {
	case ch <- v:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Do sends v on ch like Send, then waits until done is closed, and returns
// *err, or until ctx ends. A caller that gives up leaves v queued: the
// queue's owner skips it or runs it, and closes done either way.
func Do[T any](ctx context.Context, g *Gate, ch chan<- T, v T, done <-chan struct{}, err *error) error {
	if e := Send(ctx, g, ch, v); e != nil {
		return e
	}
	select {
	case <-done:
		return *err
	case <-ctx.Done():
		return ctx.Err()
	}
}
