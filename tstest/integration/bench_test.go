package integration

import (
	"encoding/json"
	"os/exec"
	"testing"
)

// TestBenchSmall runs `thingline bench` at a tiny scale: its own server,
// devices with their own certificates, handshake and publish phases at two
// levels each, the idle phase, and the lost-message check through the API.
// When Mosquitto is installed it is driven too, as the benchmark does.
func TestBenchSmall(t *testing.T) {
	cmd := exec.Command(binary, "bench", "--devices", "30", "--concurrency", "4,8", "--window", "1,4",
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
		Server     string `json:"server"`
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
