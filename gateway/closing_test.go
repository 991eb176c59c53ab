package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/thingline/thingline/bus"
)

// TestCommandToClosingSession: between its close and the end of finish a
// session still serves the bus; a command reaching it then is answered as
// to an offline device (409 at the API), not as a gateway failure.
func TestCommandToClosingSession(t *testing.T) {
	ss := &session{done: make(chan struct{}), finished: make(chan struct{}), ready: make(chan struct{})}
	close(ss.ready)
	ss.closing.Store(true)
	for _, kind := range []string{bus.CommandRPC, bus.CommandRPCSend, bus.CommandAttributes, bus.CommandClaimResult} {
		_, err := ss.handleCommand(context.Background(), bus.Command{Kind: kind, Payload: json.RawMessage(`{"method":"m","params":{}}`)})
		if !errors.Is(err, bus.ErrNoSession) {
			t.Errorf("%s to a closing session: %v, want ErrNoSession", kind, err)
		}
	}
}
