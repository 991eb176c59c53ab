package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/thingline/thingline/pki/pkitest"
	"github.com/thingline/thingline/tstest"
)

// TestIdleFloodDoesNotStarveDevices: one address opens connections as fast
// as the server lets it and never starts TLS, a second address starts
// handshakes it never finishes; meanwhile honest devices from a third
// address still connect promptly. The flood is cut by the per-address rate
// and the hello deadline, the stalled handshakes hold only their address's
// few slots, and /metrics counts each.
func TestIdleFloodDoesNotStarveDevices(t *testing.T) {
	s := startServer(t, t.TempDir(), "--hello-timeout", "3s", "--max-handshakes-per-addr", "16")
	dial := func(src string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		return d.Dial("tcp", s.mqttAddr)
	}
	if c, err := dial("127.0.0.2"); err != nil {
		t.Skipf("cannot dial from 127.0.0.2 (loopback aliases needed): %v", err)
	} else {
		c.Close()
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	held, maxHeld := 0, 0
	// The idle flood: keep opening, hold each until the server closes it.
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := dial("127.0.0.2")
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mu.Lock()
				held++
				maxHeld = max(maxHeld, held)
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					c.SetReadDeadline(time.Now().Add(30 * time.Second))
					io.Copy(io.Discard, c)
					c.Close()
					mu.Lock()
					held--
					mu.Unlock()
				}()
			}
		}()
	}
	// Stalled handshakes: a TLS record header and nothing more.
	for range 100 {
		c, err := dial("127.0.0.3")
		if err != nil {
			continue
		}
		c.Write([]byte{0x16, 0x03, 0x01})
		defer c.Close()
	}

	ca := s.deviceCA()
	var devs []pkitest.Device
	for i := range 15 {
		devs = append(devs, pkitest.IssueDevice(t, ca, fmt.Sprintf("SN-HONEST-%d", i), pkitest.Opts{}))
	}
	time.Sleep(time.Second) // let the flood build up before measuring
	var worst time.Duration
	for i, dev := range devs {
		start := time.Now()
		c, err := s.connect(dev.CertPath, dev.KeyPath, "honest")
		el := time.Since(start)
		if err != nil {
			t.Fatalf("honest connect %d failed after %v under the flood: %v", i, el, err)
		}
		c.Disconnect(0)
		worst = max(worst, el)
	}
	close(stop)
	mu.Lock()
	most := maxHeld // the flood's goroutines run until wg.Wait below
	mu.Unlock()
	t.Logf("flood held up to %d idle connections; slowest honest connect %v", most, worst)
	// Ten seconds is the handshake deadline the flood used to make honest
	// devices wait for; with the fix they wait for CPU only.
	if worst > 3*time.Second {
		t.Errorf("an honest device took %v to connect under the flood", worst)
	}
	if most < 1000 {
		t.Errorf("the flood held only %d connections: not a flood", most)
	}
	wg.Wait()

	// The stalled handshakes end at the 10 s handshake deadline.
	tstest.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		m := metricsText(t, s)
		for _, reason := range []string{"hello-timeout", "per-address-rate", "handshake-timeout"} {
			if n := counter(m, `thingline_gateway_connections_cut_total{reason="`+reason+`"}`); n == 0 {
				return fmt.Errorf("no %s cut counted in /metrics", reason)
			}
		}
		return nil
	})
}

func metricsText(t *testing.T, s *server) string {
	t.Helper()
	resp, err := http.Get("http://" + s.httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// counter is a series' value in a /metrics text, 0 when absent.
func counter(metrics, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(metrics)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}
