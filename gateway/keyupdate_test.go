package gateway

import (
	"crypto/x509"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKeyUpdateAfterQuietSpell has OpenSSL's s_client, as a device, ask
// for a TLS 1.3 key update (its K command: KeyUpdate, update_requested)
// after a spell longer than the server's write timeout in which nothing
// was written to it, then publish. crypto/tls answers a key update from
// inside the read that meets it, so the answer is written by whoever reads
// the session — a ready loop, or the session's own goroutine where there
// are none — and must not meet the deadline the last write left to pass.
func TestKeyUpdateAfterQuietSpell(t *testing.T) {
	need(t, "openssl")
	t.Run("ready-loops", func(t *testing.T) { testKeyUpdateAfterQuietSpell(t, false) })
	t.Run("goroutines", func(t *testing.T) { testKeyUpdateAfterQuietSpell(t, true) })
}

func testKeyUpdateAfterQuietSpell(t *testing.T, noLoops bool) {
	e := newEnv(t, func(_ *env, cfg *Config) {
		cfg.Timeout = time.Second
		cfg.noReadyLoops = noLoops
	})
	if got := len(e.srv.loops) > 0; got == noLoops {
		t.Fatalf("ready loops: %v", got)
	}
	cert, _ := e.inter.device(t, "ku-1")
	dir := t.TempDir()
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "dev.key"), "PRIVATE KEY", der)
	writePEM(t, filepath.Join(dir, "dev.crt"), "CERTIFICATE", cert.Certificate...)
	writePEM(t, filepath.Join(dir, "ca.crt"), "CERTIFICATE", e.srvCA.cert.Raw)

	cmd := exec.Command("openssl", "s_client", "-connect", e.addr, "-tls1_3", "-servername", "localhost",
		"-cert", "dev.crt", "-key", "dev.key", "-CAfile", "ca.crt", "-verify_return_error")
	cmd.Dir = dir
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	waitFor := func(what string, want []byte) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(out.String(), string(want)) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s from the server; s_client printed:\n%q", what, out.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, client "ku-1".
	connect := []byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 4, 'k', 'u', '-', '1'}
	waitFor("handshake", []byte("Verify return code: 0"))
	write(t, in, connect)
	waitFor("CONNACK", []byte{0x20, 2, 0, 0})
	write(t, in, publishV4(1, `{"t":1}`))
	waitFor("PUBACK 1", []byte{0x40, 2, 0, 1})

	time.Sleep(1500 * time.Millisecond) // past the last write's deadline
	write(t, in, []byte("K\n"))
	time.Sleep(200 * time.Millisecond)
	write(t, in, publishV4(2, `{"t":2}`))
	waitFor("PUBACK 2 after the key update", []byte{0x40, 2, 0, 2})
}

func write(t *testing.T, w io.Writer, b []byte) {
	t.Helper()
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
}
