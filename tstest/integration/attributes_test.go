package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/tstest"
)

// TestAttributeScopes drives the three scopes through the API with a real
// MQTT device: client attributes it reports are listed; shared changes
// and deletions are pushed while it is subscribed; changes made while it
// is offline are pushed when it subscribes again and answered to its
// attribute request. On SQLite with one node, and on PostgreSQL with the
// API of one node and the device on the other when a cluster is available.
func TestAttributeScopes(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		s := startServer(t, t.TempDir())
		testAttributeScopes(t, s, s, s)
	})
	t.Run("postgres-two-nodes", func(t *testing.T) {
		storeURL, natsURL := clusterStore(t)
		a := startServer(t, t.TempDir(), "--store", storeURL, "--bus", natsURL, "--node-id", "attr-a")
		pkiDir := a.pkiDir()
		b := startServer(t, t.TempDir(), "--store", storeURL, "--bus", natsURL, "--node-id", "attr-b",
			"--tls-cert", filepath.Join(pkiDir, "server.crt"), "--tls-key", filepath.Join(pkiDir, "server.key"),
			"--device-ca", filepath.Join(pkiDir, "device-ca.crt"))
		b.data = a.data // b trusts a's development PKI
		testAttributeScopes(t, a, b, b)
	})
}

// testAttributeScopes connects the device to first, calls the API of api,
// and reconnects the device to again.
func testAttributeScopes(t *testing.T, first, api, again *server) {
	sn := fmt.Sprintf("SN-ATTR-%d", time.Now().UnixNano())
	dev := pkitest.IssueDevice(t, first.deviceCA(), sn, pkitest.Opts{})
	base := "/api/v1/devices/" + sn + "/attributes"

	attrs := make(chan string, 16)
	// A shared change is told at least once (docs/rpc.md): the catch-up a
	// subscription starts may read a change that the API marked a moment
	// later, and push it beside the change's live push. So within one
	// session the message just received may come again; from one session
	// to the next nothing may.
	var last string
	session := func(s *server) mqtt.Client {
		t.Helper()
		last = ""
		c, err := s.connect(dev.CertPath, dev.KeyPath, sn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Disconnect(0) })
		if tok := c.Subscribe("v1/devices/me/attributes", 1, func(_ mqtt.Client, m mqtt.Message) { attrs <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		return c
	}
	next := func(want string) {
		t.Helper()
		for {
			select {
			case got := <-attrs:
				if last != "" && sameJSON(got, last) && !sameJSON(got, want) {
					continue // told again
				}
				last = got
				if !sameJSON(got, want) {
					t.Errorf("device got %s, want %s", got, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("device got nothing, want %s", want)
			}
			return
		}
	}
	c := session(first)
	if tok := c.Publish("v1/devices/me/attributes", 1, false, `{"fw_version":"1.0.3","current_fw_version":"1.0.3"}`); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	var all map[string]map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	if code := api.api("GET", base, "", &all); code != 200 || string(all["client"]["fw_version"].Value) != `"1.0.3"` ||
		string(all["client"]["current_fw_version"].Value) != `"1.0.3"` {
		t.Fatalf("GET attributes: %d %v", code, all)
	}

	// Live: set and delete shared attributes; server ones stay private.
	var res struct {
		Pushed bool `json:"pushed"`
	}
	if code := api.api("POST", base, `{"led":true,"color":"red"}`, &res); code != 200 || !res.Pushed {
		t.Fatalf("POST shared: %d %+v", code, res)
	}
	next(`{"led":true,"color":"red"}`)
	if code := api.api("POST", base+"?scope=server", `{"note":"bench 4"}`, &res); code != 200 || res.Pushed {
		t.Fatalf("POST server: %d %+v", code, res)
	}
	if code := api.api("DELETE", base+"?keys=led", "", &res); code != 200 || !res.Pushed {
		t.Fatalf("DELETE shared: %d %+v", code, res)
	}
	next(`{"deleted":["led"]}`)
	if code := api.api("DELETE", base, "", nil); code != 400 {
		t.Errorf("DELETE without keys: %d", code)
	}
	if code := api.api("DELETE", base+"?scope=server&keys=note", "", nil); code != 200 {
		t.Errorf("DELETE server: %d", code)
	}
	all = nil
	api.api("GET", base+"?scope=server", "", &all)
	if len(all["server"]) != 0 || len(all) != 1 {
		t.Errorf("server scope after delete: %v", all)
	}

	// Offline: a change and a deletion wait for the next subscription.
	c.Disconnect(0)
	waitOffline(t, api, sn)
	if code := api.api("POST", base, `{"interval":30}`, &res); code != 200 || res.Pushed {
		t.Fatalf("POST while offline: %d %+v", code, res)
	}
	if code := api.api("DELETE", base+"?keys=color", "", &res); code != 200 || res.Pushed {
		t.Fatalf("DELETE while offline: %d %+v", code, res)
	}
	c = session(again)
	next(`{"interval":30}`)
	next(`{"deleted":["color"]}`)
	// The attribute request firmware makes on connect says the same.
	resp := make(chan string, 1)
	c.Subscribe("v1/devices/me/attributes/response/+", 1, func(_ mqtt.Client, m mqtt.Message) { resp <- string(m.Payload()) }).WaitTimeout(5 * time.Second)
	c.Publish("v1/devices/me/attributes/request/1", 1, false, `{"sharedKeys":"interval,color"}`)
	select {
	case got := <-resp:
		if !sameJSON(got, `{"shared":{"interval":30}}`) {
			t.Errorf("attribute response %s", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no attribute response")
	}

	// Told once: the next session gets only what changes after it.
	c.Disconnect(0)
	waitOffline(t, api, sn)
	session(again)
	api.api("POST", base, `{"ping":1}`, nil)
	next(`{"ping":1}`)
}

func waitOffline(t *testing.T, s *server, sn string) {
	t.Helper()
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		var d struct {
			Online bool `json:"online"`
		}
		if s.api("GET", "/api/v1/devices/"+sn, "", &d); d.Online {
			return fmt.Errorf("%s still online", sn)
		}
		return nil
	})
}

func sameJSON(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}
