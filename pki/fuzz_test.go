package pki_test

import (
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
)

// fuzzCA is built once per fuzz target: generating CAs per input would
// dominate the fuzzing time.
func fuzzCA(f *testing.F) *pki.CA {
	f.Helper()
	dir := f.TempDir()
	if err := pki.InitCA(dir, pki.KeyEC); err != nil {
		f.Fatal(err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		f.Fatal(err)
	}
	return ca
}

func FuzzParseCertsPEM(f *testing.F) {
	ca := fuzzCA(f)
	f.Add(ca.ChainPEM())
	f.Add(ca.Cert.Raw)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := pki.ParseCertsPEM(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
		for _, c := range certs {
			_ = pki.CredentialID(c.Raw)
			_ = pki.SerialHex(c)
		}
	})
}

func FuzzParseKeyPEM(f *testing.F) {
	k, _ := pki.GenerateKey(pki.KeyEC)
	b, _ := pki.EncodeKeyPEM(k)
	f.Add(b)
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := pki.ParseKeyPEM(b)
		if err == nil && k == nil {
			t.Fatal("no error and no key")
		}
	})
}

func FuzzSignCSR(f *testing.F) {
	ca := fuzzCA(f)
	k, _ := pki.GenerateKey(pki.KeyEC)
	csr, _ := pki.NewCSR(k, "SN-1")
	f.Add(pki.EncodeCSRPEM(csr))
	f.Add(csr)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		der, err := pki.CSRFromPEM(b)
		if err != nil {
			return
		}
		c, err := ca.SignCSR(der, "", time.Hour)
		if err == nil && c.Subject.CommonName == "" {
			t.Fatal("issued a certificate without a common name")
		}
	})
}

func FuzzParseCRL(f *testing.F) {
	ca := fuzzCA(f)
	if _, err := ca.Revoke("abc", "superseded", time.Time{}); err != nil {
		f.Fatal(err)
	}
	der, err := ca.CRL(0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(der)
	f.Add(pki.EncodeCRLPEM(der))
	f.Add([]byte("-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		crl, err := pki.ParseCRL(b, ca.Cert)
		if err != nil {
			return
		}
		for _, r := range pki.CRLRevocations(crl) {
			if r.Serial == "" || r.Reason == "" {
				t.Fatalf("empty field in %+v", r)
			}
		}
	})
}

func FuzzParseSerial(f *testing.F) {
	for _, s := range []string{"abc", "0x01", "0a:bc", "", "-5", "ffffffffffffffffffffffffffffffff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := pki.ParseSerial(s)
		if err != nil {
			return
		}
		if n.Sign() <= 0 {
			t.Fatalf("accepted non-positive %q", s)
		}
		back, err := pki.ParseSerial(n.Text(16))
		if err != nil || back.Cmp(n) != 0 {
			t.Fatalf("round trip of %q: %v", s, err)
		}
	})
}
