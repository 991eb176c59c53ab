package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/pki/pkitest"
)

func csrPEM(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pki.EncodeCSRPEM(der)
}

func TestCheckDeviceCSR(t *testing.T) {
	ca := pkitest.NewCA(t)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	cn := pkix.Name{CommonName: "SN-1"}
	good := map[string][]byte{
		"p256":    csrPEM(t, p256, &x509.CertificateRequest{Subject: cn}),
		"p384":    csrPEM(t, p384, &x509.CertificateRequest{Subject: cn}),
		"rsa2048": csrPEM(t, rsa2048, &x509.CertificateRequest{Subject: cn}),
		"with-o":  csrPEM(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-1", Organization: []string{"x"}}}),
	}
	for name, b := range good {
		leaf, err := ca.SignDeviceCSR(b, "SN-1", 48*time.Hour)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if leaf.Subject.String() != "CN=SN-1" || leaf.NotAfter.Sub(leaf.NotBefore) < 48*time.Hour {
			t.Errorf("%s: subject %q, validity %v", name, leaf.Subject, leaf.NotAfter.Sub(leaf.NotBefore))
		}
	}
	twoCN := &x509.CertificateRequest{Subject: pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "SN-1"}, {Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "SN-2"}}}}
	tampered := csrPEM(t, p256, &x509.CertificateRequest{Subject: cn})
	der, _ := pki.CSRFromPEM(tampered)
	der[len(der)-3] ^= 0xff // inside the signature
	bad := map[string]struct {
		b      []byte
		policy bool
	}{
		"other-cn":  {csrPEM(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-2"}}), true},
		"p224":      {csrPEM(t, p224, &x509.CertificateRequest{Subject: cn}), true},
		"rsa1024":   {csrPEM(t, rsa1024, &x509.CertificateRequest{Subject: cn}), true},
		"dns-san":   {csrPEM(t, p256, &x509.CertificateRequest{Subject: cn, DNSNames: []string{"evil.example"}}), true},
		"two-cn":    {csrPEM(t, p256, twoCN), true},
		"no-cn":     {csrPEM(t, p256, &x509.CertificateRequest{}), true},
		"garbage":   {[]byte("hello"), true},
		"bad-sig":   {pki.EncodeCSRPEM(der), true},
		"empty":     {nil, true},
		"cert-only": {pki.EncodeCertPEM(ca.Cert), true},
	}
	for name, c := range bad {
		_, err := ca.SignDeviceCSR(c.b, "SN-1", 0)
		if err == nil {
			t.Errorf("%s: signed", name)
			continue
		}
		if errors.Is(err, pki.ErrBadCSR) != c.policy {
			t.Errorf("%s: %v (ErrBadCSR: %v, want %v)", name, err, errors.Is(err, pki.ErrBadCSR), c.policy)
		}
	}
}

// TestCheckDeviceCSROpenSSL signs what the seed's openssl recipe makes.
func TestCheckDeviceCSROpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	ca := pkitest.NewCA(t)
	dir := t.TempDir()
	csr := filepath.Join(dir, "d.csr")
	out, err := exec.Command("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", filepath.Join(dir, "d.key"), "-subj", "/CN=SN-42", "-out", csr).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	b, err := os.ReadFile(csr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.SignDeviceCSR(b, "SN-42", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.SignDeviceCSR(b, "SN-43", 0); !errors.Is(err, pki.ErrBadCSR) {
		t.Fatalf("other device: %v", err)
	}
}

func TestLoadIssuer(t *testing.T) {
	ca := pkitest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	os.WriteFile(certFile, pki.EncodeCertPEM(ca.Cert, ca.Root), 0o644)
	if err := pki.WriteKeyFile(keyFile, ca.Key); err != nil {
		t.Fatal(err)
	}
	is, err := pki.LoadIssuer(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !is.Cert.Equal(ca.Cert) || is.Root == nil || !is.Root.Equal(ca.Root) {
		t.Fatal("issuer certificates not loaded")
	}
	other := pkitest.NewCA(t)
	pki.WriteKeyFile(keyFile, other.Key)
	if _, err := pki.LoadIssuer(certFile, keyFile); err == nil {
		t.Fatal("a key of another CA was accepted")
	}
}

// FuzzCheckDeviceCSR: whatever a device sends, the check answers with a
// request for the asked CN or an ErrBadCSR, never a panic or another error.
func FuzzCheckDeviceCSR(f *testing.F) {
	ca := fuzzCA(f)
	key, _ := pki.GenerateKey(pki.KeyEC)
	der, _ := pki.NewCSR(key, "SN-1")
	f.Add(pki.EncodeCSRPEM(der))
	f.Add(der)
	f.Add(pki.EncodeCertPEM(ca.Cert))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, err := pki.CheckDeviceCSR(b, "SN-1")
		if err != nil {
			if !errors.Is(err, pki.ErrBadCSR) {
				t.Fatalf("refusal not wrapping ErrBadCSR: %v", err)
			}
			return
		}
		if csr.Subject.CommonName != "SN-1" {
			t.Fatalf("accepted a request for %q", csr.Subject.CommonName)
		}
	})
}
