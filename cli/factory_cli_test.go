package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/thingline/thingline/pki/pkitest"
)

// runFactory runs `thingline factory args...` in process.
func runFactory(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"factory"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestFactoryCommands(t *testing.T) {
	ca := pkitest.DevPKI(t)
	out := t.TempDir()
	must := func(args ...string) string {
		t.Helper()
		s, err := runFactory(t, args...)
		if err != nil {
			t.Fatalf("factory %s: %v\n%s", strings.Join(args, " "), err, s)
		}
		return s
	}
	must("assemble", "--out", out, "--board", "MAC-1", "--operator", "ann")
	s := must("inject", "--ca-dir", ca, "--out", out, "--count", "2", "--batch", "B1", "--quiet")
	if !strings.Contains(s, "SN-000001") || !strings.Contains(s, "injected 2 units") {
		t.Errorf("inject printed:\n%s", s)
	}
	must("inject", "--ca-dir", ca, "--out", out, "--board", "MAC-1", "--chain-name", "root_ca.crt")
	if _, err := os.Stat(filepath.Join(out, "SN-000003", "root_ca.crt")); err != nil {
		t.Error(err)
	}
	if _, err := runFactory(t, "inject", "--ca-dir", ca, "--out", out, "--sn", "SN-000002"); err == nil {
		t.Error("inject of a used SN succeeded")
	}
	must("record", "--out", out, "--station", "flashing", "--sn", "SN-000003", "--result", "fail", "--detail", "verify")
	must("label", "--unit", filepath.Join(out, "SN-000003"))
	must("label", "--out", out, "--sheet", filepath.Join(out, "sheet.pdf"))
	s = must("units", "--out", out)
	if !strings.Contains(s, "SN-000003  injected  5 label pass") {
		t.Errorf("units:\n%s", s)
	}
	s = must("unit", "--out", out, "SN-000003")
	for _, want := range []string{"Board:        MAC-1", "1 assembly", "3 injection", "2 flashing   fail", "5 label"} {
		if !strings.Contains(s, want) {
			t.Errorf("unit lacks %q:\n%s", want, s)
		}
	}
	s = must("report", "--out", out)
	if !strings.Contains(s, "3 injection  3") {
		t.Errorf("report:\n%s", s)
	}

	// Station 4 failing exits with status 1.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }))
	defer srv.Close()
	s, err := runFactory(t, "test", "--out", out, "--server", srv.URL, "--token", "t", "--sn", "SN-000001", "--timeout", "200ms", "--interval", "50ms")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(s, "FAIL") {
		t.Errorf("failing test: err %v, output %q", err, s)
	}

	var got atomic.Int32
	push := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		fmt.Fprint(w, `{"accepted":3}`)
	}))
	defer push.Close()
	s = must("push", "--out", out, "--server", push.URL, "--token", "t")
	if got.Load() != 2 || !strings.Contains(s, "pushed 3 of 3") || !strings.Contains(s, "station events") {
		t.Errorf("push: %d requests, %q", got.Load(), s)
	}
	if _, err := runFactory(t, "units", "--out", t.TempDir()); err == nil {
		t.Error("units on a directory without a ledger succeeded")
	}
}

func TestFactoryUnitUnknown(t *testing.T) {
	out := t.TempDir()
	if _, err := runFactory(t, "assemble", "--out", out, "--board", "B-1"); err != nil {
		t.Fatal(err)
	}
	s, err := runFactory(t, "unit", "--out", out, "B-1")
	if err != nil || !strings.Contains(s, "no serial number yet") || !strings.Contains(s, "1 assembly") {
		t.Errorf("board traveller: %v\n%s", err, s)
	}
	if s, err := runFactory(t, "unit", "--out", out, "SN-404"); err == nil || s != "" {
		t.Errorf("unknown unit: err %v, printed %q", err, s)
	}
}
