package storetest

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// testFactoryViews checks the registry's reads for people: units by batch
// and search in SN order, batch summaries, the device of a unit, and the
// station events pushed from a factory ledger.
func testFactoryViews(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	yes, no := true, false
	var units []store.Unit
	for i := range 7 {
		u := store.Unit{SN: fmt.Sprintf("TL-%02d", i), Serial: fmt.Sprintf("%x", 0x5000+i), Batch: []string{"B1", "B2"}[i%2],
			ProducedAt: base.Add(time.Duration(i) * time.Hour), NotAfter: base.AddDate(3, 0, 0)}
		switch i % 3 {
		case 0:
			u.TestPassed = &yes
		case 1:
			u.TestPassed = &no
		}
		units = append(units, u)
	}
	if err := s.AddUnits(ctx, units); err != nil {
		t.Fatal(err)
	}
	var got []string
	q := store.UnitQuery{Limit: 3}
	for range 5 {
		page, err := s.ListUnits(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range page {
			got = append(got, u.SN)
		}
		if len(page) < q.Limit {
			break
		}
		q.After = page[len(page)-1].SN
	}
	if want := []string{"TL-00", "TL-01", "TL-02", "TL-03", "TL-04", "TL-05", "TL-06"}; !slices.Equal(got, want) {
		t.Errorf("units in pages of 3 = %v", got)
	}
	b2, err := s.ListUnits(ctx, store.UnitQuery{Batch: "B2", Search: "tl-0"})
	if err != nil || len(b2) != 3 || b2[0].SN != "TL-01" || b2[0].TestPassed == nil || *b2[0].TestPassed || !b2[0].ProducedAt.Equal(units[1].ProducedAt) {
		t.Errorf("batch B2 = %+v, %v", b2, err)
	}
	batches, err := s.UnitBatches(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// B1: TL-00 (pass), TL-02 (none), TL-04 (fail), TL-06 (pass); newest first.
	if len(batches) != 2 || batches[0].Batch != "B1" || batches[0].Units != 4 || batches[0].TestPassed != 2 || batches[0].TestFailed != 1 ||
		!batches[0].FirstProduced.Equal(units[0].ProducedAt) || !batches[0].LastProduced.Equal(units[6].ProducedAt) ||
		batches[1].Batch != "B2" || batches[1].Units != 3 {
		t.Errorf("batches = %+v", batches)
	}

	if _, err := s.UnitDevice(ctx, "TL-03"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("device of a unit never seen: %v", err)
	}
	c := cred(77)
	c.Serial = units[3].Serial
	if _, _, _, err := s.EnsureDevice(ctx, store.Device{Name: "TL-03"}, c, nil); err != nil {
		t.Fatal(err)
	}
	if name, err := s.UnitDevice(ctx, "TL-03"); err != nil || name != "TL-03" {
		t.Errorf("device of TL-03 = %q, %v", name, err)
	}

	// A traveller: assembly on a bare board, then the unit's own stations.
	at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
	evs := []store.UnitEvent{
		{Board: "BRD-9", Station: 1, Result: "pass", Operator: "ann", Batch: "B1", Time: at(1)},
		{SN: "TL-00", Board: "BRD-9", Station: 3, Result: "pass", Operator: "ann", Batch: "B1", Time: at(2)},
		{SN: "TL-00", Station: 4, Result: "fail", Batch: "B1", Time: at(3), Detail: "rssi low"},
		{SN: "TL-00", Station: 4, Result: "pass", Batch: "B1", Time: at(4)},
		{SN: "TL-01", Station: 3, Result: "pass", Batch: "B2", Time: at(5)},
	}
	if n, err := s.AddUnitEvents(ctx, evs); err != nil || n != len(evs) {
		t.Fatalf("AddUnitEvents = %d, %v", n, err)
	}
	if n, err := s.AddUnitEvents(ctx, evs); err != nil || n != 0 {
		t.Errorf("pushing the same events again added %d, %v; want 0", n, err)
	}
	tr, err := s.UnitEvents(ctx, store.UnitEventQuery{SN: "TL-00"})
	if err != nil || len(tr) != 4 || tr[0].Board != "BRD-9" || tr[0].SN != "" || tr[2].Detail != "rssi low" || !tr[3].Time.Equal(at(4)) {
		t.Errorf("traveller of TL-00 = %+v, %v", tr, err)
	}
	if b, err := s.UnitEvents(ctx, store.UnitEventQuery{Batch: "B2"}); err != nil || len(b) != 1 || b[0].SN != "TL-01" {
		t.Errorf("events of B2 = %+v, %v", b, err)
	}
	if all, err := s.UnitEvents(ctx, store.UnitEventQuery{}); err != nil || len(all) != 5 {
		t.Errorf("all events = %d, %v", len(all), err)
	}
}
