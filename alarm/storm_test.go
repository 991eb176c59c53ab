package alarm

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

// TestConnectStormCoalesced starts far more sessions at once than the
// side-effect queue holds: their connects are written in batches, nothing
// is dropped, and every device's connect is recorded.
func TestConnectStormCoalesced(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	b := inproc.New()
	t.Cleanup(func() { b.Close() })
	const n, queue = 600, 64 // many more sessions than queued jobs
	devs := make([]store.Device, n)
	for i := range devs {
		d, _, _, err := st.EnsureDevice(ctx, store.Device{Name: fmt.Sprintf("SN-S%05d", i), Profile: "default"},
			store.Credential{SHA256: fmt.Sprintf("%064x", i+1)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		devs[i] = d
	}
	e, err := Start(ctx, Config{Store: st, Bus: b, Queue: queue})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	at := time.Now().Truncate(time.Millisecond)
	for _, d := range devs {
		e.SessionStarted(d, at)
	}
	tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, i := range []int{0, n / 2, n - 1} {
			s, err := st.GetDeviceState(ctx, devs[i].ID)
			if err != nil {
				return err
			}
			if !s.LastConnect.Equal(at) {
				return fmt.Errorf("%s: last connect %v, want %v", devs[i].Name, s.LastConnect, at)
			}
		}
		return nil
	})
	if d := e.dropped.Load(); d != 0 {
		t.Fatalf("%d side effects dropped during the storm", d)
	}
}
