package integration

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecretsAreOwnerOnly: with a umask of 000 and a world-writable parent
// directory, everything that holds a secret is still owner-only: the data
// directory, the database files, the admin token hash, the PKI's keys, a
// unit's directory, key, PoP, SPIFFS image and labels (the QR code holds
// the PoP), and a SPIFFS image built by hand.
func TestSecretsAreOwnerOnly(t *testing.T) {
	parent := t.TempDir()
	if err := os.Chmod(parent, 0o777); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("sh", append([]string{"-c", `umask 000; exec "$@"`, "sh", binary}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("thingline %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	data := filepath.Join(parent, "data")
	cmd := exec.Command("sh", "-c", `umask 000; exec "$@"`, "sh", binary, "serve", "--data", data,
		"--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "THINGLINE_ADMIN_TOKEN=")
	runUntilListening(t, cmd)

	units := filepath.Join(parent, "units")
	run("factory", "inject", "--ca-dir", filepath.Join(data, "pki"), "--out", units, "--count", "1", "--quiet")
	unit := filepath.Join(units, "SN-000001")
	run("factory", "label", "--unit", unit)
	img := filepath.Join(parent, "hand.bin")
	src := filepath.Join(parent, "src")
	if err := os.Mkdir(src, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(unit, "device.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "device.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	run("spiffs", "build", "64K", src, img)

	want := map[string]fs.FileMode{
		data:                                0o700,
		filepath.Join(data, "pki"):          0o700,
		filepath.Join(data, "thingline.db"): 0o600,
		filepath.Join(data, "admin-token.sha256"):   0o600,
		filepath.Join(data, "pki", "root-ca.key"):   0o600,
		filepath.Join(data, "pki", "device-ca.key"): 0o600,
		filepath.Join(data, "pki", "server.key"):    0o600,
		unit:                                        0o700,
		filepath.Join(unit, "device.key"):           0o600,
		filepath.Join(unit, "prov.json"):            0o600,
		filepath.Join(unit, "spiffs.bin"):           0o600,
		filepath.Join(unit, "label.png"):            0o600,
		filepath.Join(unit, "label.pdf"):            0o600,
		filepath.Join(unit, "label.zpl"):            0o600,
		img:                                         0o600,
	}
	for _, f := range []string{"thingline.db-wal", "thingline.db-shm"} {
		if _, err := os.Stat(filepath.Join(data, f)); err == nil {
			want[filepath.Join(data, f)] = 0o600
		}
	}
	for path, mode := range want {
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if got := fi.Mode().Perm(); got != mode {
			t.Errorf("%s: mode %#o, want %#o", path, got, mode)
		}
	}
}
