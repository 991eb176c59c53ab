package filelock_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/thingline/thingline/filelock"
	"github.com/thingline/thingline/tstest"
)

// TestHelperHolder is not a test: the tests below run the test binary
// again with it to hold a lock from another process.
func TestHelperHolder(t *testing.T) {
	path := os.Getenv("FILELOCK_HOLD")
	if path == "" {
		t.Skip("helper process for the lock tests")
	}
	if _, err := filelock.Lock(path); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path+".ready", nil, 0o600)
	time.Sleep(time.Minute) // killed by the parent long before
}

func TestLockAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHolder$")
	cmd.Env = append(os.Environ(), "FILELOCK_HOLD="+path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := os.Stat(path + ".ready")
		return err
	})
	if _, err := filelock.TryLock(path); !errors.Is(err, filelock.ErrLocked) {
		t.Fatalf("TryLock while another process holds it: %v, want ErrLocked", err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !filelock.Held(f) {
		t.Error("Held = false while another process holds the lock")
	}
	// kill -9: the kernel releases the lock with the process.
	cmd.Process.Kill()
	cmd.Wait()
	if filelock.Held(f) {
		t.Error("Held = true after the holder died")
	}
	unlock, err := filelock.TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after the holder died: %v", err)
	}
	unlock()
}
