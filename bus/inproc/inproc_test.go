package inproc_test

import (
	"testing"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/bustest"
	"github.com/thingline/thingline/bus/inproc"
)

func TestConformance(t *testing.T) {
	bustest.Run(t, func(t *testing.T) (bus.Bus, bus.Bus) {
		b := inproc.New()
		t.Cleanup(func() { b.Close() })
		return b, b
	})
}

func TestWatched(t *testing.T) {
	b := inproc.New()
	defer b.Close()
	if b.Watched(bus.TopicTelemetry) {
		t.Fatal("watched before any subscription")
	}
	stop, err := b.Subscribe(bus.TopicTelemetry, func([]byte) {})
	if err != nil {
		t.Fatal(err)
	}
	if !b.Watched(bus.TopicTelemetry) || b.Watched(bus.TopicDevices) {
		t.Error("subscription not seen, or seen on the wrong topic")
	}
	stop()
	if b.Watched(bus.TopicTelemetry) {
		t.Error("still watched after the subscription stopped")
	}
}
