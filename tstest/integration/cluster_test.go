package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/tstest"
)

// TestTwoNodesSharePostgresAndNATS runs two `serve` processes on one
// PostgreSQL database and one NATS server: a device connected to node A is
// reached through node B's API (telemetry, shared attributes, RPC), and when
// it reconnects to node B, node A's session is closed.
func TestTwoNodesSharePostgresAndNATS(t *testing.T) {
	storeURL, natsURL := clusterStore(t)

	dataA := t.TempDir()
	a := startServer(t, dataA, "--store", storeURL, "--bus", natsURL, "--node-id", "node-a")
	pkiDir := a.pkiDir()
	b := startServer(t, t.TempDir(), "--store", storeURL, "--bus", natsURL, "--node-id", "node-b",
		"--tls-cert", filepath.Join(pkiDir, "server.crt"), "--tls-key", filepath.Join(pkiDir, "server.key"),
		"--device-ca", filepath.Join(pkiDir, "device-ca.crt"))
	b.data = dataA // b trusts a's development PKI; tlsConfig reads root-ca.crt from there

	dev := pkitest.IssueDevice(t, a.deviceCA(), "SN-CLUSTER", pkitest.Opts{})
	attrs := make(chan string, 4)
	lost := make(chan struct{})
	onLost := func(mqtt.Client, error) { close(lost) }
	c, err := a.connectWith(dev.CertPath, dev.KeyPath, "SN-CLUSTER", onLost)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)
	subscribeDevice(t, c, attrs)
	if tok := c.Publish("v1/devices/me/telemetry", 1, false, `{"temperature":19.5}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}

	var d struct {
		Online bool   `json:"online"`
		Node   string `json:"node"`
	}
	if code := b.api("GET", "/api/v1/devices/SN-CLUSTER", "", &d); code != 200 || !d.Online || d.Node != "node-a" {
		t.Errorf("through node B: %d %+v, want online on node-a", code, d)
	}
	var latest map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	if code := b.api("GET", "/api/v1/devices/SN-CLUSTER/telemetry/latest", "", &latest); code != 200 || string(latest["temperature"].Value) != "19.5" {
		t.Errorf("telemetry through node B: %d %v", code, latest)
	}
	var reply map[string]any
	if code := b.api("POST", "/api/v1/devices/SN-CLUSTER/rpc", `{"method":"ping","params":{"n":1},"timeoutMs":5000}`, &reply); code != 200 || reply["method"] != "ping" {
		t.Errorf("rpc through node B to a device on node A: %d %v", code, reply)
	}
	if code := b.api("POST", "/api/v1/devices/SN-CLUSTER/attributes", `{"mode":"eco"}`, nil); code != 200 {
		t.Errorf("attributes through node B: %d", code)
	}
	select {
	case got := <-attrs:
		if !strings.Contains(got, `"eco"`) {
			t.Errorf("attribute push %s", got)
		}
	case <-time.After(10 * time.Second):
		t.Error("no attribute push reached the device on node A")
	}

	// The device moves to node B: node A's session must end.
	c2, err := b.connectWith(dev.CertPath, dev.KeyPath, "SN-CLUSTER", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Disconnect(100)
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Error("node A kept the older session open after the takeover on node B")
	}
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		var d struct {
			Online bool   `json:"online"`
			Node   string `json:"node"`
		}
		if code := a.api("GET", "/api/v1/devices/SN-CLUSTER", "", &d); code != 200 || !d.Online || d.Node != "node-b" {
			return fmt.Errorf("through node A: %d %+v, want online on node-b", code, d)
		}
		return nil
	})
}

// subscribeDevice makes c behave like firmware: shared attributes go to
// attrs, RPC requests are answered with their method and params.
func subscribeDevice(t *testing.T, c mqtt.Client, attrs chan<- string) {
	t.Helper()
	if tok := c.Subscribe("v1/devices/me/attributes", 1, func(_ mqtt.Client, m mqtt.Message) { attrs <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe attributes: %v", tok.Error())
	}
	if tok := c.Subscribe("v1/devices/me/rpc/request/+", 1, func(cl mqtt.Client, m mqtt.Message) {
		id := m.Topic()[strings.LastIndex(m.Topic(), "/")+1:]
		var req struct {
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		json.Unmarshal(m.Payload(), &req)
		cl.Publish("v1/devices/me/rpc/response/"+id, 1, false, fmt.Sprintf(`{"method":%q,"params":%s,"ok":true}`, req.Method, req.Params))
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe rpc: %v", tok.Error())
	}
}

// clusterStore returns the store URL of a fresh PostgreSQL schema, so that
// a test sees only its own devices, and the NATS URL on a subject prefix of
// its own (see tstest.NATSURL); it skips the test
// when either is not configured.
func clusterStore(t *testing.T) (storeURL, natsURL string) {
	t.Helper()
	natsURL = tstest.NATSURL()
	if os.Getenv("THINGLINE_TEST_POSTGRES") == "" || natsURL == "" {
		t.Skip("THINGLINE_TEST_POSTGRES and THINGLINE_TEST_NATS are needed for a two-node cluster")
	}
	return tstest.PostgresSchema(t, "it"), natsURL
}
