package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/thingline/thingline/tstest"
)

// TestHelperIdleClients is not a test: BenchmarkIdleConnections runs the
// test binary again with it, so that the clients' memory is not counted in
// the server's process.
func TestHelperIdleClients(t *testing.T) {
	addr := os.Getenv("THINGLINE_GW_IDLE_ADDR")
	if addr == "" {
		t.Skip("helper process for BenchmarkIdleConnections")
	}
	dir := os.Getenv("THINGLINE_GW_IDLE_DIR")
	n, _ := strconv.Atoi(os.Getenv("THINGLINE_GW_IDLE_N"))
	caPEM, _ := os.ReadFile(filepath.Join(dir, "server-ca.pem"))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	e := &env{addr: addr, srvRoots: roots}
	var conns []*tls.Conn
	for i := 0; i < n; i++ {
		cert, err := tls.LoadX509KeyPair(filepath.Join(dir, fmt.Sprintf("d%d.crt", i)), filepath.Join(dir, fmt.Sprintf("d%d.key", i)))
		if err != nil {
			t.Fatal(err)
		}
		c, err := rawConnect(e, cert)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Hold the connections until the parent closes our stdin.
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

func heapAndStacks() (heap, stacks uint64) {
	// Stacks shrink by half per GC while a quarter or less is used.
	for range 4 {
		runtime.GC()
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, m.StackInuse
}

// BenchmarkIdleConnections reports the server's memory per idle, connected
// device (heap and stacks, clients in another process). b.N is ignored
// beyond choosing the connection count: -benchtime=2000x opens 2000.
func BenchmarkIdleConnections(b *testing.B) {
	n := b.N
	if n < 100 {
		n = 100
	}
	if os.Getenv("THINGLINE_GW_HEAPPROFILE") != "" {
		runtime.MemProfileRate = 512
	}
	t := &testing.T{}
	e := newEnv(t, nil)
	b.Cleanup(func() { e.srv.Close() })
	dir := b.TempDir()
	writePEM(t, filepath.Join(dir, "server-ca.pem"), "CERTIFICATE", e.srvCA.cert.Raw)
	for i := 0; i < n; i++ {
		cert, _ := e.inter.device(b, fmt.Sprintf("SN-I%05d", i))
		writePEM(t, filepath.Join(dir, fmt.Sprintf("d%d.crt", i)), "CERTIFICATE", cert.Certificate...)
		der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
		if err != nil {
			b.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("d%d.key", i)), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	}
	heap0, stack0 := heapAndStacks()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperIdleClients$", "-test.timeout=2h")
	cmd.Env = append(os.Environ(), "THINGLINE_GW_IDLE_ADDR="+e.addr, "THINGLINE_GW_IDLE_DIR="+dir, "THINGLINE_GW_IDLE_N="+strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	tstest.CheckFor(b, 10*time.Minute, 100*time.Millisecond, func() error {
		if s := e.srv.Sessions(); s < n {
			return fmt.Errorf("%d of %d sessions", s, n)
		}
		return nil
	})
	// Let the connect-time audit events drain first.
	tstest.CheckFor(b, time.Minute, 50*time.Millisecond, func() error {
		if q := len(e.srv.events); q > 0 {
			return fmt.Errorf("%d events queued", q)
		}
		return nil
	})
	// Sessions hand their wait to a small goroutine after idleAfter.
	time.Sleep(idleAfter + 500*time.Millisecond)
	heap1, stack1 := heapAndStacks()
	if path := os.Getenv("THINGLINE_GW_HEAPPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		pprof.WriteHeapProfile(f)
		f.Close()
	}
	if path := os.Getenv("THINGLINE_GW_GOROUTINES"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		pprof.Lookup("goroutine").WriteTo(f, 1)
		f.Close()
	}
	b.ReportMetric(float64(heap1+stack1-heap0-stack0)/float64(n), "bytes/conn")
	b.ReportMetric(float64(stack1-stack0)/float64(n), "stack-bytes/conn")
}
