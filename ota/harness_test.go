package ota_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingline/thingline/node"
	"github.com/thingline/thingline/ota"
	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/store/storetest"
	"github.com/thingline/thingline/tstest"
	"github.com/thingline/thingline/twin"
)

const token = "tl_test_token"

// fastOTA is an engine tuned for tests: short timeouts, a quick tick.
func fastOTA() ota.Config {
	return ota.Config{Tick: 50 * time.Millisecond, MaxAttempts: 3, Timeouts: ota.Timeouts{
		Initiated: 3 * time.Second, Downloading: 10 * time.Second, Downloaded: 10 * time.Second,
		Verified: 10 * time.Second, Updating: 20 * time.Second}}
}

// cloud is one or more nodes sharing a store and a bus.
type cloud struct {
	t     *testing.T
	nodes []*node.Node
	dir   string // the first node's data directory, holding the PKI
}

func startNode(t *testing.T, dir, storeURL, busURL, id string, cfg ota.Config, pkiFrom string) *node.Node {
	t.Helper()
	nc := node.Config{DataDir: dir, MQTTListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", AdminToken: token,
		StoreURL: storeURL, BusURL: busURL, NodeID: id, OTA: cfg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Out: io.Discard}
	if pkiFrom != "" {
		p := filepath.Join(pkiFrom, "pki")
		nc.TLSCert, nc.TLSKey = filepath.Join(p, "server.crt"), filepath.Join(p, "server.key")
		nc.DeviceCAs = []string{filepath.Join(p, "device-ca.crt")}
	}
	n, err := node.Start(context.Background(), nc)
	if err != nil {
		t.Fatalf("starting node %s: %v", id, err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// newCloud starts one node on SQLite and the in-process bus.
func newCloud(t *testing.T, cfg ota.Config) *cloud {
	dir := t.TempDir()
	return &cloud{t: t, dir: dir, nodes: []*node.Node{startNode(t, dir, "", "", "node-a", cfg, "")}}
}

// newCluster starts n nodes on PostgreSQL and NATS.
func newCluster(t *testing.T, n int, cfg ota.Config) *cloud {
	natsURL := tstest.NATSURL()
	if natsURL == "" {
		t.Skip("THINGLINE_TEST_NATS not set")
	}
	pg := storetest.PostgresURL(t)
	dir := t.TempDir()
	c := &cloud{t: t, dir: dir}
	for i := range n {
		d, from := dir, ""
		if i > 0 {
			d, from = t.TempDir(), dir
		}
		c.nodes = append(c.nodes, startNode(t, d, pg, natsURL, fmt.Sprintf("node-%c", 'a'+i), cfg, from))
	}
	return c
}

// api calls node i's REST API; out may be nil.
func (c *cloud) api(i int, method, path, contentType string, body []byte, out any) int {
	c.t.Helper()
	req, err := http.NewRequest(method, "http://"+c.nodes[i].HTTPAddr()+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
	if resp.StatusCode >= 300 && out != nil {
		c.t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

func (c *cloud) postJSON(i int, path string, v any, out any) int {
	c.t.Helper()
	b, _ := json.Marshal(v)
	return c.api(i, "POST", path, "application/json", b, out)
}

type pkgInfo struct {
	ID                int64  `json:"id"`
	Checksum          string `json:"checksum"`
	ChecksumAlgorithm string `json:"checksumAlgorithm"`
	Size              int64  `json:"size"`
	SHA256            string `json:"sha256"`
}

// upload stores a random image of size bytes as title/version.
func (c *cloud) upload(title, version string, size int, alg string) (pkgInfo, []byte) {
	c.t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	q := url.Values{"title": {title}, "version": {version}}
	if alg != "" {
		q.Set("checksumAlgorithm", alg)
	}
	var p pkgInfo
	if code := c.api(0, "POST", "/api/v1/ota/packages?"+q.Encode(), "application/octet-stream", data, &p); code != 201 {
		c.t.Fatalf("upload: %d", code)
	}
	return p, data
}

// device is a unit's identity files on disk, as the factory writes them.
type device struct {
	sn, dir string
}

func (c *cloud) issue(sn string) device {
	c.t.Helper()
	ca, err := pki.LoadCA(filepath.Join(c.dir, "pki"))
	if err != nil {
		c.t.Fatal(err)
	}
	d := pkitest.IssueDevice(c.t, ca, sn, pkitest.Opts{})
	dir := c.t.TempDir()
	root, err := os.ReadFile(filepath.Join(c.dir, "pki", "root-ca.crt"))
	if err != nil {
		c.t.Fatal(err)
	}
	for name, src := range map[string]string{"device.crt": d.CertPath, "device.key": d.KeyPath} {
		b, err := os.ReadFile(src)
		if err != nil {
			c.t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), b, 0o600)
	}
	os.WriteFile(filepath.Join(dir, "server_chain.pem"), root, 0o600)
	return device{sn: sn, dir: dir}
}

// fleet is running twins.
type fleet struct {
	mu    sync.Mutex
	twins map[string]*twin.Twin
	state map[string]string
}

// runTwin boots a twin of sn against node i with the failure mode fail.
func (c *cloud) runTwin(f *fleet, i int, sn, fail string) {
	c.t.Helper()
	d := c.issue(sn)
	state := c.t.TempDir()
	tw, err := twin.New(twin.Config{Files: twin.DirReader(d.dir), StateDir: state, Broker: "mqtts://" + c.nodes[i].MQTTAddr(),
		Prov: twin.ProvNone, Interval: time.Hour, AttrEvery: time.Hour, BackoffMin: 50 * time.Millisecond,
		BackoffMax: 500 * time.Millisecond, OTAFail: fail, Logf: c.t.Logf, OTAChunkSize: 4096, OTAChunkTimeout: 2 * time.Second})
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tw.Run(ctx); close(done) }()
	c.t.Cleanup(func() { cancel(); <-done })
	f.mu.Lock()
	if f.twins == nil {
		f.twins, f.state = map[string]*twin.Twin{}, map[string]string{}
	}
	f.twins[sn], f.state[sn] = tw, state
	f.mu.Unlock()
}

// otaState is GET /api/v1/devices/{name}/ota.
type otaState struct {
	State *struct {
		State    string `json:"state"`
		Error    string `json:"error"`
		Attempts int    `json:"attempts"`
	} `json:"state"`
	History []struct {
		State string `json:"state"`
		Error string `json:"error"`
	} `json:"history"`
}

func (c *cloud) deviceOTA(i int, sn string) otaState {
	c.t.Helper()
	var s otaState
	if code := c.api(i, "GET", "/api/v1/devices/"+sn+"/ota", "", nil, &s); code != 200 {
		c.t.Fatalf("device ota %s: %d", sn, code)
	}
	return s
}

// historyStates lists the states of a device's history, oldest first.
func historyStates(s otaState) string {
	var out []string
	for i := len(s.History) - 1; i >= 0; i-- {
		out = append(out, s.History[i].State)
	}
	return strings.Join(out, " ")
}

type rolloutReport struct {
	ID          int64  `json:"id"`
	Status      string `json:"status"`
	PauseReason string `json:"pauseReason"`
	CurrentWave int    `json:"currentWave"`
	Waves       []int  `json:"waves"`
	Progress    struct {
		Total, Queued, InProgress, Updated, Failed, Canceled int
	} `json:"progress"`
	Devices []struct {
		Device string `json:"device"`
		Wave   int    `json:"wave"`
		State  string `json:"state"`
		Error  string `json:"error"`
	} `json:"devices"`
}

func (c *cloud) rollout(i int, id int64) rolloutReport {
	c.t.Helper()
	var r rolloutReport
	if code := c.api(i, "GET", fmt.Sprintf("/api/v1/ota/rollouts/%d", id), "", nil, &r); code != 200 {
		c.t.Fatalf("rollout %d: %d", id, code)
	}
	return r
}

// mqttDevice connects a plain MQTT client (paho) with a fresh identity.
func (c *cloud) mqttDevice(sn string) mqtt.Client {
	c.t.Helper()
	return c.mqttDeviceFrom(c.issue(sn))
}

// mqttDeviceFrom connects a plain MQTT client with d's identity.
func (c *cloud) mqttDeviceFrom(d device) mqtt.Client {
	c.t.Helper()
	sn := d.sn
	cert, err := tls.LoadX509KeyPair(filepath.Join(d.dir, "device.crt"), filepath.Join(d.dir, "device.key"))
	if err != nil {
		c.t.Fatal(err)
	}
	root, _ := os.ReadFile(filepath.Join(d.dir, "server_chain.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + c.nodes[0].MQTTAddr()).SetClientID(sn).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		c.t.Fatalf("connecting %s: %v", sn, tok.Error())
	}
	c.t.Cleanup(func() { cl.Disconnect(100) })
	return cl
}
