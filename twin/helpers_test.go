package twin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/thingline/thingline/tstest"
)

// testPKI is a root, a device intermediate and a server certificate for
// 127.0.0.1, shaped like the factory's.
type testPKI struct {
	root, inter       *x509.Certificate
	rootKey, interKey *ecdsa.PrivateKey
	server            tls.Certificate
}

func newCert(t testing.TB, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{}
	ca := func(cn string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	}
	p.root, p.rootKey = newCert(t, ca("test root"), nil, nil)
	p.inter, p.interKey = newCert(t, ca("test device CA"), p.root, p.rootKey)
	srv, srvKey := newCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, p.root, p.rootKey)
	p.server = tls.Certificate{Certificate: [][]byte{srv.Raw}, PrivateKey: srvKey, Leaf: srv}
	return p
}

func pemCert(c ...*x509.Certificate) []byte {
	var out []byte
	for _, x := range c {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})...)
	}
	return out
}

// unitFiles are the files the factory puts in a unit directory and image.
func (p *testPKI) unitFiles(t testing.TB, sn, pop string) map[string][]byte {
	t.Helper()
	leaf, key := newCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: sn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, p.inter, p.interKey)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	prov, _ := json.Marshal(ProvInfo{ServiceName: "PROV_" + strings.ToUpper(sn[len(sn)-6:]), PoP: pop, Sec2Username: "wifiprov"})
	return map[string][]byte{
		"device.crt":       pemCert(leaf),
		"device.key":       pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
		"server_chain.pem": pemCert(p.root, p.inter),
		"prov.json":        prov,
	}
}

func writeUnit(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// msg is one message a client published to the test broker.
type msg struct {
	cn, topic string
	payload   []byte
}

// testBroker is a real MQTT broker (mochi-mqtt) on loopback requiring
// client certificates from the test PKI, recording what clients publish.
type testBroker struct {
	srv  *mqtt.Server
	addr string
	once sync.Once

	mu   sync.Mutex // guards msgs, cns
	msgs []msg
	cns  map[string]string // client ID → certificate CN
}

type recordHook struct {
	mqtt.HookBase
	b *testBroker
}

func (h *recordHook) ID() string { return "record" }
func (h *recordHook) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnPublish || b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

// The TLS listener already required a certificate from the test PKI.
func (h *recordHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool { return true }
func (h *recordHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool     { return true }
func (h *recordHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	cn := ""
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		if pcs := tc.ConnectionState().PeerCertificates; len(pcs) > 0 {
			cn = pcs[0].Subject.CommonName
		}
	}
	h.b.mu.Lock()
	h.b.cns[cl.ID] = cn
	h.b.mu.Unlock()
	return nil
}
func (h *recordHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.b.mu.Lock()
	h.b.msgs = append(h.b.msgs, msg{cn: h.b.cns[cl.ID], topic: pk.TopicName, payload: append([]byte(nil), pk.Payload...)})
	h.b.mu.Unlock()
	return pk, nil
}

func startBroker(t testing.TB, p *testPKI, addr string) *testBroker {
	t.Helper()
	b := startBrokerErr(t, p, addr)
	if b == nil {
		t.Fatalf("broker: cannot listen on %s", addr)
	}
	return b
}

// startBrokerErr returns nil when addr cannot be listened on.
func startBrokerErr(t testing.TB, p *testPKI, addr string) *testBroker {
	t.Helper()
	b := &testBroker{cns: map[string]string{}}
	b.srv = mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(ioDiscard{}, nil))})
	if err := b.srv.AddHook(&recordHook{b: b}, nil); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.root)
	tl := listeners.NewTCP(listeners.Config{ID: "tls", Address: addr, TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{p.server}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
	}})
	if err := b.srv.AddListener(tl); err != nil {
		return nil
	}
	if err := b.srv.Serve(); err != nil {
		t.Fatal(err)
	}
	b.addr = tl.Address()
	t.Cleanup(b.close)
	return b
}

func (b *testBroker) close() { b.once.Do(func() { b.srv.Close() }) }

type ioDiscard struct{}

func (ioDiscard) Write(p []byte) (int, error) { return len(p), nil }

// find returns the messages of cn on topic (prefix when topic ends in '/').
func (b *testBroker) find(cn, topic string) []msg {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []msg
	for _, m := range b.msgs {
		if m.cn != cn {
			continue
		}
		if m.topic == topic || (strings.HasSuffix(topic, "/") && strings.HasPrefix(m.topic, topic)) {
			out = append(out, m)
		}
	}
	return out
}

func (b *testBroker) waitFor(t testing.TB, cn, topic string, n int) []msg {
	t.Helper()
	var got []msg
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		got = b.find(cn, topic)
		if len(got) < n {
			return fmt.Errorf("%d messages from %s on %s, want %d", len(got), cn, topic, n)
		}
		return nil
	})
	return got
}
