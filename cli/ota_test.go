package cli

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/thingline/thingline/node"
	"github.com/thingline/thingline/store"
)

// TestOTACommands drives upload, packages, assign, rollout start, status,
// pause, resume and abort against a real node's API.
func TestOTACommands(t *testing.T) {
	dir := t.TempDir()
	n, err := node.Start(context.Background(), node.Config{DataDir: dir, MQTTListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		AdminToken: "tl_cli_test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Out: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for _, sn := range []string{"SN-C1", "SN-C2", "SN-C3"} {
		if _, _, _, err := n.Store().EnsureDevice(context.Background(), store.Device{Name: sn, Profile: "default"},
			store.Credential{Serial: sn, SHA256: sn}, nil); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "fw.bin")
	os.WriteFile(img, []byte("123456789"), 0o600)
	api := []string{"--server", "http://" + n.HTTPAddr(), "--token", "tl_cli_test"}
	run := func(args ...string) string { return runCA(t, append(args, api...)...) }

	out := run("ota", "upload", img, "--title", "fw", "--version", "1.1", "--checksum-algorithm", "crc32")
	if !strings.Contains(out, "package 1: fw 1.1, 9 bytes, CRC32 2639f4cb") {
		t.Fatalf("upload: %s", out)
	}
	if out := run("ota", "packages"); !strings.Contains(out, "fw") || !strings.Contains(out, "2639f4cb") {
		t.Fatalf("packages: %s", out)
	}
	if out := run("ota", "assign", "1", "--device", "SN-C3"); !strings.Contains(out, `"state":"QUEUED"`) {
		t.Fatalf("assign: %s", out)
	}
	out = run("ota", "rollout", "start", "1", "SN-C1", "SN-C2", "--waves", "1", "--failure-threshold", "1", "--success-threshold", "50%")
	m := regexp.MustCompile(`rollout (\d+) started: 2 devices in waves \[1 1\], next wave at 50% updated, paused at 1 failures`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("start: %s", out)
	}
	id := m[1]
	if out := run("ota", "rollout", "pause", id); !strings.Contains(out, "paused by the operator") {
		t.Fatalf("pause: %s", out)
	}
	if out := run("ota", "rollout", "resume", id); !strings.Contains(out, "running") {
		t.Fatalf("resume: %s", out)
	}
	if out := run("ota", "rollout", "status", id, "--devices"); !strings.Contains(out, "SN-C1") || !strings.Contains(out, "WAVE") {
		t.Fatalf("status: %s", out)
	}
	if out := run("ota", "rollout", "abort", id); !strings.Contains(out, "aborted") {
		t.Fatalf("abort: %s", out)
	}
	if out := run("ota", "rollout", "list"); !strings.Contains(out, "aborted") {
		t.Fatalf("list: %s", out)
	}
}
