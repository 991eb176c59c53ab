// Package storetest is the conformance suite every store.Store
// implementation runs: store/sqlite always, store/postgres when a database
// is available.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// Opener returns a new, empty store for one test; it registers its own
// cleanup (closing an already closed store must be harmless).
type Opener func(t *testing.T) store.Store

// Compacter is implemented by stores that reorganize telemetry in the
// background (store/sqlite); the suite forces it at chosen points so that
// queries are checked across the compacted and uncompacted parts.
type Compacter interface {
	Compact(ctx context.Context) error
}

// Run runs the whole suite against stores made by open.
func Run(t *testing.T, open Opener) {
	t.Run("Devices", func(t *testing.T) { testDevices(t, open(t)) })
	t.Run("EnsureDeviceConcurrent", func(t *testing.T) { testEnsureConcurrent(t, open(t)) })
	t.Run("Online", func(t *testing.T) { testOnline(t, open(t)) })
	t.Run("DeviceList", func(t *testing.T) { testDeviceList(t, open(t)) })
	t.Run("Attributes", func(t *testing.T) { testAttributes(t, open(t)) })
	t.Run("Events", func(t *testing.T) { testEvents(t, open(t)) })
	t.Run("Revocations", func(t *testing.T) { testRevocations(t, open(t)) })
	t.Run("Units", func(t *testing.T) { testUnits(t, open(t)) })
	t.Run("FactoryViews", func(t *testing.T) { testFactoryViews(t, open(t)) })
	t.Run("Certificates", func(t *testing.T) { testCertificates(t, open(t)) })
	t.Run("TelemetryValues", func(t *testing.T) { testTelemetryValues(t, open(t)) })
	t.Run("TelemetryModel", func(t *testing.T) { testTelemetryModel(t, open(t)) })
	t.Run("TelemetryConcurrent", func(t *testing.T) { testTelemetryConcurrent(t, open(t)) })
	t.Run("TelemetryCancel", func(t *testing.T) { testTelemetryCancel(t, open(t)) })
	t.Run("AsyncAppend", func(t *testing.T) { testAsyncAppend(t, open(t)) })
	t.Run("OTA", func(t *testing.T) { testOTA(t, open(t)) })
	t.Run("OTACounts", func(t *testing.T) { testOTACounts(t, open(t)) })
	t.Run("OTACountsConcurrent", func(t *testing.T) { testOTACountsConcurrent(t, open(t)) })
	t.Run("DeleteRecreate", func(t *testing.T) { testDeleteRecreate(t, open(t)) })
	t.Run("Alarms", func(t *testing.T) { testAlarms(t, open(t)) })
	t.Run("AlarmsConcurrent", func(t *testing.T) { testAlarmsConcurrent(t, open(t)) })
	t.Run("AlarmRuleStates", func(t *testing.T) { testAlarmRuleStates(t, open(t)) })
	t.Run("DeviceStates", func(t *testing.T) { testDeviceStates(t, open(t)) })
	t.Run("Profiles", func(t *testing.T) { testProfiles(t, open(t)) })
	t.Run("Retention", func(t *testing.T) { testRetention(t, open(t)) })
	t.Run("Leases", func(t *testing.T) { testLeases(t, open(t)) })
	t.Run("Accounts", func(t *testing.T) { testAccounts(t, open(t)) })
	t.Run("Ownership", func(t *testing.T) { testOwnership(t, open(t)) })
	t.Run("RPC", func(t *testing.T) { testRPC(t, open(t)) })
	t.Run("SharedSync", func(t *testing.T) { testSharedSync(t, open(t)) })
	t.Run("HistoryPurge", func(t *testing.T) { testHistoryPurge(t, open(t)) })
	t.Run("Close", func(t *testing.T) { testClose(t, open(t)) })
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// ms truncates to milliseconds, the precision every backend keeps.
var base = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func cred(n int) store.Credential {
	return store.Credential{
		Serial:       fmt.Sprintf("%x", 0x1000+n),
		Issuer:       "CN=thingline device CA",
		Subject:      fmt.Sprintf("CN=dev-%d", n),
		NotBefore:    base,
		NotAfter:     base.AddDate(10, 0, 0),
		SHA256:       fmt.Sprintf("%064x", n+1),
		CredentialID: fmt.Sprintf("%064x", n+1000),
		PEM:          "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
		LastSeen:     base.Add(time.Duration(n) * time.Minute),
	}
}

func mustDevice(t *testing.T, s store.Store, name string) store.Device {
	t.Helper()
	d, _, _, err := s.EnsureDevice(ctxT(t), store.Device{Name: name, Profile: "default"}, cred(len(name)), nil)
	if err != nil {
		t.Fatalf("EnsureDevice(%s): %v", name, err)
	}
	return d
}

func testDevices(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	ev := func() *store.Event {
		return &store.Event{Device: "sensor-1", Addr: "10.0.0.1:4000", Node: "n1", Detail: json.RawMessage(`{"serial":"01"}`)}
	}
	d, created, rotated, err := s.EnsureDevice(ctx, store.Device{Name: "sensor-1", Profile: "default", FirstSeenAddr: "10.0.0.1:4000"}, cred(1), ev())
	if err != nil || !created || rotated {
		t.Fatalf("first EnsureDevice = %+v, %v, %v, %v; want created", d, created, rotated, err)
	}
	if d.ID == 0 || d.Name != "sensor-1" || d.Profile != "default" || d.FirstSeenAddr != "10.0.0.1:4000" || d.CreatedAt.IsZero() {
		t.Errorf("created device = %+v", d)
	}
	if d.Produced != nil {
		t.Errorf("Produced = %v with an empty registry, want nil", *d.Produced)
	}
	again, created, rotated, err := s.EnsureDevice(ctx, store.Device{Name: "sensor-1"}, cred(1), ev())
	if err != nil || created || rotated || again.ID != d.ID {
		t.Fatalf("same credential again = %+v, %v, %v, %v", again, created, rotated, err)
	}
	_, created, rotated, err = s.EnsureDevice(ctx, store.Device{Name: "sensor-1"}, cred(2), ev())
	if err != nil || created || !rotated {
		t.Fatalf("new credential = created %v rotated %v err %v; want rotated", created, rotated, err)
	}
	_, _, rotated, err = s.EnsureDevice(ctx, store.Device{Name: "sensor-1"}, cred(1), ev())
	if err != nil || rotated {
		t.Fatalf("returning to an old credential: rotated %v err %v; want not rotated", rotated, err)
	}
	// One event for the creation, one for the rotation, none for the
	// connections that changed nothing.
	evs, err := s.ListEvents(ctx, store.EventQuery{Device: "sensor-1"})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
		if e.Addr != "10.0.0.1:4000" || e.Node != "n1" || string(e.Detail) != `{"serial":"01"}` || e.Time.IsZero() {
			t.Errorf("event recorded with the device = %+v", e)
		}
	}
	if len(evs) != 2 || kinds[store.EventProvisioned] != 1 || kinds[store.EventRotation] != 1 {
		t.Errorf("events recorded with EnsureDevice: %v; want one provisioned, one rotation", kinds)
	}
	creds, err := s.ListCredentials(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(creds) != 2 || creds[0].SHA256 != cred(2).SHA256 || creds[1].SHA256 != cred(1).SHA256 {
		t.Fatalf("credentials = %+v; want cred 2 then cred 1", creds)
	}
	c := creds[1]
	want := cred(1)
	if c.DeviceID != d.ID || c.Serial != want.Serial || c.Issuer != want.Issuer || c.Subject != want.Subject ||
		!c.NotBefore.Equal(want.NotBefore) || !c.NotAfter.Equal(want.NotAfter) || c.CredentialID != want.CredentialID ||
		c.PEM != want.PEM || !c.LastSeen.Equal(want.LastSeen) || c.FirstSeen.IsZero() {
		t.Errorf("credential = %+v\nwant like %+v", c, want)
	}

	got, err := s.GetDevice(ctx, "sensor-1")
	if err != nil || got.ID != d.ID {
		t.Fatalf("GetDevice = %+v, %v", got, err)
	}
	got, err = s.GetDeviceByID(ctx, d.ID)
	if err != nil || got.Name != "sensor-1" {
		t.Fatalf("GetDeviceByID = %+v, %v", got, err)
	}
	if _, err := s.GetDevice(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetDevice(nope) err = %v; want ErrNotFound", err)
	}
	if _, err := s.GetDeviceByID(ctx, d.ID+1000); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetDeviceByID(missing) err = %v; want ErrNotFound", err)
	}

	if err := s.AddCounter(ctx, d.ID, "rejected:bad-json", 2); err != nil {
		t.Fatal(err)
	}
	if err := s.AddCounter(ctx, d.ID, "rejected:bad-json", 3); err != nil {
		t.Fatal(err)
	}
	if err := s.AddCounter(ctx, d.ID+1000, "x", 1); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AddCounter(missing) err = %v; want ErrNotFound", err)
	}
	got, _ = s.GetDevice(ctx, "sensor-1")
	if got.Counters["rejected:bad-json"] != 5 {
		t.Errorf("counters = %v; want rejected:bad-json=5", got.Counters)
	}

	// The factory registry: Produced tells whether a credential's serial
	// belongs to a produced unit, once the registry is in use.
	if err := s.AddUnits(ctx, []store.Unit{{SN: "TL-1", Serial: cred(2).Serial, ProducedAt: base}}); err != nil {
		t.Fatal(err)
	}
	other := mustDevice(t, s, "stranger")
	got, _ = s.GetDevice(ctx, "sensor-1")
	if got.Produced == nil || !*got.Produced {
		t.Errorf("sensor-1 Produced = %v; want true", got.Produced)
	}
	got, _ = s.GetDeviceByID(ctx, other.ID)
	if got.Produced == nil || *got.Produced {
		t.Errorf("stranger Produced = %v; want false", got.Produced)
	}

	// Listing pages by name.
	for i := range 5 {
		mustDevice(t, s, fmt.Sprintf("list-%d", i))
	}
	page, err := s.ListDevices(ctx, store.ListOptions{After: "list-", Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	if names := deviceNames(page); !slices.Equal(names, []string{"list-0", "list-1", "list-2"}) {
		t.Fatalf("first page = %v", names)
	}
	page, err = s.ListDevices(ctx, store.ListOptions{After: "list-2", Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	if names := deviceNames(page); !slices.Equal(names, []string{"list-3", "list-4", "sensor-1"}) {
		t.Fatalf("second page = %v", names)
	}
	all, err := s.ListDevices(ctx, store.ListOptions{})
	if err != nil || len(all) != 7 {
		t.Fatalf("ListDevices() = %d devices, %v; want 7", len(all), err)
	}
	for _, d := range all {
		if d.Name == "sensor-1" && d.Counters["rejected:bad-json"] != 5 {
			t.Errorf("listed sensor-1 lacks its counters: %+v", d)
		}
	}
	if err := s.DeleteDevice(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteDevice(nope) err = %v; want ErrNotFound", err)
	}
}

func deviceNames(ds []store.Device) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Name)
	}
	return out
}

func testEnsureConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	const n = 16
	var wg sync.WaitGroup
	ids := make([]int64, n)
	createdN := make([]bool, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, created, _, err := s.EnsureDevice(ctx, store.Device{Name: "twin"}, cred(7), nil)
			ids[i], createdN[i], errs[i] = d.ID, created, err
		}()
	}
	wg.Wait()
	creations := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("EnsureDevice %d: %v", i, errs[i])
		}
		if ids[i] != ids[0] {
			t.Errorf("EnsureDevice %d got ID %d, another got %d", i, ids[i], ids[0])
		}
		if createdN[i] {
			creations++
		}
	}
	if creations != 1 {
		t.Errorf("%d callers were told they created the device; want 1", creations)
	}
	creds, err := s.ListCredentials(ctx, ids[0])
	if err != nil || len(creds) != 1 {
		t.Errorf("credentials = %d, %v; want 1", len(creds), err)
	}
	all, err := s.ListDevices(ctx, store.ListOptions{})
	if err != nil || len(all) != 1 {
		t.Errorf("devices = %d, %v; want 1", len(all), err)
	}
}

func testOnline(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a := mustDevice(t, s, "a")
	b := mustDevice(t, s, "b")
	at := base.Add(time.Hour)
	if err := s.SetOnline(ctx, a.ID, "node-1", true, "192.0.2.1:5000", at); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOnline(ctx, b.ID, "node-2", true, "192.0.2.2:5000", at); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetDeviceByID(ctx, a.ID)
	if !got.Online || got.Node != "node-1" || got.LastSeenAddr != "192.0.2.1:5000" || !got.LastSeenAt.Equal(at) {
		t.Fatalf("after connect: %+v", got)
	}
	if got.FirstSeenAddr != "192.0.2.1:5000" {
		t.Errorf("FirstSeenAddr = %q; want the first session's address", got.FirstSeenAddr)
	}
	// A takeover: node-3 holds the session, node-1's late disconnect must not clear it.
	if err := s.SetOnline(ctx, a.ID, "node-3", true, "192.0.2.9:5000", at.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOnline(ctx, a.ID, "node-1", false, "", at.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetDeviceByID(ctx, a.ID)
	if !got.Online || got.Node != "node-3" || got.FirstSeenAddr != "192.0.2.1:5000" {
		t.Fatalf("after stale disconnect: online %v node %q first %q; want online on node-3", got.Online, got.Node, got.FirstSeenAddr)
	}
	if err := s.SetOnline(ctx, a.ID, "node-3", false, "", at.Add(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetDeviceByID(ctx, a.ID)
	if got.Online || got.Node != "" {
		t.Fatalf("after disconnect: online %v node %q", got.Online, got.Node)
	}
	if err := s.ResetNode(ctx, "node-2"); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetDeviceByID(ctx, b.ID)
	if got.Online {
		t.Errorf("b still online after ResetNode(node-2)")
	}
	if err := s.SetOnline(ctx, b.ID+1000, "node-1", true, "x", at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetOnline(missing) err = %v; want ErrNotFound", err)
	}
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }

func testAttributes(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "attr")
	at := base.Add(time.Minute)
	kv := map[string]json.RawMessage{
		"fw": raw(`"1.2.3"`), "temp": raw(`23.5`), "count": raw(`56`), "on": raw(`true`),
		"cfg": raw(`{"a": [1, 2.50, {"b": null}]}`),
	}
	if err := s.SetAttributes(ctx, d.ID, store.ClientScope, kv, at); err != nil {
		t.Fatal(err)
	}
	if err := s.SetAttributes(ctx, d.ID, store.SharedScope, map[string]json.RawMessage{"fw": raw(`"2.0"`)}, at.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetAttributes(ctx, d.ID, store.ClientScope, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(kv) {
		t.Fatalf("client attributes = %v", got)
	}
	for k, v := range kv {
		if string(got[k].Value) != string(v) || got[k].UpdatedAt != at.UnixMilli() {
			t.Errorf("attribute %s = %s @%d; want %s @%d", k, got[k].Value, got[k].UpdatedAt, v, at.UnixMilli())
		}
	}
	got, err = s.GetAttributes(ctx, d.ID, store.SharedScope, []string{"fw", "missing"})
	if err != nil || len(got) != 1 || string(got["fw"].Value) != `"2.0"` {
		t.Fatalf("shared fw = %v, %v", got, err)
	}
	if err := s.SetAttributes(ctx, d.ID, store.ClientScope, map[string]json.RawMessage{"temp": raw(`24`)}, at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetAttributes(ctx, d.ID, store.ClientScope, []string{"temp", "fw"})
	if string(got["temp"].Value) != "24" || got["temp"].UpdatedAt != at.Add(time.Hour).UnixMilli() || string(got["fw"].Value) != `"1.2.3"` {
		t.Errorf("after update: %v", got)
	}
	if err := s.DeleteAttributes(ctx, d.ID, store.ClientScope, []string{"temp", "on"}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetAttributes(ctx, d.ID, store.ClientScope, nil)
	if _, ok := got["temp"]; ok || len(got) != 3 {
		t.Errorf("after delete: %v", got)
	}
	got, _ = s.GetAttributes(ctx, d.ID, store.ServerScope, nil)
	if len(got) != 0 {
		t.Errorf("server scope = %v; want empty", got)
	}
	if err := s.SetAttributes(ctx, d.ID+1000, store.ClientScope, kv, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetAttributes(missing device) err = %v; want ErrNotFound", err)
	}
}

func testEvents(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	kinds := []string{store.EventConnect, store.EventRefused, store.EventDisconnect}
	for i := range 30 {
		e := store.Event{
			Time:   base.Add(time.Duration(i) * time.Second),
			Device: fmt.Sprintf("d%d", i%3),
			Kind:   kinds[i%3],
			Addr:   "192.0.2.1:1",
			Node:   "n1",
		}
		if i%3 == 1 {
			e.Reason = "revoked"
			e.Detail = raw(`{"serial":"1f"}`)
		}
		if err := s.AddEvent(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.ListEvents(ctx, store.EventQuery{})
	if err != nil || len(all) != 30 {
		t.Fatalf("ListEvents = %d, %v", len(all), err)
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID >= all[i-1].ID {
			t.Fatalf("events not newest first: %d after %d", all[i].ID, all[i-1].ID)
		}
	}
	if e := all[0]; e.Device != "d2" || e.Kind != store.EventDisconnect || !e.Time.Equal(base.Add(29*time.Second)) || e.Node != "n1" || e.Addr != "192.0.2.1:1" {
		t.Errorf("newest event = %+v", e)
	}
	refused, err := s.ListEvents(ctx, store.EventQuery{Kind: store.EventRefused, Limit: 4})
	if err != nil || len(refused) != 4 {
		t.Fatalf("refused = %d, %v", len(refused), err)
	}
	for _, e := range refused {
		if e.Kind != store.EventRefused || e.Reason != "revoked" || string(e.Detail) != `{"serial":"1f"}` {
			t.Errorf("refused event = %+v", e)
		}
	}
	next, err := s.ListEvents(ctx, store.EventQuery{Kind: store.EventRefused, Before: refused[3].ID})
	if err != nil || len(next) != 6 {
		t.Fatalf("next page = %d, %v; want 6", len(next), err)
	}
	if next[0].ID >= refused[3].ID {
		t.Errorf("page not after cursor")
	}
	d0, err := s.ListEvents(ctx, store.EventQuery{Device: "d0", Kind: store.EventConnect})
	if err != nil || len(d0) != 10 {
		t.Errorf("d0 connects = %d, %v; want 10", len(d0), err)
	}
	// A batch lands whole and in order, or not at all.
	batch := []store.Event{
		{Time: base.Add(30 * time.Second), Device: "d0", Kind: store.EventConnect, Node: "n1", Addr: "192.0.2.1:1"},
		{Time: base.Add(31 * time.Second), Device: "d1", Kind: store.EventRefused, Node: "n1", Addr: "192.0.2.1:1", Detail: raw(`{"n":1}`)},
		{Time: base.Add(32 * time.Second), Device: "d2", Kind: store.EventDisconnect, Node: "n1", Addr: "192.0.2.1:1"},
	}
	if err := s.AddEvents(ctx, append(slices.Clone(batch), store.Event{Device: "dx", Kind: "x", Detail: raw(`{bad`)})); err == nil {
		t.Fatal("AddEvents with an invalid detail succeeded")
	}
	if err := s.AddEvents(ctx, batch); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListEvents(ctx, store.EventQuery{Limit: 3})
	if err != nil || len(got) != 3 {
		t.Fatalf("ListEvents after AddEvents = %d, %v", len(got), err)
	}
	for i, e := range got {
		if want := batch[2-i]; e.Device != want.Device || e.Kind != want.Kind || !e.Time.Equal(want.Time) {
			t.Fatalf("batch event %d = %+v, want %+v", i, e, want)
		}
	}
	if err := s.AddEvents(ctx, nil); err != nil {
		t.Fatalf("AddEvents(nil): %v", err)
	}
	// The failed batch left nothing before the good one.
	if before, err := s.ListEvents(ctx, store.EventQuery{Before: got[2].ID, Limit: 1000}); err != nil || len(before) != 30 {
		t.Fatalf("events before the batch = %d, %v; want 30", len(before), err)
	}
}

func testRevocations(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	if err := s.Revoke(ctx, store.Revocation{Serial: "1f", Reason: "keyCompromise", RevokedAt: base}); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, store.Revocation{Serial: "2a", Reason: "cessationOfOperation", RevokedAt: base.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, store.Revocation{Serial: "1f", Reason: "keyCompromise", RevokedAt: base.Add(2 * time.Hour)}); err != nil {
		t.Fatalf("revoking twice: %v", err)
	}
	rs, err := s.ListRevocations(ctx)
	if err != nil || len(rs) != 2 {
		t.Fatalf("revocations = %+v, %v", rs, err)
	}
	if rs[0].Serial != "1f" || rs[0].Reason != "keyCompromise" || !rs[0].RevokedAt.Equal(base) || rs[1].Serial != "2a" {
		t.Errorf("revocations = %+v", rs)
	}
}

func testUnits(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	if n, err := s.CountUnits(ctx); err != nil || n != 0 {
		t.Fatalf("CountUnits = %d, %v", n, err)
	}
	yes := true
	u := store.Unit{SN: "TL-0001", Serial: "1a2b", SHA256: "ab", NotAfter: base.AddDate(10, 0, 0), Batch: "b1", ProducedAt: base, TestPassed: &yes}
	if err := s.AddUnits(ctx, []store.Unit{u, {SN: "TL-0002", Serial: "1a2c", ProducedAt: base}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetUnit(ctx, "TL-0001")
	if err != nil {
		t.Fatal(err)
	}
	if got.SN != u.SN || got.Serial != u.Serial || got.SHA256 != u.SHA256 || !got.NotAfter.Equal(u.NotAfter) ||
		got.Batch != u.Batch || !got.ProducedAt.Equal(u.ProducedAt) || got.TestPassed == nil || !*got.TestPassed {
		t.Errorf("unit = %+v; want %+v", got, u)
	}
	got, _ = s.GetUnit(ctx, "TL-0002")
	if got.TestPassed != nil {
		t.Errorf("TL-0002 TestPassed = %v; want nil", *got.TestPassed)
	}
	no := false
	u.TestPassed, u.Batch = &no, "b2"
	if err := s.AddUnits(ctx, []store.Unit{u}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetUnit(ctx, "TL-0001")
	if got.Batch != "b2" || got.TestPassed == nil || *got.TestPassed {
		t.Errorf("updated unit = %+v", got)
	}
	if n, err := s.CountUnits(ctx); err != nil || n != 2 {
		t.Errorf("CountUnits = %d, %v; want 2", n, err)
	}
	if _, err := s.GetUnit(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetUnit(nope) err = %v; want ErrNotFound", err)
	}
}

func compact(t *testing.T, s store.Store) {
	t.Helper()
	if c, ok := s.(Compacter); ok {
		if err := c.Compact(ctxT(t)); err != nil {
			t.Fatalf("Compact: %v", err)
		}
	}
}

func testTelemetryValues(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "values")
	vals := []store.KV{
		{Key: "temp", Value: raw(`23.5`)}, {Key: "hum", Value: raw(`56`)}, {Key: "s", Value: raw(`"x"`)},
		{Key: "b", Value: raw(`true`)}, {Key: "obj", Value: raw(`{"a":[1,2.50,{"c":null}],"u":"é\u00e9"}`)},
		{Key: "big", Value: raw(`12345678901234567890.000`)},
	}
	ts := base.UnixMilli()
	if err := s.AppendTelemetry(ctx, []store.Record{{DeviceID: d.ID, TS: ts, Values: vals}}); err != nil {
		t.Fatal(err)
	}
	check := func(stage string) {
		latest, err := s.LatestTelemetry(ctx, d.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range vals {
			if p := latest[kv.Key]; p.TS != ts || string(p.Value) != string(kv.Value) {
				t.Errorf("%s: latest %s = %s @%d; want %s @%d", stage, kv.Key, p.Value, p.TS, kv.Value, ts)
			}
		}
		q, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: d.ID, From: ts, To: ts})
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range vals {
			if ps := q[kv.Key]; len(ps) != 1 || string(ps[0].Value) != string(kv.Value) {
				t.Errorf("%s: query %s = %v; want [%s]", stage, kv.Key, ps, kv.Value)
			}
		}
		one, err := s.LatestTelemetry(ctx, d.ID, []string{"hum", "missing"})
		if err != nil || len(one) != 1 || string(one["hum"].Value) != "56" {
			t.Errorf("%s: latest(hum) = %v, %v", stage, one, err)
		}
	}
	check("in the log")
	compact(t, s)
	check("compacted")
	none, err := s.LatestTelemetry(ctx, d.ID+1000, nil)
	if err != nil || len(none) != 0 {
		t.Errorf("latest of a missing device = %v, %v; want empty", none, err)
	}
}

// rec is one appended record of the reference model.
type rec struct {
	ts   int64
	vals map[string]string
}

// model answers queries by brute force over everything appended.
type model []rec

func (m model) query(q store.TelemetryQuery) map[string][]store.Point {
	to := q.To
	if to == 0 {
		to = 1<<63 - 1
	}
	limit := q.Limit
	if limit == 0 {
		limit = 100
	}
	want := map[string]bool{}
	for _, k := range q.Keys {
		want[k] = true
	}
	out := map[string][]store.Point{}
	for _, r := range m {
		if r.ts < q.From || r.ts > to {
			continue
		}
		for k, v := range r.vals {
			if len(want) == 0 || want[k] {
				out[k] = append(out[k], store.Point{TS: r.ts, Value: raw(v)})
			}
		}
	}
	for k, ps := range out {
		sort.Slice(ps, func(i, j int) bool { return ps[i].TS < ps[j].TS })
		if !q.Asc {
			slices.Reverse(ps)
		}
		if len(ps) > limit {
			ps = ps[:limit]
		}
		out[k] = ps
	}
	return out
}

func (m model) latest() map[string]store.Point {
	out := map[string]store.Point{}
	for _, r := range m {
		for k, v := range r.vals {
			if cur, ok := out[k]; !ok || r.ts >= cur.TS {
				out[k] = store.Point{TS: r.ts, Value: raw(v)}
			}
		}
	}
	return out
}

func samePoints(a, b map[string][]store.Point) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d keys, want %d", len(a), len(b))
	}
	for k, want := range b {
		got := a[k]
		if len(got) != len(want) {
			return fmt.Errorf("key %s: %d points, want %d", k, len(got), len(want))
		}
		for i := range want {
			if got[i].TS != want[i].TS || string(got[i].Value) != string(want[i].Value) {
				return fmt.Errorf("key %s point %d: %d=%s, want %d=%s", k, i, got[i].TS, got[i].Value, want[i].TS, want[i].Value)
			}
		}
	}
	return nil
}

// testTelemetryModel appends records spread over several hours, some with
// old timestamps arriving late, compacting at chosen points, and compares
// random queries with a brute-force model: this crosses chunk, bucket and
// log-tail boundaries in every direction.
func testTelemetryModel(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "model")
	other := mustDevice(t, s, "other")
	rng := rand.New(rand.NewPCG(1, 2))
	// Around the present, so that part of the data is in buckets a store
	// may still consider open (not yet merged into sorted chunks).
	t0 := time.Now().Add(-3 * time.Hour).UnixMilli()
	used := map[int64]bool{}
	var m model
	keys := []string{"temp", "hum", "volt", "rare"}
	appendAt := func(n int, start, spreadMS int64) {
		var recs []store.Record
		for range n {
			ts := start + rng.Int64N(spreadMS)
			for used[ts] {
				ts++
			}
			used[ts] = true
			r := rec{ts: ts, vals: map[string]string{}}
			var kvs []store.KV
			for i, k := range keys {
				if k == "rare" && rng.IntN(20) != 0 || i < 3 && rng.IntN(8) == 0 {
					continue
				}
				v := strconv.FormatFloat(rng.Float64()*100, 'f', rng.IntN(4), 64)
				r.vals[k] = v
				kvs = append(kvs, store.KV{Key: k, Value: raw(v)})
			}
			m = append(m, r)
			recs = append(recs, store.Record{DeviceID: d.ID, TS: ts, Values: kvs})
			// Noise on another device must never show up.
			recs = append(recs, store.Record{DeviceID: other.ID, TS: ts, Values: []store.KV{{Key: "temp", Value: raw(`-1`)}}})
			if len(recs) >= 50 {
				if err := s.AppendTelemetry(ctx, recs); err != nil {
					t.Fatal(err)
				}
				recs = nil
			}
		}
		if err := s.AppendTelemetry(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	appendN := func(n int, spreadMS int64) { appendAt(n, t0, spreadMS) }
	checkAll := func(stage string) {
		t.Helper()
		if got, err := s.LatestTelemetry(ctx, d.ID, nil); err != nil {
			t.Fatal(err)
		} else if err := samePoints(wrap(got), wrap(m.latest())); err != nil {
			t.Fatalf("%s: latest: %v", stage, err)
		}
		for i := range 60 {
			q := store.TelemetryQuery{DeviceID: d.ID, Asc: i%2 == 0}
			switch rng.IntN(4) {
			case 0:
				q.Limit = 1 + rng.IntN(5)
			case 1:
				q.Limit = 50 + rng.IntN(300)
			case 2:
				q.Limit = 10000
			}
			if rng.IntN(3) > 0 {
				q.From = t0 + rng.Int64N(6*3_600_000)
				q.To = q.From + rng.Int64N(4*3_600_000)
			}
			if rng.IntN(2) == 0 {
				q.Keys = []string{keys[rng.IntN(len(keys))]}
				if rng.IntN(2) == 0 {
					q.Keys = append(q.Keys, "absent", keys[rng.IntN(len(keys))])
				}
			}
			got, err := s.QueryTelemetry(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if err := samePoints(got, m.query(q)); err != nil {
				t.Fatalf("%s: query %+v: %v", stage, q, err)
			}
		}
	}
	appendN(1500, 3*3_600_000)
	appendN(1500, 1_800_000) // more than a chunk's worth in one hour
	checkAll("log only")
	compact(t, s)
	checkAll("compacted")
	// Newer data into the tail, and old timestamps arriving late: the
	// latest value must stay the one with the newest timestamp.
	appendN(800, 6*3_600_000)
	appendN(200, 1_000)
	checkAll("chunks and tail")
	compact(t, s)
	checkAll("compacted twice")
	appendN(300, 7*3_600_000)
	checkAll("tail after two compactions")
	// Chunks of the current hour written by successive compactions overlap
	// in time: queries must not stop reading at the first one.
	now := time.Now().UnixMilli()
	for range 4 {
		appendAt(150, now-60_000, 60_000)
		compact(t, s)
	}
	checkAll("overlapping chunks")
}

func wrap(m map[string]store.Point) map[string][]store.Point {
	out := map[string][]store.Point{}
	for k, p := range m {
		out[k] = []store.Point{p}
	}
	return out
}

func testTelemetryConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	const writers, each = 32, 60
	devs := []store.Device{mustDevice(t, s, "c1"), mustDevice(t, s, "c2")}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				n := w*each + i
				r := store.Record{DeviceID: devs[w%2].ID, TS: base.UnixMilli() + int64(n), Values: []store.KV{
					{Key: "n", Value: raw(strconv.Itoa(n))}, {Key: "w", Value: raw(strconv.Itoa(w))},
				}}
				if err := s.AppendTelemetry(ctx, []store.Record{r}); err != nil {
					errs <- err
					return
				}
				if c, ok := s.(Compacter); ok && i == each/2 && w == 0 {
					if err := c.Compact(ctx); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, d := range devs {
		got, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: d.ID, Keys: []string{"n"}, Limit: 10000})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range got["n"] {
			n, _ := strconv.Atoi(string(p.Value))
			if seen[n] {
				t.Fatalf("record %d seen twice", n)
			}
			seen[n] = true
		}
	}
	if len(seen) != writers*each {
		t.Fatalf("%d records visible; want %d", len(seen), writers*each)
	}
}

// testTelemetryCancel checks that callers giving up do not break the batch
// the others are in.
func testTelemetryCancel(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "cancel")
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := map[int]bool{}
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := ctx
			if i%2 == 1 {
				cc, cancel := context.WithCancel(ctx)
				cancel()
				c = cc
			}
			err := s.AppendTelemetry(c, []store.Record{{DeviceID: d.ID, TS: int64(i + 1), Values: []store.KV{{Key: "i", Value: raw(strconv.Itoa(i))}}}})
			if i%2 == 0 && err != nil {
				t.Errorf("append %d: %v", i, err)
			}
			if i%2 == 1 && err == nil {
				// Committed before it noticed the cancellation: it must be there too.
				mu.Lock()
				ok[i] = true
				mu.Unlock()
			}
			if i%2 == 0 {
				mu.Lock()
				ok[i] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	got, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: d.ID, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	have := map[int]bool{}
	for _, p := range got["i"] {
		n, _ := strconv.Atoi(string(p.Value))
		have[n] = true
	}
	for i := range ok {
		if !have[i] {
			t.Errorf("acknowledged record %d missing", i)
		}
	}
}

func testDeleteRecreate(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "victim")
	keep := mustDevice(t, s, "bystander")
	put := func(id int64, ts int64, v string) {
		t.Helper()
		if err := s.AppendTelemetry(ctx, []store.Record{{DeviceID: id, TS: ts, Values: []store.KV{{Key: "v", Value: raw(v)}}}}); err != nil {
			t.Fatal(err)
		}
	}
	put(d.ID, 1000, "1")
	put(keep.ID, 1000, "10")
	compact(t, s)
	put(d.ID, 2000, "2")
	if err := s.SetAttributes(ctx, d.ID, store.ServerScope, map[string]json.RawMessage{"x": raw("1")}, base); err != nil {
		t.Fatal(err)
	}
	if err := s.AddCounter(ctx, d.ID, "c", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.AddEvent(ctx, store.Event{Device: "victim", Kind: store.EventConnect}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice(ctx, "victim"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetDevice(ctx, "victim"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted device: err %v; want ErrNotFound", err)
	}
	// A late record from a session that has not noticed the deletion.
	put(d.ID, 3000, "3")
	nd := mustDevice(t, s, "victim")
	if nd.ID == d.ID {
		t.Fatalf("recreated device reuses ID %d", d.ID)
	}
	if len(nd.Counters) != 0 {
		t.Errorf("recreated device has counters %v", nd.Counters)
	}
	checkEmpty := func(stage string) {
		t.Helper()
		for _, id := range []int64{d.ID, nd.ID} {
			l, err := s.LatestTelemetry(ctx, id, nil)
			if err != nil || len(l) != 0 {
				t.Errorf("%s: latest of %d = %v, %v; want empty", stage, id, l, err)
			}
			q, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: id})
			if err != nil || len(q) != 0 {
				t.Errorf("%s: telemetry of %d = %v, %v; want empty", stage, id, q, err)
			}
			a, err := s.GetAttributes(ctx, id, store.ServerScope, nil)
			if err != nil || len(a) != 0 {
				t.Errorf("%s: attributes of %d = %v, %v; want empty", stage, id, a, err)
			}
			c, err := s.ListCredentials(ctx, id)
			if id == d.ID && (err != nil || len(c) != 0) {
				t.Errorf("%s: credentials of deleted device = %v, %v", stage, c, err)
			}
		}
		q, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: keep.ID})
		if err != nil || len(q["v"]) != 1 {
			t.Errorf("%s: bystander telemetry = %v, %v; want its one point", stage, q, err)
		}
	}
	checkEmpty("after delete")
	compact(t, s)
	checkEmpty("after compaction")
	ev, err := s.ListEvents(ctx, store.EventQuery{Device: "victim"})
	if err != nil || len(ev) != 1 {
		t.Errorf("events of deleted device = %d, %v; want kept", len(ev), err)
	}
}

func testClose(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	d := mustDevice(t, s, "closing")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	err := s.AppendTelemetry(ctx, []store.Record{{DeviceID: d.ID, TS: 1, Values: []store.KV{{Key: "k", Value: raw("1")}}}})
	if !errors.Is(err, store.ErrClosed) {
		t.Errorf("append after Close: err %v; want ErrClosed", err)
	}
	if _, _, _, err := s.EnsureDevice(ctx, store.Device{Name: "late"}, store.Credential{}, nil); !errors.Is(err, store.ErrClosed) {
		t.Errorf("EnsureDevice after Close: err %v; want ErrClosed", err)
	}
	if _, err := s.GetDevice(ctx, "closing"); !errors.Is(err, store.ErrClosed) {
		t.Errorf("GetDevice after Close: err %v; want ErrClosed", err)
	}
	if _, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: d.ID}); !errors.Is(err, store.ErrClosed) {
		t.Errorf("QueryTelemetry after Close: err %v; want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
