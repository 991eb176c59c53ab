package storetest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// testDeviceList checks the filters, orders and key paging of ListDevices,
// CountDevices and FleetSummary against a model of the fleet.
func testDeviceList(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	type row struct {
		name, profile, fw string
		online            bool
		seen              time.Time
		notAfter          time.Time
		id                int64
	}
	var fleet []row
	now := base.AddDate(1, 0, 0)
	for i := range 23 {
		r := row{name: fmt.Sprintf("SN-%04d", (i*7)%23), profile: []string{"default", "sensor", "gw"}[i%3]}
		if i%5 != 0 {
			r.fw = []string{"1.0.0", "1.1.0"}[i%2]
		}
		c := cred(100 + i)
		// Expiries spread over the histogram's buckets, some expired.
		c.NotAfter = now.Add(time.Duration(i*20-60) * 24 * time.Hour)
		r.notAfter = c.NotAfter
		d, _, _, err := s.EnsureDevice(ctx, store.Device{Name: r.name, Profile: r.profile}, c, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.id = d.ID
		if i%4 != 3 { // some never seen
			// Ties on the sort key too, so that the name orders them.
			r.seen = base.Add(time.Duration(i%6) * time.Hour)
			r.online = i%2 == 0
			if err := s.SetOnline(ctx, d.ID, "n1", true, "10.0.0.1:1", r.seen); err != nil {
				t.Fatal(err)
			}
			if !r.online {
				if err := s.SetOnline(ctx, d.ID, "n1", false, "", r.seen); err != nil {
					t.Fatal(err)
				}
			}
		}
		if r.fw != "" {
			v, _ := json.Marshal(r.fw)
			if err := s.SetAttributes(ctx, d.ID, store.ClientScope, map[string]json.RawMessage{"fw_version": v, "sn": v}, base); err != nil {
				t.Fatal(err)
			}
		}
		fleet = append(fleet, r)
	}
	// A shared attribute of the same key is not the firmware.
	if err := s.SetAttributes(ctx, fleet[0].id, store.SharedScope, map[string]json.RawMessage{"fw_version": json.RawMessage(`"9.9.9"`)}, base); err != nil {
		t.Fatal(err)
	}
	yes, no := true, false
	for _, o := range []store.ListOptions{
		{},
		{Desc: true},
		{Sort: store.SortLastSeen},
		{Sort: store.SortLastSeen, Desc: true},
		{Sort: store.SortCreated, Desc: true},
		{Sort: store.SortCreated, Online: &yes},
		{Search: "sn-001"},
		{Search: "%"},
		{Search: "_"},
		{Online: &no, Sort: store.SortLastSeen, Desc: true},
		{Profile: "sensor", Firmware: "1.1.0"},
		{Firmware: "9.9.9"},
		{Profile: "gw", Sort: store.SortName, Desc: true},
	} {
		var want []string
		sel := slices.Clone(fleet)
		sel = slices.DeleteFunc(sel, func(r row) bool {
			return o.Search != "" && !strings.Contains(strings.ToLower(r.name), strings.ToLower(o.Search)) ||
				o.Online != nil && r.online != *o.Online ||
				o.Profile != "" && r.profile != o.Profile ||
				o.Firmware != "" && r.fw != o.Firmware
		})
		slices.SortFunc(sel, func(a, b row) int {
			c := 0
			switch o.Sort {
			case store.SortLastSeen:
				c = a.seen.Compare(b.seen)
			case store.SortCreated:
				c = cmp.Compare(a.id, b.id)
			}
			if c == 0 {
				c = strings.Compare(a.name, b.name)
			}
			if o.Desc {
				c = -c
			}
			return c
		})
		for _, r := range sel {
			want = append(want, r.name)
		}
		// Page through in threes, resuming from each page's last device.
		var got []string
		p := o
		p.Limit = 3
		for range 20 {
			page, err := s.ListDevices(ctx, p)
			if err != nil {
				t.Fatalf("%+v: %v", o, err)
			}
			for _, d := range page {
				got = append(got, d.Name)
				var r row
				for _, f := range fleet {
					if f.name == d.Name {
						r = f
					}
				}
				if d.Firmware != r.fw || d.Online != r.online || d.Profile != r.profile {
					t.Errorf("%+v: listed %+v; want firmware %q online %v profile %q", o, d, r.fw, r.online, r.profile)
				}
			}
			if len(page) < p.Limit {
				break
			}
			last := page[len(page)-1]
			p.After, p.AfterKey = last.Name, o.Sort.SortKey(last)
		}
		if !slices.Equal(got, want) {
			t.Errorf("ListDevices(%+v) in pages of 3 = %v\nwant %v", o, got, want)
		}
		n, err := s.CountDevices(ctx, o)
		if err != nil || n != int64(len(want)) {
			t.Errorf("CountDevices(%+v) = %d, %v; want %d", o, n, err, len(want))
		}
	}
	if _, err := s.ListDevices(ctx, store.ListOptions{Sort: "bogus"}); err == nil {
		t.Errorf("ListDevices with an unknown order succeeded")
	}

	sum, err := s.FleetSummary(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	want := store.FleetSummary{Devices: int64(len(fleet)), Profiles: map[string]int64{}, Firmware: map[string]int64{},
		CertExpiry: store.ExpiryBuckets(now)}
	for _, r := range fleet {
		if r.online {
			want.Online++
		}
		want.Profiles[r.profile]++
		want.Firmware[r.fw]++
		for i := range want.CertExpiry {
			if b := want.CertExpiry[i].Before; b == 0 || r.notAfter.UnixMilli() < b {
				want.CertExpiry[i].Count++
				break
			}
		}
	}
	got, _ := json.Marshal(sum)
	wantJSON, _ := json.Marshal(want)
	if string(got) != string(wantJSON) {
		t.Errorf("FleetSummary = %s\nwant %s", got, wantJSON)
	}
}
