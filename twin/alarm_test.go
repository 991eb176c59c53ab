package twin

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/alarm"
	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/gateway"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
	"github.com/thingline/thingline/tstest"
)

// observer adapts the alarm engine to the gateway, as node does.
type observer struct{ e *alarm.Engine }

func (o observer) SessionStarted(d store.Device, at time.Time) gateway.SessionObserver {
	return o.e.SessionStarted(d, at)
}
func (o observer) Event(ev store.Event) { o.e.Event(ev) }

// TestTwinTelemetryDrivesAlarmRules: the twin's DHT11 readings (0–50 °C)
// raise an alarm through a profile rule ("temperature > 0 for 300 ms") and
// clear it through another of the same type ("temperature < 60 for
// 300 ms"), evaluated on the gateway's node as the twin streams.
func TestTwinTelemetryDrivesAlarmRules(t *testing.T) {
	p := newTestPKI(t)
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "thingline.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b := inproc.New()
	defer b.Close()
	eng, err := alarm.Start(ctx, alarm.Config{Store: st, Bus: b, Tick: 50 * time.Millisecond, Reload: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	srv, err := gateway.New(gateway.Config{TLSCertificate: p.server, DeviceCAs: []*x509.Certificate{p.inter},
		Store: st, Bus: b, Node: "test", Observer: observer{eng}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		<-done
	}()

	warm, err := st.AddAlarmRule(ctx, store.AlarmRule{Profile: "default", Type: "twin-warm", Key: "temperature", Severity: store.SeverityMinor,
		Raise: store.Condition{Op: ">", Value: json.RawMessage("0"), Duration: store.Duration(300 * time.Millisecond)}})
	if err != nil {
		t.Fatal(err)
	}
	tw := freshTwin(t, p, "mqtts://"+ln.Addr().String(), Config{})
	runTwin(t, tw)
	if _, err := provision(waitProvAddr(t, tw), credsSec1, "home", "secret123"); err != nil {
		t.Fatal(err)
	}
	var dev store.Device
	active := func() (store.Alarm, error) {
		if dev.ID == 0 {
			if dev, err = st.GetDevice(ctx, "SN-00A1B2"); err != nil {
				return store.Alarm{}, err
			}
		}
		as, err := st.ListAlarms(ctx, store.AlarmQuery{DeviceID: dev.ID, Type: "twin-warm"})
		if err != nil || len(as) == 0 {
			return store.Alarm{}, fmt.Errorf("no alarm yet (%v)", err)
		}
		return as[0], nil
	}
	tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		a, err := active()
		if err == nil && !a.Active() {
			err = fmt.Errorf("alarm %+v is not active", a)
		}
		return err
	})
	a, _ := active()
	var detail struct {
		Key   string  `json:"key"`
		Value float64 `json:"value"`
	}
	if json.Unmarshal(a.Detail, &detail) != nil || detail.Key != "temperature" || detail.Value <= 0 || detail.Value > 50 {
		t.Errorf("alarm detail %s; want the twin's temperature", a.Detail)
	}
	if err := st.DeleteAlarmRule(ctx, warm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddAlarmRule(ctx, store.AlarmRule{Profile: "default", Type: "twin-warm", Key: "temperature", Severity: store.SeverityMinor,
		Raise: store.Condition{Op: ">", Value: json.RawMessage("1000")},
		Clear: &store.Condition{Op: "<", Value: json.RawMessage("60"), Duration: store.Duration(300 * time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		a, err := active()
		if err == nil && a.Active() {
			err = fmt.Errorf("alarm %d still active", a.ID)
		}
		return err
	})
	if a, _ := active(); a.ClearBy != "system" || a.Count != 1 {
		t.Errorf("cleared alarm %+v; want cleared by the rule, raised once", a)
	}
}
