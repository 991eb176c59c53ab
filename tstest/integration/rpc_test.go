package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/tstest"
)

// TestPersistentRPCAcrossKill kills the server (SIGKILL) while a persistent
// call is delivered but unanswered, with a second call queued for later,
// and restarts it on the same data: the interrupted attempt is counted and
// the call sent again, the queued one is sent too, and both complete with
// the device's answers. SQLite, and PostgreSQL when configured.
func TestPersistentRPCAcrossKill(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testRPCAcrossKill(t) })
	t.Run("postgres", func(t *testing.T) {
		storeURL, _ := clusterStore(t)
		testRPCAcrossKill(t, "--store", storeURL)
	})
}

func testRPCAcrossKill(t *testing.T, args ...string) {
	data := t.TempDir()
	args = append(args, "--node-id", "kill-node")
	s := startServer(t, data, args...)
	sn := fmt.Sprintf("SN-KILL-%d", time.Now().UnixNano())
	dev := pkitest.IssueDevice(t, s.deviceCA(), sn, pkitest.Opts{})

	var mu sync.Mutex
	seen := map[string]int{}
	answer := false
	device := func(s *server) mqtt.Client {
		t.Helper()
		c, err := s.connect(dev.CertPath, dev.KeyPath, sn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Disconnect(0) })
		if tok := c.Subscribe("v1/devices/me/rpc/request/+", 1, func(cl mqtt.Client, m mqtt.Message) {
			id := m.Topic()[strings.LastIndex(m.Topic(), "/")+1:]
			mu.Lock()
			seen[id]++
			reply := answer
			mu.Unlock()
			if reply {
				cl.Publish("v1/devices/me/rpc/response/"+id, 1, false, `{"done":true}`)
			}
		}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		return c
	}
	type call struct {
		ID       int64           `json:"id"`
		Status   string          `json:"status"`
		Attempts int             `json:"attempts"`
		Response json.RawMessage `json:"response"`
	}
	get := func(s *server, id int64) call {
		var c call
		s.api("GET", fmt.Sprintf("/api/v1/rpc/%d", id), "", &c)
		return c
	}

	device(s)
	var first call
	if code := s.api("POST", "/api/v1/devices/"+sn+"/rpc", `{"method":"slow","persistent":true,"timeoutMs":60000}`, &first); code != 202 {
		t.Fatalf("POST: %d", code)
	}
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if c := get(s, first.ID); c.Status != "DELIVERED" {
			return fmt.Errorf("status %s, want DELIVERED", c.Status)
		}
		return nil
	})
	s.kill()

	s2 := startServer(t, data, args...)
	// Nobody can tell whether the device acted on the interrupted attempt:
	// it counts, and the call waits to be sent again.
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if c := get(s2, first.ID); c.Status != "TIMEOUT" || c.Attempts != 1 {
			return fmt.Errorf("after the kill: %+v, want TIMEOUT after 1 attempt", c)
		}
		return nil
	})
	var second call
	if code := s2.api("POST", "/api/v1/devices/"+sn+"/rpc", `{"method":"later","persistent":true}`, &second); code != 202 {
		t.Fatalf("POST: %d", code)
	}
	mu.Lock()
	answer = true
	mu.Unlock()
	device(s2)
	tstest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		a, b := get(s2, first.ID), get(s2, second.ID)
		if a.Status != "SUCCESSFUL" || b.Status != "SUCCESSFUL" {
			return fmt.Errorf("statuses %s, %s", a.Status, b.Status)
		}
		if a.Attempts != 2 || b.Attempts != 1 || string(a.Response) != `{"done":true}` {
			return fmt.Errorf("first %+v, second %+v", a, b)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if seen[fmt.Sprint(first.ID)] != 2 || seen[fmt.Sprint(second.ID)] != 1 {
		t.Errorf("device saw %v", seen)
	}
}
