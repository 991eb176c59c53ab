package certmon

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/alarm"
	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/postgres"
	"github.com/thingline/thingline/store/sqlite"
	"github.com/thingline/thingline/store/storetest"
	"github.com/thingline/thingline/tstest"
)

func openSQLite(t *testing.T) store.Store {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "thingline.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openPostgres(t *testing.T) store.Store {
	s, err := postgres.Open(context.Background(), storetest.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func forEachStore(t *testing.T, fn func(t *testing.T, st store.Store)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, openSQLite(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, openPostgres(t)) })
}

var now = time.Date(2027, 1, 10, 12, 0, 0, 0, time.UTC)

// device records a device whose certificate serial expires after days,
// first used at seen.
func device(t *testing.T, st store.Store, name, serial string, days int, seen time.Time) store.Device {
	t.Helper()
	d, _, _, err := st.EnsureDevice(context.Background(), store.Device{Name: name, Profile: "default"}, store.Credential{
		Serial: serial, Issuer: "CN=test CA", Subject: "CN=" + name, NotBefore: now.AddDate(-3, 0, 0),
		NotAfter: now.AddDate(0, 0, days), SHA256: fmt.Sprintf("%064s", serial), CredentialID: serial,
		FirstSeen: seen, LastSeen: seen,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// monitors returns n monitors on one store, as n nodes would run them,
// without their background loops.
func monitors(st store.Store, b bus.Bus, n int) []*Monitor {
	var ms []*Monitor
	for i := range n {
		m := &Monitor{cfg: Config{Store: st, Bus: b, Node: fmt.Sprintf("node-%d", i), Threshold: DefaultThreshold,
			Now: func() time.Time { return now }}}
		m.alarms = alarm.NewService(st, b, nil)
		m.log = discard
		ms = append(ms, m)
	}
	return ms
}

func race(ms []*Monitor, sweep func(*Monitor) func(context.Context) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(ms))
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- sweep(m)(context.Background())
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func TestExpiryAlarmOncePerCertificateAcrossNodes(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		b := inproc.New()
		t.Cleanup(func() { b.Close() })
		soon := device(t, st, "SN-SOON", "a1", 10, now.AddDate(-1, 0, 0))
		device(t, st, "SN-LATER", "b1", 100, now.AddDate(-1, 0, 0))
		expired := device(t, st, "SN-EXPIRED", "c1", -1, now.AddDate(-1, 0, 0))
		ms := monitors(st, b, 3)
		for range 2 { // two rounds of three nodes sweeping at once
			if err := race(ms, func(m *Monitor) func(context.Context) error { return m.SweepExpiry }); err != nil {
				t.Fatal(err)
			}
		}
		active := true
		as, err := st.ListAlarms(ctx, store.AlarmQuery{Type: store.AlarmCertExpiry, Active: &active})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]store.Alarm{}
		for _, a := range as {
			if _, dup := got[a.Device]; dup {
				t.Errorf("two active alarms for %s", a.Device)
			}
			got[a.Device] = a
		}
		if len(got) != 2 || got["SN-SOON"].DeviceID != soon.ID || got["SN-EXPIRED"].DeviceID != expired.ID {
			t.Fatalf("active expiry alarms = %+v", as)
		}
		if a := got["SN-SOON"]; a.Count != 1 || a.Severity != store.SeverityMajor {
			t.Errorf("SN-SOON alarm = %+v, want one MAJOR raise", a)
		}
		if got["SN-EXPIRED"].Severity != store.SeverityCritical {
			t.Errorf("expired certificate alarm severity %s", got["SN-EXPIRED"].Severity)
		}
		var d expiryDetail
		if err := json.Unmarshal(got["SN-SOON"].Detail, &d); err != nil || d.Serial != "a1" || d.DaysLeft != 10 {
			t.Errorf("alarm detail %s (%v)", got["SN-SOON"].Detail, err)
		}
		evs, err := st.ListEvents(ctx, store.EventQuery{Kind: store.EventCertExpiring})
		if err != nil || len(evs) != 2 {
			t.Errorf("certificate-expiring events = %d (%v), want 2", len(evs), err)
		}

		// SN-SOON rotates: its current certificate is good for years, so
		// the next sweep clears its alarm and keeps SN-EXPIRED's.
		device(t, st, "SN-SOON", "a2", 1095, now)
		if err := race(ms, func(m *Monitor) func(context.Context) error { return m.SweepExpiry }); err != nil {
			t.Fatal(err)
		}
		as, _ = st.ListAlarms(ctx, store.AlarmQuery{Type: store.AlarmCertExpiry, Active: &active})
		if len(as) != 1 || as[0].Device != "SN-EXPIRED" {
			t.Errorf("active alarms after SN-SOON rotated = %+v", as)
		}
	})
}

func TestRetirementRevokedOnceAndAnnounced(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		b := inproc.New()
		t.Cleanup(func() { b.Close() })
		var mu sync.Mutex
		var notices []store.Revocation
		stop, err := b.Subscribe(bus.TopicRevocations, func(data []byte) {
			var r store.Revocation
			if err := json.Unmarshal(data, &r); err != nil {
				t.Errorf("bad notice %s", data)
			}
			mu.Lock()
			notices = append(notices, r)
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		d := device(t, st, "SN-R", "d1", 10, now.AddDate(-1, 0, 0))
		device(t, st, "SN-R", "d2", 1095, now)
		for _, r := range []store.Retirement{
			{DeviceID: d.ID, Serial: "d1", Next: "d2", RetireAt: now.Add(-time.Second)},
			{DeviceID: d.ID, Serial: "d0", Next: "d1", RetireAt: now.Add(time.Hour)}, // not due
		} {
			if err := st.ScheduleRetirement(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		ms := monitors(st, b, 4)
		if err := race(ms, func(m *Monitor) func(context.Context) error { return m.SweepRetirements }); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(notices) != 1 || notices[0].Serial != "d1" || notices[0].Reason != "superseded" {
			t.Errorf("revocation notices = %+v, want d1 once", notices)
		}
		revs, err := st.RevocationsOf(ctx, []string{"d0", "d1", "d2"})
		if err != nil || len(revs) != 1 {
			t.Errorf("revocations = %+v, %v", revs, err)
		}
	})
}

// TestStartStop: the first expiry sweep runs when the monitor starts.
func TestStartStop(t *testing.T) {
	st := openSQLite(t)
	b := inproc.New()
	defer b.Close()
	device(t, st, "SN-S", "e1", 5, time.Now())
	// The fixed "now" of the device helper is ahead of the clock: a
	// threshold of a year covers it.
	m := Start(Config{Store: st, Bus: b, Node: "n", Threshold: 365 * 24 * time.Hour, ExpiryEvery: time.Hour, RetireEvery: time.Hour})
	defer m.Stop()
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		evs, err := st.ListEvents(context.Background(), store.EventQuery{Kind: store.EventCertExpiring})
		if err != nil || len(evs) != 1 {
			return fmt.Errorf("certificate-expiring events %d, %v", len(evs), err)
		}
		return nil
	})
}
