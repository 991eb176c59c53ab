package pki_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
)

// openssl runs the real openssl binary and returns its combined output,
// failing the test on a non-zero exit.
func openssl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := opensslErr(t, args...)
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func opensslErr(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl: not installed")
	}
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return string(out), err
}

func writeFile(t *testing.T, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newCA(t *testing.T, kt pki.KeyType) *pki.CA {
	t.Helper()
	dir := t.TempDir()
	if err := pki.InitCA(dir, kt); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestDeviceCertVerifiesWithOpenSSL(t *testing.T) {
	for _, kt := range []pki.KeyType{pki.KeyEC, pki.KeyRSA} {
		t.Run(string(kt), func(t *testing.T) {
			ca := newCA(t, kt)
			for _, f := range []string{"root-ca.key", "device-ca.key"} {
				st, err := os.Stat(filepath.Join(ca.Dir, f))
				if err != nil {
					t.Fatal(err)
				}
				if st.Mode().Perm() != 0o600 {
					t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
				}
			}
			key, err := pki.GenerateKey(kt)
			if err != nil {
				t.Fatal(err)
			}
			c, err := ca.IssueDevice(key.Public(), "SN-000042", 0)
			if err != nil {
				t.Fatal(err)
			}
			crt := writeFile(t, filepath.Join(t.TempDir(), "device.crt"), pki.EncodeCertPEM(c))
			out := openssl(t, "verify", "-purpose", "sslclient", "-CAfile", filepath.Join(ca.Dir, "root-ca.crt"),
				"-untrusted", filepath.Join(ca.Dir, "device-ca.crt"), crt)
			if !strings.Contains(out, ": OK") {
				t.Fatalf("verify: %s", out)
			}
			if subj := strings.TrimSpace(openssl(t, "x509", "-in", crt, "-noout", "-subject")); subj != "subject=CN = SN-000042" {
				t.Fatalf("subject %q", subj)
			}
			// The device certificate may not act as a server or a CA.
			if out, err := opensslErr(t, "verify", "-purpose", "sslserver", "-CAfile", filepath.Join(ca.Dir, "root-ca.crt"),
				"-untrusted", filepath.Join(ca.Dir, "device-ca.crt"), crt); err == nil {
				t.Fatalf("device certificate verified for sslserver: %s", out)
			}

			wantKU := x509.KeyUsageDigitalSignature
			if kt == pki.KeyRSA {
				wantKU |= x509.KeyUsageKeyEncipherment
			}
			if c.KeyUsage != wantKU {
				t.Errorf("key usage %v, want %v", c.KeyUsage, wantKU)
			}
			if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || c.IsCA || !c.BasicConstraintsValid {
				t.Errorf("ext key usage %v, ca %v", c.ExtKeyUsage, c.IsCA)
			}
			if !bytes.Equal(c.AuthorityKeyId, ca.Cert.SubjectKeyId) || len(c.SubjectKeyId) == 0 {
				t.Errorf("aki %x, device ca ski %x", c.AuthorityKeyId, ca.Cert.SubjectKeyId)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 127 || c.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %x: want positive random up to 127 bits", c.SerialNumber)
			}
			wantAlg := x509.ECDSAWithSHA256
			if kt == pki.KeyRSA {
				wantAlg = x509.SHA256WithRSA
			}
			if c.SignatureAlgorithm != wantAlg {
				t.Errorf("signature algorithm %v", c.SignatureAlgorithm)
			}
			if d := c.NotAfter.Sub(c.NotBefore); d < 1095*24*time.Hour || d > 1096*24*time.Hour {
				t.Errorf("validity %v, want 1095 days", d)
			}
			if !ca.Root.IsCA || ca.Root.MaxPathLen != 1 || ca.Root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign || len(ca.Root.SubjectKeyId) == 0 {
				t.Errorf("root: ca %v pathlen %d ku %v", ca.Root.IsCA, ca.Root.MaxPathLen, ca.Root.KeyUsage)
			}
			if !ca.Cert.IsCA || ca.Cert.MaxPathLen != 0 || !ca.Cert.MaxPathLenZero || ca.Cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign ||
				!bytes.Equal(ca.Cert.AuthorityKeyId, ca.Root.SubjectKeyId) {
				t.Errorf("device ca: ca %v pathlen %d ku %v", ca.Cert.IsCA, ca.Cert.MaxPathLen, ca.Cert.KeyUsage)
			}
			if d := ca.Cert.NotAfter.Sub(ca.Cert.NotBefore); d < 3650*24*time.Hour || d > 3651*24*time.Hour {
				t.Errorf("device ca validity %v, want 10 years", d)
			}
			if d := ca.Root.NotAfter.Sub(ca.Root.NotBefore); d < 7300*24*time.Hour || d > 7301*24*time.Hour {
				t.Errorf("root validity %v, want 20 years", d)
			}
			if pki.KeyTypeOf(ca.Cert.PublicKey) != kt {
				t.Errorf("device ca key type %q", pki.KeyTypeOf(ca.Cert.PublicKey))
			}
			chain, err := pki.ParseCertsPEM(ca.ChainPEM())
			if err != nil || len(chain) != 2 || !chain[0].Equal(ca.Cert) || !chain[1].Equal(ca.Root) {
				t.Fatalf("chain: %v, %d certs", err, len(chain))
			}
		})
	}
}

// A device CA whose pathlen is 0 must not be able to mint a working sub-CA.
func TestDeviceCANotUsableForSubCA(t *testing.T) {
	ca := newCA(t, pki.KeyEC)
	key, _ := pki.GenerateKey(pki.KeyEC)
	sub, err := pki.SignIntermediate(ca.Cert, ca.Key, key.Public(), "rogue", 0)
	if err != nil {
		t.Fatal(err)
	}
	subCA := &pki.CA{Cert: sub, Key: key, Root: ca.Root}
	leafKey, _ := pki.GenerateKey(pki.KeyEC)
	leaf, err := subCA.IssueDevice(leafKey.Public(), "SN-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	untrusted := writeFile(t, filepath.Join(dir, "u.pem"), pki.EncodeCertPEM(sub, ca.Cert))
	crt := writeFile(t, filepath.Join(dir, "leaf.pem"), pki.EncodeCertPEM(leaf))
	out, err := opensslErr(t, "verify", "-CAfile", filepath.Join(ca.Dir, "root-ca.crt"), "-untrusted", untrusted, crt)
	if err == nil || !strings.Contains(out, "path length") {
		t.Fatalf("leaf under a pathlen-0 violation: %v %s", err, out)
	}
}

func TestOfflineIntermediateFlow(t *testing.T) {
	rootDir, lineDir := t.TempDir(), filepath.Join(t.TempDir(), "line")
	if err := pki.InitRoot(rootDir, pki.KeyEC); err != nil {
		t.Fatal(err)
	}
	csr, err := pki.InitIntermediateKey(lineDir, pki.KeyEC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(lineDir, "root-ca.key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("root key on the line: %v", err)
	}
	csrPath := writeFile(t, filepath.Join(t.TempDir(), "intermediate.csr"), csr)
	if out := openssl(t, "req", "-in", csrPath, "-noout", "-verify"); !strings.Contains(out, "OK") {
		t.Fatalf("csr verify: %s", out)
	}
	if err := pki.SignIntermediateFile(rootDir, csr, filepath.Join(lineDir, "device-ca.crt"), 0); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(lineDir)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey(pki.KeyEC)
	c, err := ca.IssueDevice(key.Public(), "SN-7", 0)
	if err != nil {
		t.Fatal(err)
	}
	crt := writeFile(t, filepath.Join(t.TempDir(), "d.crt"), pki.EncodeCertPEM(c))
	out := openssl(t, "verify", "-CAfile", filepath.Join(rootDir, "root-ca.crt"), "-untrusted", filepath.Join(lineDir, "device-ca.crt"), crt)
	if !strings.Contains(out, ": OK") {
		t.Fatal(out)
	}
	if ca.Cert.MaxPathLen != 0 || !ca.Cert.MaxPathLenZero || ca.Cert.Subject.CommonName != "thingline Device CA" {
		t.Errorf("intermediate pathlen %d cn %q", ca.Cert.MaxPathLen, ca.Cert.Subject.CommonName)
	}
	// Signing into a directory holding another root must be refused.
	other := t.TempDir()
	if err := pki.InitRoot(other, pki.KeyEC); err != nil {
		t.Fatal(err)
	}
	if err := pki.SignIntermediateFile(other, csr, filepath.Join(lineDir, "device-ca.crt"), 0); err == nil {
		t.Fatal("signed next to a different root")
	}
}

func TestSignOpenSSLCSR(t *testing.T) {
	ca := newCA(t, pki.KeyEC)
	dir := t.TempDir()
	k, csr := filepath.Join(dir, "k"), filepath.Join(dir, "csr")
	openssl(t, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", k)
	openssl(t, "req", "-new", "-key", k, "-subj", "/CN=SN-9", "-out", csr)
	b, err := os.ReadFile(csr)
	if err != nil {
		t.Fatal(err)
	}
	der, err := pki.CSRFromPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.SignCSR(der, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject.CommonName != "SN-9" {
		t.Fatalf("cn %q", c.Subject.CommonName)
	}
	crt := writeFile(t, filepath.Join(dir, "crt"), pki.EncodeCertPEM(c))
	if out := openssl(t, "verify", "-CAfile", filepath.Join(ca.Dir, "root-ca.crt"), "-untrusted", filepath.Join(ca.Dir, "device-ca.crt"), crt); !strings.Contains(out, ": OK") {
		t.Fatal(out)
	}
	// The certificate must carry the CSR's key: openssl's key matches it.
	if openssl(t, "x509", "-in", crt, "-noout", "-pubkey") != openssl(t, "pkey", "-in", k, "-pubout") {
		t.Fatal("certificate key differs from the csr key")
	}
	over, err := ca.SignCSR(der, "SN-10", 0)
	if err != nil || over.Subject.CommonName != "SN-10" {
		t.Fatalf("cn override: %v %q", err, over.Subject.CommonName)
	}
	// A CSR whose signature no longer matches is refused.
	bad := bytes.Clone(der)
	bad[len(bad)-3] ^= 0xff
	if _, err := ca.SignCSR(bad, "", 0); err == nil {
		t.Fatal("signed a csr with a broken signature")
	}
}

// The seed's own openssl commands, run against a CA made by InitCA, must
// produce a certificate our root verifies: our files interoperate.
func TestSeedOpenSSLCommandsWithOurCA(t *testing.T) {
	ca := newCA(t, pki.KeyRSA)
	dir := t.TempDir()
	for _, f := range []string{"device-ca.crt", "device-ca.key"} {
		b, err := os.ReadFile(filepath.Join(ca.Dir, f))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, strings.Replace(f, "device-ca", "inter", 1)), b)
	}
	p := func(s string) string { return filepath.Join(dir, s) }
	openssl(t, "genpkey", "-algorithm", "RSA", "-out", p("SN-000001.key"))
	openssl(t, "req", "-new", "-key", p("SN-000001.key"), "-subj", "/CN=SN-000001", "-out", p("SN-000001.csr"))
	openssl(t, "x509", "-req", "-in", p("SN-000001.csr"), "-CA", p("inter.crt"), "-CAkey", p("inter.key"),
		"-CAcreateserial", "-out", p("SN-000001.crt"), "-days", "1095", "-sha256")
	out := openssl(t, "verify", "-CAfile", filepath.Join(ca.Dir, "root-ca.crt"), "-untrusted", p("inter.crt"), p("SN-000001.crt"))
	if !strings.Contains(out, ": OK") {
		t.Fatal(out)
	}
	// And our parsers read what openssl wrote.
	kb, _ := os.ReadFile(p("SN-000001.key"))
	if _, err := pki.ParseKeyPEM(kb); err != nil {
		t.Fatalf("parsing openssl genpkey output: %v", err)
	}
	cb, _ := os.ReadFile(p("SN-000001.crt"))
	cs, err := pki.ParseCertsPEM(cb)
	if err != nil || cs[0].Subject.CommonName != "SN-000001" {
		t.Fatalf("parsing openssl certificate: %v", err)
	}
	if err := cs[0].CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatal(err)
	}
}

func TestParseKeyPEMFormats(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		gen  [][]string
		want string
	}{
		{"pkcs8-ec", [][]string{{"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "k"}}, "BEGIN PRIVATE KEY"},
		{"sec1-ec", [][]string{{"ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "k"}}, "BEGIN EC PRIVATE KEY"},
		{"pkcs1-rsa", [][]string{{"genpkey", "-algorithm", "RSA", "-out", "k0"}, {"rsa", "-in", "k0", "-traditional", "-out", "k"}}, "BEGIN RSA PRIVATE KEY"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sub := filepath.Join(dir, tc.name)
			if err := os.Mkdir(sub, 0o700); err != nil {
				t.Fatal(err)
			}
			for _, args := range tc.gen {
				for i, a := range args {
					if a == "k" || a == "k0" {
						args[i] = filepath.Join(sub, a)
					}
				}
				openssl(t, args...)
			}
			b, err := os.ReadFile(filepath.Join(sub, "k"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), tc.want) {
				t.Fatalf("openssl wrote %q", b[:40])
			}
			k, err := pki.ParseKeyPEM(b)
			if err != nil {
				t.Fatal(err)
			}
			// Re-encoded as PKCS#8, openssl must see the same key.
			enc, err := pki.EncodeKeyPEM(k)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(enc, []byte("-----BEGIN PRIVATE KEY-----")) {
				t.Fatalf("encoded as %q", enc[:30])
			}
			re := writeFile(t, filepath.Join(sub, "re"), enc)
			if openssl(t, "pkey", "-in", re, "-pubout") != openssl(t, "pkey", "-in", filepath.Join(sub, "k"), "-pubout") {
				t.Fatal("re-encoded key differs")
			}
		})
	}
	if _, err := pki.ParseKeyPEM([]byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")); err == nil {
		t.Fatal("accepted an encrypted key")
	}
	if _, err := pki.ParseKeyPEM([]byte("nothing")); err == nil {
		t.Fatal("accepted no key")
	}
}

func TestCredentialIDKnownAnswer(t *testing.T) {
	if _, err := exec.LookPath("base64"); err != nil {
		t.Skip("base64: not installed")
	}
	ca := newCA(t, pki.KeyEC)
	key, _ := pki.GenerateKey(pki.KeyEC)
	c, err := ca.IssueDevice(key.Public(), "SN-000001", 0)
	if err != nil {
		t.Fatal(err)
	}
	crt := writeFile(t, filepath.Join(t.TempDir(), "c.pem"), pki.EncodeCertPEM(c))
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl: not installed")
	}
	out, err := exec.Command("sh", "-c", `openssl x509 -in "$1" -outform DER | base64 -w0 | openssl dgst -sha3-256 -r`, "sh", crt).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	want := strings.Fields(string(out))[0]
	if len(want) != 64 {
		t.Fatalf("openssl printed %q", out)
	}
	if got := pki.CredentialID(c.Raw); got != want {
		t.Fatalf("CredentialID %s, openssl %s", got, want)
	}
	fp := strings.TrimPrefix(strings.TrimSpace(openssl(t, "x509", "-in", crt, "-noout", "-fingerprint", "-sha256")), "sha256 Fingerprint=")
	fp = strings.ToLower(strings.ReplaceAll(fp, ":", ""))
	if got := pki.Fingerprint(c.Raw); got != fp {
		t.Fatalf("Fingerprint %s, openssl %s", got, fp)
	}
}

func TestSerialHexAndParse(t *testing.T) {
	c := &x509.Certificate{SerialNumber: big.NewInt(0x0abc)}
	if got := pki.SerialHex(c); got != "abc" {
		t.Fatalf("SerialHex %q", got)
	}
	for _, s := range []string{"0ABC", "0x0abc", "0a:bc", " abc "} {
		n, err := pki.ParseSerial(s)
		if err != nil || n.Int64() != 0xabc {
			t.Errorf("ParseSerial(%q) = %v, %v", s, n, err)
		}
	}
	for _, s := range []string{"", "0", "xyz", "-1"} {
		if _, err := pki.ParseSerial(s); err == nil {
			t.Errorf("ParseSerial(%q) accepted", s)
		}
	}
	seen := map[string]bool{}
	for i := 0; i < 50; i++ {
		n, err := pki.NewSerial()
		if err != nil {
			t.Fatal(err)
		}
		if n.Sign() <= 0 || n.BitLen() > 127 {
			t.Fatalf("serial %x out of range", n)
		}
		if seen[n.Text(16)] {
			t.Fatal("repeated serial")
		}
		seen[n.Text(16)] = true
	}
}

func TestInitCARefusesOverwriteAndLoadChecks(t *testing.T) {
	ca := newCA(t, pki.KeyEC)
	before, _ := os.ReadFile(filepath.Join(ca.Dir, "device-ca.key"))
	if err := pki.InitCA(ca.Dir, pki.KeyEC); err == nil {
		t.Fatal("InitCA overwrote an existing CA")
	}
	after, _ := os.ReadFile(filepath.Join(ca.Dir, "device-ca.key"))
	if !bytes.Equal(before, after) {
		t.Fatal("device ca key changed")
	}
	// LoadCA needs no root key.
	if err := os.Remove(filepath.Join(ca.Dir, "root-ca.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(ca.Dir); err != nil {
		t.Fatalf("load without root key: %v", err)
	}
	// A device CA key that does not match the certificate is refused.
	k, _ := pki.GenerateKey(pki.KeyEC)
	if err := pki.WriteKeyFile(filepath.Join(ca.Dir, "device-ca.key"), k); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(ca.Dir); err == nil {
		t.Fatal("loaded a CA with a mismatched key")
	}
	// A device CA from another root is refused.
	other := newCA(t, pki.KeyEC)
	b, _ := os.ReadFile(filepath.Join(other.Dir, "root-ca.crt"))
	writeFile(t, filepath.Join(ca.Dir, "root-ca.crt"), b)
	if err := pki.WriteKeyFile(filepath.Join(ca.Dir, "device-ca.key"), ca.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(ca.Dir); err == nil {
		t.Fatal("loaded a device CA under a foreign root")
	}
	if _, err := pki.LoadCA(t.TempDir()); err == nil {
		t.Fatal("loaded an empty directory")
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := pki.WriteFileAtomic(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFileAtomic(p, []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	st, _ := os.Stat(p)
	if string(b) != "two" || st.Mode().Perm() != 0o640 {
		t.Fatalf("content %q mode %v", b, st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
	if err := pki.WriteFileAtomic(filepath.Join(dir, "missing", "f"), nil, 0o600); err == nil {
		t.Fatal("wrote into a missing directory")
	}
}

func TestGenerateKeyTypes(t *testing.T) {
	k, err := pki.GenerateKey("")
	if err != nil {
		t.Fatal(err)
	}
	if ek, ok := k.(*ecdsa.PrivateKey); !ok || ek.Curve.Params().BitSize != 256 {
		t.Fatalf("default key %T", k)
	}
	k, err = pki.GenerateKey(pki.KeyRSA)
	if err != nil {
		t.Fatal(err)
	}
	if rk, ok := k.(*rsa.PrivateKey); !ok || rk.N.BitLen() != 2048 {
		t.Fatalf("rsa key %T", k)
	}
	if _, err := pki.GenerateKey("dsa"); err == nil {
		t.Fatal("accepted dsa")
	}
	if _, err := pki.ParseKeyType("ed448"); err == nil {
		t.Fatal("accepted ed448")
	}
}

func TestIssueDeviceLimits(t *testing.T) {
	ca := newCA(t, pki.KeyEC)
	k, _ := pki.GenerateKey(pki.KeyEC)
	if _, err := ca.IssueDevice(k.Public(), "", 0); err == nil {
		t.Fatal("issued without a common name")
	}
	if _, err := ca.IssueDevice(k.Public(), strings.Repeat("x", 65), 0); err == nil {
		t.Fatal("issued with a 65-byte common name")
	}
	c, err := ca.IssueDevice(k.Public(), "SN-long", 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if c.NotAfter.After(ca.Cert.NotAfter) {
		t.Fatalf("leaf outlives its issuer: %v > %v", c.NotAfter, ca.Cert.NotAfter)
	}
	chain, err := pki.ParseCertsPEM(ca.LeafChainPEM(c))
	if err != nil || len(chain) != 2 || !chain[0].Equal(c) || !chain[1].Equal(ca.Cert) {
		t.Fatalf("leaf chain: %v", err)
	}
}
