package rpc_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/node"
	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

const token = "rpc-test-token"

// backend is where a test's nodes keep their state and talk.
type backend struct {
	name     string
	storeURL string // "" means SQLite in the data directory
	busURL   string // "" means in-process
}

// backends are SQLite always and PostgreSQL when the environment has one.
func backends(t *testing.T) []backend {
	bs := []backend{{name: "sqlite"}}
	if os.Getenv("THINGLINE_TEST_POSTGRES") != "" {
		bs = append(bs, backend{name: "postgres", storeURL: "postgres"})
	} else {
		t.Log("THINGLINE_TEST_POSTGRES not set: PostgreSQL variants skipped")
	}
	return bs
}

type cloud struct {
	t    *testing.T
	n    *node.Node
	data string
	cfg  node.Config
}

// start runs a node on data (its development PKI, or pkiFrom's when given).
func start(t *testing.T, data string, b backend, id, pkiFrom string) *cloud {
	t.Helper()
	cfg := node.Config{DataDir: data, MQTTListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", AdminToken: token,
		StoreURL: b.storeURL, BusURL: b.busURL, NodeID: id, Out: io.Discard}
	if pkiFrom != "" {
		cfg.TLSCert, cfg.TLSKey = filepath.Join(pkiFrom, "server.crt"), filepath.Join(pkiFrom, "server.key")
		cfg.DeviceCAs = []string{filepath.Join(pkiFrom, "device-ca.crt")}
	}
	return restart(t, cfg)
}

func restart(t *testing.T, cfg node.Config) *cloud {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("starting node: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	return &cloud{t: t, n: n, data: cfg.DataDir, cfg: cfg}
}

func (c *cloud) api(method, path, body string, out any) int {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://"+c.n.HTTPAddr()+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// device is a device identity with what it saw of server-side RPC.
type device struct {
	t         *testing.T
	name      string
	cert, key string
	pkiDir    string
	mu        sync.Mutex     // guards the fields below
	requests  map[string]int // request id → times received, over all sessions
	answer    bool           // answer each request with {"done":method}
}

func newDevice(t *testing.T, c *cloud, prefix string) *device {
	ca, err := pki.LoadCA(c.n.PKIDir())
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
	id := pkitest.IssueDevice(t, ca, name, pkitest.Opts{})
	return &device{t: t, name: name, cert: id.CertPath, key: id.KeyPath, pkiDir: c.n.PKIDir(), requests: map[string]int{}, answer: true}
}

// connect opens a session to c and subscribes to RPC requests when sub.
func (d *device) connect(c *cloud, sub bool) mqtt.Client {
	d.t.Helper()
	root, err := os.ReadFile(filepath.Join(d.pkiDir, "root-ca.crt"))
	if err != nil {
		d.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	cert, err := tls.LoadX509KeyPair(d.cert, d.key)
	if err != nil {
		d.t.Fatal(err)
	}
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + c.n.MQTTAddr()).SetClientID(d.name).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}).
		SetAutoReconnect(false).SetCleanSession(true).SetProtocolVersion(4).SetConnectTimeout(10 * time.Second)
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		d.t.Fatalf("connect %s: %v", d.name, tok.Error())
	}
	d.t.Cleanup(func() { cl.Disconnect(0) })
	if sub {
		tok := cl.Subscribe("v1/devices/me/rpc/request/+", 1, func(cl mqtt.Client, m mqtt.Message) {
			id := strings.TrimPrefix(m.Topic(), "v1/devices/me/rpc/request/")
			var req struct{ Method string }
			json.Unmarshal(m.Payload(), &req)
			d.mu.Lock()
			d.requests[id]++
			answer := d.answer
			d.mu.Unlock()
			if answer {
				cl.Publish("v1/devices/me/rpc/response/"+id, 1, false, fmt.Sprintf(`{"done":%q}`, req.Method))
			}
		})
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			d.t.Fatalf("subscribe: %v", tok.Error())
		}
	}
	return cl
}

func (d *device) received(id int64) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.requests[fmt.Sprint(id)]
}

// provision connects once so that the device exists, then leaves.
func (d *device) provision(c *cloud) {
	d.t.Helper()
	cl := d.connect(c, false)
	cl.Disconnect(0)
	tstest.CheckFor(d.t, 10*time.Second, 50*time.Millisecond, func() error {
		var dev store.Device
		if code := c.api("GET", "/api/v1/devices/"+d.name, "", &dev); code != 200 || dev.Online {
			return fmt.Errorf("device: %d online=%v", code, dev.Online)
		}
		return nil
	})
}

func (c *cloud) send(d *device, body string) store.RPC {
	c.t.Helper()
	var r store.RPC
	if code := c.api("POST", "/api/v1/devices/"+d.name+"/rpc", body, &r); code != http.StatusAccepted || r.ID == 0 {
		c.t.Fatalf("persistent rpc: %d %+v", code, r)
	}
	return r
}

func (c *cloud) waitStatus(id int64, want store.RPCStatus, within time.Duration) store.RPC {
	c.t.Helper()
	var r store.RPC
	tstest.CheckFor(c.t, within, 50*time.Millisecond, func() error {
		r = store.RPC{}
		if code := c.api("GET", fmt.Sprintf("/api/v1/rpc/%d", id), "", &r); code != 200 {
			return fmt.Errorf("GET rpc: %d", code)
		}
		if r.Status != want {
			return fmt.Errorf("status %s (%s), want %s", r.Status, r.Error, want)
		}
		return nil
	})
	return r
}

// notices collects the TopicRPC notices of one call.
func notices(t *testing.T, b bus.Bus) func(id int64) []store.RPCStatus {
	var mu sync.Mutex
	seen := map[int64][]store.RPCStatus{}
	stop, err := b.Subscribe(bus.TopicRPC, func(data []byte) {
		var n store.RPCNotice
		if json.Unmarshal(data, &n) == nil {
			mu.Lock()
			seen[n.ID] = append(seen[n.ID], n.Status)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return func(id int64) []store.RPCStatus {
		mu.Lock()
		defer mu.Unlock()
		return append([]store.RPCStatus(nil), seen[id]...)
	}
}

func prepare(t *testing.T, b backend) backend {
	if b.storeURL == "postgres" {
		b.storeURL = tstest.PostgresSchema(t, "rpc")
	}
	return b
}

// TestPersistentRPCToOfflineDevice queues calls while the device is
// offline, delivers them when it subscribes, records the answer, and
// publishes every status on the bus; a deleted call is never sent.
func TestPersistentRPCToOfflineDevice(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			c := start(t, t.TempDir(), prepare(t, b), "n1", "")
			seen := notices(t, c.n.Bus())
			d := newDevice(t, c, "SN-OFF")
			d.provision(c)

			r := c.send(d, `{"method":"setGpio","params":{"pin":23,"value":1},"persistent":true}`)
			if r.Status != store.RPCQueued || r.Retries != 2 || r.TimeoutMs != 10000 || r.ExpiresAt.Before(time.Now().Add(23*time.Hour)) {
				t.Errorf("created %+v", r)
			}
			gone := c.send(d, `{"method":"cancelled","persistent":true}`)
			if code := c.api("DELETE", fmt.Sprintf("/api/v1/rpc/%d", gone.ID), "", nil); code != http.StatusNoContent {
				t.Fatalf("DELETE: %d", code)
			}
			if code := c.api("GET", fmt.Sprintf("/api/v1/rpc/%d", gone.ID), "", nil); code != http.StatusNotFound {
				t.Errorf("GET deleted: %d", code)
			}
			// Offline, it stays queued.
			if got := c.waitStatus(r.ID, store.RPCQueued, 5*time.Second); got.Attempts != 0 {
				t.Errorf("queued call has %d attempts", got.Attempts)
			}
			// Connected but not subscribed: still queued (ThingsBoard sends
			// on the RPC subscription).
			d.connect(c, false).Disconnect(0)
			if got := c.waitStatus(r.ID, store.RPCQueued, 5*time.Second); got.Attempts != 0 {
				t.Errorf("unsubscribed device took an attempt: %+v", got)
			}

			d.connect(c, true)
			got := c.waitStatus(r.ID, store.RPCSuccessful, 15*time.Second)
			if string(got.Response) != `{"done":"setGpio"}` || got.Attempts != 1 || got.Node != "n1" {
				t.Errorf("answered call: %+v", got)
			}
			if n := d.received(r.ID); n != 1 {
				t.Errorf("device received the call %d times, want 1", n)
			}
			if n := d.received(gone.ID); n != 0 {
				t.Errorf("device received the deleted call")
			}
			want := []store.RPCStatus{store.RPCQueued, store.RPCSent, store.RPCDelivered, store.RPCSuccessful}
			tstest.CheckFor(t, 5*time.Second, 50*time.Millisecond, func() error {
				// DELIVERED and SUCCESSFUL may be recorded in either order;
				// a SUCCESSFUL first leaves no DELIVERED behind.
				s := seen(r.ID)
				if len(s) < 3 || s[0] != want[0] || s[1] != want[1] || s[len(s)-1] != store.RPCSuccessful {
					return fmt.Errorf("notices %v, want %v", s, want)
				}
				return nil
			})
			if s := seen(gone.ID); len(s) != 2 || s[1] != store.RPCDeleted {
				t.Errorf("notices of the deleted call: %v", s)
			}

			// The listing: newest first, bounded below by time.
			var list struct{ RPC []store.RPC }
			if code := c.api("GET", "/api/v1/devices/"+d.name+"/rpc", "", &list); code != 200 || len(list.RPC) != 1 || list.RPC[0].ID != r.ID {
				t.Errorf("list: %d %+v", code, list)
			}
			since := time.Now().Add(time.Minute).UnixMilli()
			list.RPC = nil
			if code := c.api("GET", fmt.Sprintf("/api/v1/devices/%s/rpc?since=%d", d.name, since), "", &list); code != 200 || len(list.RPC) != 0 {
				t.Errorf("list since the future: %d %+v", code, list)
			}
			if code := c.api("GET", "/api/v1/devices/"+d.name+"/rpc?status=bogus", "", nil); code != 400 {
				t.Errorf("bad status filter: %d", code)
			}
		})
	}
}

// TestPersistentRPCSurvivesRestart queues a call, restarts the node on the
// same data, and delivers the call to the device connecting afterwards.
func TestPersistentRPCSurvivesRestart(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			c := start(t, t.TempDir(), prepare(t, b), "n1", "")
			d := newDevice(t, c, "SN-RESTART")
			d.provision(c)
			r := c.send(d, `{"method":"reboot","persistent":true,"timeoutMs":2000}`)
			if err := c.n.Close(); err != nil {
				t.Fatal(err)
			}
			c2 := restart(t, c.cfg)
			if got := c2.waitStatus(r.ID, store.RPCQueued, 5*time.Second); got.Method != "reboot" {
				t.Fatalf("after restart: %+v", got)
			}
			d.connect(c2, true)
			if got := c2.waitStatus(r.ID, store.RPCSuccessful, 15*time.Second); string(got.Response) != `{"done":"reboot"}` {
				t.Errorf("after restart: %+v", got)
			}
		})
	}
}

// TestPersistentRPCExpiresRetriesAndOneway covers the other endings: a
// call whose device never comes back expires; a call never answered is
// sent 1+retries times and FAILS; a one-way call is SUCCESSFUL once the
// device acknowledged it.
func TestPersistentRPCExpiresRetriesAndOneway(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			c := start(t, t.TempDir(), prepare(t, b), "n1", "")
			d := newDevice(t, c, "SN-END")
			d.provision(c)

			exp := c.send(d, fmt.Sprintf(`{"method":"late","persistent":true,"expirationTime":%d}`, time.Now().Add(500*time.Millisecond).UnixMilli()))
			if got := c.waitStatus(exp.ID, store.RPCExpired, 15*time.Second); got.Attempts != 0 {
				t.Errorf("expired: %+v", got)
			}
			if code := c.api("POST", "/api/v1/devices/"+d.name+"/rpc", `{"method":"x","persistent":true,"expirationTime":1}`, nil); code != 400 {
				t.Errorf("expiration in the past: %d", code)
			}
			if code := c.api("POST", "/api/v1/devices/"+d.name+"/rpc", `{"method":"x","persistent":true,"retries":11}`, nil); code != 400 {
				t.Errorf("too many retries: %d", code)
			}
			if code := c.api("POST", "/api/v1/devices/"+d.name+"/rpc", `{"method":"x","oneway":true}`, nil); code != 400 {
				t.Errorf("oneway without persistent: %d", code)
			}

			d.mu.Lock()
			d.answer = false
			d.mu.Unlock()
			d.connect(c, true)
			one := c.send(d, `{"method":"blink","persistent":true,"oneway":true}`)
			if got := c.waitStatus(one.ID, store.RPCSuccessful, 15*time.Second); got.Response != nil || got.Attempts != 1 {
				t.Errorf("one-way: %+v", got)
			}
			never := c.send(d, `{"method":"sleep","persistent":true,"timeoutMs":400,"retries":1}`)
			got := c.waitStatus(never.ID, store.RPCFailed, 20*time.Second)
			if got.Attempts != 2 || !strings.Contains(got.Error, "no answer after 2 attempts") {
				t.Errorf("retries exhausted: %+v", got)
			}
			if n := d.received(never.ID); n != 2 {
				t.Errorf("device received the unanswered call %d times, want 2", n)
			}
			if n := d.received(exp.ID); n != 0 {
				t.Errorf("device received the expired call")
			}
		})
	}
}

// TestPersistentRPCTwoNodes runs two nodes on one PostgreSQL and one NATS:
// a call queued through node B while the device is offline is sent by node
// A once the device connects there, exactly once; a call queued through A
// while the device is on B is sent by B.
func TestPersistentRPCTwoNodes(t *testing.T) {
	if os.Getenv("THINGLINE_TEST_POSTGRES") == "" || os.Getenv("THINGLINE_TEST_NATS") == "" {
		t.Skip("THINGLINE_TEST_POSTGRES and THINGLINE_TEST_NATS are needed for two nodes")
	}
	b := backend{storeURL: tstest.PostgresSchema(t, "rpc"), busURL: tstest.NATSURL()}
	a := start(t, t.TempDir(), b, "node-a", "")
	nb := start(t, t.TempDir(), b, "node-b", a.n.PKIDir())
	d := newDevice(t, a, "SN-TWO")
	d.provision(a)

	r1 := nb.send(d, `{"method":"first","persistent":true}`)
	d.connect(a, true)
	got := nb.waitStatus(r1.ID, store.RPCSuccessful, 20*time.Second)
	if got.Node != "node-a" || got.Attempts != 1 {
		t.Errorf("first call: %+v, want sent once by node-a", got)
	}

	d.connect(nb, true) // takes the device over to node B
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		var dev store.Device
		if a.api("GET", "/api/v1/devices/"+d.name, "", &dev); dev.Node != "node-b" || !dev.Online {
			return fmt.Errorf("device on %q online=%v", dev.Node, dev.Online)
		}
		return nil
	})
	r2 := a.send(d, `{"method":"second","persistent":true}`)
	got = a.waitStatus(r2.ID, store.RPCSuccessful, 20*time.Second)
	if got.Node != "node-b" || string(got.Response) != `{"done":"second"}` {
		t.Errorf("second call: %+v, want sent by node-b", got)
	}
	d.mu.Lock()
	n1, n2 := d.requests[fmt.Sprint(r1.ID)], d.requests[fmt.Sprint(r2.ID)]
	d.mu.Unlock()
	if n1 != 1 || n2 != 1 {
		t.Errorf("deliveries: first %d, second %d; want 1 each", n1, n2)
	}
}

// TestPersistentRPCV2TopicsAtQoS0 serves a device that subscribed with
// ThingsBoard's short v2 topics at QoS 0: the call goes out on v2/r/req/{id}
// (delivered once written: QoS 0 has no acknowledgement) and its answer on
// v2/r/res/{id} completes it.
func TestPersistentRPCV2TopicsAtQoS0(t *testing.T) {
	c := start(t, t.TempDir(), backend{}, "n1", "")
	d := newDevice(t, c, "SN-V2")
	cl := d.connect(c, false)
	got := make(chan string, 4)
	tok := cl.Subscribe("v2/r/req/+", 0, func(cl mqtt.Client, m mqtt.Message) {
		got <- m.Topic()
		id := strings.TrimPrefix(m.Topic(), "v2/r/req/")
		cl.Publish("v2/r/res/"+id, 0, false, `{"v2":true}`)
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	r := c.send(d, `{"method":"ping","persistent":true}`)
	done := c.waitStatus(r.ID, store.RPCSuccessful, 15*time.Second)
	if string(done.Response) != `{"v2":true}` || done.Attempts != 1 {
		t.Errorf("v2 call: %+v", done)
	}
	if topic := <-got; topic != fmt.Sprintf("v2/r/req/%d", r.ID) {
		t.Errorf("request topic %q", topic)
	}
}
