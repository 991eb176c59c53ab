package ota_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
	"github.com/thingline/thingline/twin"
)

// TestSimFleetWithFailingShare: `thingline sim --ota-fail download
// --ota-fail-share 0.5` against a node: every twin is assigned the new
// firmware; those told to fail report FAILED (final: the device said so),
// the others end UPDATED.
func TestSimFleetWithFailingShare(t *testing.T) {
	c := newCloud(t, fastOTA())
	out := t.TempDir()
	sns := []string{"SN-S01", "SN-S02", "SN-S03", "SN-S04"}
	for _, sn := range sns {
		d := c.issue(sn)
		if err := os.Rename(d.dir, filepath.Join(out, sn)); err != nil {
			t.Fatal(err)
		}
	}
	s, err := twin.NewSim(twin.SimConfig{Units: out, Count: len(sns), Broker: "mqtts://" + c.nodes[0].MQTTAddr(),
		Interval: time.Hour, AttrEvery: time.Hour, Ramp: 100, BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
		OTAFail: twin.OTAFailDownload, OTAFailShare: 0.5, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if n := s.Stats().Connected.Load(); n != int64(len(sns)) {
			return fmt.Errorf("%d of %d twins connected", n, len(sns))
		}
		return nil
	})

	p, _ := c.upload(twin.FirmwareTitle, "2.0.0", 10000, "")
	for _, sn := range sns {
		if code := c.api(0, "PUT", "/api/v1/devices/"+sn+"/ota", "application/json", fmt.Appendf(nil, `{"package":%d}`, p.ID), nil); code != 200 {
			t.Fatalf("assign %s: %d", sn, code)
		}
	}
	// Every second twin in unit order fails: SN-S02 and SN-S04.
	want := map[string]string{"SN-S01": store.OTAUpdated, "SN-S02": store.OTAFailed, "SN-S03": store.OTAUpdated, "SN-S04": store.OTAFailed}
	tstest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		for _, sn := range sns {
			st := c.deviceOTA(0, sn)
			if st.State == nil || st.State.State != want[sn] {
				return fmt.Errorf("%s: %s; want %s", sn, historyStates(st), want[sn])
			}
		}
		return nil
	})
	for _, sn := range []string{"SN-S02", "SN-S04"} {
		if st := c.deviceOTA(0, sn); !strings.Contains(st.State.Error, "told to fail") {
			t.Errorf("%s failed with %q; want the twin's own report", sn, st.State.Error)
		}
	}
}
