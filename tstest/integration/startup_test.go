package integration

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeStartupFailures: every way `serve` can fail to start ends with
// one line on stderr naming what failed and what to do, a non-zero exit,
// no stack trace, and nothing printed or kept as if the node had started
// (no admin token, no stored token hash), so that the next good start
// still shows the token.
func TestServeStartupFailures(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	// A working PKI to mismatch: made by a first, good start.
	pkiData := t.TempDir()
	runUntilListening(t, exec.Command(binary, "serve", "--data", pkiData, "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"))
	pkiDir := filepath.Join(pkiData, "pki")
	unreadable := filepath.Join(t.TempDir(), "unreadable.crt")
	if err := os.WriteFile(unreadable, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		args []string
		want []string // substrings of the one line
	}{
		{"device port in use", []string{"--mqtt-listen", taken.Addr().String()}, []string{"device listener", "address already in use", "--mqtt-listen"}},
		{"API port in use", []string{"--http-listen", taken.Addr().String()}, []string{"API listener", "address already in use", "--http-listen"}},
		{"unknown store kind", []string{"--store", "mysql://db/x"}, []string{"--store", "unknown kind of store", "postgres://"}},
		{"unreachable store", []string{"--store", "postgres://u:hunter2@127.0.0.1:1/x"}, []string{"opening store", "u:xxxxx@", "check that PostgreSQL is running"}},
		{"unknown bus kind", []string{"--bus", "amqp://q"}, []string{"--bus", "unknown kind of bus", "nats://"}},
		{"unreachable bus", []string{"--bus", "nats://127.0.0.1:1"}, []string{"connecting to bus", "NATS server is running"}},
		{"missing TLS key", []string{"--tls-cert", filepath.Join(pkiDir, "server.crt")}, []string{"--tls-cert", "--tls-key"}},
		{"unreadable TLS cert", []string{"--tls-cert", filepath.Join(pkiDir, "nope.crt"), "--tls-key", filepath.Join(pkiDir, "server.key")}, []string{"server certificate", "no such file", "--tls-cert"}},
		{"not a TLS cert", []string{"--tls-cert", unreadable, "--tls-key", filepath.Join(pkiDir, "server.key")}, []string{"server certificate", "--tls-key"}},
		{"mismatched TLS key", []string{"--tls-cert", filepath.Join(pkiDir, "server.crt"), "--tls-key", filepath.Join(pkiDir, "device-ca.key")}, []string{"server certificate", "does not match", "--tls-key"}},
		{"missing device CA", []string{"--device-ca", filepath.Join(pkiDir, "nope.crt")}, []string{"device CA", "no such file", "--device-ca"}},
		{"device CA not a CA", []string{"--device-ca", filepath.Join(pkiDir, "server.crt")}, []string{"device CA", "not a CA certificate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			argv := append([]string{"serve", "--data", data, "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, tc.args...)
			cmd := exec.Command(binary, argv...)
			cmd.Env = append(os.Environ(), "THINGLINE_ADMIN_TOKEN=")
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("serve %v: exit %v, want a non-zero status\n%s", tc.args, err, out)
			}
			text := strings.TrimRight(string(out), "\n")
			if strings.Contains(text, "\n") || strings.Contains(text, "panic") || strings.Contains(text, "goroutine") {
				t.Errorf("want one line, got:\n%s", out)
			}
			if !strings.HasPrefix(text, "thingline: ") {
				t.Errorf("line does not start with the command's name: %q", text)
			}
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("line lacks %q: %q", w, text)
				}
			}
			if strings.Contains(text, "hunter2") {
				t.Errorf("the store password was printed: %q", text)
			}
			if strings.Contains(text, "admin API token") {
				t.Errorf("a failed start printed an admin token: %q", text)
			}
			if _, err := os.Stat(filepath.Join(data, "admin-token.sha256")); err == nil {
				t.Errorf("a failed start stored an admin token hash")
			}
		})
	}
}

// TestServeTokenAfterFailedStart: a start that fails does not use up the
// one showing of the admin token; giving another token with --admin-token
// says that it replaces the stored one.
func TestServeTokenAfterFailedStart(t *testing.T) {
	data := t.TempDir()
	cmd := exec.Command(binary, "serve", "--data", data, "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--bus", "nats://127.0.0.1:1")
	cmd.Env = append(os.Environ(), "THINGLINE_ADMIN_TOKEN=")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("serve with an unreachable bus started:\n%s", out)
	}
	cmd = exec.Command(binary, "serve", "--data", data, "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "THINGLINE_ADMIN_TOKEN=")
	if out := runUntilListening(t, cmd); !strings.Contains(out, "admin API token") {
		t.Errorf("the first good start after a failed one shows no admin token:\n%s", out)
	}
	cmd = exec.Command(binary, "serve", "--data", data, "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--admin-token", "replacement")
	if out := runUntilListening(t, cmd); !strings.Contains(out, "replaces the one stored") {
		t.Errorf("--admin-token replaced the stored token silently:\n%s", out)
	}
	// The same token again: nothing to say.
	cmd = exec.Command(binary, "serve", "--data", data, "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--admin-token", "replacement")
	if out := runUntilListening(t, cmd); strings.Contains(out, "replaces") {
		t.Errorf("the stored token was said to be replaced by itself:\n%s", out)
	}
}
