// Package inproc is the in-process bus: one node, no network. It is the
// embedded default of `thingline serve` and the bus of most tests.
package inproc

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/thingline/thingline/bus"
)

// Bus is an in-process bus.Bus. The zero value is not usable; call New.
type Bus struct {
	mu       sync.Mutex // guards everything below; never held while calling out
	handlers map[string]*entry
	subs     map[string]map[uint64]func([]byte)
	nextID   uint64
	closed   bool
}

type entry struct {
	id uint64
	h  bus.Handler
}

var (
	_ bus.Bus     = (*Bus)(nil)
	_ bus.Watcher = (*Bus)(nil)
)

// Watched implements bus.Watcher.
func (b *Bus) Watched(topic string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs[topic]) > 0
}

// New returns an empty in-process bus.
func New() *Bus {
	return &Bus{
		handlers: make(map[string]*entry),
		subs:     make(map[string]map[uint64]func([]byte)),
	}
}

var takenOver = json.RawMessage(`{"reason":"session taken over"}`)

// Serve implements bus.Bus.
func (b *Bus) Serve(device string, h bus.Handler) (func(), error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, bus.ErrClosed
	}
	b.nextID++
	e := &entry{id: b.nextID, h: h}
	old := b.handlers[device]
	b.handlers[device] = e
	b.mu.Unlock()
	if old != nil {
		// Outside the lock: the old session's handler may take its time
		// closing its connection, or call back into the bus.
		go old.h(context.Background(), bus.Command{Kind: bus.CommandDisconnect, Payload: takenOver})
	}
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if cur := b.handlers[device]; cur == e {
			delete(b.handlers, device)
		}
	}, nil
}

// Request implements bus.Bus.
func (b *Bus) Request(ctx context.Context, device string, cmd bus.Command) (json.RawMessage, error) {
	b.mu.Lock()
	e := b.handlers[device]
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return nil, bus.ErrClosed
	}
	if e == nil {
		return nil, bus.ErrNoSession
	}
	return e.h(ctx, cmd)
}

// Publish implements bus.Bus. Subscribers run in the caller's goroutine.
func (b *Bus) Publish(ctx context.Context, topic string, data []byte) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return bus.ErrClosed
	}
	fns := make([]func([]byte), 0, len(b.subs[topic]))
	for _, fn := range b.subs[topic] {
		fns = append(fns, fn)
	}
	b.mu.Unlock()
	for _, fn := range fns {
		fn(data)
	}
	return nil
}

// Subscribe implements bus.Bus.
func (b *Bus) Subscribe(topic string, fn func([]byte)) (func(), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, bus.ErrClosed
	}
	b.nextID++
	id := b.nextID
	if b.subs[topic] == nil {
		b.subs[topic] = make(map[uint64]func([]byte))
	}
	b.subs[topic][id] = fn
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.subs[topic], id)
	}, nil
}

// Close implements bus.Bus.
func (b *Bus) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.handlers = map[string]*entry{}
	b.subs = map[string]map[uint64]func([]byte){}
	return nil
}
