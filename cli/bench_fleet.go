package cli

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thingline/thingline/loadgen"
)

// The fleet shape: many devices, each publishing one reading per period
// whether or not the previous one is acknowledged (open loop, as firmware
// does), their schedules spread evenly over the period. It is what a
// server spends its life on, and the bench leads with it.

// fleetHandshakes is the fleet's connection phase: first connections, each
// provisioning a device on thingline, with a load generator that verifies
// the server's chain on every handshake as a device does.
type fleetHandshakes struct {
	Concurrency     int     `json:"concurrency"`
	Devices         int     `json:"devices"`
	PerS            float64 `json:"handshakesPerSecond"`
	Failed          int     `json:"handshakesFailed"`
	CPUPerHandshake float64 `json:"serverCpuMsPerHandshake"`
	// The load generator verifies the server's chain on every handshake
	// (no cache), which is most of its own cost.
	GenCPUPerHandshake float64 `json:"loadgenCpuMsPerHandshake"`
}

// fleetLevel is one open-loop phase at one rate per device.
type fleetLevel struct {
	Devices       int     `json:"devices"`
	Rate          float64 `json:"messagesPerSecondPerDevice"`
	Seconds       float64 `json:"seconds"`
	Sent          int64   `json:"sent"`
	Acked         int64   `json:"acked"`
	Unacked       int64   `json:"unacked"`
	Errors        int64   `json:"errors"`
	P50Ms         float64 `json:"p50AckMs"`
	P99Ms         float64 `json:"p99AckMs"`
	P999Ms        float64 `json:"p999AckMs"`
	MaxMs         float64 `json:"maxAckMs"`
	CPUPerMessage float64 `json:"serverCpuUsPerMessage"`
	GenCPUPerMsg  float64 `json:"loadgenCpuUsPerMessage"`
	RSSMB         float64 `json:"serverRssMB"`
	LateP99Ms     float64 `json:"loadgenLateP99Ms"`
	LateMaxMs     float64 `json:"loadgenLateMaxMs"`
	Lost          int64   `json:"lost"` // -1: not checkable
}

// verifying returns devs with configurations that verify the server's
// chain in full on every handshake, as crypto/tls (and a device) does.
func verifying(devs []loadgen.Device, roots *x509.CertPool) []loadgen.Device {
	out := make([]loadgen.Device, len(devs))
	for i, d := range devs {
		cfg := d.TLS.Clone()
		cfg.InsecureSkipVerify = false
		cfg.VerifyConnection = nil
		cfg.RootCAs = roots
		out[i] = loadgen.Device{Name: d.Name, TLS: cfg}
	}
	return out
}

// benchFleet connects the fleet and drives it at each rate.
func benchFleet(ctx context.Context, t benchTarget, devs []loadgen.Device, roots *x509.CertPool, o benchOptions,
	logf func(string, ...any), r *benchResult) error {
	devs = verifying(devs, roots)
	logf("%s: connecting %d devices, %d handshakes at a time, the server chain verified on each", t.name, len(devs), o.fleetConcurrency)
	cpu0, gen0 := t.cpu(), selfCPU()
	conns, idx, hs := loadgen.ConnectSpread(ctx, t.addrs, devs, o.fleetConcurrency)
	cpu1, gen1 := t.cpu(), selfCPU()
	r.FleetHandshakes = &fleetHandshakes{Concurrency: o.fleetConcurrency, Devices: len(devs), PerS: hs.PerSecond(), Failed: hs.Failed}
	if hs.Connected > 0 {
		r.FleetHandshakes.CPUPerHandshake = (cpu1 - cpu0) * 1000 / float64(hs.Connected)
		r.FleetHandshakes.GenCPUPerHandshake = (gen1 - gen0) * 1000 / float64(hs.Connected)
	}
	defer loadgen.CloseAll(conns)
	if hs.Connected == 0 {
		return fmt.Errorf("%s: no device could connect: %v", t.name, hs.FirstErr)
	}
	if hs.FirstErr != nil {
		logf("%s: %d handshakes failed, first: %v", t.name, hs.Failed, hs.FirstErr)
	}
	logf("%s: %.0f verified handshakes/s", t.name, hs.PerSecond())
	for k, rate := range o.rates {
		period := time.Duration(float64(time.Second) / rate)
		// Each phase's messages in a time range of their own, apart from
		// the saturation levels', so that the lost check can tell them apart.
		base := time.Now().Add(-48*time.Hour).UnixMilli() - int64(k)*100_000_000
		// Let the connection storm's work (provisioning events, GC) settle.
		time.Sleep(o.settle)
		logf("%s: %d devices × %g msgs/s for %v, open loop", t.name, len(conns), rate, o.fleetDuration)
		cpu0, gen0 := t.cpu(), selfCPU()
		fr := loadgen.Fleet(ctx, conns, "v1/devices/me/telemetry", base, period, o.fleetDuration, 30*time.Second)
		cpu1, gen1 := t.cpu(), selfCPU()
		l := fleetLevel{Devices: len(conns), Rate: rate, Seconds: fr.Elapsed.Seconds(),
			Sent: fr.Sent, Acked: fr.Acked, Unacked: fr.Unacked(), Errors: fr.Errors,
			P50Ms: ms(fr.P50), P99Ms: ms(fr.P99), P999Ms: ms(fr.P999), MaxMs: ms(fr.Max),
			RSSMB: float64(t.rss()) / 1024, LateP99Ms: ms(fr.LateP99), LateMaxMs: ms(fr.LateMax), Lost: -1}
		if fr.Acked > 0 {
			l.CPUPerMessage = (cpu1 - cpu0) * 1e6 / float64(fr.Acked)
			l.GenCPUPerMsg = (gen1 - gen0) * 1e6 / float64(fr.Acked)
		}
		logf("%s: %s", t.name, fr)
		if t.lost != nil {
			l.Lost = t.lost(devs, idx, fr.AckedPerConn, base)
			logf("%s: %d acknowledged messages not found", t.name, l.Lost)
		}
		r.Fleet = append(r.Fleet, l)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func selfCPU() float64 {
	v, _ := cpuSeconds(os.Getpid())
	return v
}

// benchSchema makes a fresh schema on the PostgreSQL server of storeURL for
// this run and returns the URL that uses it, and a function dropping it.
func benchSchema(ctx context.Context, storeURL, name string) (string, func(), error) {
	conn, err := pgx.Connect(ctx, storeURL)
	if err != nil {
		return "", nil, fmt.Errorf("bench: postgres: %w", err)
	}
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		conn.Close(ctx)
		return "", nil, fmt.Errorf("bench: creating schema: %w", err)
	}
	drop := func() {
		conn.Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{name}.Sanitize()+" CASCADE")
		conn.Close(context.Background())
	}
	u, err := url.Parse(storeURL)
	if err != nil {
		drop()
		return "", nil, fmt.Errorf("bench: store URL: %w", err)
	}
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	return u.String(), drop, nil
}

// printFleet writes the fleet-shape table: per rate, the figures of each
// server side by side.
func printFleet(out io.Writer, o benchOptions, rs []benchResult) {
	store := "SQLite"
	if o.store != "" {
		store = "PostgreSQL"
	}
	nodes := ""
	if o.nodes > 1 {
		nodes = fmt.Sprintf(", %d nodes", o.nodes)
	}
	fmt.Fprintf(out, "fleet shape: %d devices, open loop, %v per rate (thingline: %s%s, durable acknowledgements)\n\n", o.fleet, o.fleetDuration, store, nodes)
	header(out, rs)
	row := rowPrinter(out, rs)
	if rs[0].FleetHandshakes != nil {
		row(fmt.Sprintf("mTLS handshakes/s (P-256, first connections, chain verified on each), %d at a time", o.fleetConcurrency),
			func(r benchResult) float64 { return r.FleetHandshakes.PerS }, "%.0f", true)
		row("server CPU per handshake (ms)", func(r benchResult) float64 { return r.FleetHandshakes.CPUPerHandshake }, "%.2f", false)
		row("load generator CPU per handshake (ms)", func(r benchResult) float64 { return r.FleetHandshakes.GenCPUPerHandshake }, "%.2f", false)
	}
	for k, rate := range o.rates {
		if k >= len(rs[0].Fleet) {
			break
		}
		at := func(f func(fleetLevel) float64) func(benchResult) float64 {
			return func(r benchResult) float64 {
				if k >= len(r.Fleet) {
					return 0
				}
				return f(r.Fleet[k])
			}
		}
		p := fmt.Sprintf(", %g msg/s", rate)
		row("**server CPU per acknowledged message (µs)**"+p, at(func(l fleetLevel) float64 { return l.CPUPerMessage }), "%.1f", false)
		row("p50 acknowledgement (ms)"+p, at(func(l fleetLevel) float64 { return l.P50Ms }), "%.2f", false)
		row("**p99 acknowledgement (ms)**"+p, at(func(l fleetLevel) float64 { return l.P99Ms }), "%.2f", false)
		row("**p99.9 acknowledgement (ms)**"+p, at(func(l fleetLevel) float64 { return l.P999Ms }), "%.2f", false)
		row("max acknowledgement (ms)"+p, at(func(l fleetLevel) float64 { return l.MaxMs }), "%.1f", false)
		row("messages sent"+p, at(func(l fleetLevel) float64 { return float64(l.Sent) }), "%.0f", true)
		row("messages acknowledged"+p, at(func(l fleetLevel) float64 { return float64(l.Acked) }), "%.0f", true)
		row("server RSS (MB)"+p, at(func(l fleetLevel) float64 { return l.RSSMB }), "%.0f", false)
		row("load generator CPU per message (µs)"+p, at(func(l fleetLevel) float64 { return l.GenCPUPerMsg }), "%.1f", false)
		row("load generator behind schedule, p99 (ms)"+p, at(func(l fleetLevel) float64 { return l.LateP99Ms }), "%.2f", false)
	}
	var lost []string
	for _, l := range rs[0].Fleet {
		lost = append(lost, fmt.Sprintf("%d of %d at %g msg/s", l.Lost, l.Acked, l.Rate))
	}
	if len(lost) > 0 {
		fmt.Fprintf(out, "\nunacknowledged (thingline): ")
		for k, l := range rs[0].Fleet {
			if k > 0 {
				fmt.Fprint(out, ", ")
			}
			fmt.Fprintf(out, "%d of %d sent", l.Unacked, l.Sent)
		}
		fmt.Fprintf(out, "; lost acknowledged messages (checked through the API): %s\n", strings.Join(lost, ", "))
	}
	fmt.Fprintln(out)
}
