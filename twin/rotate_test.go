package twin

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/gateway"
	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/spiffs"
	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/store/sqlite"
	"github.com/thingline/thingline/tstest"
)

func TestCheckRotationAnswer(t *testing.T) {
	ca := pkitest.NewCA(t)
	old := pkitest.IssueDevice(t, ca, "SN-1", pkitest.Opts{NotAfter: time.Now().Add(24 * time.Hour)})
	key, _ := pki.GenerateKey(pki.KeyEC)
	other, _ := pki.GenerateKey(pki.KeyEC)
	issue := func(k any, cn string, validity time.Duration) string {
		c, err := ca.IssueDevice(k, cn, validity)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(map[string]string{"cert": string(ca.LeafChainPEM(c))})
		return string(b)
	}
	if pem, err := checkRotationAnswer([]byte(issue(key.Public(), "SN-1", 0)), "SN-1", key, old.Cert); err != nil || !strings.Contains(string(pem), "CERTIFICATE") {
		t.Fatalf("good answer: %v", err)
	}
	for name, c := range map[string]struct{ answer, want string }{
		"error":     {`{"error":"too many certificate requests"}`, "refused by the server: too many"},
		"garbage":   {`not json`, "undecodable"},
		"empty":     {`{"cert":""}`, "no certificate"},
		"other-key": {issue(other.Public(), "SN-1", 0), "not for the key"},
		"other-cn":  {issue(key.Public(), "SN-2", 0), `for "SN-2"`},
		"shorter":   {issue(key.Public(), "SN-1", time.Hour), "no later than"},
	} {
		if _, err := checkRotationAnswer([]byte(c.answer), "SN-1", key, old.Cert); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

func TestRewriteSPIFFSKeepsOtherFiles(t *testing.T) {
	img, err := spiffs.Build(spiffs.DefaultConfig(0x40000), []spiffs.File{
		{Path: "/device.crt", Data: []byte("old cert")},
		{Path: "/device.key", Data: []byte("old key")},
		{Path: "/prov.json", Data: []byte(`{"pop":"x"}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := rewriteSPIFFS(img, map[string][]byte{"device.crt": []byte("new cert"), "device.key": []byte("new key"), "extra": []byte("e")})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(img) {
		t.Fatalf("image size %d, want %d", len(out), len(img))
	}
	read, err := spiffsReader(out)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"device.crt": "new cert", "device.key": "new key", "prov.json": `{"pop":"x"}`, "extra": "e"} {
		if b, err := read(name); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	if _, err := rewriteSPIFFS([]byte("not an image"), nil); err == nil {
		t.Error("a broken image was rewritten")
	}
}

// TestTwinRotatesInProcess runs the rotation against thingline's gateway in
// this process (so that -race sees both sides): a twin booted from image
// bytes whose certificate is due rotates, keeps the new identity in its
// image, restarts and connects with it.
func TestTwinRotatesInProcess(t *testing.T) {
	p := newTestPKI(t) // the server's certificate
	ca := pkitest.NewCA(t)
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "thingline.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b := inproc.New()
	defer b.Close()
	srv, err := gateway.New(gateway.Config{TLSCertificate: p.server, DeviceCAs: []*x509.Certificate{ca.Cert},
		Store: st, Bus: b, Node: "test", Issuer: ca, RotationGrace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() { srv.Close(); <-served }()

	dev := pkitest.IssueDevice(t, ca, "SN-IPROT", pkitest.Opts{NotAfter: time.Now().Add(48 * time.Hour)})
	key, _ := os.ReadFile(dev.KeyPath)
	img, err := spiffs.Build(spiffs.DefaultConfig(0x40000), []spiffs.File{
		{Path: "/device.crt", Data: ca.LeafChainPEM(dev.Cert)},
		{Path: "/device.key", Data: key},
		{Path: "/server_chain.pem", Data: pemCert(p.root)},
	})
	if err != nil {
		t.Fatal(err)
	}
	tw, err := New(Config{Image: img, StateDir: t.TempDir(), Broker: "mqtts://" + ln.Addr().String(), Prov: ProvNone,
		Interval: 50 * time.Millisecond, BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		RotateWithin: 720 * time.Hour, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	runTwin(t, tw)
	var d store.Device
	tstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		id := tw.Identity()
		if id == nil || id.Cert.Leaf.Equal(dev.Cert) {
			return errors.New("the twin still runs its first certificate")
		}
		if d, err = st.GetDevice(ctx, "SN-IPROT"); err != nil {
			return err
		}
		cs, err := st.ListCredentials(ctx, d.ID)
		if err != nil || len(cs) != 2 || cs[0].Serial != pki.SerialHex(id.Cert.Leaf) || !tw.View().Connected {
			return fmt.Errorf("credentials %d (%v), connected %v", len(cs), err, tw.View().Connected)
		}
		return nil
	})
	if v := tw.State().BootCount; v != 2 {
		t.Errorf("boot count %d, want 2: the rotation restarts once", v)
	}
	rs, err := st.ListRetirements(ctx, d.ID)
	if err != nil || len(rs) != 1 || rs[0].Serial != pki.SerialHex(dev.Cert) {
		t.Errorf("retirements = %+v, %v", rs, err)
	}
}

// FuzzCheckRotationAnswer: no answer from the network panics the device,
// and none is accepted unless it certifies the device's own key.
func FuzzCheckRotationAnswer(f *testing.F) {
	dir := f.TempDir()
	if err := pki.InitCA(dir, pki.KeyEC); err != nil {
		f.Fatal(err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		f.Fatal(err)
	}
	key, _ := pki.GenerateKey(pki.KeyEC)
	old, _ := ca.IssueDevice(key.Public(), "SN-1", time.Hour)
	c, _ := ca.IssueDevice(key.Public(), "SN-1", 0)
	good, _ := json.Marshal(map[string]string{"cert": string(ca.LeafChainPEM(c))})
	f.Add(good)
	f.Add([]byte(`{"error":"no"}`))
	f.Add([]byte(`{"cert":"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pemOut, err := checkRotationAnswer(b, "SN-1", key, old)
		if err != nil {
			return
		}
		certs, err := pki.ParseCertsPEM(pemOut)
		if err != nil || len(certs) == 0 || !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(certs[0].PublicKey) {
			t.Fatalf("accepted an answer for another key: %v", err)
		}
	})
}
