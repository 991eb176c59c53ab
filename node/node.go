// Package node assembles one thingline cloud node: the storage, the bus,
// the TLS device gateway and the REST API, on the embedded defaults
// (SQLite in the data directory, in-process bus, development PKI) unless
// told otherwise.
package node

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/thingline/thingline/alarm"
	"github.com/thingline/thingline/api"
	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/inproc"
	tlnats "github.com/thingline/thingline/bus/nats"
	"github.com/thingline/thingline/certmon"
	"github.com/thingline/thingline/console"
	"github.com/thingline/thingline/gateway"
	"github.com/thingline/thingline/ota"
	"github.com/thingline/thingline/ownership"
	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/retention"
	"github.com/thingline/thingline/rpc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/postgres"
	"github.com/thingline/thingline/store/sqlite"
)

// Config configures a node. The zero value of every field but DataDir has
// a working default.
type Config struct {
	DataDir    string   // default ./thingline-data
	MQTTListen string   // default :8883
	HTTPListen string   // default 127.0.0.1:8080
	TLSCert    string   // server certificate (PEM, may hold the chain); default: the development PKI's
	TLSKey     string   // its key
	DeviceCAs  []string // PEM files of the device-issuing CAs; default: the development PKI's device CA
	// DeviceCAKey is the key of the first of DeviceCAs, which makes it the
	// online issuing CA (certificate rotation, the server's CRL); without
	// it a node given DeviceCAs neither rotates nor publishes a CRL.
	DeviceCAKey string
	AdminToken  string // default: the stored one, or a new one printed once
	StoreURL    string // "" or sqlite:PATH → SQLite; postgres://… → PostgreSQL
	BusURL      string // "" → in-process; nats://…[?prefix=NAME] → NATS (subjects under NAME, default thingline)
	NodeID      string // default: host name
	Profile     gateway.Profile
	// Gateway holds the device gateway's limits (per-address limits,
	// timeouts, the timestamp window); the certificate, CAs, profile,
	// store, bus, node and logger fields are the node's.
	Gateway gateway.Config
	// CertMonitor holds the certificate monitor's settings (expiry
	// threshold, sweep periods); its store, bus, node and logger are the node's.
	CertMonitor certmon.Config
	// Alarms configures device state and alarms (store, bus, node and
	// logger are the node's).
	Alarms alarm.Config
	// Retention configures the removal of old telemetry and events (store
	// and node are the node's).
	Retention retention.Config
	// APIBodyTimeout bounds the reading of a REST request body; 0 means 30 s.
	APIBodyTimeout time.Duration
	// OTA tunes the firmware update engine (timeouts, attempts, tick);
	// its Store, Bus and Logger are the node's.
	OTA    ota.Config
	Logger *slog.Logger
	// Out receives what a person starting the node must read: where the
	// development PKI is, the admin token the first time. Default stderr.
	Out io.Writer
}

// Node is a running node.
type Node struct {
	cfg     Config
	store   store.Store
	bus     bus.Bus
	gw      *gateway.Server
	rpc     *rpc.Dispatcher
	ota     *ota.Engine
	mqttLn  net.Listener
	httpLn  net.Listener
	httpSrv *http.Server
	token   string // only set when the node made it or was given it
	alarms  *alarm.Engine
	retain  *retention.Engine
	pkiDir  string
	// serverCert is the server certificate's leaf, for DeviceAddr.
	serverCert *x509.Certificate
	stopGC     context.CancelFunc
	certmon    *certmon.Monitor
	epochs     *ownership.Sweeper // wipes ended ownership epochs' data by policy
	closeMu    sync.Mutex
	closed     bool
	serveErr   chan error
}

// Start opens the listeners, the store and the bus, starts the gateway and
// the API, and returns once both listen. A failure is a *StartError naming
// what failed and what to do; nothing is printed and no admin token is
// stored before the node is up.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = "thingline-data"
	}
	if cfg.MQTTListen == "" {
		cfg.MQTTListen = ":8883"
	}
	if cfg.HTTPListen == "" {
		cfg.HTTPListen = "127.0.0.1:8080"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Out == nil {
		cfg.Out = os.Stderr
	}
	if cfg.NodeID == "" {
		h, _ := os.Hostname()
		cfg.NodeID = h
		if cfg.NodeID == "" {
			cfg.NodeID = "node"
		}
	}
	n := &Node{cfg: cfg, serveErr: make(chan error, 2)}
	// n is not the named result: a failure must still close what was
	// opened, with n intact.
	if err := n.start(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) (err error) {
	cfg := n.cfg
	// The URLs' kinds are checked before anything is opened or made.
	var storeKind string
	switch u := cfg.StoreURL; {
	case strings.HasPrefix(u, "postgres://"), strings.HasPrefix(u, "postgresql://"):
		storeKind = "postgres"
	case u == "":
		storeKind = "sqlite"
	case strings.HasPrefix(u, "sqlite:"):
		storeKind = "sqlite-path"
	default:
		return startErr("--store "+redactURL(u), errors.New("unknown kind of store"), "give postgres://USER@HOST/DB, sqlite:PATH, or nothing for SQLite in the data directory")
	}
	if u := cfg.BusURL; u != "" && !strings.HasPrefix(u, "nats://") && !strings.HasPrefix(u, "tls://") {
		return startErr("--bus "+redactURL(u), errors.New("unknown kind of bus"), "give nats://HOST:PORT, or nothing for the in-process bus")
	}
	if _, _, err := splitBusURL(cfg.BusURL); err != nil {
		return startErr("--bus "+redactURL(cfg.BusURL), err, "give nats://HOST:PORT, optionally ?prefix=NAME")
	}
	// Listeners first: a taken port is the commonest failure and costs
	// nothing to find before the data directory is touched.
	n.mqttLn, err = net.Listen("tcp", cfg.MQTTListen)
	if err != nil {
		return startErr("device listener "+cfg.MQTTListen, err, listenHint(err, "--mqtt-listen"))
	}
	n.httpLn, err = net.Listen("tcp", cfg.HTTPListen)
	if err != nil {
		return startErr("API listener "+cfg.HTTPListen, err, listenHint(err, "--http-listen"))
	}
	if err := pki.MkdirPrivate(cfg.DataDir); err != nil {
		return startErr("data directory "+cfg.DataDir, err, "check its permissions, or choose another with --data")
	}
	tlsCert, deviceCAs, pkiCreated, err := n.loadPKI()
	if err != nil {
		return err
	}
	tokenHash, commitToken, err := n.adminToken()
	if err != nil {
		return err
	}

	// Typed results first: a nil *postgres.Store in n.store would be a
	// non-nil interface that Close then calls.
	switch storeKind {
	case "postgres":
		st, err := postgres.Open(ctx, cfg.StoreURL)
		if err == nil {
			n.store = st
		}
		if err != nil {
			return startErr("opening store "+storeName(cfg), err, "check that PostgreSQL is running and reachable and that --store is right")
		}
	default:
		path := filepath.Join(cfg.DataDir, "thingline.db")
		if storeKind == "sqlite-path" {
			path = strings.TrimPrefix(strings.TrimPrefix(cfg.StoreURL, "sqlite:"), "//")
		}
		st, err := sqlite.Open(ctx, path)
		if err != nil {
			return startErr("opening store "+storeName(cfg), err, "check that the file is a thingline SQLite database and that its directory is writable")
		}
		n.store = st
	}
	if cfg.BusURL == "" {
		n.bus = inproc.New()
	} else {
		servers, prefix, _ := splitBusURL(cfg.BusURL) // checked above
		b, err := tlnats.Connect(servers, prefix)
		if err != nil {
			return startErr("connecting to bus "+redactURL(cfg.BusURL), errors.Unwrap(err), "check that the NATS server is running and reachable and that --bus is right")
		}
		n.bus = b
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	n.rpc, err = rpc.New(rpc.Config{Store: n.store, Bus: n.bus, Node: cfg.NodeID, Logger: cfg.Logger})
	if err != nil {
		return startErr("starting persistent RPC", err, "")
	}
	gwCfg := cfg.Gateway
	gwCfg.RPC = n.rpc
	gwCfg.TLSCertificate, gwCfg.DeviceCAs = tlsCert, deviceCAs
	gwCfg.Profile, gwCfg.Store, gwCfg.Bus = cfg.Profile, n.store, n.bus
	gwCfg.Node, gwCfg.Logger, gwCfg.Registerer = cfg.NodeID, cfg.Logger, reg
	issuer, err := n.issuer(deviceCAs)
	if err != nil {
		return err
	}
	if issuer != nil {
		gwCfg.Issuer = issuer
	}
	if gwCfg.Observer, err = n.startAlarms(ctx); err != nil {
		return startErr("starting alarms", err, "check the store named in the error")
	}
	n.startRetention()
	n.gw, err = gateway.New(gwCfg)
	if err != nil {
		return startErr("starting the device gateway", err, "check the store and bus named in the error")
	}
	if err := n.rpc.Start(n.gw.RPCReady); err != nil {
		return startErr("starting persistent RPC", err, "check the bus named in the error")
	}
	n.epochs = ownership.Start(ownership.Config{Store: n.store, Logger: n.cfg.Logger})
	otaCfg := cfg.OTA
	otaCfg.Store, otaCfg.Bus, otaCfg.Logger = n.store, n.bus, cfg.Logger
	if n.ota, err = ota.Start(otaCfg); err != nil {
		return startErr("starting the firmware update engine", err, "check the store and bus named in the error")
	}
	apiSrv := api.New(api.Config{
		Store:          n.store,
		Bus:            n.bus,
		AdminTokenHash: tokenHash,
		Node:           cfg.NodeID,
		Logger:         cfg.Logger,
		Gatherer:       reg,
		Registerer:     reg,
		BodyTimeout:    cfg.APIBodyTimeout,
		CRLIssuer:      issuer,
		CRLAnchors:     deviceCAs,
	})
	// The console shares the API's address: its pages under /console/,
	// its data through the API handler itself.
	root := http.NewServeMux()
	root.Handle("/", apiSrv)
	con := console.New(console.Config{API: apiSrv, Logger: cfg.Logger})
	root.Handle("/console/", con)
	root.Handle("GET /console", con)
	root.Handle("GET /{$}", con)
	n.startCertMonitor(gwCfg.RotationGrace)
	n.httpSrv = api.HTTPServer(root)
	gcCtx, stopGC := context.WithCancel(context.Background())
	n.stopGC = stopGC
	go governGC(gcCtx, n.gw.Packets, n.gw.Handshakes, cfg.Logger)
	go func() { n.serveErr <- n.gw.Serve(n.mqttLn) }()
	go func() {
		err := n.httpSrv.Serve(n.httpLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		n.serveErr <- err
	}()
	// Up: only now is anything said or kept as if the node had started.
	if err := commitToken(); err != nil {
		return err
	}
	if pkiCreated {
		fmt.Fprintf(cfg.Out, "thingline: created a development PKI in %s\n", n.pkiDir)
		fmt.Fprintf(cfg.Out, "  devices trust the server with %s (flash it as server_chain.pem)\n", filepath.Join(n.pkiDir, "root-ca.crt"))
		fmt.Fprintf(cfg.Out, "  device certificates are issued by %s (thingline factory inject --ca-dir %s)\n", filepath.Join(n.pkiDir, "device-ca.crt"), n.pkiDir)
	}
	cfg.Logger.Info("thingline node started", "node", cfg.NodeID, "mqtts", n.mqttLn.Addr().String(),
		"http", n.httpLn.Addr().String(), "data", cfg.DataDir)
	return nil
}

// loadPKI returns the server certificate and the device trust anchors,
// making the development PKI on first start when none is given.
func (n *Node) loadPKI() (cert tls.Certificate, cas []*x509.Certificate, created bool, err error) {
	cfg := n.cfg
	n.pkiDir = filepath.Join(cfg.DataDir, "pki")
	if cfg.TLSCert == "" && cfg.TLSKey != "" {
		return cert, nil, false, startErr("--tls-key "+cfg.TLSKey, errors.New("given without --tls-cert"), "give the certificate with --tls-cert too")
	}
	if cfg.TLSCert != "" && cfg.TLSKey == "" {
		return cert, nil, false, startErr("--tls-cert "+cfg.TLSCert, errors.New("given without --tls-key"), "give its private key with --tls-key too")
	}
	if cfg.TLSCert == "" || len(cfg.DeviceCAs) == 0 {
		created, err = pki.EnsureDevPKI(cfg.DataDir, nil)
		if err != nil {
			return cert, nil, false, startErr("development PKI in "+n.pkiDir, err, "check the data directory's permissions, or give --tls-cert, --tls-key and --device-ca")
		}
	}
	certFile, keyFile := cfg.TLSCert, cfg.TLSKey
	if certFile == "" {
		certFile, keyFile = filepath.Join(n.pkiDir, "server.crt"), filepath.Join(n.pkiDir, "server.key")
	}
	cert, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return cert, nil, false, startErr("server certificate "+certFile+" with key "+keyFile, err,
			"give a readable PEM certificate chain with --tls-cert and its own private key with --tls-key")
	}
	n.serverCert = cert.Leaf
	caFiles := cfg.DeviceCAs
	if len(caFiles) == 0 {
		caFiles = []string{filepath.Join(n.pkiDir, "device-ca.crt")}
	}
	const caHint = "give with --device-ca the PEM certificate of the CA that issues device certificates"
	for _, f := range caFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return cert, nil, false, startErr("device CA "+f, err, caHint)
		}
		certs, err := pki.ParseCertsPEM(b)
		if err != nil {
			return cert, nil, false, startErr("device CA "+f, err, caHint)
		}
		if len(certs) == 0 {
			return cert, nil, false, startErr("device CA "+f, errors.New("holds no PEM certificate"), caHint)
		}
		for _, c := range certs {
			if !c.IsCA {
				return cert, nil, false, startErr("device CA "+f, fmt.Errorf("%q is not a CA certificate", c.Subject.CommonName), caHint)
			}
		}
		cas = append(cas, certs...)
	}
	return cert, cas, created, nil
}

// adminToken settles the admin token: the configured one, else the one
// stored (as a hash) by an earlier start, else a new one. Nothing is
// stored or printed until commit is called, once the node is up: a start
// that fails must not use up the one showing of a new token.
func (n *Node) adminToken() (hash [32]byte, commit func() error, err error) {
	hashFile := filepath.Join(n.cfg.DataDir, "admin-token.sha256")
	var stored *[32]byte
	if b, err := os.ReadFile(hashFile); err == nil {
		var h [32]byte
		raw, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(raw) != 32 {
			if n.cfg.AdminToken == "" {
				return h, nil, startErr("admin token hash "+hashFile, errors.New("corrupt"), "remove it to make a new token, or pass --admin-token")
			}
		} else {
			copy(h[:], raw)
			stored = &h
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return hash, nil, startErr("admin token hash "+hashFile, err, "check the data directory's permissions")
	}
	store := func(h [32]byte) error {
		if err := pki.WriteFileAtomic(hashFile, []byte(hex.EncodeToString(h[:])+"\n"), 0o600); err != nil {
			return startErr("storing the admin token hash", err, "check the data directory's permissions")
		}
		return nil
	}
	if tok := n.cfg.AdminToken; tok != "" {
		n.token = tok
		h := api.HashToken(tok)
		if stored != nil && *stored == h {
			return h, func() error { return nil }, nil
		}
		return h, func() error {
			if err := store(h); err != nil {
				return err
			}
			if stored != nil {
				fmt.Fprintf(n.cfg.Out, "thingline: the admin token given with --admin-token (or THINGLINE_ADMIN_TOKEN) replaces the one stored in %s; the old token no longer works\n", hashFile)
			}
			return nil
		}, nil
	}
	if stored != nil {
		return *stored, func() error { return nil }, nil
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return hash, nil, startErr("making an admin token", err, "check the system's random source")
	}
	tok := "tl_" + base64.RawURLEncoding.EncodeToString(raw[:])
	h := api.HashToken(tok)
	return h, func() error {
		if err := store(h); err != nil {
			return err
		}
		n.token = tok
		fmt.Fprintf(n.cfg.Out, "thingline: admin API token (shown once, only its hash is kept): %s\n", tok)
		return nil
	}, nil
}

// MQTTAddr is the device listener's address.
func (n *Node) MQTTAddr() string { return n.mqttLn.Addr().String() }

// HTTPAddr is the API listener's address.
func (n *Node) HTTPAddr() string { return n.httpLn.Addr().String() }

// AdminToken is the admin token when this node was given it or made it;
// empty when only its hash is known.
func (n *Node) AdminToken() string { return n.token }

// PKIDir is the development PKI directory.
func (n *Node) PKIDir() string { return n.pkiDir }

// Store is the node's store.
func (n *Node) Store() store.Store { return n.store }

// Bus is the node's bus.
func (n *Node) Bus() bus.Bus { return n.bus }

// Wait blocks until a listener fails or ctx is done.
func (n *Node) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-n.serveErr:
		return err
	}
}

// Close stops the node: no new connections, sessions closed (devices
// marked offline), pending writes flushed, store closed.
func (n *Node) Close() error {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	if n.stopGC != nil {
		n.stopGC()
	}
	if n.certmon != nil {
		n.certmon.Stop()
	}
	if n.epochs != nil {
		n.epochs.Stop()
	}
	var errs []error
	if n.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, n.httpSrv.Shutdown(ctx))
		cancel()
	} else if n.httpLn != nil {
		n.httpLn.Close()
	}
	if n.rpc != nil {
		n.rpc.Close()
	}
	if n.gw != nil {
		errs = append(errs, n.gw.Close())
	} else if n.mqttLn != nil {
		n.mqttLn.Close()
	}
	if n.alarms != nil {
		n.alarms.Close()
	}
	if n.retain != nil {
		n.retain.Close()
	}
	if n.ota != nil {
		n.ota.Close()
	}
	if n.bus != nil {
		errs = append(errs, n.bus.Close())
	}
	if n.store != nil {
		errs = append(errs, n.store.Close())
	}
	return errors.Join(errs...)
}
