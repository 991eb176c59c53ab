//go:build linux && cgo

package sqlite

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestWALSyncer: syncs succeed on a file, a sync's failure comes back as
// its errno, and a closed syncer refuses.
func TestWALSyncer(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "wal"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ws, err := newWALSyncer(f)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := f.Write([]byte("frame")); err != nil {
			t.Fatal(err)
		}
		if err := ws.Sync(); err != nil {
			t.Fatalf("sync %d: %v", i, err)
		}
	}
	if err := ws.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ws.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if ws.Sync() == nil {
		t.Error("a closed syncer synced")
	}

	// A pipe cannot be synced: EINVAL, reported as such.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	ps, err := newWALSyncer(w)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if err := ps.Sync(); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("syncing a pipe: %v; want EINVAL", err)
	}
}
