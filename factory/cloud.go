package factory

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/store"
)

// Client talks to a thingline server's REST API on behalf of stations 4 and
// push.
type Client struct {
	Server string // base URL, e.g. https://cloud.example:8443
	Token  string // API bearer token
	HTTP   *http.Client
}

// NewClient returns a client for server. caFile, when set, is the PEM
// bundle that verifies an https server (the development PKI's root-ca.crt).
func NewClient(server, token, caFile string) (*Client, error) {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("factory: server %q: want an http or https url", server)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("factory: %w", err)
		}
		certs, err := pki.ParseCertsPEM(b)
		if err != nil {
			return nil, fmt.Errorf("factory: %s: %w", caFile, err)
		}
		pool := x509.NewCertPool()
		for _, c := range certs {
			pool.AddCert(c)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &Client{Server: strings.TrimRight(server, "/"), Token: token, HTTP: &http.Client{Transport: tr, Timeout: 30 * time.Second}}, nil
}

// do sends one request and returns the status and at most 1 MiB of body.
func (c *Client) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Server+path, r)
	if err != nil {
		return 0, nil, fmt.Errorf("factory: %s %s: %w", method, path, err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("factory: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("factory: %s %s: reading response: %w", method, path, err)
	}
	return resp.StatusCode, b, nil
}

// ErrTestFailed is returned by Test when the unit failed station 4.
var ErrTestFailed = errors.New("factory test failed")

// TestOptions are the settings of station 4.
type TestOptions struct {
	SN       string
	Timeout  time.Duration // default 60s
	Interval time.Duration // between polls; default 1s
	Operator string
}

// TestUnit is station 4: it polls the server until the unit's first
// telemetry arrives (pass) or the timeout passes (fail), and records the
// result in l when l is not nil. Failing the station returns an error
// wrapping ErrTestFailed; a refused token or a broken request returns
// another error and records nothing, since the unit was not tested.
func (c *Client) TestUnit(ctx context.Context, l *Ledger, opt TestOptions) error {
	if opt.Timeout <= 0 {
		opt.Timeout = 60 * time.Second
	}
	if opt.Interval <= 0 {
		opt.Interval = time.Second
	}
	if err := validSN(opt.SN); err != nil {
		return err
	}
	if l != nil {
		// Refuse an SN the line never made before waiting a minute for it.
		if _, err := l.Unit(ctx, opt.SN); err != nil {
			return err
		}
	}
	start := time.Now()
	deadline := start.Add(opt.Timeout)
	path := "/api/v1/devices/" + url.PathEscape(opt.SN) + "/telemetry/latest"
	last := "no answer"
	for {
		pctx, cancel := context.WithDeadline(ctx, deadline)
		code, body, err := c.do(pctx, http.MethodGet, path, nil)
		cancel()
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("factory: test %s: %w", opt.SN, ctx.Err())
		case err != nil:
			last = err.Error() // the server may be restarting: keep polling
		case code == http.StatusOK:
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(body, &obj); err != nil {
				last = fmt.Sprintf("200 with a body that is not a json object: %v", err)
			} else if len(obj) > 0 {
				keys := make([]string, 0, len(obj))
				for k := range obj {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				detail := fmt.Sprintf("telemetry after %v: %s", time.Since(start).Round(time.Millisecond), strings.Join(keys, ","))
				return c.record(ctx, l, opt, Pass, detail)
			} else {
				last = "provisioned, no telemetry yet"
			}
		case code == http.StatusNotFound:
			last = "not provisioned yet"
		case code == http.StatusUnauthorized || code == http.StatusForbidden:
			return fmt.Errorf("factory: test %s: server refused the token (%d): %s", opt.SN, code, strings.TrimSpace(string(body)))
		default:
			last = fmt.Sprintf("server answered %d", code)
		}
		if !time.Now().Add(opt.Interval).Before(deadline) {
			detail := fmt.Sprintf("no telemetry within %v: %s", opt.Timeout, last)
			if err := c.record(ctx, l, opt, Fail, detail); err != nil {
				return err
			}
			return fmt.Errorf("factory: test %s: %s: %w", opt.SN, detail, ErrTestFailed)
		}
		t := time.NewTimer(opt.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("factory: test %s: %w", opt.SN, ctx.Err())
		case <-t.C:
		}
	}
}

func (c *Client) record(ctx context.Context, l *Ledger, opt TestOptions, r Result, detail string) error {
	if l == nil {
		return nil
	}
	return l.RecordStation(context.WithoutCancel(ctx), opt.SN, StationTest, r, opt.Operator, detail)
}

// PushChunk is how many units one POST carries.
const PushChunk = 500

// StoreUnits converts the ledger's injected units to the server's registry
// records. TestPassed is the latest station 4 result, when there is one.
func (l *Ledger) StoreUnits(ctx context.Context) ([]store.Unit, error) {
	us, err := l.Units(ctx, StateInjected)
	if err != nil {
		return nil, err
	}
	tests := map[string]bool{}
	evs, err := l.queryEvents(ctx, `station = ? AND sn != ''`, StationTest)
	if err != nil {
		return nil, err
	}
	for _, e := range evs { // oldest first: the latest wins
		tests[e.SN] = e.Result == Pass
	}
	out := make([]store.Unit, 0, len(us))
	for _, u := range us {
		su := store.Unit{SN: u.SN, Serial: u.CertSerial, SHA256: u.SHA256, NotAfter: u.NotAfter, Batch: u.Batch, ProducedAt: u.InjectedAt}
		if p, ok := tests[u.SN]; ok {
			su.TestPassed = &p
		}
		out = append(out, su)
	}
	return out, nil
}

// Push sends units to the server's registry of produced units, PushChunk
// per request. It returns how many the server accepted.
func (c *Client) Push(ctx context.Context, units []store.Unit) (int, error) {
	sent := 0
	for i := 0; i < len(units); i += PushChunk {
		part := units[i:min(i+PushChunk, len(units))]
		body, err := json.Marshal(struct {
			Units []store.Unit `json:"units"`
		}{part})
		if err != nil {
			return sent, fmt.Errorf("factory: push: %w", err)
		}
		code, resp, err := c.do(ctx, http.MethodPost, "/api/v1/factory/units", body)
		if err != nil {
			return sent, err
		}
		if code/100 != 2 {
			return sent, fmt.Errorf("factory: push: units %s..%s: server answered %d: %s", part[0].SN, part[len(part)-1].SN, code, strings.TrimSpace(string(resp)))
		}
		sent += len(part)
	}
	return sent, nil
}

// PushEvents sends the ledger's station events to the server, PushChunk
// per request, so that the console can show travellers and station yield.
// The server skips events it already has. It returns how many were sent
// and how many were new to the server.
func (c *Client) PushEvents(ctx context.Context, evs []Event) (sent, added int, err error) {
	for i := 0; i < len(evs); i += PushChunk {
		part := evs[i:min(i+PushChunk, len(evs))]
		body := struct {
			Events []store.UnitEvent `json:"events"`
		}{make([]store.UnitEvent, len(part))}
		for j, e := range part {
			body.Events[j] = store.UnitEvent{SN: e.SN, Board: e.Board, Station: int(e.Station), Result: string(e.Result),
				Operator: e.Operator, Batch: e.Batch, Time: e.Time, Detail: e.Detail}
		}
		b, err := json.Marshal(body)
		if err != nil {
			return sent, added, fmt.Errorf("factory: push: %w", err)
		}
		code, resp, err := c.do(ctx, http.MethodPost, "/api/v1/factory/events", b)
		if err != nil {
			return sent, added, err
		}
		if code/100 != 2 {
			return sent, added, fmt.Errorf("factory: push: station events: server answered %d: %s", code, strings.TrimSpace(string(resp)))
		}
		var out struct {
			Added int `json:"added"`
		}
		json.Unmarshal(resp, &out)
		sent += len(part)
		added += out.Added
	}
	return sent, added, nil
}
