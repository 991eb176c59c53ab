package node

import (
	"context"
	"time"

	"github.com/thingline/thingline/alarm"
	"github.com/thingline/thingline/gateway"
	"github.com/thingline/thingline/retention"
	"github.com/thingline/thingline/store"
)

// startAlarms starts device state and alarms and returns the gateway's
// observer of them.
func (n *Node) startAlarms(ctx context.Context) (gateway.Observer, error) {
	c := n.cfg.Alarms
	c.Store, c.Bus, c.Node, c.Logger = n.store, n.bus, n.cfg.NodeID, n.cfg.Logger
	e, err := alarm.Start(ctx, c)
	if err != nil {
		return nil, err
	}
	n.alarms = e
	return observer{e}, nil
}

// Alarms is the node's alarm service, for raising and clearing alarms.
func (n *Node) Alarms() *alarm.Service { return n.alarms.Service() }

// observer adapts the alarm engine to the gateway's interface (package
// alarm does not know the gateway).
type observer struct{ e *alarm.Engine }

func (o observer) SessionStarted(d store.Device, at time.Time) gateway.SessionObserver {
	return o.e.SessionStarted(d, at)
}

func (o observer) Event(ev store.Event) { o.e.Event(ev) }

// startRetention starts the removal of old data.
func (n *Node) startRetention() {
	c := n.cfg.Retention
	c.Store, c.Node, c.Logger = n.store, n.cfg.NodeID, n.cfg.Logger
	n.retain = retention.Start(c)
}
