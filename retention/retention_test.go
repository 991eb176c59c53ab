package retention

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
)

// TestPassPerProfile: a profile's own ages replace the global ones for its
// devices; everything else follows the global ages.
func TestPassPerProfile(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	if err := st.PutProfileSettings(ctx, store.ProfileSettings{Profile: "short",
		TelemetryRetention: store.Duration(time.Hour), EventRetention: store.Duration(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	devs := map[string]store.Device{}
	for i, p := range []string{"short", "default"} {
		name := "SN-" + p
		d, _, _, err := st.EnsureDevice(ctx, store.Device{Name: name, Profile: p}, store.Credential{SHA256: fmt.Sprintf("%064x", i+1)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		devs[p] = d
		for _, age := range []time.Duration{72 * time.Hour, 3 * time.Hour, 0} {
			at := now.Add(-age)
			if err := st.AppendTelemetry(ctx, []store.Record{{DeviceID: d.ID, TS: at.UnixMilli(),
				Values: []store.KV{{Key: "t", Value: json.RawMessage("1")}}}}); err != nil {
				t.Fatal(err)
			}
			if err := st.AddEvent(ctx, store.Event{Device: name, Kind: store.EventConnect, Time: at}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := st.AddEvent(ctx, store.Event{Kind: store.EventRefused, Time: now.Add(-72 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := st.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	e := &Engine{cfg: Config{Store: st, Telemetry: 48 * time.Hour, Events: 48 * time.Hour, Step: 10, Pause: time.Millisecond}}
	res, err := e.Pass(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if res.Telemetry != 3 || res.Events != 4 {
		t.Errorf("pass removed %d records and %d events; want 3 and 4", res.Telemetry, res.Events)
	}
	for p, want := range map[string]int{"short": 1, "default": 2} {
		q, err := st.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: devs[p].ID})
		if err != nil || len(q["t"]) != want {
			t.Errorf("%s: %d points left, %v; want %d", p, len(q["t"]), err, want)
		}
		ev, err := st.ListEvents(ctx, store.EventQuery{Device: "SN-" + p})
		if err != nil || len(ev) != want {
			t.Errorf("%s: %d events left, %v; want %d", p, len(ev), err, want)
		}
	}
	if ev, _ := st.ListEvents(ctx, store.EventQuery{Kind: store.EventRefused}); len(ev) != 0 {
		t.Errorf("refusal older than the global age kept: %+v", ev)
	}
	// A second pass finds nothing.
	if res, err := e.Pass(ctx, now); err != nil || res.Telemetry != 0 || res.Events != 0 {
		t.Errorf("second pass: %+v, %v", res, err)
	}
}

// listCounter counts the device listings made through a real store.
type listCounter struct {
	store.Store
	lists int
}

func (l *listCounter) ListDevices(ctx context.Context, o store.ListOptions) ([]store.Device, error) {
	l.lists++
	return l.Store.ListDevices(ctx, o)
}

// TestPassWithoutPerDeviceAges: with no telemetry age and no profile's
// own event age, a pass does not walk the fleet; as soon as one profile
// has a telemetry age, it does.
func TestPassWithoutPerDeviceAges(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, _, _, err := st.EnsureDevice(ctx, store.Device{Name: "SN-1", Profile: "p"}, store.Credential{SHA256: fmt.Sprintf("%064x", 1)}, nil); err != nil {
		t.Fatal(err)
	}
	lc := &listCounter{Store: st}
	e := &Engine{cfg: Config{Store: lc, Events: 48 * time.Hour, Alarms: time.Hour, Step: 10, Pause: time.Millisecond}}
	if _, err := e.Pass(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if lc.lists != 0 {
		t.Errorf("a pass without per-device ages listed devices %d times", lc.lists)
	}
	if err := st.PutProfileSettings(ctx, store.ProfileSettings{Profile: "p", TelemetryRetention: store.Duration(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Pass(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if lc.lists == 0 {
		t.Error("a pass with a profile's telemetry age did not walk the devices")
	}
}
