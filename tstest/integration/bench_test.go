package integration

import (
	"encoding/json"
	"os/exec"
	"testing"
)

// TestBenchSmall runs `thingline bench` at a tiny scale: its own server,
// devices with their own certificates, the open-loop fleet shape at two
// rates, handshake and publish phases at two levels each, the idle phase,
// and the lost-message check through the API. When Mosquitto is installed
// it is driven too, as the benchmark does.
func TestBenchSmall(t *testing.T) {
	cmd := exec.Command(binary, "bench", "--fleet", "40", "--rate", "10,20", "--fleet-duration", "1s", "--fleet-concurrency", "8",
		"--devices", "30", "--concurrency", "4,8", "--window", "1,4",
		"--duration", "500ms", "--idle", "40", "--settle", "100ms", "--json")
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("bench: %v\n%s", err, stderr)
	}
	var results []struct {
		Server          string `json:"server"`
		FleetHandshakes struct {
			Devices int     `json:"devices"`
			PerS    float64 `json:"handshakesPerSecond"`
			Failed  int     `json:"handshakesFailed"`
		} `json:"fleetHandshakes"`
		Fleet []struct {
			Devices int     `json:"devices"`
			Rate    float64 `json:"messagesPerSecondPerDevice"`
			Sent    int64   `json:"sent"`
			Acked   int64   `json:"acked"`
			Unacked int64   `json:"unacked"`
			Errors  int64   `json:"errors"`
			P99Ms   float64 `json:"p99AckMs"`
			Lost    int64   `json:"lost"`
		} `json:"fleet"`
		Handshakes []struct {
			Concurrency int     `json:"concurrency"`
			PerS        float64 `json:"handshakesPerSecond"`
			Failed      int     `json:"handshakesFailed"`
		} `json:"handshakes"`
		Publish []struct {
			Window   int     `json:"window"`
			MsgsPerS float64 `json:"ackedMessagesPerSecond"`
			Acked    int64   `json:"acked"`
		} `json:"publish"`
		Acked     int64 `json:"acked"`
		IdleConns int   `json:"idleConnections"`
		Lost      int64 `json:"lost"`
	}
	if err := json.Unmarshal(out, &results); err != nil {
		t.Fatalf("bench output is not its JSON: %v\n%s", err, out)
	}
	_, mosq := exec.LookPath("mosquitto")
	want := 1
	if mosq == nil {
		want = 2
	}
	if len(results) != want || results[0].Server != "thingline" {
		t.Fatalf("bench results for %d servers, first %q; want %d, thingline first:\n%s", len(results), results[0].Server, want, out)
	}
	for _, r := range results {
		if fh := r.FleetHandshakes; fh.Devices != 40 || fh.Failed != 0 || fh.PerS <= 0 {
			t.Errorf("%s: fleet handshakes %+v; want 40 devices connected", r.Server, fh)
		}
		if len(r.Fleet) != 2 || r.Fleet[0].Rate != 10 || r.Fleet[1].Rate != 20 {
			t.Errorf("%s: fleet phases %+v; want rates 10 and 20", r.Server, r.Fleet)
		}
		for _, f := range r.Fleet {
			// Open loop: 40 devices at 10 or 20 messages/s each for 1 s.
			// Every message sent must be acknowledged, whatever the pace
			// the machine allowed.
			if f.Devices != 40 || f.Sent < 40 || f.Acked != f.Sent || f.Unacked != 0 || f.Errors != 0 || f.P99Ms <= 0 {
				t.Errorf("%s: fleet phase %+v; want every message sent acknowledged", r.Server, f)
			}
			wantLost := int64(-1)
			if r.Server == "thingline" {
				wantLost = 0
			}
			if f.Lost != wantLost {
				t.Errorf("%s: fleet phase at %g msg/s: lost %d; want %d", r.Server, f.Rate, f.Lost, wantLost)
			}
		}
		if len(r.Handshakes) != 2 || r.Handshakes[0].Concurrency != 4 || r.Handshakes[1].Concurrency != 8 {
			t.Errorf("%s: handshake levels %+v; want concurrency 4 and 8", r.Server, r.Handshakes)
		}
		for _, h := range r.Handshakes {
			if h.PerS <= 0 || h.Failed != 0 {
				t.Errorf("%s: handshake level %+v", r.Server, h)
			}
		}
		var sum int64
		for _, p := range r.Publish {
			if p.MsgsPerS <= 0 || p.Acked <= 0 {
				t.Errorf("%s: publish level %+v acknowledged nothing", r.Server, p)
			}
			sum += p.Acked
		}
		if len(r.Publish) != 2 || sum != r.Acked {
			t.Errorf("%s: %d publish levels acknowledging %d, total %d", r.Server, len(r.Publish), sum, r.Acked)
		}
		if r.IdleConns != 40 {
			t.Errorf("%s: %d idle connections; want 40", r.Server, r.IdleConns)
		}
	}
	if results[0].Lost != 0 {
		t.Errorf("thingline lost %d of %d acknowledged messages", results[0].Lost, results[0].Acked)
	}
	if want == 2 && results[1].Lost != -1 {
		t.Errorf("mosquitto lost = %d; want -1 (it stores nothing to check)", results[1].Lost)
	}
}
