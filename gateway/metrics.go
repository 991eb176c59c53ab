package gateway

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus series. They are created per Server
// (not package globals) so tests can run several servers.
type metrics struct {
	sessions   prometheus.Gauge
	handshakes *prometheus.CounterVec // result: ok, refused, error
	refusals   *prometheus.CounterVec // reason
	messages   *prometheus.CounterVec // kind
	// byKind holds messages' counters resolved once: WithLabelValues hashes
	// its labels under a lock, too dear once per message.
	byKind        map[string]prometheus.Counter
	rejected      *prometheus.CounterVec // reason
	ackLatency    prometheus.Histogram
	eventsDropped prometheus.Counter
	cuts          *prometheus.CounterVec // reason: see admission.go
	rotations     *prometheus.CounterVec // result: see certreq.go
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "thingline", Subsystem: "gateway", Name: "sessions",
			Help: "Live MQTT sessions on this node.",
		}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "thingline", Subsystem: "gateway", Name: "handshakes_total",
			Help: "TLS handshakes by result (ok, refused, error).",
		}, []string{"result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "thingline", Subsystem: "gateway", Name: "refusals_total",
			Help: "Refused connections by reason.",
		}, []string{"reason"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "thingline", Subsystem: "gateway", Name: "messages_total",
			Help: "Device PUBLISH messages accepted, by kind.",
		}, []string{"kind"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "thingline", Subsystem: "gateway", Name: "rejected_messages_total",
			Help: "Device messages refused for their content, by reason.",
		}, []string{"reason"}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "thingline", Subsystem: "gateway", Name: "ack_latency_seconds",
			Help:    "Time from reading a QoS 1 PUBLISH to writing its PUBACK (includes the durable store write).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5},
		}),
		eventsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "thingline", Subsystem: "gateway", Name: "events_dropped_total",
			Help: "Audit events dropped because the event queue was full or the per-address limit was hit.",
		}),
	}
	m.cuts = newCutsMetric()
	m.rotations = newRotationsMetric()
	m.byKind = map[string]prometheus.Counter{}
	for _, k := range []string{"telemetry", "attributes", "attribute-request", "rpc-response", "rpc-request", "firmware-request", "claim", "cert-request"} {
		m.byKind[k] = m.messages.WithLabelValues(k)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.sessions, m.handshakes, m.refusals, m.messages, m.rejected, m.ackLatency, m.eventsDropped, m.cuts, m.rotations} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("gateway: registering metrics: %w", err)
		}
	}
	return m, nil
}
