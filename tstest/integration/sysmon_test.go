package integration

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
)

// TestServeTunesSysmon checks that a server runs with the runtime's monitor
// tuned (node/sysmon.go): serve re-executes itself, in the same process,
// with schedtrace in GODEBUG, and then serves.
func TestServeTunesSysmon(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the tuning is Linux only")
	}
	s := startServer(t, t.TempDir())
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", s.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var godebug []string
	for _, kv := range bytes.Split(env, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("GODEBUG=")); ok {
			godebug = append(godebug, string(v))
		}
	}
	if len(godebug) != 1 || !strings.Contains(godebug[0], "schedtrace=2147483647") {
		t.Fatalf("the server's GODEBUG is %q, want one with schedtrace=2147483647", godebug)
	}
	if code := s.api("GET", "/api/v1/devices", "", nil); code != 200 {
		t.Fatalf("GET /api/v1/devices after the re-execution: %d", code)
	}
}
