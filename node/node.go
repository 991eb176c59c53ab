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

	"github.com/thingline/thingline/api"
	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/inproc"
	tlnats "github.com/thingline/thingline/bus/nats"
	"github.com/thingline/thingline/gateway"
	"github.com/thingline/thingline/pki"
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
	AdminToken string   // default: the stored one, or a new one printed once
	StoreURL   string   // "" or sqlite:PATH → SQLite; postgres://… → PostgreSQL
	BusURL     string   // "" → in-process; nats://… → NATS
	NodeID     string   // default: host name
	Profile    gateway.Profile
	Logger     *slog.Logger
	// Out receives what a person starting the node must read: where the
	// development PKI is, the admin token the first time. Default stderr.
	Out io.Writer
}

// Node is a running node.
type Node struct {
	cfg      Config
	store    store.Store
	bus      bus.Bus
	gw       *gateway.Server
	mqttLn   net.Listener
	httpLn   net.Listener
	httpSrv  *http.Server
	token    string // only set when the node made it or was given it
	pkiDir   string
	stopGC   context.CancelFunc
	closeMu  sync.Mutex
	closed   bool
	serveErr chan error
}

// Start opens the store and bus, starts the gateway and the API, and
// returns once both listen.
func Start(ctx context.Context, cfg Config) (n *Node, err error) {
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
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("node: creating data directory: %w", err)
	}
	n = &Node{cfg: cfg, serveErr: make(chan error, 2)}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()

	tlsCert, deviceCAs, err := n.loadPKI()
	if err != nil {
		return nil, err
	}
	tokenHash, err := n.adminToken()
	if err != nil {
		return nil, err
	}

	switch u := cfg.StoreURL; {
	case strings.HasPrefix(u, "postgres://"), strings.HasPrefix(u, "postgresql://"):
		n.store, err = postgres.Open(ctx, u)
	case u == "":
		n.store, err = sqlite.Open(ctx, filepath.Join(cfg.DataDir, "thingline.db"))
	case strings.HasPrefix(u, "sqlite:"):
		n.store, err = sqlite.Open(ctx, strings.TrimPrefix(strings.TrimPrefix(u, "sqlite:"), "//"))
	default:
		return nil, fmt.Errorf("node: --store %q: want postgres://… or sqlite:PATH", u)
	}
	if err != nil {
		return nil, fmt.Errorf("node: opening store: %w", err)
	}

	switch u := cfg.BusURL; {
	case u == "":
		n.bus = inproc.New()
	case strings.HasPrefix(u, "nats://"), strings.HasPrefix(u, "tls://"):
		n.bus, err = tlnats.Connect(u, "")
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("node: --bus %q: want nats://…", u)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	n.gw, err = gateway.New(gateway.Config{
		TLSCertificate: tlsCert,
		DeviceCAs:      deviceCAs,
		Profile:        cfg.Profile,
		Store:          n.store,
		Bus:            n.bus,
		Node:           cfg.NodeID,
		Logger:         cfg.Logger,
		Registerer:     reg,
	})
	if err != nil {
		return nil, fmt.Errorf("node: gateway: %w", err)
	}
	n.mqttLn, err = net.Listen("tcp", cfg.MQTTListen)
	if err != nil {
		return nil, fmt.Errorf("node: device listener: %w", err)
	}
	n.httpLn, err = net.Listen("tcp", cfg.HTTPListen)
	if err != nil {
		return nil, fmt.Errorf("node: HTTP listener: %w", err)
	}
	apiSrv := api.New(api.Config{
		Store:          n.store,
		Bus:            n.bus,
		AdminTokenHash: tokenHash,
		Node:           cfg.NodeID,
		Logger:         cfg.Logger,
		Gatherer:       reg,
	})
	n.httpSrv = &http.Server{
		Handler:           apiSrv,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
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
	cfg.Logger.Info("thingline node started", "node", cfg.NodeID, "mqtts", n.mqttLn.Addr().String(),
		"http", n.httpLn.Addr().String(), "data", cfg.DataDir)
	return n, nil
}

// loadPKI returns the server certificate and the device trust anchors,
// making the development PKI on first start when none is given.
func (n *Node) loadPKI() (tls.Certificate, []*x509.Certificate, error) {
	cfg := n.cfg
	n.pkiDir = filepath.Join(cfg.DataDir, "pki")
	if cfg.TLSCert == "" || len(cfg.DeviceCAs) == 0 {
		created, err := pki.EnsureDevPKI(cfg.DataDir, nil)
		if err != nil {
			return tls.Certificate{}, nil, fmt.Errorf("node: development PKI: %w", err)
		}
		if created {
			fmt.Fprintf(cfg.Out, "thingline: created a development PKI in %s\n", n.pkiDir)
			fmt.Fprintf(cfg.Out, "  devices trust the server with %s (flash it as server_chain.pem)\n", filepath.Join(n.pkiDir, "root-ca.crt"))
			fmt.Fprintf(cfg.Out, "  device certificates are issued by %s (thingline factory inject --ca-dir %s)\n", filepath.Join(n.pkiDir, "device-ca.crt"), n.pkiDir)
		}
	}
	certFile, keyFile := cfg.TLSCert, cfg.TLSKey
	if certFile == "" {
		certFile, keyFile = filepath.Join(n.pkiDir, "server.crt"), filepath.Join(n.pkiDir, "server.key")
	} else if keyFile == "" {
		return tls.Certificate{}, nil, errors.New("node: --tls-cert needs --tls-key")
	}
	tlsCert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("node: server certificate: %w", err)
	}
	caFiles := cfg.DeviceCAs
	if len(caFiles) == 0 {
		caFiles = []string{filepath.Join(n.pkiDir, "device-ca.crt")}
	}
	var cas []*x509.Certificate
	for _, f := range caFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return tls.Certificate{}, nil, fmt.Errorf("node: device CA: %w", err)
		}
		certs, err := pki.ParseCertsPEM(b)
		if err != nil {
			return tls.Certificate{}, nil, fmt.Errorf("node: device CA %s: %w", f, err)
		}
		if len(certs) == 0 {
			return tls.Certificate{}, nil, fmt.Errorf("node: device CA %s holds no certificate", f)
		}
		for _, c := range certs {
			if !c.IsCA {
				return tls.Certificate{}, nil, fmt.Errorf("node: device CA %s: %q is not a CA certificate", f, c.Subject.CommonName)
			}
		}
		cas = append(cas, certs...)
	}
	return tlsCert, cas, nil
}

// adminToken settles the admin token: the configured one, else the one
// stored (as a hash) by an earlier start, else a new one, printed once.
func (n *Node) adminToken() ([32]byte, error) {
	hashFile := filepath.Join(n.cfg.DataDir, "admin-token.sha256")
	if n.cfg.AdminToken != "" {
		n.token = n.cfg.AdminToken
		return api.HashToken(n.cfg.AdminToken), nil
	}
	if b, err := os.ReadFile(hashFile); err == nil {
		var h [32]byte
		raw, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(raw) != 32 {
			return h, fmt.Errorf("node: %s is corrupt; remove it to make a new token, or pass --admin-token", hashFile)
		}
		copy(h[:], raw)
		return h, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return [32]byte{}, fmt.Errorf("node: reading admin token: %w", err)
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return [32]byte{}, err
	}
	tok := "tl_" + base64.RawURLEncoding.EncodeToString(raw[:])
	h := api.HashToken(tok)
	if err := pki.WriteFileAtomic(hashFile, []byte(hex.EncodeToString(h[:])+"\n"), 0o600); err != nil {
		return h, fmt.Errorf("node: storing admin token hash: %w", err)
	}
	n.token = tok
	fmt.Fprintf(n.cfg.Out, "thingline: admin API token (shown once, only its hash is kept): %s\n", tok)
	return h, nil
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
	var errs []error
	if n.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, n.httpSrv.Shutdown(ctx))
		cancel()
	} else if n.httpLn != nil {
		n.httpLn.Close()
	}
	if n.gw != nil {
		errs = append(errs, n.gw.Close())
	} else if n.mqttLn != nil {
		n.mqttLn.Close()
	}
	if n.bus != nil {
		errs = append(errs, n.bus.Close())
	}
	if n.store != nil {
		errs = append(errs, n.store.Close())
	}
	return errors.Join(errs...)
}
