// Package nats is the bus of a deployment with several nodes: commands and
// notices travel over a NATS server that every node connects to.
//
// Subjects (prefix configurable, default "thingline"):
//
//	<prefix>.cmd.<device>    request/reply to the node serving the device
//	<prefix>.claim.<device>  a node started serving the device; others stop
//	<prefix>.topic.<topic>   broadcast notices
//
// Device names are escaped so that any name is a single subject token.
package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/thingline/thingline/bus"
)

// Bus is a bus.Bus over NATS.
type Bus struct {
	nc     *nats.Conn
	prefix string
	id     string // this instance, to ignore its own claims

	mu       sync.Mutex // guards serving; never held while calling a handler
	serving  map[string]*served
	nextID   uint64
	closed   bool
	ownsConn bool
}

type served struct {
	id    uint64
	h     bus.Handler
	cmd   *nats.Subscription
	claim *nats.Subscription
}

var _ bus.Bus = (*Bus)(nil)

// Connect dials the NATS server at url and returns a bus using subjects
// under prefix ("" means "thingline").
func Connect(url, prefix string) (*Bus, error) {
	nc, err := nats.Connect(url,
		nats.Name("thingline"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500*time.Millisecond),
	)
	if err != nil {
		return nil, fmt.Errorf("nats: connecting to %s: %w", url, err)
	}
	b := New(nc, prefix)
	b.ownsConn = true
	return b, nil
}

// New returns a bus over an existing connection, which the caller keeps
// owning.
func New(nc *nats.Conn, prefix string) *Bus {
	if prefix == "" {
		prefix = "thingline"
	}
	return &Bus{nc: nc, prefix: prefix, id: nats.NewInbox(), serving: make(map[string]*served)}
}

// token escapes a device name into one NATS subject token: everything but
// letters, digits, '-' and '_' becomes ~XX (hex).
func token(name string) string {
	var sb strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			sb.WriteByte(c)
		default:
			fmt.Fprintf(&sb, "~%02X", c)
		}
	}
	if sb.Len() == 0 {
		return "~"
	}
	return sb.String()
}

// reply is the wire form of a handler's answer.
type reply struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
	Kind   string          `json:"kind,omitempty"` // "timeout", "no-session" or ""
}

type claim struct {
	Instance string `json:"instance"`
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
	s := &served{id: b.nextID, h: h}
	old := b.serving[device]
	b.serving[device] = s
	b.mu.Unlock()
	if old != nil {
		b.drop(device, old)
	}

	tok := token(device)
	var err error
	s.cmd, err = b.nc.Subscribe(b.prefix+".cmd."+tok, func(m *nats.Msg) {
		// Each command in its own goroutine: an RPC waiting for a slow
		// device must not hold up a disconnect or an attribute push.
		go b.handle(s, m)
	})
	if err != nil {
		return nil, fmt.Errorf("nats: serving %s: %w", device, err)
	}
	s.claim, err = b.nc.Subscribe(b.prefix+".claim."+tok, func(m *nats.Msg) {
		var c claim
		if json.Unmarshal(m.Data, &c) != nil || c.Instance == b.id {
			return
		}
		b.mu.Lock()
		cur := b.serving[device]
		if cur == s {
			delete(b.serving, device)
		}
		b.mu.Unlock()
		if cur == s {
			b.drop(device, s)
		}
	})
	if err != nil {
		s.cmd.Unsubscribe()
		return nil, fmt.Errorf("nats: serving %s: %w", device, err)
	}
	data, _ := json.Marshal(claim{Instance: b.id})
	if err := b.nc.Publish(b.prefix+".claim."+tok, data); err != nil {
		return nil, fmt.Errorf("nats: claiming %s: %w", device, err)
	}
	// Make sure the subscriptions and the claim reached the server before
	// the caller reports the session as open.
	if err := b.nc.Flush(); err != nil {
		return nil, fmt.Errorf("nats: claiming %s: %w", device, err)
	}
	return func() {
		b.mu.Lock()
		cur := b.serving[device]
		if cur == s {
			delete(b.serving, device)
		}
		b.mu.Unlock()
		s.cmd.Unsubscribe()
		s.claim.Unsubscribe()
		// Once stop returns, requests must find no responder rather than
		// wait for one the server still believes in.
		b.nc.FlushTimeout(2 * time.Second)
	}, nil
}

// drop unsubscribes a replaced handler and tells it to close its session.
func (b *Bus) drop(device string, s *served) {
	if s.cmd != nil {
		s.cmd.Unsubscribe()
	}
	if s.claim != nil {
		s.claim.Unsubscribe()
	}
	go s.h(context.Background(), bus.Command{Kind: bus.CommandDisconnect, Payload: takenOver})
}

func (b *Bus) handle(s *served, m *nats.Msg) {
	var cmd bus.Command
	var rep reply
	if err := json.Unmarshal(m.Data, &cmd); err != nil {
		rep.Error = "malformed command: " + err.Error()
	} else {
		ctx := context.Background()
		if cmd.TimeoutMs > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, time.Duration(cmd.TimeoutMs)*time.Millisecond)
			defer cancel()
		}
		res, err := s.h(ctx, cmd)
		switch {
		case errors.Is(err, bus.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
			rep.Kind, rep.Error = "timeout", err.Error()
		case errors.Is(err, bus.ErrNoSession):
			rep.Kind, rep.Error = "no-session", err.Error()
		case err != nil:
			rep.Error = err.Error()
		default:
			rep.Result = res
		}
	}
	data, _ := json.Marshal(rep)
	m.Respond(data)
}

// Request implements bus.Bus.
func (b *Bus) Request(ctx context.Context, device string, cmd bus.Command) (json.RawMessage, error) {
	if dl, ok := ctx.Deadline(); ok && cmd.TimeoutMs == 0 {
		cmd.TimeoutMs = max(time.Until(dl).Milliseconds(), 1)
	}
	data, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("nats: encoding command: %w", err)
	}
	m, err := b.nc.RequestWithContext(ctx, b.prefix+".cmd."+token(device), data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, bus.ErrNoSession
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return nil, bus.ErrTimeout
	case errors.Is(err, nats.ErrConnectionClosed):
		return nil, bus.ErrClosed
	case err != nil:
		return nil, fmt.Errorf("nats: request to %s: %w", device, err)
	}
	var rep reply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return nil, fmt.Errorf("nats: malformed reply from %s: %w", device, err)
	}
	switch {
	case rep.Kind == "timeout":
		return nil, bus.ErrTimeout
	case rep.Kind == "no-session":
		return nil, bus.ErrNoSession
	case rep.Error != "":
		return nil, errors.New(rep.Error)
	}
	return rep.Result, nil
}

// Publish implements bus.Bus.
func (b *Bus) Publish(ctx context.Context, topic string, data []byte) error {
	if err := b.nc.Publish(b.prefix+".topic."+topic, data); err != nil {
		if errors.Is(err, nats.ErrConnectionClosed) {
			return bus.ErrClosed
		}
		return fmt.Errorf("nats: publishing on %s: %w", topic, err)
	}
	return nil
}

// PublishBuffered implements bus.Buffered: Publish appends to the
// connection's write buffer, which the client flushes on its own.
func (b *Bus) PublishBuffered() {}

var _ bus.Buffered = (*Bus)(nil)

// Subscribe implements bus.Bus.
func (b *Bus) Subscribe(topic string, fn func([]byte)) (func(), error) {
	sub, err := b.nc.Subscribe(b.prefix+".topic."+topic, func(m *nats.Msg) { fn(m.Data) })
	if err != nil {
		return nil, fmt.Errorf("nats: subscribing to %s: %w", topic, err)
	}
	if err := b.nc.Flush(); err != nil {
		return nil, fmt.Errorf("nats: subscribing to %s: %w", topic, err)
	}
	return func() { sub.Unsubscribe() }, nil
}

// Close implements bus.Bus.
func (b *Bus) Close() error {
	b.mu.Lock()
	b.closed = true
	b.serving = map[string]*served{}
	b.mu.Unlock()
	if b.ownsConn {
		if err := b.nc.Drain(); err != nil {
			b.nc.Close()
		}
	}
	return nil
}
