package integration

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/spiffs"
	"github.com/thingline/thingline/tstest"
)

// twinProc is a `thingline device run` process.
type twinProc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    strings.Builder
	exited chan struct{}
}

func startTwin(t *testing.T, args ...string) *twinProc {
	t.Helper()
	p := &twinProc{cmd: exec.Command(binary, append([]string{"device", "run"}, args...)...), exited: make(chan struct{})}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	go func() { p.cmd.Wait(); pw.Close(); close(p.exited) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("twin output:\n%s", p.output())
		}
	})
	return p
}

func (p *twinProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *twinProc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// unitImage writes the SPIFFS image of a unit whose certificate (leaf and
// device CA) expires at notAfter, as the factory lays it out.
func unitImage(t *testing.T, ca *pki.CA, sn string, notAfter time.Time) (image string, dev pkitest.Device) {
	t.Helper()
	dev = pkitest.IssueDevice(t, ca, sn, pkitest.Opts{NotAfter: notAfter})
	key, err := os.ReadFile(dev.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	img, err := spiffs.Build(spiffs.DefaultConfig(0x40000), []spiffs.File{
		{Path: "/device.crt", Data: ca.LeafChainPEM(dev.Cert)},
		{Path: "/device.key", Data: key},
		{Path: "/server_chain.pem", Data: pki.EncodeCertPEM(ca.Root)},
	})
	if err != nil {
		t.Fatal(err)
	}
	image = filepath.Join(t.TempDir(), "spiffs.bin")
	if err := os.WriteFile(image, img, 0o600); err != nil {
		t.Fatal(err)
	}
	return image, dev
}

type credView struct {
	Serial   string
	Status   string
	RetireAt time.Time
	LastSeen time.Time
}

func (s *server) credentials(device string) []credView {
	s.t.Helper()
	var v struct{ Credentials []credView }
	s.api("GET", "/api/v1/devices/"+device+"/credentials", "", &v)
	return v.Credentials
}

// rotateEndToEnd: a twin on twinNode whose certificate expires in ten
// days rotates over MQTT by itself, stores the new certificate in its
// SPIFFS image, reconnects with it, and keeps it across a restart; its old
// certificate works during the grace and is refused on other after it.
func rotateEndToEnd(t *testing.T, twinNode, other *server, ca *pki.CA, sn string) {
	image, old := unitImage(t, ca, sn, time.Now().Add(10*24*time.Hour))
	oldSerial := pki.SerialHex(old.Cert)
	state := t.TempDir()
	args := []string{"--spiffs", image, "--state", state, "--broker", "mqtts://" + twinNode.mqttAddr,
		"--server-name", "127.0.0.1", "--prov", "none", "--interval", "200ms"}
	tw := startTwin(t, append(args, "--rotate-within", "720h")...)

	var creds []credView
	tstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		creds = twinNode.credentials(sn)
		if len(creds) != 2 || creds[0].Serial == oldSerial || creds[1].Serial != oldSerial {
			return fmt.Errorf("credentials of %s = %+v, want a new one above %s", sn, creds, oldSerial)
		}
		return nil
	})
	newSerial := creds[0].Serial
	if creds[1].Status != "retiring" && creds[1].Status != "revoked" {
		t.Errorf("old certificate status %q right after rotation", creds[1].Status)
	}
	// During the grace the old certificate still connects (when enough
	// of the grace is left to tell).
	if left := time.Until(creds[1].RetireAt); creds[1].Status == "retiring" && left > 2*time.Second {
		c, err := other.connect(old.CertPath, old.KeyPath, sn+"-old")
		if err != nil {
			t.Errorf("old certificate refused %v before the end of its grace: %v", left, err)
		} else {
			c.Disconnect(0)
		}
	} else {
		t.Logf("grace check skipped: old certificate %s, %v of grace left", creds[1].Status, left)
	}

	// The image now holds the new certificate and a key that matches it.
	imgBytes, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(image); fi.Mode().Perm() != 0o600 {
		t.Errorf("image mode %v, want 0600: it holds the private key", fi.Mode().Perm())
	}
	fs, err := spiffs.Open(imgBytes, spiffs.DefaultConfig(len(imgBytes)))
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _ := fs.ReadFile("/device.crt")
	keyPEM, _ := fs.ReadFile("/device.key")
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("stored identity: %v", err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if pki.SerialHex(leaf) != newSerial || leaf.Subject.CommonName != sn {
		t.Errorf("stored certificate %s (%s), want %s", pki.SerialHex(leaf), leaf.Subject, newSerial)
	}
	if cn, _ := fs.ReadFile("/server_chain.pem"); len(cn) == 0 {
		t.Error("the rewritten image lost server_chain.pem")
	}

	// The twin streams with the new certificate.
	tstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		var d struct{ Online bool }
		twinNode.api("GET", "/api/v1/devices/"+sn, "", &d)
		cs := twinNode.credentials(sn)
		if !d.Online || cs[0].Serial != newSerial || cs[0].LastSeen.IsZero() {
			return fmt.Errorf("device online %v, credentials %+v", d.Online, cs)
		}
		return nil
	})

	// After the grace: revoked, and refused on the other node.
	tstest.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		if st := twinNode.credentials(sn)[1].Status; st != "revoked" {
			return fmt.Errorf("old certificate %s", st)
		}
		return nil
	})
	tstest.CheckFor(t, 10*time.Second, 200*time.Millisecond, func() error {
		c, err := other.connect(old.CertPath, old.KeyPath, sn+"-old")
		if err == nil {
			c.Disconnect(0)
			return fmt.Errorf("the old certificate still connects after its grace")
		}
		return nil
	})

	// A restart boots from the rewritten image: the same new certificate,
	// no second rotation.
	tw.stop()
	tw2 := startTwin(t, append(args, "--rotate-within", "720h")...)
	tstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if !strings.Contains(tw2.output(), "connected to") {
			return fmt.Errorf("twin not connected again")
		}
		return nil
	})
	var evs struct{ Events []struct{ Kind string } }
	twinNode.api("GET", "/api/v1/events?device="+sn+"&kind=certificate-issued", "", &evs)
	if len(evs.Events) != 1 {
		t.Errorf("certificate-issued events = %d, want 1", len(evs.Events))
	}
	if cs := twinNode.credentials(sn); len(cs) != 2 || cs[0].Serial != newSerial || cs[0].Status != "active" {
		t.Errorf("credentials after restart = %+v", cs)
	}
}

// TestTwinRotatesCertificate: one node on SQLite.
func TestTwinRotatesCertificate(t *testing.T) {
	s := startServer(t, t.TempDir(), "--rotation-grace", "4s")
	rotateEndToEnd(t, s, s, s.deviceCA(), "SN-ROTATE")
}

// TestTwinRotatesCertificateAcrossNodes: the twin on node B (issuing with
// the shared device CA's key), its old certificate tried on node A.
func TestTwinRotatesCertificateAcrossNodes(t *testing.T) {
	storeURL, natsURL := clusterStore(t)
	a := startServer(t, t.TempDir(), "--store", storeURL, "--bus", natsURL, "--node-id", "node-a", "--rotation-grace", "4s")
	b := startServer(t, t.TempDir(), "--store", storeURL, "--bus", natsURL, "--node-id", "node-b", "--rotation-grace", "4s",
		"--tls-cert", filepath.Join(a.pkiDir(), "server.crt"), "--tls-key", filepath.Join(a.pkiDir(), "server.key"),
		"--device-ca", filepath.Join(a.pkiDir(), "device-ca.crt"), "--device-ca-key", filepath.Join(a.pkiDir(), "device-ca.key"))
	b.data = a.data
	rotateEndToEnd(t, b, a, a.deviceCA(), "SN-XROTATE")
}
