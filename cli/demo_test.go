package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDemoCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	var out bytes.Buffer
	root := NewRoot()
	root.SetArgs([]string{"demo", "--dir", dir, "--units", "2", "--duration", "1s", "--interval", "200ms",
		"--http-listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0"})
	root.SetOut(&out)
	root.SetErr(&out)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	begin := time.Now()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("thingline demo: %v\n%s", err, out.String())
	}
	// --duration ends the run by itself, well before the test's deadline.
	if d := time.Since(begin); d > 30*time.Second {
		t.Errorf("demo --duration 1s took %v", d)
	}
	s := out.String()
	for _, want := range []string{
		"SN-000001    injected", "SN-000002    injected",
		"SN-000002    app    device reports: connected",
		"SN-000002    cloud  auto-provisioned",
		"== streaming", "2 twins stopped", "node stopped", "== summary",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "units", "ledger.db")); err != nil {
		t.Errorf("--dir not used: %v", err)
	}
}
