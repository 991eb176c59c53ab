package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
)

// thingline runs the binary and returns its combined output.
func thingline(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestFactoryLineAgainstServer runs stations 3 and 4 and the registry push
// against a real server: the serve command's development PKI is the CA
// directory, a unit's own files make its first connection, `factory test`
// records a pass once its telemetry arrives, and after `factory push` the
// cloud knows the unit was produced, while a device the factory never
// made, though its certificate chains to the same CA, is flagged.
func TestFactoryLineAgainstServer(t *testing.T) {
	data := t.TempDir()
	s := startServer(t, data)
	out := filepath.Join(t.TempDir(), "units")
	if o, err := thingline(t, "factory", "inject", "--ca-dir", s.pkiDir(), "--out", out, "--count", "2", "--quiet"); err != nil {
		t.Fatalf("factory inject: %v\n%s", err, o)
	}
	unit := filepath.Join(out, "SN-000001")
	for _, f := range []string{"device.crt", "device.key", "server_chain.pem", "spiffs.bin", "manifest.json", "prov.json"} {
		if _, err := os.Stat(filepath.Join(unit, f)); err != nil {
			t.Fatalf("unit file: %v", err)
		}
	}
	// Station 4 waits for the unit's first telemetry: start it first, as
	// the line does, then power the unit up.
	testDone := make(chan error, 1)
	var testOut string
	go func() {
		var err error
		testOut, err = thingline(t, "factory", "test", "--server", "http://"+s.httpAddr, "--token", testToken,
			"--sn", "SN-000001", "--timeout", "30s", "--ledger", filepath.Join(out, "ledger.db"))
		testDone <- err
	}()
	c, err := s.connect(filepath.Join(unit, "device.crt"), filepath.Join(unit, "device.key"), "SN-000001")
	if err != nil {
		t.Fatalf("unit's first connection: %v", err)
	}
	defer c.Disconnect(100)
	if tok := c.Publish("v1/devices/me/telemetry", 1, false, `{"temperature":21.5,"humidity":40}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case err := <-testDone:
		if err != nil {
			t.Fatalf("factory test: %v\n%s", err, testOut)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("factory test did not finish")
	}
	trav, err := thingline(t, "factory", "unit", "SN-000001", "--ledger", filepath.Join(out, "ledger.db"))
	if err != nil {
		t.Fatalf("factory unit: %v\n%s", err, trav)
	}
	if !strings.Contains(trav, "pass") || !strings.Contains(strings.ToLower(trav), "test") {
		t.Errorf("traveller shows no passed factory test:\n%s", trav)
	}

	if o, err := thingline(t, "factory", "push", "--server", "http://"+s.httpAddr, "--token", testToken, "--ledger", filepath.Join(out, "ledger.db")); err != nil {
		t.Fatalf("factory push: %v\n%s", err, o)
	}
	var dev struct {
		Name     string `json:"name"`
		Produced *bool  `json:"produced"`
	}
	if code := s.api("GET", "/api/v1/devices/SN-000001", "", &dev); code != 200 || dev.Produced == nil || !*dev.Produced {
		t.Errorf("after push: %d %+v, want produced=true", code, dev)
	}
	// The push carried the ledger's station events: the server shows the
	// unit's traveller, its device, and yield per station; a second push
	// adds nothing.
	var u struct {
		SN        string `json:"sn"`
		Device    string `json:"device"`
		Traveller []struct {
			Station int    `json:"station"`
			Result  string `json:"result"`
		} `json:"traveller"`
	}
	if code := s.api("GET", "/api/v1/factory/units/SN-000001", "", &u); code != 200 || u.Device != "SN-000001" || len(u.Traveller) != 2 ||
		u.Traveller[0].Station != 3 || u.Traveller[1].Station != 4 || u.Traveller[1].Result != "pass" {
		t.Errorf("unit on the server: %d %+v; want its device and injection, test passed", code, u)
	}
	var rep struct {
		Stations []struct {
			Name    string  `json:"name"`
			UnitsIn int     `json:"unitsIn"`
			Yield   float64 `json:"yield"`
		} `json:"stations"`
	}
	if code := s.api("GET", "/api/v1/factory/stations", "", &rep); code != 200 || len(rep.Stations) != 5 ||
		rep.Stations[2].Name != "injection" || rep.Stations[2].UnitsIn != 2 || rep.Stations[3].UnitsIn != 1 || rep.Stations[3].Yield != 100 {
		t.Errorf("station report: %d %+v", code, rep)
	}
	if o, err := thingline(t, "factory", "push", "--server", "http://"+s.httpAddr, "--token", testToken, "--ledger", filepath.Join(out, "ledger.db")); err != nil || !strings.Contains(o, "0 new") {
		t.Errorf("second push: %v\n%s", err, o)
	}

	// A certificate from the same CA for a serial the factory never made.
	rogue := filepath.Join(t.TempDir(), "rogue")
	if o, err := thingline(t, "ca", "issue", "--ca-dir", s.pkiDir(), "--cn", "SN-999999", "--key-out", rogue+".key", "--out", rogue+".crt"); err != nil {
		t.Fatalf("ca issue: %v\n%s", err, o)
	}
	rc, err := s.connect(rogue+".crt", rogue+".key", "rogue")
	if err != nil {
		t.Fatalf("rogue device connects (flagged, not refused): %v", err)
	}
	rc.Disconnect(100)
	var rd struct {
		Produced *bool `json:"produced"`
	}
	if code := s.api("GET", "/api/v1/devices/SN-999999", "", &rd); code != 200 || rd.Produced == nil || *rd.Produced {
		t.Errorf("never-produced device: %d produced=%v, want false", code, rd.Produced)
	}
	tstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		var evs struct {
			Events []json.RawMessage `json:"events"`
		}
		s.api("GET", "/api/v1/events?device=SN-999999&kind=unknown-serial", "", &evs)
		if len(evs.Events) == 0 {
			return fmt.Errorf("no unknown-serial event for SN-999999")
		}
		return nil
	})
}
