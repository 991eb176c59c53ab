package pki_test

import (
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/pki"
)

func TestRevokeAndCRLWithOpenSSL(t *testing.T) {
	ca := newCA(t, pki.KeyEC)
	dir := t.TempDir()
	issue := func(cn string) string {
		k, _ := pki.GenerateKey(pki.KeyEC)
		c, err := ca.IssueDevice(k.Public(), cn, 0)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, cn+".crt"), pki.EncodeCertPEM(c))
		return pki.SerialHex(c)
	}
	bad, good := issue("SN-bad"), issue("SN-good")
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	rec, err := ca.Revoke(strings.ToUpper(bad), "keyCompromise", at)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Serial != bad || rec.Reason != "keyCompromise" || !rec.RevokedAt.Equal(at) {
		t.Fatalf("record %+v", rec)
	}
	if _, err := ca.Revoke(bad, "superseded", time.Time{}); !errors.Is(err, pki.ErrAlreadyRevoked) {
		t.Fatalf("second revoke: %v", err)
	}
	if _, err := ca.Revoke(good, "certificateHold", time.Time{}); err == nil {
		t.Fatal("accepted certificateHold")
	}
	st, err := os.Stat(filepath.Join(ca.Dir, "revoked.json"))
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("revoked.json: %v", err)
	}

	der, err := ca.CRL(0)
	if err != nil {
		t.Fatal(err)
	}
	crlPath := writeFile(t, filepath.Join(dir, "crl.pem"), pki.EncodeCRLPEM(der))
	out := openssl(t, "crl", "-in", crlPath, "-CAfile", filepath.Join(ca.Dir, "device-ca.crt"), "-noout", "-verify", "-text")
	if !strings.Contains(out, "verify OK") || !strings.Contains(out, "Key Compromise") {
		t.Fatalf("openssl crl: %s", out)
	}
	if !strings.Contains(out, "Serial Number: "+strings.ToUpper(evenHex(bad))) {
		t.Fatalf("serial %s not listed:\n%s", bad, out)
	}
	if strings.Contains(out, strings.ToUpper(evenHex(good))) {
		t.Fatal("unrevoked serial listed")
	}
	if got := strings.TrimSpace(openssl(t, "crl", "-in", crlPath, "-noout", "-crlnumber")); got != "crlNumber=0x01" {
		t.Fatalf("first crl number %q", got)
	}

	// Full path validation with the CRL: the revoked certificate fails,
	// the other passes.
	chainCRL := writeFile(t, filepath.Join(dir, "chain-crl.pem"), pki.EncodeCRLPEM(der))
	verify := func(cn string) (string, error) {
		return opensslErr(t, "verify", "-crl_check", "-CRLfile", chainCRL, "-CAfile", filepath.Join(ca.Dir, "root-ca.crt"),
			"-untrusted", filepath.Join(ca.Dir, "device-ca.crt"), filepath.Join(dir, cn+".crt"))
	}
	if out, err := verify("SN-bad"); err == nil || !strings.Contains(out, "revoked") {
		t.Fatalf("revoked certificate: %v %s", err, out)
	}
	if out, err := verify("SN-good"); err != nil {
		t.Fatalf("good certificate: %v %s", err, out)
	}

	der2, err := ca.CRL(48 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	crl2, err := pki.ParseCRL(pki.EncodeCRLPEM(der2), ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if crl2.Number.Cmp(big.NewInt(2)) != 0 {
		t.Fatalf("second crl number %v", crl2.Number)
	}
	if d := crl2.NextUpdate.Sub(crl2.ThisUpdate); d < 48*time.Hour || d > 49*time.Hour {
		t.Fatalf("crl validity %v", d)
	}
	revs := pki.CRLRevocations(crl2)
	if len(revs) != 1 || revs[0].Serial != bad || revs[0].Reason != "keyCompromise" || !revs[0].RevokedAt.Equal(at) {
		t.Fatalf("crl revocations %+v", revs)
	}
	// DER input works too, and a foreign issuer is refused.
	if _, err := pki.ParseCRL(der2, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.ParseCRL(der2, newCA(t, pki.KeyEC).Cert); err == nil {
		t.Fatal("crl verified against a foreign ca")
	}

	loaded, err := pki.LoadRevocations(ca.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.CRLNumber != 2 || len(loaded.Revoked) != 1 {
		t.Fatalf("loaded %+v", loaded)
	}
	if _, ok := loaded.Find("0x" + bad); !ok {
		t.Fatal("Find missed the revoked serial")
	}
	if _, ok := loaded.Find(good); ok {
		t.Fatal("Find reported a good serial")
	}
}

// evenHex pads a hex string to whole bytes, as openssl prints serials.
func evenHex(s string) string {
	if len(s)%2 == 1 {
		return "0" + s
	}
	return s
}

func TestConcurrentRevocationsAllKept(t *testing.T) {
	ca := newCA(t, pki.KeyEC)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 1; i <= 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// Separate CA values, as separate processes would have.
			c, err := pki.LoadCA(ca.Dir)
			if err == nil {
				_, err = c.Revoke(big.NewInt(int64(i)).Text(16), "cessationOfOperation", time.Time{})
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	r, err := pki.LoadRevocations(ca.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Revoked) != 20 {
		t.Fatalf("%d revocations kept, want 20", len(r.Revoked))
	}
}

func TestLoadRevocationsRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	r, err := pki.LoadRevocations(dir)
	if err != nil || len(r.Revoked) != 0 || r.CRLNumber != 0 {
		t.Fatalf("missing file: %+v %v", r, err)
	}
	for _, body := range []string{
		`{`,
		`{"crl_number":-1}`,
		`{"revoked":[{"serial":"zz","reason":"keyCompromise"}]}`,
		`{"revoked":[{"serial":"01","reason":"bogus"}]}`,
	} {
		writeFile(t, filepath.Join(dir, "revoked.json"), []byte(body))
		if _, err := pki.LoadRevocations(dir); err == nil {
			t.Errorf("accepted %s", body)
		}
	}
}

func TestReasonNames(t *testing.T) {
	for _, n := range pki.ReasonNames() {
		c, err := pki.ReasonCode(n)
		if err != nil || pki.ReasonName(c) != n {
			t.Errorf("%s: %d %v", n, c, err)
		}
	}
	if c, err := pki.ReasonCode("KEYCOMPROMISE"); err != nil || c != 1 {
		t.Fatalf("case-insensitive: %d %v", c, err)
	}
	if c, _ := pki.ReasonCode("cessationOfOperation"); c != 5 {
		t.Fatalf("cessationOfOperation = %d", c)
	}
}
