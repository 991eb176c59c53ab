package api

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
)

// Visibility for live streams. A REST request is checked once, in wrap; a
// stream lives on while ownership changes, so every notice it relays is
// checked with the function streamFilter returns. Ownership answers are
// cached per device, and the cache is dropped whenever any node announces
// an ownership change or a deletion on bus.TopicDevices, so a previous
// owner's stream stops showing a device as soon as the change is known on
// this node; entries also expire after ownerCacheTTL in case a notice was
// lost.

const ownerCacheTTL = 5 * time.Second

type ownerWatch struct {
	once sync.Once
	gen  atomic.Int64 // bumped on every ownership notice
}

func (s *Server) watchOwners() {
	s.ownerWatch.once.Do(func() {
		if s.cfg.Bus == nil {
			return
		}
		_, err := s.cfg.Bus.Subscribe(bus.TopicDevices, func(data []byte) {
			var n struct {
				Op string `json:"op"`
			}
			if json.Unmarshal(data, &n) == nil && (strings.HasPrefix(n.Op, "owner-") || n.Op == "deleted") {
				s.ownerWatch.gen.Add(1)
			}
		})
		if err != nil {
			s.cfg.Logger.Warn("api: watching ownership changes", "err", err)
		}
	})
}

// streamFilter returns the rule for one stream request: whether a notice
// about device, stamped ts (ms since the epoch), may be shown to the caller.
// Staff see every device; an owner sees only the devices they own now, and
// nothing stamped before their ownership began. The function is safe for
// concurrent use.
func (s *Server) streamFilter(r *http.Request) func(device string, ts int64) bool {
	p := principal(r)
	if p.Role.Staff() {
		return func(string, int64) bool { return true }
	}
	s.watchOwners()
	type entry struct {
		from    int64 // -1: not visible
		gen     int64
		checked time.Time
	}
	var mu sync.Mutex // guards cache; held only around map access
	cache := map[string]entry{}
	ctx := r.Context()
	return func(device string, ts int64) bool {
		gen := s.ownerWatch.gen.Load()
		mu.Lock()
		e, ok := cache[device]
		mu.Unlock()
		if !ok || e.gen != gen || time.Since(e.checked) > ownerCacheTTL {
			e = entry{from: -1, gen: gen, checked: time.Now()}
			if d, err := s.cfg.Store.GetDevice(ctx, device); err == nil {
				if ep, err := s.cfg.Store.CurrentOwner(ctx, d.ID, d.Name); err == nil && ep.UserID == p.UserID {
					e.from = ep.Since.UnixMilli()
				}
			}
			mu.Lock()
			if len(cache) > 10000 {
				clear(cache) // an owner's stream names few devices; bound a hostile one
			}
			cache[device] = e
			mu.Unlock()
		}
		return e.from >= 0 && ts >= e.from
	}
}

// dataTopics are the stream's notices that carry device data: what the
// DeviceData routes serve, which operators do not see.
var dataTopics = []string{bus.TopicTelemetry, bus.TopicRPC}

// visibleTopics narrows a stream's topics to what the caller's role may
// see: an operator gets no device data; asking for it by name is refused.
func visibleTopics(p Principal, topics []string, explicit bool) ([]string, error) {
	if p.Role != store.RoleOperator {
		return topics, nil
	}
	var out []string
	for _, t := range topics {
		if !slices.Contains(dataTopics, t) {
			out = append(out, t)
		} else if explicit {
			return nil, errorf(http.StatusForbidden, "operators do not see device data (%s)", t)
		}
	}
	return out, nil
}
