package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
)

// TestOTARolloutWithTheBinary is the operator's path, all through the
// binary: `thingline serve`, two `thingline device run` twins (one told to
// fail verification), `thingline ota upload` and `ota rollout start` in
// two waves; the failing first wave pauses the rollout, `ota rollout
// resume` goes on, the second twin reboots into the new version and the
// rollout completes.
func TestOTARolloutWithTheBinary(t *testing.T) {
	s := startServer(t, t.TempDir())
	ca := s.deviceCA()
	var twins []*twinProc
	for _, c := range []struct{ sn, fail string }{{"SN-OTA-1", "verify"}, {"SN-OTA-2", ""}} {
		image, _ := unitImage(t, ca, c.sn, time.Now().Add(24*time.Hour))
		args := []string{"--spiffs", image, "--state", t.TempDir(), "--broker", "mqtts://" + s.mqttAddr,
			"--server-name", "127.0.0.1", "--prov", "none", "--interval", "1s", "--rotate-within", "0"}
		if c.fail != "" {
			args = append(args, "--ota-fail", c.fail)
		}
		twins = append(twins, startTwin(t, args...))
	}
	for i, tw := range twins {
		tstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			if !strings.Contains(tw.output(), "connected to") {
				return fmt.Errorf("twin %d not connected", i+1)
			}
			return nil
		})
	}
	img := filepath.Join(t.TempDir(), "app.bin")
	if err := os.WriteFile(img, []byte(strings.Repeat("firmware image ", 2000)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := s.cli("ota", "upload", img, "--title", "thingline-twin", "--version", "9.9.9")
	if err != nil || !strings.Contains(out, "package 1: thingline-twin 9.9.9, 30000 bytes, SHA256") {
		t.Fatalf("upload: %v\n%s", err, out)
	}
	out, err = s.cli("ota", "rollout", "start", "1", "SN-OTA-1", "SN-OTA-2", "--waves", "1", "--failure-threshold", "1")
	m := regexp.MustCompile(`rollout (\d+) started`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("rollout start: %v\n%s", err, out)
	}
	id := m[1]
	tstest.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
		out, err = s.cli("ota", "rollout", "status", id, "--devices")
		if err != nil || !strings.Contains(out, "paused") {
			return fmt.Errorf("not paused: %v\n%s", err, out)
		}
		return nil
	})
	if !strings.Contains(out, "1 devices failed") || !strings.Contains(out, "checksum verification failed") {
		t.Fatalf("paused for the wrong reason:\n%s", out)
	}
	if out, err := s.cli("ota", "rollout", "resume", id); err != nil || !strings.Contains(out, "running") {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	tstest.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
		out, err = s.cli("ota", "rollout", "status", id)
		if err != nil || !strings.Contains(out, "completed") {
			return fmt.Errorf("not completed: %v\n%s", err, out)
		}
		return nil
	})
	if !strings.Contains(out, "2 devices: 1 updated, 1 failed") {
		t.Fatalf("report:\n%s", out)
	}
	if !strings.Contains(twins[1].output(), "fw 9.9.9") {
		t.Errorf("the second twin did not boot the new version:\n%s", twins[1].output())
	}
	// The device reports its running version: the client attribute and
	// ThingsBoard's current_fw_version telemetry.
	var attrs struct {
		Client map[string]struct {
			Value any `json:"value"`
		} `json:"client"`
	}
	if code := s.api("GET", "/api/v1/devices/SN-OTA-2/attributes", "", &attrs); code != 200 || attrs.Client["fw_version"].Value != "9.9.9" {
		t.Errorf("attributes: %d %+v", code, attrs.Client)
	}
}
