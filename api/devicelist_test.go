package api

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
)

// TestDeviceListQuery pages through a real SQLite store with the listing's
// filters and orders, following next cursors, and checks bad input.
func TestDeviceListQuery(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range 7 {
		d, _, _, err := st.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("SN-%02d", i), Profile: "default"},
			store.Credential{SHA256: fmt.Sprint(i), Serial: fmt.Sprint(i), NotAfter: time.Now().Add(time.Hour)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			st.SetOnline(ctx, d.ID, "n", true, "a", time.Unix(int64(1000-i), 0))
		}
		st.SetAttributes(ctx, d.ID, store.ClientScope, map[string]json.RawMessage{"fw_version": json.RawMessage(fmt.Sprintf(`"1.%d"`, i%2))}, time.Now())
	}
	// SN-03 belongs to ann, claimed as a device does.
	ann, err := st.CreateUser(ctx, store.User{Username: "ann", Role: store.RoleUser, PasswordHash: "h"})
	if err != nil {
		t.Fatal(err)
	}
	d3, _ := st.GetDevice(ctx, "SN-03")
	secret := sha256.Sum256([]byte("s"))
	now := time.Now()
	if err := st.PutClaimRequest(ctx, store.ClaimRequest{DeviceID: d3.ID, DeviceName: d3.Name, Kind: store.ClaimDevice,
		SecretHash: secret[:], CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	pol, _ := st.GetPolicy(ctx)
	if _, _, err := st.Claim(ctx, store.Claim{DeviceID: d3.ID, DeviceName: d3.Name, UserID: ann.ID, Kind: store.ClaimDevice,
		SecretHash: secret[:], Policy: pol, At: now}); err != nil {
		t.Fatal(err)
	}
	b := inproc.New()
	defer b.Close()
	srv := New(Config{Store: st, Bus: b, AdminTokenHash: HashToken("tok")})
	get := func(path string, out any) int {
		req := httptest.NewRequest("GET", path, nil)
		req.Header.Set("Authorization", "Bearer tok")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if out != nil && rec.Code == 200 {
			if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
				t.Fatal(err)
			}
		}
		return rec.Code
	}
	type page struct {
		Devices []store.Device `json:"devices"`
		Next    string         `json:"next"`
		Total   *int64         `json:"total"`
	}
	walk := func(query string) (names []string, total int64) {
		after := ""
		for range 10 {
			var p page
			if code := get("/api/v1/devices?limit=2&count=true&"+query+"&after="+after, &p); code != 200 {
				t.Fatalf("%s: status %d", query, code)
			}
			for _, d := range p.Devices {
				names = append(names, d.Name)
			}
			total = *p.Total
			if p.Next == "" {
				break
			}
			after = p.Next
		}
		return names, total
	}
	for _, c := range []struct {
		query string
		want  string
	}{
		{"", "[SN-00 SN-01 SN-02 SN-03 SN-04 SN-05 SN-06]"},
		{"sort=-name&online=true", "[SN-06 SN-04 SN-02 SN-00]"},
		// Seen at 1000-i seconds: the newest first is SN-00.
		{"sort=-lastSeen&online=true", "[SN-00 SN-02 SN-04 SN-06]"},
		{"sort=lastSeen&firmware=1.0", "[SN-06 SN-04 SN-02 SN-00]"},
		{"sort=-created&q=sn-0&firmware=1.1", "[SN-05 SN-03 SN-01]"},
		{"online=false&profile=default", "[SN-01 SN-03 SN-05]"},
		{"profile=other", "[]"},
		{"owner=ann", "[SN-03]"},
		{"owner=nobody", "[]"},
	} {
		names, total := walk(c.query)
		if got := fmt.Sprint(names); got != c.want || total != int64(len(names)) {
			t.Errorf("%s: %s (total %d); want %s", c.query, got, total, c.want)
		}
	}
	for _, bad := range []string{"sort=size", "online=maybe", "sort=lastSeen&after=SN-01", "limit=0"} {
		if code := get("/api/v1/devices?"+bad, nil); code != http.StatusBadRequest {
			t.Errorf("%s: status %d; want 400", bad, code)
		}
	}
	var p page
	if get("/api/v1/devices?q=SN-03", &p); len(p.Devices) != 1 || p.Devices[0].Owner != "ann" || p.Devices[0].Firmware != "1.1" {
		t.Errorf("SN-03 listed as %+v; want owner ann, firmware 1.1", p.Devices)
	}
	var sum store.FleetSummary
	if code := get("/api/v1/fleet", &sum); code != 200 || sum.Devices != 7 || sum.Online != 4 ||
		sum.Firmware["1.0"] != 4 || sum.Firmware["1.1"] != 3 || sum.CertExpiry[1].Count != 7 {
		t.Errorf("fleet = %d %+v", code, sum)
	}
}
