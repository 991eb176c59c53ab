package cli

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/loadgen"
	"github.com/thingline/thingline/pki"
)

func init() { register(newBenchCmd) }

type benchOptions struct {
	fleet            int
	rates            []float64
	fleetDuration    time.Duration
	fleetConcurrency int
	saturation       bool
	store            string
	bus              string
	nodes            int

	devices     int
	duration    time.Duration
	windows     []int
	concurrency []int
	idle        int
	settle      time.Duration
	mosquitto   string
	work        string
	jsonOut     bool
}

// benchResult is one server's figures.
type benchResult struct {
	Server             string           `json:"server"`
	FleetHandshakes    *fleetHandshakes `json:"fleetHandshakes,omitempty"`
	Fleet              []fleetLevel     `json:"fleet"`      // one per --rate
	Handshakes         []handshakeLevel `json:"handshakes"` // one per --concurrency
	Publish            []publishLevel   `json:"publish"`    // one per --window
	Acked              int64            `json:"acked"`      // over all publish levels
	IdleConns          int              `json:"idleConnections"`
	IdleHandshakesPerS float64          `json:"idlePhaseHandshakesPerSecond"`
	KBPerConn          float64          `json:"kbPerIdleConnection"`
	Lost               int64            `json:"lost"` // -1: not checkable (the server stores nothing)
}

// handshakeLevel is a handshake phase at one concurrency, each handshake
// a device's first connection.
type handshakeLevel struct {
	Concurrency     int     `json:"concurrency"`
	PerS            float64 `json:"handshakesPerSecond"`
	Failed          int     `json:"handshakesFailed"`
	CPUPerHandshake float64 `json:"serverCpuMsPerHandshake"`
	// GenCPUPerHandshake is the load generator's own CPU per handshake:
	// it shares the machine, so it bounds what a server can show.
	GenCPUPerHandshake float64 `json:"loadgenCpuMsPerHandshake"`
}

// publishLevel is a publish phase at one window.
type publishLevel struct {
	Window        int     `json:"window"`
	MsgsPerS      float64 `json:"ackedMessagesPerSecond"`
	Acked         int64   `json:"acked"`
	P50Ms         float64 `json:"p50AckMs"`
	P99Ms         float64 `json:"p99AckMs"`
	CPUPerMessage float64 `json:"serverCpuUsPerMessage"`
	GenCPUPerMsg  float64 `json:"loadgenCpuUsPerMessage"`
}

// peak is a server's best rate over the levels: its capacity, the figure
// compared when servers reach theirs at different loads.
func peak[T any](levels []T, rate func(T) float64) float64 {
	best := 0.0
	for _, l := range levels {
		best = max(best, rate(l))
	}
	return best
}

func newBenchCmd() *cobra.Command {
	var o benchOptions
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure the gateway beside Mosquitto at the fleet's shape and at saturation: CPU per message, latency, handshakes/s, memory, losses",
		Long: `bench starts a thingline server (this binary's serve, fresh data directory,
embedded defaults, or --store postgres://… with --nodes servers sharing it)
and, when installed, Mosquitto 2 with require_certificate, and drives each in
turn with the same load: devices, each with its own P-256 certificate from
the server's device CA.

First the fleet shape: --fleet devices connect (--fleet-concurrency
handshakes at a time, the load generator verifying the server's chain on
every one, as a device does), then for each --rate every device publishes
one QoS 1 telemetry message per 1/rate seconds for --fleet-duration, open
loop (whether or not its earlier messages are acknowledged), the devices'
schedules spread evenly over the period. Reported: server CPU per
acknowledged message, acknowledgement latency p50/p99/p99.9, messages sent
and acknowledged, server memory.

Then, with --saturation, the closed-loop levels: for each --concurrency, N devices' first full mTLS
handshakes (+ CONNECT/CONNACK), that many at a time; for each --window,
QoS 1 telemetry from every device for --duration with that many messages in
flight per device; then --idle idle connections to measure server memory
per connection (resident set growth / connections). Each server's best rate
over the levels is its capacity; the ratios compare capacities as well as
each level. For thingline every acknowledged message is then looked up
through the REST API: lost counts the acknowledged ones not found.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.saturation && (len(o.windows) == 0 || len(o.concurrency) == 0 || o.devices <= 0) {
				return errors.New("bench: --devices, --window and --concurrency must be given")
			}
			if o.fleet < 0 || o.fleetConcurrency <= 0 || o.nodes < 1 {
				return errors.New("bench: --fleet must not be negative, --fleet-concurrency and --nodes must be positive")
			}
			for _, r := range o.rates {
				if r <= 0 || r > 1000 {
					return fmt.Errorf("bench: a rate must be above 0 and at most 1000 messages per second, not %g", r)
				}
			}
			if o.nodes > 1 && !strings.HasPrefix(o.store, "postgres") {
				return errors.New("bench: several nodes need a shared --store postgres://…")
			}
			if !o.saturation {
				o.concurrency, o.windows, o.devices = nil, nil, 0
			}
			for _, v := range append(slices.Clone(o.windows), o.concurrency...) {
				if v <= 0 {
					return fmt.Errorf("bench: window and concurrency must be positive, not %d", v)
				}
			}
			return runBench(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := c.Flags()
	f.IntVar(&o.fleet, "fleet", 10000, "devices of the fleet shape (0 skips it)")
	f.Float64SliceVar(&o.rates, "rate", []float64{1, 2}, "fleet shape: messages per second per device; a phase for each")
	f.DurationVar(&o.fleetDuration, "fleet-duration", 30*time.Second, "length of each fleet-shape phase")
	f.IntVar(&o.fleetConcurrency, "fleet-concurrency", 64, "handshakes in progress while the fleet connects")
	f.BoolVar(&o.saturation, "saturation", true, "also run the closed-loop saturation levels (--devices, --concurrency, --window)")
	f.StringVar(&o.store, "store", "", "thingline's store: empty for SQLite, or postgres://… (a fresh schema is made and dropped)")
	f.StringVar(&o.bus, "bus", "", "thingline's bus: empty for in-process, or nats://…")
	f.IntVar(&o.nodes, "nodes", 1, "thingline nodes sharing the --store; devices are spread over them")
	f.IntVar(&o.devices, "devices", 1000, "devices per handshake level; the last level's devices publish")
	f.DurationVar(&o.duration, "duration", 10*time.Second, "length of each publish phase")
	f.IntSliceVar(&o.windows, "window", []int{1, 4, 16}, "QoS 1 messages in flight per device; a publish phase for each")
	f.IntSliceVar(&o.concurrency, "concurrency", []int{32, 128, 512}, "handshakes in progress at once; a handshake phase for each, with its own devices")
	f.IntVar(&o.idle, "idle", 15000, "idle connections for the memory phase (0 skips it)")
	f.DurationVar(&o.settle, "settle", 5*time.Second, "wait before each reading of the server's memory (after the load, after opening the idle connections)")
	f.StringVar(&o.mosquitto, "mosquitto", "auto", "auto (if installed), off, or the path of the mosquitto binary")
	f.StringVar(&o.work, "work", "", "working directory (default: a temporary one, removed afterwards)")
	f.BoolVar(&o.jsonOut, "json", false, "print the results as JSON")
	return c
}

// benchTarget is one server under load: one process, or the nodes of a
// cluster, whose CPU and memory are summed.
type benchTarget struct {
	name  string
	addrs []string
	pids  []int
	// lost looks the acknowledged messages up again; nil when the server
	// stores nothing.
	lost func(devs []loadgen.Device, conns []int, acked []int64, base int64) int64
}

func (t benchTarget) cpu() float64 {
	sum := 0.0
	for _, pid := range t.pids {
		v, _ := cpuSeconds(pid)
		sum += v
	}
	return sum
}

func (t benchTarget) rss() int64 {
	var sum int64
	for _, pid := range t.pids {
		v, _ := rssKB(pid)
		sum += v
	}
	return sum
}

func runBench(ctx context.Context, out io.Writer, o benchOptions) error {
	// The load generator shares the CPU with the server it measures, and
	// its memory matters little: it collects rarely.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	work := o.work
	if work == "" {
		d, err := os.MkdirTemp("", "thingline-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		work = d
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var tokRaw [16]byte
	rand.Read(tokRaw[:])
	token := hex.EncodeToString(tokRaw[:])
	runID := hex.EncodeToString(tokRaw[:3])

	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...) }

	storeURL := o.store
	if storeURL != "" {
		u, drop, err := benchSchema(ctx, storeURL, "bench_"+runID)
		if err != nil {
			return err
		}
		defer drop()
		storeURL = u
	}
	var nodes []*benchServer
	defer func() {
		for _, n := range nodes {
			n.stop()
		}
	}()
	pkiDir := filepath.Join(work, "thingline-1", "pki")
	for k := 1; k <= o.nodes; k++ {
		var extra []string
		if storeURL != "" {
			extra = append(extra, "--store", storeURL, "--node-id", fmt.Sprintf("bench-%d", k))
		}
		if o.bus != "" {
			extra = append(extra, "--bus", o.bus)
		}
		if k > 1 {
			// The other nodes serve the first one's PKI.
			extra = append(extra, "--tls-cert", filepath.Join(pkiDir, "server.crt"), "--tls-key", filepath.Join(pkiDir, "server.key"),
				"--device-ca", filepath.Join(pkiDir, "device-ca.crt"))
		}
		n, err := startBenchServer(ctx, self, filepath.Join(work, fmt.Sprintf("thingline-%d", k)), token, extra...)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	ca, err := pki.LoadCA(pkiDir)
	if err != nil {
		return err
	}
	rootPEM, err := os.ReadFile(filepath.Join(pkiDir, "root-ca.crt"))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)

	// The saturation levels' devices first, then the fleet's: every
	// handshake phase meets first connections. The idle phase reconnects
	// the first ones.
	sat := o.devices * len(o.concurrency)
	n := max(sat+o.fleet, o.idle)
	logf("issuing %d P-256 device certificates", n)
	devs, err := issueBenchDevices(ca, roots, n, "BENCH-"+runID+"-")
	if err != nil {
		return err
	}

	tl := benchTarget{name: "thingline", lost: func(devs []loadgen.Device, conns []int, acked []int64, base int64) int64 {
		return countLost(nodes[0].httpAddr, token, devs, conns, acked, base, logf)
	}}
	for _, n := range nodes {
		tl.addrs = append(tl.addrs, n.mqttAddr)
		tl.pids = append(tl.pids, n.pid())
	}
	var results []benchResult
	r, err := benchOne(ctx, tl, devs, roots, o, logf)
	if err != nil {
		return err
	}
	results = append(results, r)
	for _, n := range nodes {
		n.stop()
	}

	mosqBin := ""
	switch o.mosquitto {
	case "off":
	case "auto":
		mosqBin, _ = exec.LookPath("mosquitto")
	default:
		mosqBin = o.mosquitto
	}
	if mosqBin != "" {
		m, err := startMosquitto(ctx, mosqBin, filepath.Join(work, "mosquitto"), pkiDir)
		if err != nil {
			return err
		}
		mt := benchTarget{name: "mosquitto", addrs: []string{m.addr}, pids: []int{m.cmd.Process.Pid}}
		r, err := benchOne(ctx, mt, devs, roots, o, logf)
		m.stop()
		if err != nil {
			return err
		}
		results = append(results, r)
	} else {
		logf("mosquitto not run (%s)", o.mosquitto)
	}

	if o.jsonOut {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	if o.fleet > 0 {
		printFleet(out, o, results)
	}
	if o.saturation {
		printBench(out, o, results)
	}
	return nil
}

func issueBenchDevices(ca *pki.CA, roots *x509.CertPool, n int, prefix string) ([]loadgen.Device, error) {
	devs := make([]loadgen.Device, n)
	verify := loadgen.ServerVerifier(roots, "127.0.0.1")
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	work := make(chan int)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := fmt.Sprintf("%s%06d", prefix, i)
				key, err := pki.GenerateKey(pki.KeyEC)
				if err == nil {
					var cert *x509.Certificate
					cert, err = ca.IssueDevice(key.Public(), name, 24*time.Hour)
					if err == nil {
						devs[i] = loadgen.Device{Name: name, TLS: &tls.Config{
							// Verified as crypto/tls would, once per distinct
							// server chain (see loadgen.ServerVerifier).
							InsecureSkipVerify: true,
							VerifyConnection:   verify,
							ServerName:         "127.0.0.1",
							Certificates: []tls.Certificate{{
								Certificate: [][]byte{cert.Raw},
								PrivateKey:  key,
								Leaf:        cert,
							}},
							ClientSessionCache: nil, // every handshake in full
							// What an ESP32's mbedTLS offers; Go's default would
							// also make a post-quantum key share on every
							// handshake, load-generator work neither server uses.
							CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
						}}
					}
				}
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	return devs, firstErr
}

func benchOne(ctx context.Context, t benchTarget, devs []loadgen.Device, roots *x509.CertPool, o benchOptions,
	logf func(string, ...any)) (benchResult, error) {
	r := benchResult{Server: t.name, Lost: -1}
	name := t.name
	sat := o.devices * len(o.concurrency)
	if o.fleet > 0 {
		if err := benchFleet(ctx, t, devs[sat:sat+o.fleet], roots, o, logf, &r); err != nil {
			return r, err
		}
	}
	var conns []*loadgen.Conn
	var idx []int
	var pubDevs []loadgen.Device
	for k, conc := range o.concurrency {
		if conns != nil {
			loadgen.CloseAll(conns)
		}
		// Every level with devices of its own: each handshake is a first
		// connection (for thingline, one that provisions a device).
		pubDevs = devs[k*o.devices : (k+1)*o.devices]
		logf("%s: %d handshakes, %d at a time", name, o.devices, conc)
		cpu0, gen0 := t.cpu(), selfCPU()
		var hs loadgen.HandshakeResult
		conns, idx, hs = loadgen.ConnectSpread(ctx, t.addrs, pubDevs, conc)
		cpu1, gen1 := t.cpu(), selfCPU()
		l := handshakeLevel{Concurrency: conc, PerS: hs.PerSecond(), Failed: hs.Failed}
		if hs.Connected > 0 {
			l.CPUPerHandshake = (cpu1 - cpu0) * 1000 / float64(hs.Connected)
			l.GenCPUPerHandshake = (gen1 - gen0) * 1000 / float64(hs.Connected)
		}
		r.Handshakes = append(r.Handshakes, l)
		if hs.Connected == 0 {
			return r, fmt.Errorf("%s: no device could connect: %v", name, hs.FirstErr)
		}
		if hs.FirstErr != nil {
			logf("%s: %d handshakes failed, first: %v", name, hs.Failed, hs.FirstErr)
		}
		logf("%s: %.0f handshakes/s", name, l.PerS)
	}
	var lostSum int64
	for k, window := range o.windows {
		// Each level's messages in a time range of their own, a day and
		// more in the past, so that the lost check can tell them apart.
		base := time.Now().Add(-24*time.Hour).UnixMilli() - int64(k)*100_000_000
		logf("%s: publishing QoS 1 for %v, %d in flight per device", name, o.duration, window)
		cpu1, gen1 := t.cpu(), selfCPU()
		pr := loadgen.Publish(ctx, conns, "v1/devices/me/telemetry", base, o.duration, window)
		cpu2, gen2 := t.cpu(), selfCPU()
		l := publishLevel{Window: window, MsgsPerS: pr.PerSecond(), Acked: pr.Acked,
			P50Ms: float64(pr.P50.Microseconds()) / 1000, P99Ms: float64(pr.P99.Microseconds()) / 1000}
		if pr.Acked > 0 {
			l.CPUPerMessage = (cpu2 - cpu1) * 1e6 / float64(pr.Acked)
			l.GenCPUPerMsg = (gen2 - gen1) * 1e6 / float64(pr.Acked)
		}
		r.Publish = append(r.Publish, l)
		r.Acked += pr.Acked
		logf("%s: %s", name, pr)
		if t.lost != nil && lostSum >= 0 {
			n := t.lost(pubDevs, idx, pr.AckedPerConn, base)
			if n < 0 {
				lostSum = -1
			} else {
				lostSum += n
			}
		}
	}
	loadgen.CloseAll(conns)
	if t.lost != nil && len(o.windows) > 0 {
		r.Lost = lostSum
	}
	if o.idle > 0 {
		time.Sleep(o.settle) // let the server settle after the load, as after the idle storm
		before := t.rss()
		logf("%s: opening %d idle connections (server RSS %d KB)", name, o.idle, before)
		idleConns, _, ih := loadgen.ConnectSpread(ctx, t.addrs, devs[:o.idle], idleConcurrency(o))
		time.Sleep(o.settle)
		after := t.rss()
		r.IdleConns = ih.Connected
		r.IdleHandshakesPerS = ih.PerSecond()
		if ih.Connected > 0 {
			r.KBPerConn = float64(after-before) / float64(ih.Connected)
		}
		logf("%s: %d idle connections, RSS %d KB → %.1f KB per connection", name, ih.Connected, after, r.KBPerConn)
		for _, c := range idleConns {
			c.Abort()
		}
	}
	return r, nil
}

// idleConcurrency is the handshakes in progress while the idle connections
// open: the first saturation level's, else the fleet's.
func idleConcurrency(o benchOptions) int {
	if len(o.concurrency) > 0 {
		return o.concurrency[0]
	}
	return o.fleetConcurrency
}

// cpuSeconds is the CPU time (user + system) the process has used.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; the fields that follow it do not.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	const ticks = 100 // USER_HZ on Linux
	return (utime + stime) / ticks, nil
}

func rssKB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading server memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// countLost looks every acknowledged message up through the API, a few
// devices at a time. It returns -1 when the check itself failed.
func countLost(httpAddr, token string, devs []loadgen.Device, idx []int, acked []int64, base int64, logf func(string, ...any)) int64 {
	client := &http.Client{Timeout: 30 * time.Second}
	// found counts one device's acknowledged messages the API returns.
	found := func(name string, n int64) (int64, error) {
		var got int64
		for from := int64(0); from < n; from += 10000 {
			to := min(from+10000, n) - 1
			u := fmt.Sprintf("http://%s/api/v1/devices/%s/telemetry?keys=seq&from=%d&to=%d&limit=10000&order=asc",
				httpAddr, name, base+from, base+to)
			req, _ := http.NewRequest("GET", u, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := client.Do(req)
			if err != nil {
				return 0, err
			}
			var res map[string][]json.RawMessage
			err = json.NewDecoder(resp.Body).Decode(&res)
			resp.Body.Close()
			if err != nil {
				return 0, fmt.Errorf("%s: %w", name, err)
			}
			got += int64(len(res["seq"]))
		}
		return got, nil
	}
	var lost atomic.Int64
	var failed atomic.Bool
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				k := int(next.Add(1) - 1)
				if k >= len(idx) {
					return
				}
				n := acked[k]
				got, err := found(devs[idx[k]].Name, n)
				if err != nil {
					if failed.CompareAndSwap(false, true) {
						logf("lost check: %v", err)
					}
					return
				}
				lost.Add(max(0, n-got))
			}
		}()
	}
	wg.Wait()
	if failed.Load() {
		return -1
	}
	return lost.Load()
}

type benchServer struct {
	cmd                *exec.Cmd
	mqttAddr, httpAddr string
	done               chan struct{}
	once               sync.Once
}

func (s *benchServer) pid() int { return s.cmd.Process.Pid }

func (s *benchServer) stop() {
	s.once.Do(func() {
		s.cmd.Process.Signal(os.Interrupt)
		select {
		case <-s.done:
		case <-time.After(20 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	})
}

var benchAddrLine = regexp.MustCompile(`devices connect to mqtts://(\S+), API at http://(\S+)`)

func startBenchServer(ctx context.Context, self, data, token string, extra ...string) (*benchServer, error) {
	// Every load-generating device comes from one address: the
	// per-address limits, there to stop one hostile address, are lifted
	// so that they do not measure themselves.
	args := append([]string{"serve", "--data", data, "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--admin-token", token,
		"--max-conns-per-addr", "1000000", "--max-handshakes-per-addr", "1000000", "--handshake-rate-per-addr", "1000000"}, extra...)
	cmd := exec.Command(self, args...)
	pr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &benchServer{cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := benchAddrLine.FindStringSubmatch(sc.Text()); m != nil && s.mqttAddr == "" {
				s.mqttAddr, s.httpAddr = m[1], m[2]
				close(ready)
			}
		}
	}()
	go func() { cmd.Wait(); close(s.done) }()
	select {
	case <-ready:
		return s, nil
	case <-s.done:
		return nil, errors.New("bench: thingline serve exited at start")
	case <-time.After(30 * time.Second):
		s.stop()
		return nil, errors.New("bench: thingline serve did not start")
	}
}

type mosqServer struct {
	cmd  *exec.Cmd
	addr string
}

func (m *mosqServer) stop() {
	m.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { m.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
	}
}

// startMosquitto runs Mosquitto with the same server certificate and
// device trust as thingline: require_certificate, the device CA and root
// as cafile, nothing persisted.
func startMosquitto(ctx context.Context, bin, dir, pkiDir string) (*mosqServer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	root, _ := os.ReadFile(filepath.Join(pkiDir, "root-ca.crt"))
	devCA, _ := os.ReadFile(filepath.Join(pkiDir, "device-ca.crt"))
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, append(root, devCA...), 0o600); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`per_listener_settings false
user root
allow_anonymous true
persistence false
log_dest stderr
log_type error
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
`, port, caFile, filepath.Join(pkiDir, "server.crt"), filepath.Join(pkiDir, "server.key"))
	confFile := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	// Go lowers a child's open-file limit back to the soft default; the
	// shell raises it again so that Mosquitto can hold the idle phase.
	cmd := exec.Command("sh", "-c", `ulimit -n "$(ulimit -Hn)"; exec "$0" -c "$1"`, bin, confFile)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: starting mosquitto: %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return &mosqServer{cmd: cmd, addr: addr}, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Kill()
	return nil, errors.New("bench: mosquitto did not listen")
}

// header writes a table's header: thingline, then each other server and
// the ratio to it.
func header(out io.Writer, rs []benchResult) {
	fmt.Fprintf(out, "| metric | %s |", rs[0].Server)
	for _, r := range rs[1:] {
		fmt.Fprintf(out, " %s | ratio |", r.Server)
	}
	fmt.Fprintln(out)
	fmt.Fprint(out, "|---|---|")
	for range rs[1:] {
		fmt.Fprint(out, "---|---|")
	}
	fmt.Fprintln(out)
}

// rowPrinter returns a function writing one row: the figure of each server
// and, beside each other server's, the ratio oriented so that above 1 means
// thingline is better.
func rowPrinter(out io.Writer, rs []benchResult) func(label string, v func(benchResult) float64, format string, higherBetter bool) {
	return func(label string, v func(benchResult) float64, format string, higherBetter bool) {
		fmt.Fprintf(out, "| %s | "+format+" |", label, v(rs[0]))
		for _, r := range rs[1:] {
			ratio := v(rs[0]) / v(r)
			if !higherBetter {
				ratio = v(r) / v(rs[0])
			}
			fmt.Fprintf(out, " "+format+" | %.2f× |", v(r), ratio)
		}
		fmt.Fprintln(out)
	}
}

func printBench(out io.Writer, o benchOptions, rs []benchResult) {
	fmt.Fprintf(out, "saturation (closed loop): devices %d per handshake level, publish %v per window, %d idle connections\n\n", o.devices, o.duration, o.idle)
	header(out, rs)
	row := rowPrinter(out, rs)
	hsRate := func(l handshakeLevel) float64 { return l.PerS }
	msgRate := func(l publishLevel) float64 { return l.MsgsPerS }
	for k, c := range o.concurrency {
		row(fmt.Sprintf("mTLS handshakes/s (P-256), %d at a time", c), func(r benchResult) float64 { return r.Handshakes[k].PerS }, "%.0f", true)
	}
	if len(o.concurrency) > 1 {
		row("**peak mTLS handshakes/s**", func(r benchResult) float64 { return peak(r.Handshakes, hsRate) }, "%.0f", true)
	}
	for k, w := range o.windows {
		row(fmt.Sprintf("acknowledged QoS 1 messages/s, window %d", w), func(r benchResult) float64 { return r.Publish[k].MsgsPerS }, "%.0f", true)
	}
	if len(o.windows) > 1 {
		row("**peak acknowledged QoS 1 messages/s**", func(r benchResult) float64 { return peak(r.Publish, msgRate) }, "%.0f", true)
	}
	for k, c := range o.concurrency {
		row(fmt.Sprintf("server CPU per handshake (ms), %d at a time", c), func(r benchResult) float64 { return r.Handshakes[k].CPUPerHandshake }, "%.2f", false)
	}
	for k, w := range o.windows {
		row(fmt.Sprintf("server CPU per acknowledged message (µs), window %d", w), func(r benchResult) float64 { return r.Publish[k].CPUPerMessage }, "%.1f", false)
	}
	for k, c := range o.concurrency {
		row(fmt.Sprintf("load generator CPU per handshake (ms), %d at a time", c), func(r benchResult) float64 { return r.Handshakes[k].GenCPUPerHandshake }, "%.2f", false)
	}
	for k, w := range o.windows {
		row(fmt.Sprintf("load generator CPU per acknowledged message (µs), window %d", w), func(r benchResult) float64 { return r.Publish[k].GenCPUPerMsg }, "%.1f", false)
	}
	for k, w := range o.windows {
		row(fmt.Sprintf("p50 acknowledgement latency (ms), window %d", w), func(r benchResult) float64 { return r.Publish[k].P50Ms }, "%.2f", false)
		row(fmt.Sprintf("p99 acknowledgement latency (ms), window %d", w), func(r benchResult) float64 { return r.Publish[k].P99Ms }, "%.2f", false)
	}
	if o.idle > 0 {
		row(fmt.Sprintf("mTLS handshakes/s while opening the %d idle connections", o.idle), func(r benchResult) float64 { return r.IdleHandshakesPerS }, "%.0f", true)
		row(fmt.Sprintf("KB per idle connection (%d)", o.idle), func(r benchResult) float64 { return r.KBPerConn }, "%.1f", false)
	}
	fmt.Fprintf(out, "\nlost acknowledged messages (thingline, checked through the API): %d of %d\n", rs[0].Lost, rs[0].Acked)
}
