// Package demo runs the whole life of a thingline device on one machine:
// a cloud node on its embedded defaults, a factory run that injects units
// with the node's development PKI, one device twin per unit booting from
// its SPIFFS image, provisioning of each twin over Espressif's protocol,
// and the units streaming through the gateway into the REST API.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/thingline/thingline/filelock"
	"github.com/thingline/thingline/gateway"
	"github.com/thingline/thingline/node"
)

// Defaults of Options.
const (
	DefaultDir        = "thingline-demo"
	DefaultUnits      = 5
	DefaultHTTPListen = "127.0.0.1:8080"
	DefaultMQTTListen = "127.0.0.1:8883"
	DefaultSSID       = "thingline-demo"
	DefaultPassphrase = "demo-pass-123"
	// MaxUnits bounds a demo: each twin has its own provisioning service
	// and scheduler, and the terminal line must stay readable.
	MaxUnits = 50
)

// Options configure a demo run. The zero value runs the default demo.
type Options struct {
	Dir      string        // state kept across runs; default ./thingline-demo
	Units    int           // how many units to run; default 5
	Duration time.Duration // how long to stream once every unit is up; 0 means until ctx is done
	// HTTPListen and MQTTListen are where the node listens. When the
	// address is taken, an ephemeral port on the same host is used.
	HTTPListen string
	MQTTListen string
	Interval   time.Duration // twins' telemetry period; default 1 s
	Tick       time.Duration // period of the terminal's stream line; default 1 s
	SSID       string        // the simulated Wi-Fi network the twins are given
	Passphrase string
	// Timeout bounds each setup phase (provisioning one unit, waiting for
	// the fleet in the cloud); default 30 s.
	Timeout time.Duration
	// Logger receives the node's log; default: warnings and errors to out.
	Logger *slog.Logger
	// Ready, when set, is called once every unit is provisioned and
	// streaming, before the stream starts; a headless caller uses it to
	// reach the API.
	Ready func(Ready)
}

// Ready is what a running demo offers.
type Ready struct {
	APIBase    string   // http://HOST:PORT/api/v1
	AdminToken string   // bearer token of the API
	MQTTAddr   string   // where the devices connect (MQTT over TLS)
	Units      []string // serial numbers, which are the device names
	Dir        string   // absolute demo directory
}

func (o *Options) defaults() error {
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	if o.Units == 0 {
		o.Units = DefaultUnits
	}
	if o.Units < 0 || o.Units > MaxUnits {
		return fmt.Errorf("demo: %d units: want 1 to %d", o.Units, MaxUnits)
	}
	if o.Duration < 0 {
		return fmt.Errorf("demo: negative duration %v", o.Duration)
	}
	if o.HTTPListen == "" {
		o.HTTPListen = DefaultHTTPListen
	}
	if o.MQTTListen == "" {
		o.MQTTListen = DefaultMQTTListen
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Tick <= 0 {
		o.Tick = time.Second
	}
	if o.SSID == "" {
		o.SSID = DefaultSSID
	}
	if o.Passphrase == "" {
		o.Passphrase = DefaultPassphrase
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	o.Dir = dir
	return nil
}

// lockedWriter serializes whole writes: the twins, the node's logger and
// the demo itself all print to the same terminal.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) printf(format string, args ...any) {
	fmt.Fprintf(l, format, args...)
}

// Run runs the demo until ctx is done (or opt.Duration of streaming has
// passed), then stops the twins and the node and prints a summary. A
// cancelled ctx is the normal way to stop: Run then returns nil.
func Run(ctx context.Context, opt Options, out io.Writer) error {
	if err := opt.defaults(); err != nil {
		return err
	}
	start := time.Now()
	w := &lockedWriter{w: out}
	if err := os.MkdirAll(opt.Dir, 0o700); err != nil {
		return fmt.Errorf("demo: creating %s: %w", opt.Dir, err)
	}
	// Two demos on one directory would share one SQLite file and take each
	// other's twins' sessions over.
	unlock, err := filelock.TryLock(filepath.Join(opt.Dir, ".lock"))
	if errors.Is(err, filelock.ErrLocked) {
		return fmt.Errorf("demo: %s is in use by another running demo (use --dir)", opt.Dir)
	}
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer unlock()
	token, err := loadToken(filepath.Join(opt.Dir, tokenFile))
	if err != nil {
		return err
	}
	w.printf("thingline demo: the whole life of %s on this machine (state in %s)\n\n", count(opt.Units, "unit"), opt.Dir)

	// 1. The cloud.
	w.printf("== cloud: starting a node on embedded defaults (SQLite, in-process bus, development PKI)\n")
	n, err := startNode(ctx, opt, token, w)
	if err != nil {
		return err
	}
	nodeClosed := false
	closeNode := func() error {
		if nodeClosed {
			return nil
		}
		nodeClosed = true
		return n.Close()
	}
	defer closeNode()
	apiBase := "http://" + loopback(n.HTTPAddr()) + "/api/v1"
	broker := "mqtts://" + loopback(n.MQTTAddr())
	w.printf("   API  %s\n   MQTT %s (TLS, devices authenticate with their certificate)\n\n", apiBase, broker)
	cl := newAPIClient(apiBase, token)
	defer cl.close()

	// 2. The factory.
	w.printf("== factory: units signed by the node's device CA (%s)\n", n.PKIDir())
	units, err := prepareUnits(ctx, opt, n.PKIDir(), w)
	if err != nil {
		return stopped(ctx, w, err)
	}
	pushed, err := pushRegistry(ctx, opt, "http://"+loopback(n.HTTPAddr()), token)
	if err != nil {
		return stopped(ctx, w, err)
	}
	w.printf("   pushed %d produced units to the cloud's registry (factory push)\n\n", pushed)

	// 3. The twins, provisioned one after the other so the steps read in order.
	w.printf("== devices: booting %s from their spiffs.bin, provisioning over protocomm (softap, security 1)\n", count(len(units), "twin"))
	fleet, err := bootTwins(ctx, opt, units, broker, w)
	if err != nil {
		return stopped(ctx, w, err)
	}
	stopFleet := func() {
		if fleet != nil {
			fleet.stop()
			fleet = nil
		}
	}
	defer stopFleet()
	for _, u := range units {
		if err := provisionUnit(ctx, opt, fleet, u, w); err != nil {
			return stopped(ctx, w, err)
		}
	}
	w.printf("\n== cloud: waiting for every unit to be auto-provisioned and streaming\n")
	if err := waitStreaming(ctx, opt, cl, fleet, units, start, w); err != nil {
		return stopped(ctx, w, err)
	}

	// 4. What to open.
	sns := make([]string, len(units))
	for i, u := range units {
		sns[i] = u.sn
	}
	printOpen(ctx, w, cl, apiBase, token, n, sns)
	if opt.Ready != nil {
		opt.Ready(Ready{APIBase: apiBase, AdminToken: token, MQTTAddr: loopback(n.MQTTAddr()), Units: sns, Dir: opt.Dir})
	}

	// 5. The stream.
	streamStart := time.Now()
	sctx := ctx
	if opt.Duration > 0 {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(ctx, opt.Duration)
		defer cancel()
	}
	stream(sctx, opt, cl, fleet, sns, w)

	// 6. Stop: the summary is read from the API before the node goes.
	w.printf("\n== stopping\n")
	counts := countSamples(cl, sns, start)
	stats := fleet.stats()
	stopFleet()
	w.printf("   %s stopped\n", count(len(units), "twin"))
	if err := closeNode(); err != nil {
		return fmt.Errorf("demo: closing the node: %w", err)
	}
	w.printf("   node stopped\n\n")
	printSummary(w, opt, sns, counts, stats, time.Since(start), time.Since(streamStart))
	return nil
}

// stopped turns an error caused by the cancellation of ctx into a clean
// stop: Ctrl-C during the setup is not a failure. The deferred stops of
// Run then end the twins before the node.
func stopped(ctx context.Context, w *lockedWriter, err error) error {
	if ctx.Err() != nil {
		w.printf("\n== interrupted during the setup: stopping the twins and the node\n")
		return nil
	}
	return err
}

// startNode starts the node, moving to an ephemeral port when a default
// port is taken, as a second demo on the same machine would find it.
func startNode(ctx context.Context, opt Options, token string, w *lockedWriter) (*node.Node, error) {
	logger := opt.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	cfg := node.Config{
		DataDir:    filepath.Join(opt.Dir, "node"),
		MQTTListen: freeOrEphemeral(opt.MQTTListen, w),
		HTTPListen: freeOrEphemeral(opt.HTTPListen, w),
		AdminToken: token,
		NodeID:     "demo",
		Profile:    gateway.DefaultProfile(),
		Logger:     logger,
		Out:        indent{w},
	}
	n, err := node.Start(ctx, cfg)
	if err != nil && isAddrInUse(err) {
		// Someone took the port between the probe and the listen.
		cfg.MQTTListen, cfg.HTTPListen = ephemeral(cfg.MQTTListen), ephemeral(cfg.HTTPListen)
		n, err = node.Start(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("demo: starting the node: %w", err)
	}
	return n, nil
}

// freeOrEphemeral returns addr when it can be listened on now, else the
// same host with port 0.
func freeOrEphemeral(addr string, w *lockedWriter) string {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		ln.Close()
		return addr
	}
	e := ephemeral(addr)
	w.printf("   %s is not available (%v); using an ephemeral port\n", addr, errors.Unwrap(err))
	return e
}

func ephemeral(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, "0")
}

func isAddrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }

// loopback makes a listener address dialable from this machine: a node
// listening on every interface is reached on 127.0.0.1, a name the
// development server certificate always carries.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// indent prefixes what the node prints (the PKI it made) to fit the demo's
// layout.
type indent struct{ w io.Writer }

func (i indent) Write(p []byte) (int, error) {
	s := strings.TrimRight(string(p), "\n")
	s = "   " + strings.ReplaceAll(s, "\n", "\n   ") + "\n"
	if _, err := io.WriteString(i.w, s); err != nil {
		return 0, err
	}
	return len(p), nil
}

func printSummary(w *lockedWriter, opt Options, sns []string, counts map[string]int, stats fleetStats, total, streamed time.Duration) {
	w.printf("== summary\n")
	w.printf("   %s provisioned over protocomm and auto-provisioned in the cloud\n", count(len(sns), "unit"))
	sum := 0
	keys := append([]string(nil), sns...)
	sort.Strings(keys)
	for _, sn := range keys {
		c, ok := counts[sn]
		if !ok {
			w.printf("   %-12s samples unknown (API unavailable)\n", sn)
			continue
		}
		sum += c
		w.printf("   %-12s %d samples stored this run\n", sn, c)
	}
	w.printf("   %d samples stored; the twins sent %d QoS 1 publishes (telemetry and attributes), %d acknowledged; RPCs answered: %d\n",
		sum, stats.sent, stats.acked, stats.rpcs)
	w.printf("   ran %v (streamed %v); state kept in %s, a next run reuses it\n",
		total.Round(100*time.Millisecond), streamed.Round(100*time.Millisecond), opt.Dir)
}

// count says "1 unit" or "5 units".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
