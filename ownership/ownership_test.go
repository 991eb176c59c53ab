package ownership

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
	"github.com/thingline/thingline/tstest/stores"
)

// compacter is the SQLite store's forced compaction.
type compacter interface {
	Compact(ctx context.Context) error
}

// TestSweepWipesExpiredEpochs: once an ended epoch's keeping is over, the
// data recorded before it ended goes, and what came after stays. On SQLite
// and PostgreSQL.
func TestSweepWipesExpiredEpochs(t *testing.T) { stores.Each(t, "ownership", testSweep) }

func testSweep(t *testing.T, st store.Store) {
	ctx := context.Background()
	dev, _, _, err := st.EnsureDevice(ctx, store.Device{Name: "SN-1", Profile: "default"}, store.Credential{Serial: "1", SHA256: "ab"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	u, err := st.CreateUser(ctx, store.User{Username: "u", Role: store.RoleUser, PasswordHash: "x"})
	if err != nil {
		t.Fatal(err)
	}
	day := 24 * time.Hour
	claimAt := time.Now().Add(-10 * day)
	releaseAt := time.Now().Add(-5 * day)
	h := sha256.Sum256([]byte("k"))
	if err := st.PutClaimRequest(ctx, store.ClaimRequest{DeviceID: dev.ID, DeviceName: dev.Name, Kind: store.ClaimDevice, SecretHash: h[:], ExpiresAt: claimAt.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Claim(ctx, store.Claim{DeviceID: dev.ID, DeviceName: dev.Name, UserID: u.ID, Kind: store.ClaimDevice, SecretHash: h[:], At: claimAt}); err != nil {
		t.Fatal(err)
	}
	rec := func(at time.Time) store.Record {
		return store.Record{DeviceID: dev.ID, TS: at.UnixMilli(), Values: []store.KV{{Key: "t", Value: json.RawMessage("1")}}}
	}
	if err := st.AppendTelemetry(ctx, []store.Record{rec(claimAt.Add(day)), rec(claimAt.Add(2 * day)), rec(releaseAt.Add(day))}); err != nil {
		t.Fatal(err)
	}
	// Days-old data is compacted long before its epoch expires.
	if c, ok := st.(compacter); ok {
		if err := c.Compact(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.SetAttributes(ctx, dev.ID, store.SharedScope, map[string]json.RawMessage{"old": json.RawMessage("1")}, claimAt.Add(day)); err != nil {
		t.Fatal(err)
	}
	if err := st.SetAttributes(ctx, dev.ID, store.SharedScope, map[string]json.RawMessage{"new": json.RawMessage("2")}, releaseAt.Add(day)); err != nil {
		t.Fatal(err)
	}
	// Alarms, RPC calls and OTA history from within the epoch and after it.
	p, err := st.CreateOTAPackage(ctx, store.OTAPackage{Title: "fw", Version: "1"}, []byte("fw"))
	if err != nil {
		t.Fatal(err)
	}
	for i, at := range []time.Time{claimAt.Add(day), releaseAt.Add(day)} {
		if _, _, err := st.RaiseAlarm(ctx, store.AlarmRaise{DeviceID: dev.ID, Device: dev.Name, Type: fmt.Sprint("t", i), Severity: store.SeverityMinor, Time: at}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.CreateRPC(ctx, store.RPC{DeviceID: dev.ID, Device: dev.Name, Method: "m", Params: json.RawMessage("{}"), TimeoutMs: 1000, CreatedAt: at, ExpiresAt: at.Add(day)}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.PutOTADevice(ctx, store.OTADevice{DeviceID: dev.ID, PackageID: p.ID, Source: store.OTASourceDevice, State: store.OTAQueued, StateAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	// Alarm rule states: one whose episode raised within the epoch, one
	// whose condition started holding after it.
	var rules []int64
	for _, typ := range []string{"hot", "cold"} {
		r, err := st.AddAlarmRule(ctx, store.AlarmRule{Profile: "default", Type: typ, Key: "t", Severity: store.SeverityMinor,
			Raise: store.Condition{Op: ">", Value: json.RawMessage("40")}})
		if err != nil {
			t.Fatal(err)
		}
		rules = append(rules, r.ID)
	}
	if err := st.PutAlarmRuleStates(ctx, []store.AlarmRuleState{
		{DeviceID: dev.ID, RuleID: rules[0], RaiseSince: releaseAt.Add(day), Episode: store.RuleRaised, EpisodeTime: claimAt.Add(day)},
		{DeviceID: dev.ID, RuleID: rules[1], RaiseSince: releaseAt.Add(day)},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Release(ctx, dev.ID, u.ID, u.ID, store.OwnershipPolicy{OnReset: store.PolicyTransfer, KeepDays: 3}, releaseAt); err != nil {
		t.Fatal(err)
	}
	// Kept for 3 days after the release: not yet 2 days after it.
	if n, err := Sweep(ctx, st, releaseAt.Add(2*day)); err != nil || n != 0 {
		t.Fatalf("sweep within the keeping: %d %v", n, err)
	}
	if n, err := Sweep(ctx, st, time.Now()); err != nil || n != 1 {
		t.Fatalf("sweep after the keeping: %d %v", n, err)
	}
	pts, err := st.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: dev.ID, From: 0, To: 1<<63 - 1, Limit: 100, Asc: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := pts["t"]; len(got) != 1 || got[0].TS != releaseAt.Add(day).UnixMilli() {
		t.Errorf("telemetry after the wipe: %+v, want only the point after the release", got)
	}
	attrs, _ := st.GetAttributes(ctx, dev.ID, store.SharedScope, nil)
	if _, ok := attrs["old"]; ok || len(attrs) != 1 {
		t.Errorf("attributes after the wipe: %v", attrs)
	}
	as, err := st.ListAlarms(ctx, store.AlarmQuery{DeviceID: dev.ID})
	if err != nil || len(as) != 1 || !as[0].StartTime.Equal(releaseAt.Add(day)) {
		t.Errorf("alarms after the wipe: %+v %v, want only the one raised after the release", as, err)
	}
	if ss, err := st.AlarmRuleStates(ctx, []int64{dev.ID}); err != nil || len(ss) != 1 || ss[0].RuleID != rules[1] {
		t.Errorf("alarm rule states after the wipe: %+v %v, want only the one begun after the release", ss, err)
	}
	rs, err := st.ListRPCs(ctx, store.RPCQuery{DeviceID: dev.ID})
	if err != nil || len(rs) != 1 || !rs[0].CreatedAt.Equal(releaseAt.Add(day)) {
		t.Errorf("RPC calls after the wipe: %+v %v, want only the one made after the release", rs, err)
	}
	hs, err := st.OTAHistory(ctx, dev.ID, time.Time{}, 0)
	if err != nil || len(hs) != 1 || !hs[0].Time.Equal(releaseAt.Add(day)) {
		t.Errorf("OTA history after the wipe: %+v %v, want only the entry after the release", hs, err)
	}
	es, _ := st.Owners(ctx, dev.Name)
	if len(es) != 1 || !es[0].Wiped {
		t.Errorf("epoch not marked wiped: %+v", es)
	}
	if n, _ := Sweep(ctx, st, time.Now()); n != 0 {
		t.Errorf("a wiped epoch was swept again")
	}
}

func TestStartStop(t *testing.T) {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := Start(Config{Store: st, Every: 10 * time.Millisecond})
	s.Stop()
	s.Stop() // twice is harmless
}
