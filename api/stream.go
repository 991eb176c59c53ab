package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/thingline/thingline/bus"
)

// streamTopics are the notices the live stream relays; each is sent as a
// server-sent event named after its topic.
var streamTopics = []string{bus.TopicTelemetry, bus.TopicState, bus.TopicAlarms, bus.TopicRPC, bus.TopicOTA}

// streamBuffer is how many notices may wait for a client; a client that
// falls that far behind is dropped rather than slowing the bus.
const streamBuffer = 1024

// maxStreamDevices bounds the device filter of one request.
const maxStreamDevices = 1000

type streamEvent struct {
	topic string
	data  []byte
}

// stream serves GET /api/v1/stream: server-sent events of telemetry, state
// changes, alarms, RPC and OTA progress, from every node (the bus carries
// the notices of the whole cluster), filtered by ?device= (repeatable or
// comma-separated) and ?types=. See docs/stream.md.
func (s *Server) stream(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	var devices []string
	for _, v := range q["device"] {
		devices = append(devices, splitKeys(v)...)
	}
	if len(devices) > maxStreamDevices {
		return errorf(http.StatusBadRequest, "at most %d devices per stream", maxStreamDevices)
	}
	topics := streamTopics
	if t := q.Get("types"); t != "" {
		topics = nil
		for _, k := range splitKeys(t) {
			if !slices.Contains(streamTopics, k) {
				return errorf(http.StatusBadRequest, "unknown stream type %q: want some of %s", k, strings.Join(streamTopics, ","))
			}
			if !slices.Contains(topics, k) {
				topics = append(topics, k)
			}
		}
	}
	// Who may see what (visibility.go): staff every device, an owner the
	// devices they own now, from the start of their ownership; an operator
	// no device data.
	topics, err := visibleTopics(principal(r), topics, q.Get("types") != "")
	if err != nil {
		return err
	}
	allow := s.streamFilter(r)
	wanted := map[string]bool{}
	for _, d := range devices {
		wanted[d] = true
	}

	events := make(chan streamEvent, streamBuffer)
	overflow := make(chan struct{})
	var overflowOnce sync.Once
	for _, topic := range topics {
		stop, err := s.cfg.Bus.Subscribe(topic, func(data []byte) {
			var n struct {
				Device string `json:"device"`
				TS     int64  `json:"ts"`
			}
			if json.Unmarshal(data, &n) != nil || len(wanted) > 0 && !wanted[n.Device] || !allow(n.Device, n.TS) {
				return
			}
			select {
			case events <- streamEvent{topic: topic, data: data}:
			default:
				overflowOnce.Do(func() { close(overflow) })
			}
		})
		if err != nil {
			return err
		}
		defer stop()
	}

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // a proxy must not buffer the stream
	w.WriteHeader(http.StatusOK)
	keepAlive := s.cfg.StreamKeepAlive
	if keepAlive <= 0 {
		keepAlive = 15 * time.Second
	}
	var buf bytes.Buffer
	send := func() bool {
		// A client that stops reading is cut after a while instead of
		// holding its goroutine and subscriptions forever.
		rc.SetWriteDeadline(time.Now().Add(2*keepAlive + 5*time.Second))
		_, err := w.Write(buf.Bytes())
		buf.Reset()
		return err == nil && rc.Flush() == nil
	}
	buf.WriteString(": thingline live stream\nretry: 3000\n\n")
	if !send() {
		return nil
	}
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-overflow:
			buf.WriteString("event: error\ndata: {\"error\":\"client too slow: notices were dropped, reconnect\"}\n\n")
			send()
			return nil
		case <-tick.C:
			buf.WriteString(": keep-alive\n\n")
			if !send() {
				return nil
			}
		case ev := <-events:
			writeStreamEvent(&buf, ev)
			// Whatever else is waiting goes in the same write.
			for drained := false; !drained && buf.Len() < 64<<10; {
				select {
				case ev := <-events:
					writeStreamEvent(&buf, ev)
				default:
					drained = true
				}
			}
			if !send() {
				return nil
			}
		}
	}
}

func writeStreamEvent(buf *bytes.Buffer, ev streamEvent) {
	buf.WriteString("event: ")
	buf.WriteString(ev.topic)
	buf.WriteString("\ndata: ")
	// Notices are one line of JSON; a line break between its tokens would
	// end the SSE field, and is white space like a blank.
	buf.Write(bytes.ReplaceAll(ev.data, []byte("\n"), []byte(" ")))
	buf.WriteString("\n\n")
}
