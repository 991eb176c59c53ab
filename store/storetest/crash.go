package storetest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thingline/thingline/store"
)

// crashEnv carries the store's address to the child process.
const crashEnv = "THINGLINE_STORETEST_CRASH_CHILD"

// crashAcks is how many acknowledgements the parent waits for before it
// kills the child.
const crashAcks = 3000

// Crash checks durability across a kill -9: it re-runs the calling test in a
// child process that appends telemetry from several goroutines and prints
// the sequence number of each record once AppendTelemetry returned, kills
// the child mid-stream with SIGKILL, reopens the store and checks that every
// acknowledged record is there exactly once.
//
// Crash must be called from a top-level test. In the parent, dsn is called
// for the store's address; in the child, the address comes from the parent
// and open is called with it. Stores implementing Compacter are compacted
// continuously in the child, so that the kill also lands mid-compaction.
func Crash(t *testing.T, dsn func(t *testing.T) string, open func(ctx context.Context, dsn string) (store.Store, error)) {
	if addr := os.Getenv(crashEnv); addr != "" {
		crashChild(addr, open)
		return
	}
	if strings.Contains(t.Name(), "/") {
		t.Fatal("storetest.Crash must be called from a top-level test")
	}
	addr := dsn(t)
	cmd := exec.Command(os.Args[0], "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+addr)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	acked := map[int64]bool{}
	sc := bufio.NewScanner(out)
	timeout := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
	defer timeout.Stop()
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || f[0] != "ack" {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			t.Fatalf("child printed %q", sc.Text())
		}
		acked[n] = true
		if len(acked) >= crashAcks && !killed {
			// SIGKILL: no deferred function, no Close, nothing flushed.
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("child ended after %d acknowledgements without being killed: %v", len(acked), err)
	}
	t.Logf("child killed after %d acknowledged records", len(acked))

	ctx := ctxT(t)
	s, err := open(ctx, addr)
	if err != nil {
		t.Fatalf("reopening after the crash: %v", err)
	}
	defer s.Close()
	d, err := s.GetDevice(ctx, "crash")
	if err != nil {
		t.Fatal(err)
	}
	count := map[int64]int{}
	from := int64(0)
	for {
		got, err := s.QueryTelemetry(ctx, store.TelemetryQuery{DeviceID: d.ID, Keys: []string{"seq"}, From: from, Limit: 10000, Asc: true})
		if err != nil {
			t.Fatal(err)
		}
		ps := got["seq"]
		for _, p := range ps {
			n, err := strconv.ParseInt(string(p.Value), 10, 64)
			if err != nil || n != p.TS {
				t.Fatalf("point %d=%s: value does not match its timestamp", p.TS, p.Value)
			}
			count[n]++
		}
		if len(ps) < 10000 {
			break
		}
		from = ps[len(ps)-1].TS + 1
	}
	for n, c := range count {
		if c != 1 {
			t.Errorf("record %d stored %d times", n, c)
		}
	}
	missing := 0
	for n := range acked {
		if count[n] == 0 {
			missing++
			if missing < 10 {
				t.Errorf("acknowledged record %d lost", n)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged records lost", missing, len(acked))
	}
	t.Logf("%d records after reopening, all %d acknowledged ones among them", len(count), len(acked))
	// The store still works after recovery.
	if err := s.AppendTelemetry(ctx, []store.Record{{DeviceID: d.ID, TS: 1 << 40, Values: []store.KV{{Key: "seq", Value: raw("1099511627776")}}}}); err != nil {
		t.Fatalf("appending after recovery: %v", err)
	}
}

func crashChild(addr string, open func(ctx context.Context, dsn string) (store.Store, error)) {
	ctx := context.Background()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(3)
	}
	s, err := open(ctx, addr)
	if err != nil {
		fail(err)
	}
	d, _, _, err := s.EnsureDevice(ctx, store.Device{Name: "crash"}, store.Credential{}, nil)
	if err != nil {
		fail(err)
	}
	var next atomic.Int64
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	for range 16 {
		go func() {
			for {
				n := next.Add(1)
				r := store.Record{DeviceID: d.ID, TS: n, Values: []store.KV{
					{Key: "seq", Value: raw(strconv.FormatInt(n, 10))}, {Key: "pad", Value: raw(`"0123456789abcdef"`)},
				}}
				if err := s.AppendTelemetry(ctx, []store.Record{r}); err != nil {
					fail(err)
				}
				// Printed (and flushed) only after the append returned: the
				// parent's list is a subset of what was acknowledged.
				mu.Lock()
				fmt.Fprintf(w, "ack %d\n", n)
				w.Flush()
				mu.Unlock()
			}
		}()
	}
	if c, ok := s.(Compacter); ok {
		go func() {
			for {
				if err := c.Compact(ctx); err != nil {
					fail(err)
				}
			}
		}()
	}
	time.Sleep(50 * time.Second) // the parent kills the child long before
	fail(fmt.Errorf("not killed"))
}
