package pkitest_test

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
)

func verify(ca *pki.CA, c *x509.Certificate) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(ca.Root)
	inter.AddCert(ca.Cert)
	_, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

func TestDeviceVariants(t *testing.T) {
	ca := pkitest.NewCA(t)
	if _, err := os.Stat(filepath.Join(ca.Dir, "root-ca.key")); err != nil {
		t.Fatal(err)
	}
	good := pkitest.IssueDevice(t, ca, "SN-1", pkitest.Opts{})
	if err := verify(ca, good.Cert); err != nil {
		t.Fatalf("valid device: %v", err)
	}
	if _, err := tls.LoadX509KeyPair(good.CertPath, good.KeyPath); err != nil {
		t.Fatalf("files do not form a key pair: %v", err)
	}
	st, _ := os.Stat(good.KeyPath)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", st.Mode().Perm())
	}

	now := time.Now()
	expired := pkitest.IssueDevice(t, ca, "SN-2", pkitest.Opts{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
	if err := verify(ca, expired.Cert); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired device: %v", err)
	}
	future := pkitest.IssueDevice(t, ca, "SN-3", pkitest.Opts{NotBefore: now.Add(time.Hour)})
	if err := verify(ca, future.Cert); err == nil {
		t.Fatal("not-yet-valid device verified")
	}
	other := pkitest.IssueDevice(t, pkitest.NewCA(t), "SN-4", pkitest.Opts{})
	if err := verify(ca, other.Cert); err == nil {
		t.Fatal("other CA's device verified")
	}
	self := pkitest.IssueDevice(t, nil, "SN-5", pkitest.Opts{SelfSigned: true})
	if err := verify(ca, self.Cert); err == nil {
		t.Fatal("self-signed device verified")
	}
	if err := self.Cert.CheckSignature(self.Cert.SignatureAlgorithm, self.Cert.RawTBSCertificate, self.Cert.Signature); err != nil || self.Cert.Subject.CommonName != "SN-5" {
		t.Fatalf("self-signed: %v", err)
	}
	rsaDev := pkitest.IssueDevice(t, ca, "SN-6", pkitest.Opts{KeyType: pki.KeyRSA})
	if pki.KeyTypeOf(rsaDev.Cert.PublicKey) != pki.KeyRSA || verify(ca, rsaDev.Cert) != nil {
		t.Fatal("rsa device")
	}
	c, k := pkitest.IssueDeviceFiles(t, ca, "SN-7", pkitest.Opts{})
	if _, err := tls.LoadX509KeyPair(c, k); err != nil {
		t.Fatal(err)
	}
}

func TestDevPKI(t *testing.T) {
	dir := pkitest.DevPKI(t, "gw.test")
	for _, f := range []string{"root-ca.crt", "server.crt", "server.key", "device-ca.crt", "device-ca.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pki.LoadCA(dir); err != nil {
		t.Fatal(err)
	}
}
