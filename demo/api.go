package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/thingline/thingline/node"
)

// apiClient reads the demo's state the way a person would: through the
// REST API with the admin token, never from the store behind it.
type apiClient struct {
	base, token string
	hc          *http.Client
}

func newAPIClient(base, token string) *apiClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return &apiClient{base: base, token: token, hc: &http.Client{Transport: tr, Timeout: 15 * time.Second}}
}

func (c *apiClient) close() { c.hc.CloseIdleConnections() }

// statusError is a non-2xx answer.
type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string { return fmt.Sprintf("api answered %d: %s", e.code, e.body) }

func (c *apiClient) do(ctx context.Context, method, path string, body, v any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("demo: encoding request: %w", err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("demo: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("demo: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("demo: %s %s: %w", method, path, &statusError{resp.StatusCode, strings.TrimSpace(string(b))})
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("demo: %s %s: decoding answer: %w", method, path, err)
	}
	return nil
}

// point is one telemetry value as the API returns it.
type point struct {
	TS    int64           `json:"ts"`
	Value json.RawMessage `json:"value"`
}

type device struct {
	Name      string    `json:"name"`
	Online    bool      `json:"online"`
	CreatedAt time.Time `json:"createdAt"`
	Produced  *bool     `json:"produced"`
}

type event struct {
	Time time.Time `json:"time"`
	Kind string    `json:"kind"`
}

func (c *apiClient) latest(ctx context.Context, sn string) (map[string]point, error) {
	var pts map[string]point
	err := c.do(ctx, http.MethodGet, "/devices/"+url.PathEscape(sn)+"/telemetry/latest?keys=temperature,humidity", nil, &pts)
	return pts, err
}

// waitStreaming waits until the API shows every unit created by
// auto-provisioning, online, and with telemetry sent during this run.
func waitStreaming(ctx context.Context, opt Options, c *apiClient, f *fleet, units []unit, start time.Time, w *lockedWriter) error {
	// Telemetry of an earlier run on the same directory must not count:
	// this run's twins started after start.
	since := start.UnixMilli()
	done := map[string]bool{}
	return poll(ctx, f, opt.Timeout, 100*time.Millisecond, "waiting for the units in the cloud", func() error {
		var pending []string
		for _, u := range units {
			if done[u.sn] {
				continue
			}
			if err := c.checkStreaming(ctx, u.sn, since, w); err != nil {
				pending = append(pending, fmt.Sprintf("%s: %v", u.sn, err))
				continue
			}
			done[u.sn] = true
		}
		if len(pending) > 0 {
			return errors.New(strings.Join(pending, "; "))
		}
		return nil
	})
}

func (c *apiClient) checkStreaming(ctx context.Context, sn string, since int64, w *lockedWriter) error {
	var d device
	if err := c.do(ctx, http.MethodGet, "/devices/"+url.PathEscape(sn), nil, &d); err != nil {
		return err
	}
	if !d.Online {
		return errors.New("not online")
	}
	var evs struct {
		Events []event `json:"events"`
	}
	if err := c.do(ctx, http.MethodGet, "/events?kind=provisioned&limit=1&device="+url.QueryEscape(sn), nil, &evs); err != nil {
		return err
	}
	if len(evs.Events) == 0 {
		return errors.New("no auto-provisioning event")
	}
	pts, err := c.latest(ctx, sn)
	if err != nil {
		return err
	}
	t, h := pts["temperature"], pts["humidity"]
	if t.TS < since || h.TS < since {
		return errors.New("no telemetry yet")
	}
	produced := ""
	if d.Produced != nil && *d.Produced {
		produced = ", a produced unit"
	}
	w.printf("   %-12s cloud  auto-provisioned by its certificate's CN at %s%s; online, streaming %s °C %s %%RH\n",
		sn, evs.Events[0].Time.Local().Format("2006-01-02 15:04:05"), produced, t.Value, h.Value)
	return nil
}

// printOpen prints what a person can open and paste, after showing one
// getState RPC answered by the first unit.
func printOpen(ctx context.Context, w *lockedWriter, c *apiClient, apiBase, token string, n *node.Node, sns []string) {
	sn := sns[0]
	w.printf("\n== open\n")
	w.printf("   API          %s   (description: %s/openapi.json)\n", apiBase, apiBase)
	w.printf("   admin token  %s\n", token)
	w.printf("   devices      mqtts://%s, development PKI in %s\n", loopback(n.MQTTAddr()), n.PKIDir())
	w.printf("   metrics      %s/metrics\n\n", strings.TrimSuffix(apiBase, "/api/v1"))
	auth := fmt.Sprintf("-H 'Authorization: Bearer %s'", token)
	w.printf("   curl -s %s %s/devices\n", auth, apiBase)
	w.printf("   curl -s %s %s/devices/%s/telemetry/latest\n", auth, apiBase, sn)
	w.printf("   curl -s %s -H 'Content-Type: application/json' -d '{\"method\":\"getState\"}' %s/devices/%s/rpc\n\n", auth, apiBase, sn)
	var state json.RawMessage
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.do(rctx, http.MethodPost, "/devices/"+url.PathEscape(sn)+"/rpc", map[string]string{"method": "getState"}, &state); err != nil {
		w.printf("   getState on %s failed: %v\n\n", sn, err)
		return
	}
	w.printf("   getState on %s answered: %s\n\n", sn, compact(state))
}

func compact(b []byte) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return string(b)
	}
	return buf.String()
}

// perLine bounds the units of one stream line so it fits a terminal.
const perLine = 5

// stream prints the latest temperature and humidity of every unit, read
// from the API, once per tick until ctx is done.
func stream(ctx context.Context, opt Options, c *apiClient, f *fleet, sns []string, w *lockedWriter) {
	w.printf("== streaming (latest values from the API every %v; Ctrl-C stops)\n", opt.Tick)
	t := time.NewTicker(opt.Tick)
	defer t.Stop()
	stale := 3 * max(opt.Interval, opt.Tick)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if err := f.failed(); err != nil {
				w.printf("   %v\n", err)
			}
			var line strings.Builder
			for i, sn := range sns {
				if i > 0 && i%perLine == 0 {
					line.WriteString("\n          ")
				}
				pts, err := c.latest(ctx, sn)
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					fmt.Fprintf(&line, "  %s (api: %v)", sn, err)
					continue
				}
				tp, hp := pts["temperature"], pts["humidity"]
				fmt.Fprintf(&line, "  %s %5s°C %3s%%", sn, tp.Value, hp.Value)
				if age := now.Sub(time.UnixMilli(tp.TS)); age > stale {
					fmt.Fprintf(&line, " (%v old)", age.Round(time.Second))
				}
			}
			w.printf("   %s%s\n", now.Format("15:04:05"), line.String())
		}
	}
}

// countSamples counts each unit's temperature samples stored since start,
// with a context of its own: ctx is usually cancelled by now.
func countSamples(c *apiClient, sns []string, start time.Time) map[string]int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[string]int{}
	for _, sn := range sns {
		var res map[string][]point
		path := fmt.Sprintf("/devices/%s/telemetry?keys=temperature&limit=10000&from=%d", url.PathEscape(sn), start.UnixMilli())
		if err := c.do(ctx, http.MethodGet, path, nil, &res); err != nil {
			continue
		}
		out[sn] = len(res["temperature"])
	}
	return out
}
