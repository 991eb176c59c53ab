package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// Firmware over MQTT, served as ThingsBoard's MqttTransportHandler serves
// it (see docs/ota.md for the sources):
//
//   - the device publishes v2/fw/request/{requestId}/chunk/{chunk} with the
//     chunk size as decimal text; a size is remembered per request id, so
//     later requests may be empty; no size at all means the whole file;
//   - the answer is published on v2/fw/response/{requestId}/chunk/{chunk}
//     whatever the device subscribed to (SDKs subscribe v2/fw/response/+,
//     which does not even match), at the QoS of a matching subscription,
//     else 1; past the end the payload is empty;
//   - errors go to v2/fw/error as text (NOT_FOUND: nothing assigned,
//     PAYLOAD_TOO_LARGE: a chunk size over the maximum payload) and the
//     session is closed, as ThingsBoard does.
//
// Software requests (v2/sw/...) get NOT_FOUND: thingline assigns firmware
// only, and ThingsBoard too answers software errors on v2/fw/error.
//
// Telemetry or attributes carrying the device's firmware facts (fw_state,
// fw_error, current_fw_title, current_fw_version) are passed, once stored,
// to the OTA engine as a bus.TopicOTAReport notice, with chunk activity.

const (
	fwErrNotFound  = "NOT_FOUND"
	fwErrTooLarge  = "PAYLOAD_TOO_LARGE"
	fwErrorTopic   = "v2/fw/error"
	maxFWRequests  = 16 // remembered chunk sizes per session
	fwActivityStep = time.Second
)

// classifyOTA recognises v2/fw/request/{id}/chunk/{n} and the v2/sw form;
// rest is the topic without its "v2/" prefix.
func classifyOTA(rest string) (pubKind, string, bool) {
	var kind pubKind
	switch {
	case strings.HasPrefix(rest, "fw/request/"):
		kind = pubFWRequest
	case strings.HasPrefix(rest, "sw/request/"):
		kind = pubSWRequest
	default:
		return pubUnknown, "", false
	}
	req, chunk, ok := strings.Cut(rest[len("fw/request/"):], "/chunk/")
	if !ok || !validID(req) || !validID(chunk) {
		return pubUnknown, "", false
	}
	return kind, req + "/" + chunk, true
}

// fwSession is a session's firmware download state. Guarded by session.mu.
type fwSession struct {
	sizes        map[string]int // chunk size per request id
	lastActivity time.Time
	lastReport   int64 // At of the last report notice
}

// fwRequest serves one chunk request; false ends the session.
func (ss *session) fwRequest(w *work, kind pubKind, id string, payload []byte) bool {
	req, chunkStr, _ := strings.Cut(id, "/")
	chunk, _ := strconv.Atoi(chunkStr) // validID: ≤ 10 digits
	size := 0
	if p := strings.TrimSpace(string(payload)); p != "" {
		n, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			return ss.reject(w, badPayload, codePayloadFormat, "firmware chunk request: payload must be the chunk size in bytes, not "+strconv.Quote(p))
		}
		// ThingsBoard keeps positive sizes only; zero or negative falls
		// back to the remembered size, else the whole file.
		size = int(min(max(n, 0), 1<<31-1))
	}
	ss.mu.Lock()
	if size > 0 {
		if ss.fw.sizes == nil || len(ss.fw.sizes) >= maxFWRequests {
			ss.fw.sizes = map[string]int{}
		}
		ss.fw.sizes[req] = size
	} else {
		size = ss.fw.sizes[req]
	}
	ss.mu.Unlock()
	if kind == pubSWRequest {
		w.fn = func(context.Context) { ss.fwError(fwErrNotFound) }
	} else if size > ss.srv.profile.MaxPayload {
		w.fn = func(context.Context) { ss.fwError(fwErrTooLarge) }
	} else {
		w.fn = func(ctx context.Context) { ss.sendChunk(ctx, req, chunk, size) }
	}
	ss.srv.met.byKind["firmware-request"].Inc()
	ss.enqueue(w)
	return true
}

// fwError publishes a firmware error and closes the session, as
// ThingsBoard's sendOtaPackageError does.
func (ss *session) fwError(code string) {
	sub, _ := ss.sub(subFirmware)
	if err := ss.publish(fwErrorTopic, []byte(code), sub.qos); err != nil {
		ss.srv.log.Debug("gateway: firmware error", "device", ss.dev.Name, "err", err)
	}
	ss.closeByServer(codeImplSpecific, "firmware request failed: "+code)
}

// sendChunk publishes bytes [chunk·size, (chunk+1)·size) of the device's
// assigned package; size 0 sends the whole package.
func (ss *session) sendChunk(ctx context.Context, req string, chunk, size int) {
	s := ss.srv
	pkgID, err := s.assignedPackage(ctx, ss.dev)
	if errors.Is(err, store.ErrNotFound) {
		ss.fwError(fwErrNotFound)
		return
	}
	if err != nil {
		s.log.Warn("gateway: reading firmware assignment", "device", ss.dev.Name, "err", err)
		ss.close(codeImplSpecific, "storage unavailable")
		return
	}
	data, err := s.fw.get(ctx, s.st, pkgID)
	if err != nil {
		s.log.Warn("gateway: reading firmware package", "device", ss.dev.Name, "package", pkgID, "err", err)
		ss.close(codeImplSpecific, "storage unavailable")
		return
	}
	part := data
	if size > 0 {
		start := int64(chunk) * int64(size)
		if start >= int64(len(data)) {
			part = nil
		} else {
			part = data[start:min(start+int64(size), int64(len(data)))]
		}
	}
	sub, _ := ss.sub(subFirmware)
	topic := "v2/fw/response/" + req + "/chunk/" + strconv.Itoa(chunk)
	if err := ss.publish(topic, part, sub.qos); err != nil {
		ss.srv.log.Debug("gateway: sending firmware chunk", "device", ss.dev.Name, "err", err)
		return
	}
	// Activity for the engine: the first chunk, then at most once a
	// second, so that a long download is seen to progress.
	now := time.Now()
	ss.mu.Lock()
	due := chunk == 0 || now.Sub(ss.fw.lastActivity) >= fwActivityStep || len(part) < size || size == 0
	if due {
		ss.fw.lastActivity = now
	}
	ss.mu.Unlock()
	if due {
		sent := int64(len(data))
		if size > 0 {
			sent = min(int64(chunk+1)*int64(size), int64(len(data)))
		}
		b, _ := json.Marshal(fwNotice{Device: ss.dev.Name, TS: now.UnixMilli(), Package: pkgID, Sent: sent, Size: int64(len(data))})
		s.bus.Publish(ctx, bus.TopicOTAReport, b)
	}
}

// assignedPackage is the package a device downloads: its own target, else
// its profile's assignment.
func (s *Server) assignedPackage(ctx context.Context, dev store.Device) (int64, error) {
	t, err := s.st.GetOTADevice(ctx, dev.ID)
	if err == nil && t.State != store.OTACanceled {
		return t.PackageID, nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return 0, err
	}
	id, err := s.st.GetOTAProfile(ctx, dev.Profile)
	if err != nil {
		return 0, err
	}
	if id == 0 {
		return 0, store.ErrNotFound
	}
	return id, nil
}

// fwNotice is the bus.TopicOTAReport payload: the device's reported
// firmware facts (Values), or download activity (Sent of Size bytes of
// Package served).
type fwNotice struct {
	Device string `json:"device"`
	TS     int64  `json:"ts"`
	// At orders the reports of a device (ns, strictly increasing within
	// a session): engines on several nodes skip what is not newer.
	At      int64                      `json:"at,omitempty"`
	Values  map[string]json.RawMessage `json:"values,omitempty"`
	Package int64                      `json:"package,omitempty"`
	Sent    int64                      `json:"sent,omitempty"`
	Size    int64                      `json:"size,omitempty"`
}

// fwKeys are the keys a device reports its firmware with.
func fwKey(k string) bool {
	switch k {
	case "fw_state", "fw_error", "current_fw_title", "current_fw_version",
		"current_fw_state": // what older Arduino SDKs report the state as

		return true
	}
	return false
}

// fwReport returns the step that passes a message's firmware keys to the
// engine once stored, or nil when it carries none (the usual case: a few
// string compares per key).
func (ss *session) fwReport(recs []store.Record, kvs []store.KV) func(context.Context) {
	var values map[string]json.RawMessage
	var ts int64
	add := func(kv store.KV, at int64) {
		if !fwKey(kv.Key) {
			return
		}
		if values == nil {
			values = map[string]json.RawMessage{}
		}
		values[kv.Key] = append(json.RawMessage(nil), kv.Value...)
		ts = max(ts, at)
	}
	for _, r := range recs {
		for _, kv := range r.Values {
			add(kv, r.TS)
		}
	}
	for _, kv := range kvs {
		add(kv, ss.srv.now().UnixMilli())
	}
	if values == nil {
		return nil
	}
	return func(ctx context.Context) {
		ss.mu.Lock()
		at := max(time.Now().UnixNano(), ss.fw.lastReport+1)
		ss.fw.lastReport = at
		ss.mu.Unlock()
		b, _ := json.Marshal(fwNotice{Device: ss.dev.Name, TS: ts, At: at, Values: values})
		if err := ss.srv.bus.Publish(ctx, bus.TopicOTAReport, b); err != nil {
			ss.srv.log.Debug("gateway: firmware report", "device", ss.dev.Name, "err", err)
		}
	}
}

// fwCache keeps recently served packages in memory, so that a download of
// a 2 MB image in 4 KB chunks reads the store once, not 500 times, and a
// fleet starting together shares one load. Packages never change (a new
// version is a new package), so entries need no invalidation; the total
// size is bounded and the least recently used go first.
type fwCache struct {
	mu      sync.Mutex // leaf lock
	entries map[int64]*fwEntry
	total   int64
	clock   uint64
	max     int64 // 0 means fwCacheMax
}

type fwEntry struct {
	ready chan struct{} // closed once data or err is set
	data  []byte
	err   error
	used  uint64
}

// fwCacheMax bounds the cached bytes.
const fwCacheMax = 64 << 20

func (c *fwCache) get(ctx context.Context, st store.OTA, id int64) ([]byte, error) {
	c.mu.Lock()
	if c.entries == nil {
		c.entries = map[int64]*fwEntry{}
	}
	c.clock++
	e := c.entries[id]
	if e != nil {
		e.used = c.clock
		c.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if e.err != nil {
			return nil, e.err
		}
		return e.data, nil
	}
	e = &fwEntry{ready: make(chan struct{}), used: c.clock}
	c.entries[id] = e
	c.mu.Unlock()

	e.data, e.err = st.OTAPackageData(ctx, id)
	close(e.ready)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.err != nil {
		// Not cached: the next request tries again.
		if c.entries[id] == e {
			delete(c.entries, id)
		}
		return nil, e.err
	}
	c.total += int64(len(e.data))
	limit := c.max
	if limit == 0 {
		limit = fwCacheMax
	}
	for c.total > limit && len(c.entries) > 1 {
		var oldID int64
		var old *fwEntry
		for k, v := range c.entries {
			if v != e && isReady(v) && (old == nil || v.used < old.used) {
				oldID, old = k, v
			}
		}
		if old == nil {
			break
		}
		delete(c.entries, oldID)
		c.total -= int64(len(old.data))
	}
	return e.data, nil
}

func isReady(e *fwEntry) bool {
	select {
	case <-e.ready:
		return true
	default:
		return false
	}
}
