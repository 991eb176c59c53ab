package integration

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/tstest"
)

// cli runs an operator command of the binary against s's API.
func (s *server) cli(args ...string) (string, error) {
	s.t.Helper()
	args = append(args, "--server", "http://"+s.httpAddr, "--token", testToken)
	out, err := exec.Command(binary, args...).CombinedOutput()
	return string(out), err
}

// dialDevice connects with paho over TLS trusting rootFile, presenting
// certFile (leaf, optionally followed by its issuer) and keyFile.
func dialDevice(addr, rootFile, certFile, keyFile, clientID string) (mqtt.Client, error) {
	root, err := os.ReadFile(rootFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return dialMQTT(addr, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}, clientID, nil)
}

// credentialStatus returns the status the API gives serial of device.
func (s *server) credentialStatus(device, serial string) string {
	s.t.Helper()
	var v struct {
		Credentials []struct{ Serial, Status string }
	}
	if code := s.api("GET", "/api/v1/devices/"+device+"/credentials", "", &v); code != 200 {
		s.t.Fatalf("credentials of %s: %d", device, code)
	}
	for _, c := range v.Credentials {
		if c.Serial == serial {
			return c.Status
		}
	}
	return "absent"
}

// revokeAndExpectKick revokes device's certificate in use with the CLI on
// api, while the device's paho session lives on holder, and checks that
// the session ends within a second and that reconnecting is refused.
func revokeAndExpectKick(t *testing.T, api, holder *server, dev pkitest.Device, sn string) {
	t.Helper()
	lost := make(chan time.Time, 1)
	c, err := holder.connectWith(dev.CertPath, dev.KeyPath, sn, func(mqtt.Client, error) { lost <- time.Now() })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)
	if tok := c.Publish("v1/devices/me/telemetry", 1, false, `{"t":1}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	out, err := api.cli("device", "revoke", sn, "--reason", "keyCompromise")
	revoked := time.Now() // the API answered: the revocation is stored and announced
	if err != nil {
		t.Fatalf("device revoke: %v\n%s", err, out)
	}
	serial := pki.SerialHex(dev.Cert)
	if !strings.Contains(out, serial) {
		t.Errorf("device revoke said %q, want the serial %s", out, serial)
	}
	select {
	case at := <-lost:
		if d := at.Sub(revoked); d > time.Second {
			t.Errorf("session closed %v after the revocation was answered, want at most a second", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked device's session was not closed")
	}
	for i := 0; i < 3; i++ {
		if c2, err := holder.connect(dev.CertPath, dev.KeyPath, sn); err == nil {
			c2.Disconnect(0)
			t.Fatal("a revoked certificate connected again")
		}
	}
	if st := api.credentialStatus(sn, serial); st != "revoked" {
		t.Errorf("credential status after revoke = %s", st)
	}
	if out, err := api.cli("device", "revoke", sn); err == nil || !strings.Contains(out, "no certificate left") {
		t.Errorf("revoking again: %v %s", err, out)
	}
}

// revokeTwinAndExpectItOut runs a twin (`thingline device run`) on holder,
// revokes its certificate through api and checks that the device is
// offline within a second and stays out while the twin keeps retrying.
func revokeTwinAndExpectItOut(t *testing.T, api, holder *server, ca *pki.CA, sn string) {
	t.Helper()
	image, _ := unitImage(t, ca, sn, time.Now().Add(365*24*time.Hour))
	tw := startTwin(t, "--spiffs", image, "--state", t.TempDir(), "--broker", "mqtts://"+holder.mqttAddr,
		"--server-name", "127.0.0.1", "--prov", "none", "--interval", "200ms", "--backoff-max", "1s")
	online := func() bool {
		var d struct{ Online bool }
		api.api("GET", "/api/v1/devices/"+sn, "", &d)
		return d.Online
	}
	tstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if !online() {
			return fmt.Errorf("twin %s not online", sn)
		}
		return nil
	})
	out, err := api.cli("device", "revoke", sn)
	revoked := time.Now()
	if err != nil {
		t.Fatalf("device revoke: %v\n%s", err, out)
	}
	var pollStart time.Time // of the poll that first saw it offline
	tstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		pollStart = time.Now()
		if online() {
			return fmt.Errorf("revoked twin still online")
		}
		return nil
	})
	// The store marks it offline once the session has ended. Counted to
	// the start of the poll that saw it, so that a slow API answer under
	// load does not count against the gateway.
	if d := pollStart.Sub(revoked); d > time.Second {
		t.Errorf("revoked twin offline only %v after the revocation was answered", d)
	}
	// It keeps trying (backoff at most a second) and is refused every time.
	tstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		var evs struct {
			Events []struct{ Device, Reason string }
		}
		api.api("GET", "/api/v1/events?kind=refused&device="+sn, "", &evs)
		n := 0
		for _, e := range evs.Events {
			if e.Reason == "revoked" {
				n++
			}
		}
		if n < 3 {
			return fmt.Errorf("%d refused reconnects of the revoked twin so far", n)
		}
		return nil
	})
	if online() {
		t.Error("the revoked twin got back in")
	}
	if !strings.Contains(tw.output(), "not authorized") {
		t.Errorf("the twin never logged its refusal:\n%s", tw.output())
	}
}

// TestRevokeDeviceKicksWithinASecond: `thingline device revoke` on one node.
func TestRevokeDeviceKicksWithinASecond(t *testing.T) {
	s := startServer(t, t.TempDir())
	dev := pkitest.IssueDevice(t, s.deviceCA(), "SN-REVOKE", pkitest.Opts{})
	revokeAndExpectKick(t, s, s, dev, "SN-REVOKE")
	revokeTwinAndExpectItOut(t, s, s, s.deviceCA(), "SN-REVOKE-TWIN")
	out, err := s.cli("device", "credentials", "SN-REVOKE")
	if err != nil || !strings.Contains(out, "revoked") || !strings.Contains(out, "keyCompromise") {
		t.Errorf("device credentials: %v\n%s", err, out)
	}
}

// TestRevokeAcrossNodes: the device is on node A, the operator revokes
// through node B; A closes the session within a second and both refuse it.
func TestRevokeAcrossNodes(t *testing.T) {
	storeURL, natsURL := clusterStore(t)
	a := startServer(t, t.TempDir(), "--store", storeURL, "--bus", natsURL, "--node-id", "node-a")
	b := startServer(t, t.TempDir(), "--store", storeURL, "--bus", natsURL, "--node-id", "node-b",
		"--tls-cert", filepath.Join(a.pkiDir(), "server.crt"), "--tls-key", filepath.Join(a.pkiDir(), "server.key"),
		"--device-ca", filepath.Join(a.pkiDir(), "device-ca.crt"))
	b.data = a.data
	dev := pkitest.IssueDevice(t, a.deviceCA(), "SN-XREVOKE", pkitest.Opts{})
	revokeAndExpectKick(t, b, a, dev, "SN-XREVOKE")
	revokeTwinAndExpectItOut(t, b, a, a.deviceCA(), "SN-XREVOKE-TWIN")
	if c, err := b.connect(dev.CertPath, dev.KeyPath, "SN-XREVOKE"); err == nil {
		c.Disconnect(0)
		t.Fatal("node B let the revoked certificate in")
	}
}

// TestCRLImportAndServerCRL: a CRL made by `thingline ca crl` and one made
// by `openssl ca -gencrl` are imported with `thingline crl import`; their
// devices are refused from then on. The server's own CRL, fetched with
// curl, is read and verified by `openssl crl` and lists them all.
func TestCRLImportAndServerCRL(t *testing.T) {
	needTool(t, "openssl")
	needTool(t, "curl")
	dir := opensslPKI(t)
	// The server trusts both the seed's openssl CA (its issuing CA, with
	// its key) and a thingline CA.
	tca := pkitest.NewCA(t)
	tcaFile := filepath.Join(t.TempDir(), "thingline-ca.crt")
	if err := os.WriteFile(tcaFile, pki.EncodeCertPEM(tca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, t.TempDir(),
		"--tls-cert", filepath.Join(dir, "server.crt"), "--tls-key", filepath.Join(dir, "server.key"),
		"--device-ca", filepath.Join(dir, "inter.crt"), "--device-ca-key", filepath.Join(dir, "inter.key"),
		"--device-ca", tcaFile)
	rootFile := filepath.Join(dir, "root.crt")
	both := filepath.Join(t.TempDir(), "roots.pem")
	rb, _ := os.ReadFile(rootFile)
	os.WriteFile(both, append(rb, pki.EncodeCertPEM(tca.Root)...), 0o644)

	// A thingline-CA device, revoked in its CA directory.
	tdev := pkitest.IssueDevice(t, tca, "SN-TCRL", pkitest.Opts{})
	tchain := filepath.Join(t.TempDir(), "chain.pem")
	os.WriteFile(tchain, pki.EncodeCertPEM(tdev.Cert, tca.Cert), 0o644)
	// An openssl-made device.
	seedDevice(t, dir, "SN-OCRL")
	ochain := filepath.Join(dir, "SN-OCRL-chain.crt")
	leaf, _ := os.ReadFile(filepath.Join(dir, "SN-OCRL.crt"))
	inter, _ := os.ReadFile(filepath.Join(dir, "inter.crt"))
	os.WriteFile(ochain, append(leaf, inter...), 0o600)
	for _, d := range []struct{ cert, key, sn string }{{tchain, tdev.KeyPath, "SN-TCRL"}, {ochain, filepath.Join(dir, "SN-OCRL.key"), "SN-OCRL"}} {
		c, err := dialDevice(s.mqttAddr, both, d.cert, d.key, d.sn)
		if err != nil {
			t.Fatalf("%s before any CRL: %v", d.sn, err)
		}
		c.Disconnect(100)
	}

	if out, err := thingline(t, "ca", "revoke", "--ca-dir", tca.Dir, "--serial", pki.SerialHex(tdev.Cert), "--reason", "keyCompromise"); err != nil {
		t.Fatalf("ca revoke: %v\n%s", err, out)
	}
	tcrl := filepath.Join(t.TempDir(), "thingline.crl")
	if out, err := thingline(t, "ca", "crl", "--ca-dir", tca.Dir, "--out", tcrl); err != nil {
		t.Fatalf("ca crl: %v\n%s", err, out)
	}

	// openssl's own CA database: revoke the seed device, generate the CRL.
	cnf := filepath.Join(dir, "ca.cnf")
	os.WriteFile(filepath.Join(dir, "index.txt"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "crlnumber"), []byte("1000\n"), 0o600)
	os.WriteFile(cnf, []byte(fmt.Sprintf("[ca]\ndefault_ca = d\n[d]\ndatabase = %[1]s/index.txt\ncrlnumber = %[1]s/crlnumber\n"+
		"certificate = %[1]s/inter.crt\nprivate_key = %[1]s/inter.key\ndefault_md = sha256\ndefault_crl_days = 30\n", dir)), 0o600)
	ocrl := filepath.Join(dir, "openssl.crl")
	for _, args := range [][]string{
		{"ca", "-config", cnf, "-revoke", filepath.Join(dir, "SN-OCRL.crt"), "-crl_reason", "keyCompromise"},
		{"ca", "-config", cnf, "-gencrl", "-out", ocrl},
	} {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}

	// A CRL from a CA the server does not trust is refused.
	other := pkitest.NewCA(t)
	if _, err := other.Revoke("abcdef", "keyCompromise", time.Time{}); err != nil {
		t.Fatal(err)
	}
	der, err := other.CRL(0)
	if err != nil {
		t.Fatal(err)
	}
	ucrl := filepath.Join(t.TempDir(), "untrusted.crl")
	os.WriteFile(ucrl, der, 0o644)
	if out, err := s.cli("crl", "import", ucrl); err == nil || !strings.Contains(out, "not signed by a configured device CA") {
		t.Errorf("untrusted CRL import: %v %s", err, out)
	}

	for _, f := range []string{tcrl, ocrl} {
		out, err := s.cli("crl", "import", f)
		if err != nil || !strings.Contains(out, "1 entries, 1 new revocations") {
			t.Fatalf("crl import %s: %v\n%s", filepath.Base(f), err, out)
		}
	}
	if out, err := s.cli("crl", "import", ocrl); err != nil || !strings.Contains(out, "0 new") {
		t.Errorf("importing the same CRL again: %v %s", err, out)
	}
	for _, d := range []struct{ cert, key, sn string }{{tchain, tdev.KeyPath, "SN-TCRL"}, {ochain, filepath.Join(dir, "SN-OCRL.key"), "SN-OCRL"}} {
		if c, err := dialDevice(s.mqttAddr, both, d.cert, d.key, d.sn); err == nil {
			c.Disconnect(0)
			t.Errorf("%s connected after its CRL was imported", d.sn)
		}
	}

	// The server's CRL, signed by the openssl-made issuing CA.
	crlFile := filepath.Join(t.TempDir(), "server.crl")
	if out, err := exec.Command("curl", "-sSf", "-o", crlFile, "http://"+s.httpAddr+"/crl/device-ca.crl").CombinedOutput(); err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	caFile := filepath.Join(dir, "chain-ca.pem")
	os.WriteFile(caFile, append(append([]byte{}, inter...), rb...), 0o644)
	out, err := exec.Command("openssl", "crl", "-inform", "DER", "-in", crlFile, "-CAfile", caFile, "-noout", "-text").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl crl: %v\n%s", err, out)
	}
	text := string(out)
	oserial, _ := exec.Command("openssl", "x509", "-in", filepath.Join(dir, "SN-OCRL.crt"), "-noout", "-serial").Output()
	for _, want := range []string{"verify OK", "Next Update", "Seed Intermediate CA",
		strings.ToUpper(pki.SerialHex(tdev.Cert)), strings.TrimPrefix(strings.TrimSpace(string(oserial)), "serial="), "Key Compromise"} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl crl output lacks %q:\n%s", want, text)
		}
	}
	// The CLI fetches it too.
	if out, err := s.cli("crl", "fetch", "--out", filepath.Join(t.TempDir(), "f.crl")); err != nil || !strings.Contains(out, "2 entries") {
		t.Errorf("crl fetch: %v %s", err, out)
	}
}

// TestCertificateExpiryAlarm: a device whose certificate expires in ten
// days raises the certificate-expiring alarm (and its event), and
// the fleet view counts it among the soonest.
func TestCertificateExpiryAlarm(t *testing.T) {
	s := startServer(t, t.TempDir(), "--cert-expiry-every", "200ms")
	soon := pkitest.IssueDevice(t, s.deviceCA(), "SN-SOON", pkitest.Opts{NotAfter: time.Now().Add(10 * 24 * time.Hour)})
	later := pkitest.IssueDevice(t, s.deviceCA(), "SN-LATER", pkitest.Opts{NotAfter: time.Now().Add(200 * 24 * time.Hour)})
	for _, d := range []struct {
		dev pkitest.Device
		sn  string
	}{{soon, "SN-SOON"}, {later, "SN-LATER"}} {
		c, err := s.connect(d.dev.CertPath, d.dev.KeyPath, d.sn)
		if err != nil {
			t.Fatal(err)
		}
		c.Disconnect(100)
	}
	tstest.CheckFor(t, 15*time.Second, 100*time.Millisecond, func() error {
		var evs struct {
			Events []struct{ Device, Kind string }
		}
		s.api("GET", "/api/v1/events?kind=certificate-expiring", "", &evs)
		if len(evs.Events) != 1 || evs.Events[0].Device != "SN-SOON" {
			return fmt.Errorf("certificate-expiring events = %+v, want SN-SOON's alone", evs.Events)
		}
		return nil
	})
	// The alarm itself, through the alarms API; none for SN-LATER.
	for sn, want := range map[string]int{"SN-SOON": 1, "SN-LATER": 0} {
		var al struct {
			Alarms []struct{ Type, Severity, Status string }
		}
		if code := s.api("GET", "/api/v1/alarms?device="+sn+"&type=certificate-expiring", "", &al); code != 200 {
			t.Fatalf("alarms of %s: %d", sn, code)
		}
		if len(al.Alarms) != want || want == 1 && (al.Alarms[0].Severity != "MAJOR" || al.Alarms[0].Status != "ACTIVE_UNACK") {
			t.Errorf("certificate-expiring alarms of %s = %+v, want %d active", sn, al.Alarms, want)
		}
	}
	var v struct {
		Total   int
		Within  map[string]int
		Soonest []struct{ Device, Serial string }
	}
	if code := s.api("GET", "/api/v1/certificates/expiry?limit=1", "", &v); code != 200 {
		t.Fatalf("expiry view: %d", code)
	}
	if v.Total != 2 || v.Within["30d"] != 1 || v.Within["365d"] != 2 || len(v.Soonest) != 1 || v.Soonest[0].Device != "SN-SOON" {
		t.Errorf("expiry view = %+v", v)
	}
	out, err := s.cli("certs", "expiry")
	if err != nil || !strings.Contains(out, "1 within 30 days") || !strings.Contains(out, "SN-SOON") {
		t.Errorf("certs expiry: %v\n%s", err, out)
	}
}
