// Package pkitest makes certificate authorities and device certificates for
// other packages' tests: valid, expired, not yet valid, from another CA or
// self-signed, written to files in the test's temporary directory.
package pkitest

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
)

// NewCA makes an EC root and device CA in a fresh t.TempDir and loads it.
// The root key stays in ca.Dir too.
func NewCA(t testing.TB) *pki.CA {
	return NewCAType(t, pki.KeyEC)
}

// NewCAType is NewCA with a chosen key type.
func NewCAType(t testing.TB, kt pki.KeyType) *pki.CA {
	t.Helper()
	dir := t.TempDir()
	if err := pki.InitCA(dir, kt); err != nil {
		t.Fatalf("pkitest: init ca: %v", err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatalf("pkitest: load ca: %v", err)
	}
	return ca
}

// Opts adjusts a test device certificate. Zero values give a certificate
// valid from five minutes ago for a day, with an EC key.
type Opts struct {
	NotBefore  time.Time
	NotAfter   time.Time
	KeyType    pki.KeyType
	SelfSigned bool // ignore the CA and sign with the device's own key
}

// Device is a test device identity with its files.
type Device struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertPath string // leaf PEM
	KeyPath  string // PKCS#8 PEM
}

// IssueDevice makes a device key and certificate with common name cn and
// writes them to a fresh t.TempDir. ca may be nil when o.SelfSigned.
func IssueDevice(t testing.TB, ca *pki.CA, cn string, o Opts) Device {
	t.Helper()
	key, err := pki.GenerateKey(o.KeyType)
	if err != nil {
		t.Fatalf("pkitest: %v", err)
	}
	now := time.Now()
	nb, na := o.NotBefore, o.NotAfter
	if nb.IsZero() {
		nb = now.Add(-5 * time.Minute)
	}
	if na.IsZero() {
		na = now.Add(24 * time.Hour)
	}
	var cert *x509.Certificate
	if o.SelfSigned {
		serial, err := pki.NewSerial()
		if err != nil {
			t.Fatalf("pkitest: %v", err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          serial,
			Subject:               pkix.Name{CommonName: cn},
			NotBefore:             nb,
			NotAfter:              na,
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			t.Fatalf("pkitest: self-signing %s: %v", cn, err)
		}
		if cert, err = x509.ParseCertificate(der); err != nil {
			t.Fatalf("pkitest: %v", err)
		}
	} else {
		if ca == nil {
			t.Fatal("pkitest: IssueDevice needs a ca unless SelfSigned")
		}
		tmpl := ca.DeviceTemplate(cn, 0)
		tmpl.NotBefore, tmpl.NotAfter = nb, na
		if cert, err = ca.Issue(tmpl, key.Public()); err != nil {
			t.Fatalf("pkitest: issuing %s: %v", cn, err)
		}
	}
	dir := t.TempDir()
	d := Device{Cert: cert, Key: key, CertPath: filepath.Join(dir, "device.crt"), KeyPath: filepath.Join(dir, "device.key")}
	if err := os.WriteFile(d.CertPath, pki.EncodeCertPEM(cert), 0o644); err != nil {
		t.Fatalf("pkitest: %v", err)
	}
	kb, err := pki.EncodeKeyPEM(key)
	if err != nil {
		t.Fatalf("pkitest: %v", err)
	}
	if err := os.WriteFile(d.KeyPath, kb, 0o600); err != nil {
		t.Fatalf("pkitest: %v", err)
	}
	return d
}

// IssueDeviceFiles is IssueDevice returning only the file paths.
func IssueDeviceFiles(t testing.TB, ca *pki.CA, cn string, o Opts) (certPath, keyPath string) {
	t.Helper()
	d := IssueDevice(t, ca, cn, o)
	return d.CertPath, d.KeyPath
}

// DevPKI runs pki.EnsureDevPKI in a fresh t.TempDir and returns the pki
// directory holding root-ca.crt, server.crt, server.key and the device CA.
func DevPKI(t testing.TB, hosts ...string) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := pki.EnsureDevPKI(dir, hosts); err != nil {
		t.Fatalf("pkitest: dev pki: %v", err)
	}
	return filepath.Join(dir, "pki")
}
