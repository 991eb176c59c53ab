package ota_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
	"github.com/thingline/thingline/twin"
)

// TestRolloutPausesAndResumes: 20 twins in two waves of 10, two of the
// first wave told to fail verification. The first wave cannot reach its
// success threshold (100%), the two failures reach the failure threshold
// and pause the rollout with the second wave untouched; a resume accepts
// the first wave and the rollout completes with 18 updated, 2 failed, an
// "OTA failed" alarm on each failed device.
func TestRolloutPausesAndResumes(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { rolloutPausesAndResumes(t, newCloud(t, fastOTA())) })
	t.Run("postgres+nats two nodes", func(t *testing.T) { rolloutPausesAndResumes(t, newCluster(t, 2, fastOTA())) })
}

func rolloutPausesAndResumes(t *testing.T, c *cloud) {
	var f fleet
	var names []string
	for i := range 20 {
		sn := fmt.Sprintf("SN-R%03d", i)
		fail := ""
		if i == 3 || i == 7 {
			fail = twin.OTAFailVerify
		}
		c.runTwin(&f, i%len(c.nodes), sn, fail)
		names = append(names, sn)
	}
	tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, sn := range names {
			if !f.twins[sn].View().Connected {
				return fmt.Errorf("%s not connected", sn)
			}
		}
		return nil
	})
	p, _ := c.upload(twin.FirmwareTitle, "2.0.0", 20000, "")
	var ro rolloutReport
	code := c.postJSON(0, "/api/v1/ota/rollouts", map[string]any{"package": fmt.Sprint(p.ID), "devices": names,
		"waves": []any{10, "100%"}, "successThreshold": "100%", "failureThreshold": 2}, &ro)
	if code != 201 || ro.ID == 0 || fmt.Sprint(ro.Waves) != "[10 10]" {
		t.Fatalf("rollout: %d %+v", code, ro)
	}
	var r rolloutReport
	tstest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		r = c.rollout(len(c.nodes)-1, ro.ID)
		if r.Status != store.RolloutPaused {
			return fmt.Errorf("status %s: %+v", r.Status, r.Progress)
		}
		return nil
	})
	if !strings.Contains(r.PauseReason, "2 devices failed") || r.Progress.Failed != 2 || r.CurrentWave != 0 {
		t.Fatalf("paused: %q %+v wave %d\n%+v", r.PauseReason, r.Progress, r.CurrentWave, r.Devices)
	}
	for _, d := range r.Devices {
		if d.Wave == 1 && d.State != store.OTAQueued {
			t.Errorf("second wave device %s is %s while the first wave failed", d.Device, d.State)
		}
		if (d.Device == "SN-R003" || d.Device == "SN-R007") && (d.State != store.OTAFailed || !strings.Contains(d.Error, "checksum")) {
			t.Errorf("%s: %s %q, want FAILED on the checksum", d.Device, d.State, d.Error)
		}
	}
	// The failed devices carry the "OTA failed" alarm.
	for _, sn := range []string{"SN-R003", "SN-R007"} {
		dev, err := c.nodes[0].Store().GetDevice(context.Background(), sn)
		if err != nil {
			t.Fatal(err)
		}
		tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			as, err := c.nodes[0].Store().ListAlarms(context.Background(), store.AlarmQuery{DeviceID: dev.ID})
			if err != nil {
				return err
			}
			for _, a := range as {
				if a.Type == store.AlarmOTAFailed && a.Active() {
					return nil
				}
			}
			return fmt.Errorf("no active OTA alarm on %s: %+v", sn, as)
		})
	}
	if code := c.postJSON(len(c.nodes)-1, fmt.Sprintf("/api/v1/ota/rollouts/%d/resume", ro.ID), nil, &r); code != 200 || r.Status != store.RolloutRunning {
		t.Fatalf("resume: %d %+v", code, r)
	}
	tstest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		r = c.rollout(0, ro.ID)
		if r.Status != store.RolloutCompleted {
			return fmt.Errorf("status %s %q: %+v\n%+v", r.Status, r.PauseReason, r.Progress, r.Devices)
		}
		return nil
	})
	if r.Progress.Updated != 18 || r.Progress.Failed != 2 || r.CurrentWave != 1 {
		t.Fatalf("completed: %+v wave %d", r.Progress, r.CurrentWave)
	}
	// The updated twins run the new version and keep it in their state.
	for _, sn := range names {
		want := "2.0.0"
		if sn == "SN-R003" || sn == "SN-R007" {
			want = twin.DefaultFirmwareVersion
		}
		st, err := twin.LoadState(f.state[sn])
		if err != nil {
			t.Fatal(err)
		}
		if got := f.twins[sn].View().FWVersion; got != want || (want == "2.0.0" && st.FWVersion != want) {
			t.Errorf("%s runs %s (state %q), want %s", sn, got, st.FWVersion, want)
		}
	}
	// One push per device and attempt, whatever the number of nodes.
	s := c.deviceOTA(0, "SN-R015")
	if h := historyStates(s); h != "QUEUED INITIATED DOWNLOADING DOWNLOADED VERIFIED UPDATING UPDATED" {
		t.Errorf("history of SN-R015: %s", h)
	}
}

// TestAssignOne: a device assigned a package directly updates.
func TestAssignOne(t *testing.T) {
	c := newCloud(t, fastOTA())
	var f fleet
	c.runTwin(&f, 0, "SN-ONE", "")
	tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if !f.twins["SN-ONE"].View().Connected {
			return fmt.Errorf("not connected")
		}
		return nil
	})
	p, _ := c.upload(twin.FirmwareTitle, "2.0.0", 10000, "")
	b := []byte(fmt.Sprintf(`{"package":%d}`, p.ID))
	if code := c.api(0, "PUT", "/api/v1/devices/SN-ONE/ota", "application/json", b, nil); code != 200 {
		t.Fatalf("assign: %d", code)
	}
	tstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		s := c.deviceOTA(0, "SN-ONE")
		if s.State == nil || s.State.State != store.OTAUpdated {
			return fmt.Errorf("%s", historyStates(s))
		}
		return nil
	})
}

// TestRebootMidDownloadRecovers: a twin that reboots in the middle of the
// download comes back reporting its old version; the engine counts an
// attempt, pushes the fw attributes again, and the second download
// completes.
func TestRebootMidDownloadRecovers(t *testing.T) {
	c := newCloud(t, fastOTA())
	var f fleet
	c.runTwin(&f, 0, "SN-REBOOT", twin.OTAFailReboot)
	waitConnected(t, &f, "SN-REBOOT")
	p, _ := c.upload(twin.FirmwareTitle, "3.1.0", 30000, "crc32")
	if code := c.api(0, "PUT", "/api/v1/devices/SN-REBOOT/ota", "application/json", []byte(fmt.Sprintf(`{"package":"%d"}`, p.ID)), nil); code != 200 {
		t.Fatalf("assign: %d", code)
	}
	var s otaState
	tstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		s = c.deviceOTA(0, "SN-REBOOT")
		if s.State == nil || s.State.State != store.OTAUpdated {
			return fmt.Errorf("%s", historyStates(s))
		}
		return nil
	})
	h := historyStates(s)
	if s.State.Attempts != 2 || !strings.Contains(h, "INITIATED DOWNLOADING INITIATED DOWNLOADING") {
		t.Errorf("attempts %d, history %s: want a second push after the reboot", s.State.Attempts, h)
	}
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if v := f.twins["SN-REBOOT"].View(); v.FWVersion != "3.1.0" || v.BootCount != 3 {
			return fmt.Errorf("twin runs %s after %d boots, want 3.1.0 after 3 (start, mid-download, update)", v.FWVersion, v.BootCount)
		}
		return nil
	})
}

func waitConnected(t *testing.T, f *fleet, sn string) {
	t.Helper()
	tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if !f.twins[sn].View().Connected {
			return fmt.Errorf("%s not connected", sn)
		}
		return nil
	})
}

// TestSilentDeviceTimesOut: a device that never reacts is pushed again
// MaxAttempts times, then FAILED with the reason; one that stops after
// DOWNLOADING fails when that state's timeout passes. Neither hangs.
func TestSilentDeviceTimesOut(t *testing.T) {
	cfg := fastOTA()
	cfg.MaxAttempts = 2
	cfg.Timeouts.Initiated = 300 * time.Millisecond
	cfg.Timeouts.Downloading = 500 * time.Millisecond
	c := newCloud(t, cfg)
	var f fleet
	c.runTwin(&f, 0, "SN-SILENT", twin.OTAFailSilent)
	waitConnected(t, &f, "SN-SILENT")
	mute := c.mqttDevice("SN-MUTE")
	p, _ := c.upload(twin.FirmwareTitle, "4.0.0", 5000, "")
	for _, sn := range []string{"SN-SILENT", "SN-MUTE"} {
		if code := c.api(0, "PUT", "/api/v1/devices/"+sn+"/ota", "application/json", []byte(fmt.Sprintf(`{"package":%d}`, p.ID)), nil); code != 200 {
			t.Fatalf("assign %s: %d", sn, code)
		}
	}
	// The mute device starts, then says nothing more.
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if s := c.deviceOTA(0, "SN-MUTE"); s.State == nil || s.State.State != store.OTAInitiated {
			return fmt.Errorf("not initiated")
		}
		return nil
	})
	if tok := mute.Publish("v1/devices/me/telemetry", 1, false, `{"fw_state":"DOWNLOADING"}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for sn, want := range map[string]string{"SN-SILENT": "did not start", "SN-MUTE": "in DOWNLOADING"} {
		var s otaState
		tstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
			s = c.deviceOTA(0, sn)
			if s.State == nil || s.State.State != store.OTAFailed {
				return fmt.Errorf("%s: %s", sn, historyStates(s))
			}
			return nil
		})
		if !strings.Contains(s.State.Error, want) {
			t.Errorf("%s failed with %q, want %q", sn, s.State.Error, want)
		}
	}
	if s := c.deviceOTA(0, "SN-SILENT"); s.State.Attempts != 2 {
		t.Errorf("silent device pushed %d times, want 2", s.State.Attempts)
	}
	// The server's verdict is written as ThingsBoard's telemetry.
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		var latest map[string]struct {
			Value any `json:"value"`
		}
		c.api(0, "GET", "/api/v1/devices/SN-SILENT/telemetry/latest?keys=fw_state,fw_error", "", nil, &latest)
		if latest["fw_state"].Value != "FAILED" || !strings.Contains(fmt.Sprint(latest["fw_error"].Value), "did not start") {
			return fmt.Errorf("fw_state telemetry %+v", latest)
		}
		return nil
	})
}

// TestThingsBoardSDKDevice: a device that is not our twin but a script
// following ThingsBoard's documented OTA flow as its SDKs do (Python,
// paho-mqtt) updates unchanged, with the checksum in CRC32 (ThingsBoard's
// byte order, checked the SDK's way) and chunks of 1000 bytes, then in
// SHA-256 with the whole file in one message.
func TestThingsBoardSDKDevice(t *testing.T) {
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Skip("python3: not installed")
	}
	if err := exec.Command(python, "-c", "import paho.mqtt.client").Run(); err != nil {
		t.Skip("python3-paho-mqtt: not installed")
	}
	c := newCloud(t, fastOTA())
	for _, tc := range []struct {
		sn, alg, chunk string
	}{{"SN-TB-CRC", "CRC32", "1000"}, {"SN-TB-SHA", "", "0"}} {
		t.Run(tc.sn, func(t *testing.T) {
			d := c.issue(tc.sn)
			p, _ := c.upload("tb-example", "2.0."+tc.chunk, 12345, tc.alg)
			// Known to the server before the script runs, so that it can be
			// assigned: ThingsBoard devices exist before they connect.
			pre := c.mqttDeviceFrom(d)
			pre.Disconnect(100)
			if code := c.api(0, "PUT", "/api/v1/devices/"+tc.sn+"/ota", "application/json", []byte(fmt.Sprintf(`{"package":%d}`, p.ID)), nil); code != 200 {
				t.Fatalf("assign: %d", code)
			}
			host, port, _ := net.SplitHostPort(c.nodes[0].MQTTAddr())
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, python, filepath.Join("testdata", "tb_device.py"), host, port,
				filepath.Join(d.dir, "server_chain.pem"), filepath.Join(d.dir, "device.crt"), filepath.Join(d.dir, "device.key"),
				"tb-example", "1.0", tc.chunk, "30")
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "UPDATED 2.0."+tc.chunk) {
				t.Fatalf("device script: %v\n%s", err, out)
			}
			var s otaState
			tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
				s = c.deviceOTA(0, tc.sn)
				if s.State == nil || s.State.State != store.OTAUpdated {
					return fmt.Errorf("%s", historyStates(s))
				}
				return nil
			})
			if h := historyStates(s); h != "QUEUED INITIATED DOWNLOADING DOWNLOADED VERIFIED UPDATING UPDATED" {
				t.Errorf("history %s", h)
			}
		})
	}
}

// TestProfileAssignment: a package assigned to a profile reaches the
// devices of the profile that are connected, and a device of the profile
// that first appears afterwards is adopted when it reports its firmware.
func TestProfileAssignment(t *testing.T) {
	c := newCloud(t, fastOTA())
	var f fleet
	c.runTwin(&f, 0, "SN-P1", "")
	waitConnected(t, &f, "SN-P1")
	p, _ := c.upload(twin.FirmwareTitle, "5.0.0", 9000, "murmur3_128")
	var res struct {
		Queued int `json:"queued"`
	}
	b := []byte(fmt.Sprintf(`{"package":%d}`, p.ID))
	if code := c.api(0, "PUT", "/api/v1/ota/profiles/default", "application/json", b, &res); code != 200 || res.Queued != 1 {
		t.Fatalf("profile assignment: %d %+v", code, res)
	}
	c.runTwin(&f, 0, "SN-P2", "") // a new device of the profile
	for _, sn := range []string{"SN-P1", "SN-P2"} {
		tstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			if v := f.twins[sn].View(); v.FWVersion != "5.0.0" {
				return fmt.Errorf("%s runs %s", sn, v.FWVersion)
			}
			if s := c.deviceOTA(0, sn); s.State == nil || s.State.State != store.OTAUpdated {
				return fmt.Errorf("%s: %s", sn, historyStates(s))
			}
			return nil
		})
	}
	// The package is in use: it cannot be deleted until unassigned.
	if code := c.api(0, "DELETE", fmt.Sprintf("/api/v1/ota/packages/%d", p.ID), "", nil, nil); code != 409 {
		t.Errorf("deleting a profile's package: %d, want 409", code)
	}
}
