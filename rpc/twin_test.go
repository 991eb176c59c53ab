package rpc_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
	"github.com/thingline/thingline/twin"
)

// TestPersistentRPCToTwin sends a persistent call to a device twin (the
// firmware emulator) that is offline, restarts the node on the same data,
// and lets the twin reconnect: it receives the call, changes its telemetry
// interval and answers, and the call is SUCCESSFUL with the twin's answer.
func TestPersistentRPCToTwin(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			c := start(t, t.TempDir(), prepare(t, b), "n1", "")
			sn := fmt.Sprintf("SN-TWIN-%d", time.Now().UnixNano())
			units := t.TempDir()
			unit := filepath.Join(units, sn)
			ca, err := pki.LoadCA(c.n.PKIDir())
			if err != nil {
				t.Fatal(err)
			}
			id := pkitest.IssueDevice(t, ca, sn, pkitest.Opts{})
			if err := os.MkdirAll(unit, 0o700); err != nil {
				t.Fatal(err)
			}
			for src, dst := range map[string]string{id.CertPath: "device.crt", id.KeyPath: "device.key",
				filepath.Join(c.n.PKIDir(), "root-ca.crt"): "server_chain.pem"} {
				b, err := os.ReadFile(src)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(unit, dst), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			fleet := func(c *cloud, rb twin.RPCBehaviour) (stop func()) {
				sim, err := twin.NewSim(twin.SimConfig{Units: units, Count: 1, Broker: "mqtts://" + c.n.MQTTAddr(),
					ServerName: "127.0.0.1", Interval: time.Second, BackoffMin: 50 * time.Millisecond,
					BackoffMax: 200 * time.Millisecond, Logf: func(string, ...any) {}, RPC: rb})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { sim.Run(ctx); close(done) }()
				return func() { cancel(); <-done }
			}
			online := func(c *cloud, want bool) {
				tstest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
					var d store.Device
					if code := c.api("GET", "/api/v1/devices/"+sn, "", &d); code != 200 || d.Online != want {
						return fmt.Errorf("device: %d online=%v, want %v", code, d.Online, want)
					}
					return nil
				})
			}
			stop := fleet(c, twin.RPCBehaviour{})
			online(c, true)
			stop()
			online(c, false)

			var r store.RPC
			if code := c.api("POST", "/api/v1/devices/"+sn+"/rpc", `{"method":"setInterval","params":{"ms":2500},"persistent":true}`, &r); code != 202 {
				t.Fatalf("POST: %d", code)
			}
			if err := c.n.Close(); err != nil {
				t.Fatal(err)
			}
			c2 := restart(t, c.cfg)
			stop = fleet(c2, twin.RPCBehaviour{})
			got := c2.waitStatus(r.ID, store.RPCSuccessful, 20*time.Second)
			if string(got.Response) != `{"ok":true,"interval_ms":2500}` || got.Attempts != 1 {
				t.Errorf("twin's answer: %+v", got)
			}
			stop()
			online(c2, false)

			// Firmware that hangs in a handler: every attempt times out and
			// the call FAILS; firmware that refuses: its error is the answer.
			defer fleet(c2, twin.RPCBehaviour{Ignore: []string{"sleep"}, Fail: []string{"selfTest"}})()
			online(c2, true)
			hang := c2.send(&device{name: sn}, `{"method":"sleep","persistent":true,"timeoutMs":300,"retries":1}`)
			refuse := c2.send(&device{name: sn}, `{"method":"selfTest","persistent":true}`)
			if got := c2.waitStatus(hang.ID, store.RPCFailed, 20*time.Second); got.Attempts != 2 {
				t.Errorf("hung call: %+v", got)
			}
			if got := c2.waitStatus(refuse.ID, store.RPCSuccessful, 20*time.Second); string(got.Response) != `{"error":"failing selfTest on purpose"}` {
				t.Errorf("refused call: %+v", got)
			}
		})
	}
}
