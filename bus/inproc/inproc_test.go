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
