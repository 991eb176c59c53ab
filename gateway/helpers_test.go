package gateway

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	pahopackets "github.com/eclipse/paho.golang/packets"
	paho "github.com/eclipse/paho.golang/paho"
	paholog "github.com/eclipse/paho.golang/paho/log"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
	"github.com/thingline/thingline/tstest"
)

// testCA is a CA made in the test: P-256 keys, as the factory makes them.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

var serialCounter = struct {
	sync.Mutex
	n int64
}{n: 1000}

func nextSerial() *big.Int {
	serialCounter.Lock()
	defer serialCounter.Unlock()
	serialCounter.n++
	return big.NewInt(serialCounter.n)
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newRootCA(t testing.TB, cn string) *testCA {
	k := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	return &testCA{cert: sign(t, tmpl, tmpl, k.Public(), k), key: k}
}

func (ca *testCA) sub(t testing.TB, cn string) *testCA {
	k := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	return &testCA{cert: sign(t, tmpl, ca.cert, k.Public(), ca.key), key: k}
}

type leafOpt func(*x509.Certificate)

func validity(nb, na time.Time) leafOpt {
	return func(c *x509.Certificate) { c.NotBefore, c.NotAfter = nb, na }
}

// device issues a device certificate; the returned tls.Certificate
// carries the leaf followed by the issuing CA, as devices send it.
func (ca *testCA) device(t testing.TB, cn string, opts ...leafOpt) (tls.Certificate, *x509.Certificate) {
	k := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, o := range opts {
		o(tmpl)
	}
	leaf := sign(t, tmpl, ca.cert, k.Public(), ca.key)
	return tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.cert.Raw}, PrivateKey: k, Leaf: leaf}, leaf
}

func selfSigned(t testing.TB, cn string) tls.Certificate {
	k := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	c := sign(t, tmpl, tmpl, k.Public(), k)
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
}

// env is a gateway on loopback with a real SQLite store and the
// in-process bus.
type env struct {
	srv      *Server
	st       *sqlite.Store
	bus      *inproc.Bus
	addr     string
	root     *testCA
	inter    *testCA // the configured device CA
	srvRoots *x509.CertPool
	srvCA    *testCA
	dir      string
	cfg      Config
}

func newEnv(t *testing.T, mod func(*env, *Config)) *env {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "thingline.db"))
	if err != nil {
		t.Fatal(err)
	}
	b := inproc.New()
	e := &env{st: st, bus: b, dir: dir}
	e.root = newRootCA(t, "Test Root CA")
	e.inter = e.root.sub(t, "Test Device CA")
	e.srvCA = newRootCA(t, "Test Server CA")
	sk := newKey(t)
	stmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: "gateway"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	sc := sign(t, stmpl, e.srvCA.cert, sk.Public(), e.srvCA.key)
	e.srvRoots = x509.NewCertPool()
	e.srvRoots.AddCert(e.srvCA.cert)
	cfg := Config{
		TLSCertificate: tls.Certificate{Certificate: [][]byte{sc.Raw}, PrivateKey: sk},
		DeviceCAs:      []*x509.Certificate{e.inter.cert},
		Store:          st, Bus: b, Node: "node-1",
		Registerer: prometheus.NewRegistry(),
	}
	if mod != nil {
		mod(e, &cfg)
	}
	e.cfg = cfg
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("closing server: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		b.Close()
		st.Close()
	})
	return e
}

func (e *env) clientTLS(cert *tls.Certificate) *tls.Config {
	c := &tls.Config{RootCAs: e.srvRoots, ServerName: "127.0.0.1"}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// received collects messages delivered to a test client.
type received struct {
	mu   sync.Mutex
	msgs []msg
}

type msg struct {
	topic   string
	payload string
	qos     byte
}

func (r *received) add(m msg) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
}

// wait returns the first message on topic.
func (r *received) wait(t *testing.T, topic string) msg {
	t.Helper()
	var got msg
	tstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, m := range r.msgs {
			if m.topic == topic {
				got = m
				return nil
			}
		}
		return fmt.Errorf("no message on %s (have %v)", topic, r.msgs)
	})
	return got
}

type v5client struct {
	*paho.Client
	rx           received
	disconnected chan *paho.Disconnect
}

// v5 connects an MQTT 5 client (paho.golang) with cert.
func (e *env) v5(t *testing.T, cert tls.Certificate) *v5client {
	t.Helper()
	c, ack, err := e.tryV5(cert)
	if err != nil {
		t.Fatalf("mqtt5 connect: %v", err)
	}
	if ack.ReasonCode != 0 {
		t.Fatalf("mqtt5 connack reason %#x", ack.ReasonCode)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c
}

func (e *env) tryV5(cert tls.Certificate) (*v5client, *paho.Connack, error) {
	conn, err := tls.Dial("tcp", e.addr, e.clientTLS(&cert))
	if err != nil {
		return nil, nil, err
	}
	c := &v5client{disconnected: make(chan *paho.Disconnect, 1)}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: pahopackets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			c.rx.add(msg{topic: p.Packet.Topic, payload: string(p.Packet.Payload), qos: p.Packet.QoS})
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case c.disconnected <- d:
			default:
			}
		},
		PacketTimeout: 5 * time.Second,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho.Connect{KeepAlive: 30, ClientID: "test", CleanStart: true})
	if err != nil {
		conn.Close()
		return nil, ack, err
	}
	return c, ack, nil
}

func (c *v5client) sub(t *testing.T, filters ...string) []byte {
	t.Helper()
	s := &paho.Subscribe{}
	for _, f := range filters {
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{Topic: f, QoS: 1})
	}
	ack, err := c.Subscribe(context.Background(), s)
	if ack == nil {
		t.Fatalf("subscribe: %v", err)
	}
	return ack.Reasons
}

// pub publishes with QoS 1 and returns the PUBACK reason code.
func (c *v5client) pub(t *testing.T, topic, payload string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if r == nil {
		t.Fatalf("publish on %s: %v", topic, err)
	}
	return r.ReasonCode
}

type v3client struct {
	mqtt3.Client
	rx   received
	lost chan error
}

// v3 connects an MQTT 3.1.1 client (paho.mqtt.golang) with cert.
func (e *env) v3(t *testing.T, cert tls.Certificate) *v3client {
	t.Helper()
	c := &v3client{lost: make(chan error, 1)}
	opts := mqtt3.NewClientOptions().AddBroker("ssl://" + e.addr).SetTLSConfig(e.clientTLS(&cert)).
		SetClientID("test3").SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(10 * time.Second).
		SetDefaultPublishHandler(func(_ mqtt3.Client, m mqtt3.Message) {
			c.rx.add(msg{topic: m.Topic(), payload: string(m.Payload()), qos: m.Qos()})
		}).
		SetConnectionLostHandler(func(_ mqtt3.Client, err error) {
			select {
			case c.lost <- err:
			default:
			}
		})
	c.Client = mqtt3.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt 3.1.1 connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func (c *v3client) pub(t *testing.T, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish on %s: %v", topic, tok.Error())
	}
}

func (c *v3client) sub(t *testing.T, filter string) {
	t.Helper()
	tok := c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

// waitEvent waits for an event of kind (and reason, when not empty).
func (e *env) waitEvent(t *testing.T, device, kind, reason string) store.Event {
	t.Helper()
	var got store.Event
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		evs, err := e.st.ListEvents(context.Background(), store.EventQuery{Device: device, Kind: kind, Limit: 100})
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if reason == "" || ev.Reason == reason {
				got = ev
				return nil
			}
		}
		var rs []string
		for _, ev := range evs {
			rs = append(rs, ev.Reason)
		}
		return fmt.Errorf("no %s event (reason %q) for %q among %v", kind, reason, device, rs)
	})
	return got
}

func (e *env) device(t *testing.T, name string) store.Device {
	t.Helper()
	var d store.Device
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() (err error) {
		d, err = e.st.GetDevice(context.Background(), name)
		return err
	})
	return d
}

func writePEM(t *testing.T, path, typ string, ders ...[]byte) {
	t.Helper()
	var b []byte
	for _, d := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rawV5 connects a paho.golang client whose pinger never pings, to test
// the server's keep-alive.
func (e *env) rawV5(t *testing.T, cert tls.Certificate, keepAlive uint16, will *paho.WillMessage) (net.Conn, *paho.Client) {
	t.Helper()
	conn, err := tls.Dial("tcp", e.addr, e.clientTLS(&cert))
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: pahopackets.NewThreadSafeConn(conn), PingHandler: silentPinger{}})
	ack, err := c.Connect(context.Background(), &paho.Connect{KeepAlive: keepAlive, ClientID: "raw", CleanStart: true, WillMessage: will})
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ack)
	}
	return conn, c
}

// silentPinger is a paho.Pinger that never sends PINGREQ.
type silentPinger struct{}

func (silentPinger) Run(ctx context.Context, conn net.Conn, keepAlive uint16) error {
	<-ctx.Done()
	return nil
}
func (silentPinger) PacketSent()             {}
func (silentPinger) PacketReceived()         {}
func (silentPinger) PingResp()               {}
func (silentPinger) SetDebug(paholog.Logger) {}

func busAttrs(payload string) bus.Command {
	return bus.Command{Kind: bus.CommandAttributes, Payload: json.RawMessage(payload)}
}
