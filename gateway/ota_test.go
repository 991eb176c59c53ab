package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

// firmwareEnv is a gateway with one connected device that has a 10,000
// byte package assigned.
func firmwareEnv(t *testing.T, assign bool) (*env, *v3client, []byte) {
	t.Helper()
	e := newEnv(t, nil)
	cert, _ := e.inter.device(t, "SN-FW")
	c := e.v3(t, cert)
	dev := e.device(t, "SN-FW")
	data := make([]byte, 10000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if !assign {
		return e, c, data
	}
	ctx := context.Background()
	p, err := e.st.CreateOTAPackage(ctx, store.OTAPackage{Title: "fw", Version: "2.0", Checksum: "x", ChecksumAlgorithm: "SHA256"}, data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.PutOTADevice(ctx, store.OTADevice{DeviceID: dev.ID, PackageID: p.ID, Source: store.OTASourceDevice, State: store.OTAInitiated}); err != nil {
		t.Fatal(err)
	}
	return e, c, data
}

// TestFirmwareChunks follows ThingsBoard's protocol: the chunk size is
// remembered per request id, an empty payload without one is the whole
// file, past the end is an empty message, and answers arrive although
// the SDK's filter v2/fw/response/+ does not match them.
func TestFirmwareChunks(t *testing.T) {
	e, c, data := firmwareEnv(t, true)
	c.sub(t, "v2/fw/response/+")
	c.pub(t, "v2/fw/request/7/chunk/0", "4096")
	if m := c.rx.wait(t, "v2/fw/response/7/chunk/0"); m.payload != string(data[:4096]) || m.qos != 1 {
		t.Fatalf("chunk 0: %d bytes at qos %d", len(m.payload), m.qos)
	}
	c.pub(t, "v2/fw/request/7/chunk/1", "") // the remembered size
	if m := c.rx.wait(t, "v2/fw/response/7/chunk/1"); m.payload != string(data[4096:8192]) {
		t.Fatalf("chunk 1: %d bytes", len(m.payload))
	}
	c.pub(t, "v2/fw/request/7/chunk/2", "")
	if m := c.rx.wait(t, "v2/fw/response/7/chunk/2"); m.payload != string(data[8192:]) {
		t.Fatalf("last chunk: %d bytes, want %d", len(m.payload), len(data)-8192)
	}
	c.pub(t, "v2/fw/request/7/chunk/3", "4096")
	if m := c.rx.wait(t, "v2/fw/response/7/chunk/3"); m.payload != "" {
		t.Fatalf("past the end: %d bytes, want none", len(m.payload))
	}
	c.pub(t, "v2/fw/request/8/chunk/0", "") // new request id, no size: the whole file
	if m := c.rx.wait(t, "v2/fw/response/8/chunk/0"); m.payload != string(data) {
		t.Fatalf("whole file: %d bytes", len(m.payload))
	}
	c.pub(t, "v2/fw/request/9/chunk/0", "-5") // as ThingsBoard: not a size
	if m := c.rx.wait(t, "v2/fw/response/9/chunk/0"); len(m.payload) != len(data) {
		t.Fatalf("negative size: %d bytes", len(m.payload))
	}
	// A subscription with QoS 0 that matches sets the QoS of chunks.
	tok := c.Subscribe("v2/fw/response/+/chunk/+", 0, nil)
	tok.WaitTimeout(10 * time.Second)
	c.pub(t, "v2/fw/request/10/chunk/1", "100")
	if m := c.rx.wait(t, "v2/fw/response/10/chunk/1"); m.qos != 0 || m.payload != string(data[100:200]) {
		t.Fatalf("qos 0 subscription: qos %d, %d bytes", m.qos, len(m.payload))
	}
	if e.srv.fw.total != int64(len(data)) {
		t.Errorf("cache holds %d bytes, want the package once", e.srv.fw.total)
	}
}

// TestFirmwareErrors: nothing assigned answers NOT_FOUND on v2/fw/error
// and closes the session; so does a chunk size over the maximum payload.
func TestFirmwareErrors(t *testing.T) {
	for _, c := range []struct {
		name, topic, payload, want string
		assign                     bool
	}{
		{"not assigned", "v2/fw/request/1/chunk/0", "1024", fwErrNotFound, false},
		{"too large", "v2/fw/request/1/chunk/0", "65537", fwErrTooLarge, true},
		{"software", "v2/sw/request/1/chunk/0", "1024", fwErrNotFound, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, cl, _ := firmwareEnv(t, c.assign)
			cl.sub(t, "v2/fw/error")
			cl.Publish(c.topic, 1, false, c.payload)
			if m := cl.rx.wait(t, fwErrorTopic); m.payload != c.want {
				t.Fatalf("error %q, want %q", m.payload, c.want)
			}
			select {
			case <-cl.lost:
			case <-time.After(10 * time.Second):
				t.Fatal("session not closed after the error")
			}
		})
	}
}

// TestFirmwareBadRequests: a size that is not a number and a malformed
// topic are bad input, recorded, and the session goes on.
func TestFirmwareBadRequests(t *testing.T) {
	e, c, data := firmwareEnv(t, true)
	c.pub(t, "v2/fw/request/1/chunk/0", "lots")
	e.waitEvent(t, "SN-FW", store.EventBadInput, badPayload)
	c.pub(t, "v2/fw/request/x/chunk/0", "")
	e.waitEvent(t, "SN-FW", store.EventBadInput, badTopic)
	c.pub(t, "v2/fw/request/2/chunk/99999999999", "")
	e.waitEvent(t, "SN-FW", store.EventBadInput, badTopic)
	c.pub(t, "v2/fw/request/3/chunk/0", "10")
	if m := c.rx.wait(t, "v2/fw/response/3/chunk/0"); m.payload != string(data[:10]) {
		t.Fatalf("session unusable after bad requests: %q", m.payload)
	}
}

// TestFirmwareReports: stored telemetry with firmware keys reaches the
// engine's topic, other telemetry does not, and chunks report activity.
func TestFirmwareReports(t *testing.T) {
	e, c, _ := firmwareEnv(t, true)
	var mu sync.Mutex
	var notes []fwNotice
	stop, err := e.bus.Subscribe(bus.TopicOTAReport, func(b []byte) {
		var n fwNotice
		json.Unmarshal(b, &n)
		mu.Lock()
		notes = append(notes, n)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c.pub(t, "v1/devices/me/telemetry", `{"temperature":21.5}`)
	c.pub(t, "v1/devices/me/telemetry", `{"current_fw_title":"fw","current_fw_version":"1.0","fw_state":"DOWNLOADING"}`)
	c.pub(t, "v2/fw/request/4/chunk/0", "1000")
	tstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(notes) < 2 {
			return fmt.Errorf("%d notices", len(notes))
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(notes) != 2 {
		t.Fatalf("notices %+v, want the report and the activity", notes)
	}
	r := notes[0]
	if r.Device != "SN-FW" || string(r.Values["fw_state"]) != `"DOWNLOADING"` || string(r.Values["current_fw_version"]) != `"1.0"` || r.Values["temperature"] != nil {
		t.Errorf("report %+v", r)
	}
	if a := notes[1]; a.Package == 0 || a.Sent != 1000 || a.Size != 10000 {
		t.Errorf("activity %+v", a)
	}
}

type countingOTA struct {
	store.OTA
	loads atomic.Int32
	data  []byte
}

func (c *countingOTA) OTAPackageData(ctx context.Context, id int64) ([]byte, error) {
	c.loads.Add(1)
	time.Sleep(10 * time.Millisecond) // long enough for the others to wait on the load
	return bytes.Repeat([]byte{byte(id)}, len(c.data)), nil
}

// TestFirmwareCache: concurrent requests share one load, and the least
// recently used package goes when the bound is passed.
func TestFirmwareCache(t *testing.T) {
	st := &countingOTA{data: make([]byte, 1000)}
	c := fwCache{max: 3000}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if b, err := c.get(context.Background(), st, 1); err != nil || len(b) != len(st.data) || b[0] != 1 {
				t.Errorf("get: %d bytes, %v", len(b), err)
			}
		}()
	}
	wg.Wait()
	if n := st.loads.Load(); n != 1 {
		t.Fatalf("%d loads for 20 concurrent gets, want 1", n)
	}
	ctx := context.Background()
	c.get(ctx, st, 2)
	c.get(ctx, st, 1) // 1 is now more recent than 2
	c.get(ctx, st, 3)
	c.get(ctx, st, 4) // over the bound: 2 goes first
	if _, ok := c.entries[2]; ok {
		t.Error("least recently used package kept")
	}
	if _, ok := c.entries[4]; !ok {
		t.Error("newest package not cached")
	}
	if c.total > c.max {
		t.Errorf("cache holds %d bytes, over %d", c.total, c.max)
	}
}
