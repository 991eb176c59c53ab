package nats_test

import (
	"os"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/bustest"
	tlnats "github.com/thingline/thingline/bus/nats"
)

// The suite needs a NATS server; .ci/run starts one and sets
// THINGLINE_TEST_NATS (e.g. nats://127.0.0.1:4222).
func TestConformance(t *testing.T) {
	url := os.Getenv("THINGLINE_TEST_NATS")
	if url == "" {
		t.Skip("THINGLINE_TEST_NATS not set: no NATS server to test against")
	}
	bustest.Run(t, func(t *testing.T) (bus.Bus, bus.Bus) {
		// Each test gets its own subject prefix, so that runs never see
		// each other's sessions.
		prefix := "test" + nats.NewInbox()[len("_INBOX."):]
		a, err := tlnats.Connect(url, prefix)
		if err != nil {
			t.Fatal(err)
		}
		b, err := tlnats.Connect(url, prefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	})
}
