package twin

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/gateway"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
	"github.com/thingline/thingline/tstest"
)

// cloud is thingline's own gateway on loopback with a real SQLite store.
type cloud struct {
	st   store.Store
	bus  bus.Bus
	srv  *gateway.Server
	addr string
	done chan error
}

func startCloud(t *testing.T, p *testPKI, st store.Store, b bus.Bus, addr string) *cloud {
	t.Helper()
	srv, err := gateway.New(gateway.Config{TLSCertificate: p.server, DeviceCAs: []*x509.Certificate{p.inter},
		Store: st, Bus: b, Node: "test"})
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	tstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	c := &cloud{st: st, bus: b, srv: srv, addr: ln.Addr().String(), done: make(chan error, 1)}
	go func() { c.done <- srv.Serve(ln) }()
	return c
}

func (c *cloud) stop(t *testing.T) {
	t.Helper()
	if err := c.srv.Close(); err != nil {
		t.Errorf("closing gateway: %v", err)
	}
	<-c.done
}

func TestTwinAgainstGateway(t *testing.T) {
	p := newTestPKI(t)
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "thingline.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b := inproc.New()
	defer b.Close()
	c := startCloud(t, p, st, b, "127.0.0.1:0")

	tw := freshTwin(t, p, "mqtts://"+c.addr, Config{})
	runTwin(t, tw)
	if _, err := provision(waitProvAddr(t, tw), credsSec1, "home", "secret123"); err != nil {
		t.Fatal(err)
	}

	// Auto-provisioned by its certificate's CN, streaming into the store.
	var dev store.Device
	latest := func() (map[string]store.Point, error) {
		if dev.ID == 0 {
			if dev, err = st.GetDevice(ctx, "SN-00A1B2"); err != nil {
				return nil, err
			}
		}
		return st.LatestTelemetry(ctx, dev.ID, nil)
	}
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		pts, err := latest()
		if err != nil {
			return err
		}
		if _, ok := pts["temperature"]; !ok {
			return fmt.Errorf("latest telemetry %v", pts)
		}
		if _, ok := pts["humidity"]; !ok {
			return fmt.Errorf("latest telemetry %v", pts)
		}
		return nil
	})
	tstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		a, err := st.GetAttributes(ctx, dev.ID, store.ClientScope, []string{"fw_version", "sn"})
		if err != nil {
			return err
		}
		if string(a["sn"].Value) != `"SN-00A1B2"` || string(a["fw_version"].Value) != `"1.0.0"` {
			return fmt.Errorf("client attributes %v", a)
		}
		return nil
	})

	// RPC round trips through the bus, as the REST API sends them.
	call := func(method, params string) map[string]any {
		t.Helper()
		payload := fmt.Sprintf(`{"method":%q,"params":%s}`, method, params)
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		raw, err := b.Request(rctx, "SN-00A1B2", bus.Command{Kind: bus.CommandRPC, Payload: json.RawMessage(payload), TimeoutMs: 5000})
		if err != nil {
			t.Fatalf("rpc %s: %v", method, err)
		}
		var out map[string]any
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("rpc %s answer %s: %v", method, raw, err)
		}
		return out
	}
	if got := call("getState", "{}"); got["sn"] != "SN-00A1B2" || got["ssid"] != "home" {
		t.Fatalf("getState = %v", got)
	}
	if got := call("setInterval", `{"ms":75}`); got["interval_ms"] != 75.0 {
		t.Fatalf("setInterval = %v", got)
	}
	if tw.State().IntervalMs != 75 {
		t.Fatalf("interval not persisted: %+v", tw.State())
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := b.Request(rctx, "SN-00A1B2", bus.Command{Kind: bus.CommandAttributes, Payload: json.RawMessage(`{"interval":60}`)}); err != nil {
		t.Fatal(err)
	}
	tstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if s := tw.State(); s.IntervalMs != 60 {
			return fmt.Errorf("interval %d after shared attribute", s.IntervalMs)
		}
		return nil
	})

	// The gateway restarts on the same port; the twin comes back by itself.
	c.stop(t)
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if tw.View().Connected {
			return errors.New("still connected")
		}
		return nil
	})
	before, _ := latest()
	c2 := startCloud(t, p, st, b, c.addr)
	defer c2.stop(t)
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		pts, err := latest()
		if err != nil {
			return err
		}
		if pts["temperature"].TS <= before["temperature"].TS {
			return errors.New("no telemetry since the restart")
		}
		return nil
	})
}
