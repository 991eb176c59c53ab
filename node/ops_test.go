package node

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

const opsToken = "ops-test-token"

// backends are the stores (and buses) the operation tests run on: SQLite
// with the in-process bus always, PostgreSQL with NATS when available.
type backend struct {
	name     string
	storeURL func(t *testing.T) string
	busURL   string
}

func backends(t *testing.T) []backend {
	bs := []backend{{name: "sqlite", storeURL: func(*testing.T) string { return "" }}}
	pg, nats := os.Getenv("THINGLINE_TEST_POSTGRES"), os.Getenv("THINGLINE_TEST_NATS")
	if pg != "" && nats != "" {
		bs = append(bs, backend{name: "postgres-nats", storeURL: func(t *testing.T) string { return tstest.PostgresSchema(t, "ops") }, busURL: tstest.NATSURL()})
	} else {
		t.Log("THINGLINE_TEST_POSTGRES and THINGLINE_TEST_NATS not both set: PostgreSQL and NATS variants skipped")
	}
	return bs
}

// testNode is an in-process node on loopback.
type testNode struct {
	*Node
	t *testing.T
}

// startTestNode starts a node; with pkiFrom set it serves with that node's
// development PKI (a second node of one cluster).
func startTestNode(t *testing.T, storeURL, busURL, id string, pkiFrom *testNode, tune func(*Config)) *testNode {
	t.Helper()
	cfg := Config{
		DataDir: t.TempDir(), MQTTListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", AdminToken: opsToken,
		StoreURL: storeURL, BusURL: busURL, NodeID: id,
		Logger: slog.New(slog.DiscardHandler), Out: io.Discard,
	}
	cfg.Alarms.Tick, cfg.Alarms.Reload = 100*time.Millisecond, 200*time.Millisecond
	if pkiFrom != nil {
		d := pkiFrom.PKIDir()
		cfg.TLSCert, cfg.TLSKey = filepath.Join(d, "server.crt"), filepath.Join(d, "server.key")
		cfg.DeviceCAs = []string{filepath.Join(d, "device-ca.crt")}
	}
	if tune != nil {
		tune(&cfg)
	}
	n, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("starting node %s: %v", id, err)
	}
	if pkiFrom != nil {
		n.pkiDir = pkiFrom.PKIDir()
	}
	t.Cleanup(func() { n.Close() })
	return &testNode{Node: n, t: t}
}

// api calls the node's REST API; out (if not nil) receives the JSON answer.
func (n *testNode) api(method, path, body string, out any) int {
	n.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+n.HTTPAddr()+path, rd)
	if err != nil {
		n.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+opsToken)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			n.t.Fatalf("%s %s: %d, undecodable %q: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// alarms lists alarms through the API.
func (n *testNode) alarms(query string) []store.Alarm {
	n.t.Helper()
	var resp struct{ Alarms []store.Alarm }
	if code := n.api("GET", "/api/v1/alarms?"+query, "", &resp); code != 200 {
		n.t.Fatalf("GET /api/v1/alarms?%s: HTTP %d", query, code)
	}
	return resp.Alarms
}

// device is a test device's identity.
type device struct {
	name string
	cert pkitest.Device
}

// newDevice issues a certificate for a device named prefix plus a suffix
// unique to this run: test processes running at once share the NATS
// subjects, and a device name must not meet its namesake of another run.
func (n *testNode) newDevice(prefix string) device {
	n.t.Helper()
	return n.newDeviceWith(prefix, pkitest.Opts{})
}

// newDeviceWith is newDevice with the certificate's options (validity).
func (n *testNode) newDeviceWith(prefix string, o pkitest.Opts) device {
	n.t.Helper()
	name := fmt.Sprintf("%s-%x", prefix, time.Now().UnixNano()&0xffffffffff)
	ca, err := pki.LoadCA(n.PKIDir())
	if err != nil {
		n.t.Fatal(err)
	}
	return device{name: name, cert: pkitest.IssueDevice(n.t, ca, name, o)}
}

// connect opens an MQTT 3.1.1 session with paho, as firmware would.
func (n *testNode) connect(d device, onLost mqtt.ConnectionLostHandler) mqtt.Client {
	n.t.Helper()
	root, err := os.ReadFile(filepath.Join(n.PKIDir(), "root-ca.crt"))
	if err != nil {
		n.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	cert, err := tls.LoadX509KeyPair(d.cert.CertPath, d.cert.KeyPath)
	if err != nil {
		n.t.Fatal(err)
	}
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + n.MQTTAddr()).SetClientID(d.name).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true).SetProtocolVersion(4).
		SetKeepAlive(time.Minute).SetConnectTimeout(10 * time.Second).SetWriteTimeout(10 * time.Second)
	if onLost != nil {
		opts.SetConnectionLostHandler(onLost)
	}
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		n.t.Fatalf("connecting %s: %v", d.name, tok.Error())
	}
	n.t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func publish(t *testing.T, c mqtt.Client, payload string) {
	t.Helper()
	if tok := c.Publish("v1/devices/me/telemetry", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publishing %s: %v", payload, tok.Error())
	}
}

// sse is one server-sent event.
type sse struct {
	event string
	data  string
}

// streamClient reads GET /api/v1/stream into a channel.
type streamClient struct {
	events chan sse
	cancel context.CancelFunc
	mu     sync.Mutex
	all    []sse
}

func (n *testNode) stream(query string) *streamClient {
	n.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+n.HTTPAddr()+"/api/v1/stream?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+opsToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		n.t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		cancel()
		n.t.Fatalf("stream: HTTP %d, %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := &streamClient{events: make(chan sse, 4096), cancel: cancel}
	go func() {
		defer resp.Body.Close()
		r := bufio.NewScanner(resp.Body)
		var cur sse
		for r.Scan() {
			line := r.Text()
			switch {
			case line == "":
				if cur.event != "" {
					sc.events <- cur
				}
				cur = sse{}
			case strings.HasPrefix(line, "event: "):
				cur.event = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[len("data: "):]
			}
		}
	}()
	n.t.Cleanup(cancel)
	return sc
}

// waitFor returns the first event (seen now or later) that match accepts.
func (sc *streamClient) waitFor(t *testing.T, what string, match func(sse) bool) sse {
	t.Helper()
	sc.mu.Lock()
	for _, e := range sc.all {
		if match(e) {
			sc.mu.Unlock()
			return e
		}
	}
	sc.mu.Unlock()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case e := <-sc.events:
			sc.mu.Lock()
			sc.all = append(sc.all, e)
			sc.mu.Unlock()
			if match(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("stream: no %s within 20s", what)
		}
	}
}

func isEvent(event, device string, contains ...string) func(sse) bool {
	return func(e sse) bool {
		if e.event != event {
			return false
		}
		var n struct {
			Device string `json:"device"`
			TS     int64  `json:"ts"`
		}
		if json.Unmarshal([]byte(e.data), &n) != nil || n.Device != device || n.TS == 0 {
			return false
		}
		for _, c := range contains {
			if !strings.Contains(e.data, c) {
				return false
			}
		}
		return true
	}
}

// TestAlarmRuleOnTelemetry: "temperature > 40 for 1 s" raises, "<= 38 for
// 1 s" clears, from a device's telemetry; the stream shows the telemetry,
// the connection and both alarm changes.
func TestAlarmRuleOnTelemetry(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			n := startTestNode(t, b.storeURL(t), b.busURL, "node-rule", nil, nil)
			var rule store.AlarmRule
			if code := n.api("POST", "/api/v1/profiles/default/alarm-rules", `{"type":"high-temperature","key":"temperature","severity":"MAJOR",
				"raise":{"op":">","value":40,"duration":"1s"},"clear":{"op":"<=","value":38,"duration":"1s"}}`, &rule); code != 201 || rule.ID == 0 {
				t.Fatalf("adding rule: %d %+v", code, rule)
			}
			if code := n.api("POST", "/api/v1/profiles/default/alarm-rules", `{"type":"x","key":"t","severity":"LOUD","raise":{"op":">","value":1}}`, nil); code != 400 {
				t.Errorf("rule with a bad severity: HTTP %d, want 400", code)
			}
			d := n.newDevice("SN-RULE-" + b.name)
			st := n.stream("device=" + d.name)
			// Rules take effect at the engine's next reload.
			tstest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
				for _, r := range n.Node.alarms.Rules("default") {
					if r.ID == rule.ID {
						return nil
					}
				}
				return fmt.Errorf("rule %d not applied yet", rule.ID)
			})
			c := n.connect(d, nil)
			st.waitFor(t, "connect state", isEvent("state", d.name, `"connected":true`))

			// One reading above 40, then nothing: the condition holds on
			// the last value, so the alarm comes after a second anyway.
			publish(t, c, `{"temperature":45.5}`)
			hot := st.waitFor(t, "telemetry", isEvent("telemetry", d.name, `"temperature":45.5`))
			var reading struct{ TS int64 }
			json.Unmarshal([]byte(hot.data), &reading)
			raised := st.waitFor(t, "raised alarm", isEvent("alarms", d.name, `"op":"raised"`, `"high-temperature"`))
			var notice store.AlarmNotice
			json.Unmarshal([]byte(raised.data), &notice)
			if notice.Alarm.Severity != store.SeverityMajor || notice.Alarm.Status != store.AlarmActiveUnack {
				t.Errorf("raised notice %+v", notice)
			}
			// Not at once: the condition held for its second first (the
			// reading's time is when it was received, in ms).
			if held := notice.Alarm.StartTime.Sub(time.UnixMilli(reading.TS)); held < time.Second {
				t.Errorf("alarm raised %v after the hot reading; want a second at least", held)
			}
			// More hot readings fold into the alarm: no second one.
			publish(t, c, `{"temperature":46}`)
			publish(t, c, `{"temperature":39}`) // neither raises nor clears
			publish(t, c, `{"temperature":37.5}`)
			st.waitFor(t, "cleared alarm", isEvent("alarms", d.name, `"op":"cleared"`))
			as := n.alarms("device=" + d.name)
			if len(as) != 1 || as[0].Status != store.AlarmClearedUnack || as[0].Type != "high-temperature" || as[0].ClearBy != "system" {
				t.Fatalf("alarms after cooling down: %+v", as)
			}
			// Heating up again raises a new alarm.
			publish(t, c, `{"temperature":41}`)
			tstest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
				if as := n.alarms("status=ACTIVE&device=" + d.name); len(as) != 1 || as[0].ID == notice.Alarm.ID {
					return fmt.Errorf("active alarms %+v; want a new one", as)
				}
				return nil
			})
			if code := n.api("DELETE", fmt.Sprintf("/api/v1/profiles/default/alarm-rules/%d", rule.ID), "", nil); code != 204 {
				t.Errorf("deleting the rule: HTTP %d", code)
			}
			if code := n.api("DELETE", fmt.Sprintf("/api/v1/profiles/other/alarm-rules/%d", rule.ID), "", nil); code != 404 {
				t.Errorf("deleting the rule again: HTTP %d, want 404", code)
			}
		})
	}
}

// TestOfflineAlarmAfterInactivity: a connected device silent for longer
// than its profile's inactivity timeout becomes inactive and raises the
// offline alarm; its next message makes it active and clears the alarm.
func TestOfflineAlarmAfterInactivity(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			n := startTestNode(t, b.storeURL(t), b.busURL, "node-idle", nil, nil)
			var ps store.ProfileSettings
			if code := n.api("PUT", "/api/v1/profiles/default/settings", `{"inactivityTimeout":"1500ms"}`, &ps); code != 200 || time.Duration(ps.InactivityTimeout) != 1500*time.Millisecond {
				t.Fatalf("setting the timeout: %d %+v", code, ps)
			}
			d := n.newDevice("SN-IDLE-" + b.name)
			st := n.stream("device=" + d.name + "&types=state,alarms")
			c := n.connect(d, nil)
			publish(t, c, `{"temperature":20}`)
			inactive := st.waitFor(t, "inactivity", isEvent("state", d.name, `"active":false`, `"reason":"inactivity"`))
			var an struct{ LastActivity int64 }
			json.Unmarshal([]byte(inactive.data), &an)
			st.waitFor(t, "offline alarm", isEvent("alarms", d.name, `"op":"raised"`, `"offline"`))
			var state struct {
				Active, Connected bool
			}
			if code := n.api("GET", "/api/v1/devices/"+d.name+"/state", "", &state); code != 200 || state.Active || !state.Connected {
				t.Errorf("state while silent: %d %+v; want connected, not active", code, state)
			}
			publish(t, c, `{"temperature":21}`)
			st.waitFor(t, "activity", isEvent("state", d.name, `"active":true`))
			st.waitFor(t, "offline alarm cleared", isEvent("alarms", d.name, `"op":"cleared"`, `"offline"`))
			if as := n.alarms("type=offline&device=" + d.name); len(as) != 1 || as[0].Active() {
				t.Errorf("offline alarms after activity: %+v", as)
			}
			// Disconnected and silent: offline again, once.
			c.Disconnect(50)
			st.waitFor(t, "disconnect", isEvent("state", d.name, `"connected":false`))
			tstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
				if as := n.alarms("type=offline&status=ACTIVE&device=" + d.name); len(as) != 1 {
					return fmt.Errorf("active offline alarms %+v; want one", as)
				}
				return nil
			})
		})
	}
}

// TestClonedIdentityAlarm: sessions of one certificate taking each other
// over from different addresses raise the possible-cloned-identity alarm.
func TestClonedIdentityAlarm(t *testing.T) {
	n := startTestNode(t, "", "", "node-clone", nil, nil)
	d := n.newDevice("SN-CLONE")
	for range 4 {
		n.connect(d, nil) // each takes over the previous one
	}
	tstest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		as := n.alarms("type=" + store.AlarmCloned)
		if len(as) != 1 || as[0].Device != d.name || as[0].Severity != store.SeverityCritical {
			return fmt.Errorf("cloned-identity alarms %+v", as)
		}
		return nil
	})
}

// TestAlarmLifecycleThroughAPI: raise (de-duplicated), acknowledge, clear,
// each once, through the API with its filters.
func TestAlarmLifecycleThroughAPI(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			n := startTestNode(t, b.storeURL(t), b.busURL, "node-life", nil, nil)
			// A certificate valid for two years: the certificate monitor
			// raises its own certificate-expiring alarm (MAJOR) for one
			// expiring within a day, as the default test certificate does,
			// and that alarm would merge with the one raised below.
			d := n.newDeviceWith("SN-LIFE", pkitest.Opts{NotAfter: time.Now().Add(2 * 365 * 24 * time.Hour)})
			n.connect(d, nil).Disconnect(50) // the device exists
			ctx := context.Background()
			svc := n.Alarms()
			a1, err := svc.Raise(ctx, d.name, store.AlarmOTAFailed, store.SeverityMajor, map[string]string{"fw": "1.2"})
			if err != nil {
				t.Fatal(err)
			}
			if a2, err := svc.Raise(ctx, d.name, store.AlarmOTAFailed, store.SeverityMajor, nil); err != nil || a2.ID != a1.ID || a2.Count != 2 {
				t.Fatalf("second raise: %+v, %v", a2, err)
			}
			if _, err := svc.Raise(ctx, d.name, store.AlarmCertExpiry, store.SeverityWarning, nil); err != nil {
				t.Fatal(err)
			}
			if as := n.alarms("device=" + d.name + "&severity=MAJOR"); len(as) != 1 || as[0].Count != 2 || as[0].Status != store.AlarmActiveUnack {
				t.Fatalf("MAJOR alarms %+v", as)
			}
			if as := n.alarms("device=" + d.name + "&status=UNACK"); len(as) != 2 {
				t.Fatalf("unacknowledged alarms %+v", as)
			}
			var a store.Alarm
			path := fmt.Sprintf("/api/v1/alarms/%d", a1.ID)
			if code := n.api("POST", path+"/ack", "", &a); code != 200 || a.Status != store.AlarmActiveAck || a.AckBy == "" {
				t.Fatalf("ack: %d %+v", code, a)
			}
			if code := n.api("POST", path+"/ack", "", &a); code != 200 || a.Status != store.AlarmActiveAck {
				t.Fatalf("second ack: %d %+v", code, a)
			}
			if code := n.api("POST", path+"/clear", "", &a); code != 200 || a.Status != store.AlarmClearedAck {
				t.Fatalf("clear: %d %+v", code, a)
			}
			if as := n.alarms("status=CLEARED_ACK"); len(as) != 1 || as[0].ID != a1.ID {
				t.Fatalf("CLEARED_ACK alarms %+v", as)
			}
			if as := n.alarms(fmt.Sprintf("since=%d", time.Now().Add(time.Hour).UnixMilli())); len(as) != 0 {
				t.Fatalf("alarms since an hour ahead: %+v", as)
			}
			for _, c := range []struct {
				method, path string
				want         int
			}{
				{"POST", "/api/v1/alarms/999999/ack", 404},
				{"POST", "/api/v1/alarms/abc/clear", 400},
				{"GET", "/api/v1/alarms?status=MAYBE", 400},
				{"GET", "/api/v1/alarms?device=SN-NONE", 404},
				{"GET", "/api/v1/alarms?limit=0", 400},
			} {
				if code := n.api(c.method, c.path, "", nil); code != c.want {
					t.Errorf("%s %s: HTTP %d, want %d", c.method, c.path, code, c.want)
				}
			}
		})
	}
}

// TestStreamAcrossNodes: a console on node B sees the telemetry and state
// of a device connected to node A.
func TestStreamAcrossNodes(t *testing.T) {
	pg, nats := os.Getenv("THINGLINE_TEST_POSTGRES"), os.Getenv("THINGLINE_TEST_NATS")
	if pg == "" || nats == "" {
		t.Skip("THINGLINE_TEST_POSTGRES and THINGLINE_TEST_NATS are needed for two nodes")
	}
	storeURL, nats := tstest.PostgresSchema(t, "ops"), tstest.NATSURL()
	a := startTestNode(t, storeURL, nats, "node-a", nil, nil)
	b := startTestNode(t, storeURL, nats, "node-b", a, nil)
	d := a.newDevice("SN-XNODE")
	st := b.stream("device=" + d.name)
	other := b.stream("device=SN-SOMEONE-ELSE")
	c := a.connect(d, nil)
	st.waitFor(t, "state from node A", isEvent("state", d.name, `"connected":true`, `"node":"node-a"`))
	publish(t, c, `{"temperature":22.5,"humidity":40}`)
	st.waitFor(t, "telemetry from node A", isEvent("telemetry", d.name, `"temperature":22.5`))
	if _, err := a.Alarms().Raise(context.Background(), d.name, store.AlarmOTAFailed, store.SeverityMajor, nil); err != nil {
		t.Fatal(err)
	}
	st.waitFor(t, "alarm raised on node A", isEvent("alarms", d.name, `"op":"raised"`))
	select {
	case e := <-other.events:
		t.Errorf("a stream filtered to another device got %+v", e)
	default:
	}
}

// TestAlarmRuleTimerAcrossNodes: "temperature > 40 for 4 s" counts from
// the first hot reading on node A even though the device reconnects to
// node B in between: the alarm comes 4 s after that reading, not 4 s
// after the reconnect.
func TestAlarmRuleTimerAcrossNodes(t *testing.T) {
	pg, nats := os.Getenv("THINGLINE_TEST_POSTGRES"), os.Getenv("THINGLINE_TEST_NATS")
	if pg == "" || nats == "" {
		t.Skip("THINGLINE_TEST_POSTGRES and THINGLINE_TEST_NATS are needed for two nodes")
	}
	storeURL, nats := tstest.PostgresSchema(t, "ops"), tstest.NATSURL()
	a := startTestNode(t, storeURL, nats, "node-a", nil, nil)
	b := startTestNode(t, storeURL, nats, "node-b", a, nil)
	const hold = 4 * time.Second
	var rule store.AlarmRule
	if code := a.api("POST", "/api/v1/profiles/default/alarm-rules", `{"type":"high-temperature","key":"temperature","severity":"MAJOR",
		"raise":{"op":">","value":40,"duration":"4s"}}`, &rule); code != 201 {
		t.Fatalf("adding rule: HTTP %d", code)
	}
	// Both engines apply the rule before the device connects.
	tstest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		for _, n := range []*testNode{a, b} {
			if rs := n.Node.alarms.Rules("default"); len(rs) != 1 || rs[0].ID != rule.ID {
				return fmt.Errorf("%s applies rules %+v", n.cfg.NodeID, rs)
			}
		}
		return nil
	})
	d := a.newDevice("SN-MOVE")
	st := b.stream("device=" + d.name)
	c := a.connect(d, nil)
	st.waitFor(t, "connect to node A", isEvent("state", d.name, `"connected":true`, `"node":"node-a"`))
	publish(t, c, `{"temperature":45}`)
	hot := st.waitFor(t, "hot reading", isEvent("telemetry", d.name, `"temperature":45`))
	var reading struct{ TS int64 }
	json.Unmarshal([]byte(hot.data), &reading)
	hotAt := time.UnixMilli(reading.TS)
	c.Disconnect(50)
	st.waitFor(t, "disconnect from node A", isEvent("state", d.name, `"connected":false`))
	// The device stays away for half the duration: long enough that a
	// timer started again on node B would be late by that much.
	time.Sleep(time.Until(hotAt.Add(hold / 2)))

	c = b.connect(d, nil)
	st.waitFor(t, "connect to node B", isEvent("state", d.name, `"connected":true`, `"node":"node-b"`))
	publish(t, c, `{"temperature":46}`)
	back := st.waitFor(t, "hot reading on node B", isEvent("telemetry", d.name, `"temperature":46`))
	json.Unmarshal([]byte(back.data), &reading)
	backAt := time.UnixMilli(reading.TS)
	raised := st.waitFor(t, "raised alarm", isEvent("alarms", d.name, `"op":"raised"`, `"high-temperature"`))
	var notice store.AlarmNotice
	json.Unmarshal([]byte(raised.data), &notice)
	if held := notice.Alarm.StartTime.Sub(hotAt); held < hold {
		t.Errorf("alarm raised %v after the first hot reading; want %v at least", held, hold)
	}
	if late := notice.Alarm.StartTime.Sub(backAt); late >= hold {
		t.Errorf("alarm raised %v after the reconnect's reading, %v after the first: the timer started again on node B",
			late, notice.Alarm.StartTime.Sub(hotAt))
	}
}

// TestBadPayloadRateAlarm: a burst of refused messages raises the
// bad-payload-rate alarm; a quiet window clears it.
func TestBadPayloadRateAlarm(t *testing.T) {
	n := startTestNode(t, "", "", "node-bad", nil, func(c *Config) {
		c.Alarms.BadInputLimit, c.Alarms.BadInputWindow = 5, 2*time.Second
	})
	d := n.newDevice("SN-GARBAGE")
	st := n.stream("device=" + d.name + "&types=alarms")
	c := n.connect(d, nil)
	for i := range 4 {
		publish(t, c, fmt.Sprintf(`{"temperature":%d`, i)) // truncated JSON: refused, acknowledged
	}
	publish(t, c, `{"temperature":20}`)
	if as := n.alarms("type=" + store.AlarmBadPayloads); len(as) != 0 {
		t.Fatalf("alarm after 4 refusals: %+v", as)
	}
	publish(t, c, `[1,2`)
	e := st.waitFor(t, "bad-payload alarm", isEvent("alarms", d.name, `"op":"raised"`, store.AlarmBadPayloads))
	if !strings.Contains(e.data, `"WARNING"`) {
		t.Errorf("alarm notice %s", e.data)
	}
	st.waitFor(t, "bad-payload alarm cleared", isEvent("alarms", d.name, `"op":"cleared"`, store.AlarmBadPayloads))
}

// TestRetentionWhileAcknowledging: old telemetry and events are removed
// in steps while a device keeps publishing QoS 1 messages, every one of
// which is acknowledged promptly and kept.
func TestRetentionWhileAcknowledging(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			storeURL := b.storeURL(t)
			n := startTestNode(t, storeURL, b.busURL, "node-retain", nil, func(c *Config) {
				c.Retention.Telemetry, c.Retention.Events = 24*time.Hour, 24*time.Hour
				c.Retention.Delay, c.Retention.Interval = 2*time.Second, 500*time.Millisecond
				c.Retention.Step, c.Retention.Pause = 500, 5*time.Millisecond
			})
			ctx := context.Background()
			st := n.Store()
			// Two days ago, every 2 s for ~14 hours, three devices.
			old := time.Now().Add(-48 * time.Hour).UnixMilli()
			var olds []store.Device
			for i := range 3 {
				dev, _, _, err := st.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("SN-OLD-%d", i), Profile: "default"},
					store.Credential{SHA256: fmt.Sprintf("%064x", i+1)}, nil)
				if err != nil {
					t.Fatal(err)
				}
				olds = append(olds, dev)
				var recs []store.Record
				for j := range 25000 {
					recs = append(recs, store.Record{DeviceID: dev.ID, TS: old + int64(j)*2000,
						Values: []store.KV{{Key: "t", Value: json.RawMessage("21.5")}}})
				}
				if err := st.AppendTelemetry(ctx, recs); err != nil {
					t.Fatal(err)
				}
				if err := st.AddEvent(ctx, store.Event{Device: dev.Name, Kind: store.EventConnect, Time: time.UnixMilli(old)}); err != nil {
					t.Fatal(err)
				}
			}
			if c, ok := st.(interface{ Compact(context.Context) error }); ok {
				if err := c.Compact(ctx); err != nil {
					t.Fatal(err)
				}
			}
			left := func() int {
				total := 0
				for _, d := range olds {
					q, err := st.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: d.ID, Limit: 10000})
					if err != nil {
						t.Fatal(err)
					}
					total += len(q["t"])
				}
				return total
			}
			if l := left(); l != 3*10000 {
				t.Fatalf("before retention: %d old points visible; want %d", l, 3*10000)
			}

			d := n.newDevice("SN-LIVE-" + b.name)
			c := n.connect(d, nil)
			type result struct {
				sent    int
				slowest time.Duration
				err     error
			}
			stop := make(chan struct{})
			done := make(chan result, 1)
			var sentCount atomic.Int64
			go func() {
				var r result
				for {
					select {
					case <-stop:
						done <- r
						return
					default:
					}
					t0 := time.Now()
					tok := c.Publish("v1/devices/me/telemetry", 1, false, fmt.Sprintf(`{"seq":%d}`, r.sent))
					if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
						r.err = fmt.Errorf("message %d not acknowledged: %v", r.sent, tok.Error())
						done <- r
						return
					}
					r.slowest = max(r.slowest, time.Since(t0))
					r.sent++
					sentCount.Store(int64(r.sent))
				}
			}()
			var atStart, atEnd int64
			tstest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
				l := left()
				if l < 3*10000 && atStart == 0 {
					atStart = sentCount.Load()
				}
				if l > 0 {
					return fmt.Errorf("%d old points left", l)
				}
				atEnd = sentCount.Load()
				return nil
			})
			close(stop)
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			t.Logf("%d messages acknowledged, %d of them while old rows were being removed, slowest acknowledgement %v", r.sent, atEnd-atStart, r.slowest)
			if r.slowest > 3*time.Second {
				t.Errorf("an acknowledgement took %v while retention ran", r.slowest)
			}
			live, _ := st.GetDevice(ctx, d.name)
			q, err := st.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: live.ID, Keys: []string{"seq"}, Limit: 10000})
			if err != nil || len(q["seq"]) != r.sent {
				t.Errorf("live device kept %d of %d acknowledged messages (%v)", len(q["seq"]), r.sent, err)
			}
			tstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
				// Other engines (the certificate monitor) may record new
				// events of these devices meanwhile: only old ones count.
				ev, err := st.ListEvents(ctx, store.EventQuery{Device: "SN-OLD-0"})
				if err != nil {
					return err
				}
				for _, e := range ev {
					if e.Time.Before(time.Now().Add(-24 * time.Hour)) {
						return fmt.Errorf("old event left: %+v", e)
					}
				}
				return nil
			})
		})
	}
}
