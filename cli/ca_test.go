package cli

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thingline/thingline/pki"
)

func runCA(t *testing.T, args ...string) string {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("thingline %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func opensslOK(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl: not installed")
	}
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The offline-root flow end to end through the commands: the root key
// stays in its own directory, the line directory gets a working CA.
func TestCACommandsOfflineFlow(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl: not installed")
	}
	tmp := t.TempDir()
	rootDir, line, work := filepath.Join(tmp, "root"), filepath.Join(tmp, "line"), filepath.Join(tmp, "work")
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	p := func(s string) string { return filepath.Join(work, s) }

	runCA(t, "ca", "init-root", "--dir", rootDir)
	runCA(t, "ca", "init", "--dir", line, "--csr-out", p("intermediate.csr"))
	runCA(t, "ca", "sign-intermediate", "--root-dir", rootDir, "--csr", p("intermediate.csr"), "--out", filepath.Join(line, "device-ca.crt"))
	if _, err := os.Stat(filepath.Join(line, "root-ca.key")); err == nil {
		t.Fatal("root key reached the line directory")
	}

	out := runCA(t, "ca", "issue", "--ca-dir", line, "--cn", "SN-000001", "--key-out", p("d.key"), "--out", p("d.crt"))
	rootCrt, devCA := filepath.Join(line, "root-ca.crt"), filepath.Join(line, "device-ca.crt")
	if v := opensslOK(t, "verify", "-CAfile", rootCrt, "-untrusted", devCA, p("d.crt")); !strings.Contains(v, ": OK") {
		t.Fatal(v)
	}
	if s := strings.TrimSpace(opensslOK(t, "x509", "-in", p("d.crt"), "-noout", "-subject")); s != "subject=CN = SN-000001" {
		t.Fatalf("subject %q", s)
	}
	b, _ := os.ReadFile(p("d.crt"))
	certs, err := pki.ParseCertsPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "credential id "+pki.CredentialID(certs[0].Raw)) || !strings.Contains(out, "serial        "+pki.SerialHex(certs[0])) {
		t.Fatalf("issue printed:\n%s", out)
	}

	opensslOK(t, "genpkey", "-algorithm", "RSA", "-out", p("r.key"))
	opensslOK(t, "req", "-new", "-key", p("r.key"), "-subj", "/CN=SN-9", "-out", p("r.csr"))
	runCA(t, "ca", "issue", "--ca-dir", line, "--csr", p("r.csr"), "--out", p("r.crt"), "--days", "30", "--chain")
	if v := opensslOK(t, "verify", "-CAfile", rootCrt, "-untrusted", p("r.crt"), p("r.crt")); !strings.Contains(v, ": OK") {
		t.Fatal(v)
	}
	if s := opensslOK(t, "x509", "-in", p("r.crt"), "-noout", "-subject"); !strings.Contains(s, "CN = SN-9") {
		t.Fatalf("subject %q", s)
	}

	runCA(t, "ca", "revoke", "--ca-dir", line, "--serial", pki.SerialHex(certs[0]), "--reason", "cessationOfOperation")
	runCA(t, "ca", "crl", "--ca-dir", line, "--out", p("crl.pem"), "--days", "7")
	crl := opensslOK(t, "crl", "-in", p("crl.pem"), "-CAfile", devCA, "-noout", "-verify", "-text")
	if !strings.Contains(crl, "verify OK") || !strings.Contains(crl, "Cessation Of Operation") {
		t.Fatalf("crl:\n%s", crl)
	}
	root := NewRoot()
	root.SetArgs([]string{"ca", "verify-nothing"})
	root.SetOut(&bytes.Buffer{})
	root.SetErr(&bytes.Buffer{})
	if err := root.ExecuteContext(context.Background()); err == nil {
		t.Fatal("unknown subcommand accepted")
	}

	show := runCA(t, "ca", "show", p("d.crt"))
	if !strings.Contains(show, "subject       CN=SN-000001") {
		t.Fatalf("show:\n%s", show)
	}
}

func TestCAIssueNeedsOneKeySource(t *testing.T) {
	dir := t.TempDir()
	runCA(t, "ca", "init", "--dir", dir, "--key-type", "rsa")
	root := NewRoot()
	root.SetOut(&bytes.Buffer{})
	root.SetErr(&bytes.Buffer{})
	root.SetArgs([]string{"ca", "issue", "--ca-dir", dir, "--cn", "SN-1", "--out", filepath.Join(dir, "x.crt")})
	if err := root.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), "--csr") {
		t.Fatalf("issue without key source: %v", err)
	}
	// --key-out follows the CA's key type unless told otherwise.
	runCA(t, "ca", "issue", "--ca-dir", dir, "--cn", "SN-2", "--key-out", filepath.Join(dir, "k"), "--out", filepath.Join(dir, "c"))
	b, _ := os.ReadFile(filepath.Join(dir, "c"))
	certs, err := pki.ParseCertsPEM(b)
	if err != nil || pki.KeyTypeOf(certs[0].PublicKey) != pki.KeyRSA {
		t.Fatalf("device key type: %v", err)
	}
}
