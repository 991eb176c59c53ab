package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/thingline/thingline/store"
	"github.com/thingline/thingline/tstest"
)

// connectPacket is a 3.1.1 CONNECT with the given keep-alive.
func connectPacket(keepAlive uint16) []byte {
	return []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, byte(keepAlive >> 8), byte(keepAlive), 0, 1, 'b'}
}

// dialConnect opens a TLS connection, sends CONNECT and returns the
// CONNACK's return code.
func dialConnect(e *env, cert tls.Certificate, keepAlive uint16) (*tls.Conn, byte, error) {
	conn, err := tls.Dial("tcp", e.addr, e.clientTLS(&cert))
	if err != nil {
		return nil, 0, err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(connectPacket(keepAlive)); err != nil {
		conn.Close()
		return nil, 0, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		conn.Close()
		return nil, 0, err
	}
	conn.SetDeadline(time.Time{})
	return conn, ack[3], nil
}

// TestKeepAliveZeroHasIdleLimit: a session that asked for no keep-alive
// is still closed once it has been quiet for the idle limit.
func TestKeepAliveZeroHasIdleLimit(t *testing.T) {
	e := newEnv(t, func(_ *env, c *Config) { c.IdleLimit = 1500 * time.Millisecond })
	cert, _ := e.inter.device(t, "SN-KA0")
	conn, code, err := dialConnect(e, cert, 0)
	if err != nil || code != 0 {
		t.Fatalf("connect: %v, code %d", err, code)
	}
	defer conn.Close()
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err = io.Copy(io.Discard, conn)
	if el := time.Since(start); el < time.Second || el > 10*time.Second {
		t.Errorf("quiet keep-alive 0 session closed after %v (err %v), want about 1.5 s", el, err)
	}
	if n := counterValue(e.srv.met.cuts.WithLabelValues(CutIdle)); n != 1 {
		t.Errorf("idle cuts counted: %v, want 1", n)
	}
}

// TestTakeoverRateLimited: two holders of one identity taking the session
// from each other are stopped after TakeoversPerMinute: the session in
// place stays, the newcomer is refused, and the events stay bounded.
func TestTakeoverRateLimited(t *testing.T) {
	e := newEnv(t, func(_ *env, c *Config) { c.TakeoversPerMinute = 2; c.RefusalEventsPerMinute = 3 })
	cert, _ := e.inter.device(t, "SN-CLONE")
	var last *tls.Conn
	for i := range 6 {
		conn, code, err := dialConnect(e, cert, 60)
		if err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		defer conn.Close()
		want := byte(0)
		if i >= 3 {
			want = v3ServerUnavailable
		}
		if code != want {
			t.Fatalf("connect %d: CONNACK %d, want %d", i, code, want)
		}
		if code == 0 {
			last = conn
		}
	}
	// The session in place still works: a QoS 1 publish is acknowledged.
	topic := "v1/devices/me/telemetry"
	payload := `{"t":1}`
	body := append([]byte{0, byte(len(topic))}, topic...)
	body = append(append(body, 0, 9), payload...)
	last.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := last.Write(append([]byte{0x32, byte(len(body))}, body...)); err != nil {
		t.Fatal(err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(last, ack[:]); err != nil || ack != [4]byte{0x40, 2, 0, 9} {
		t.Fatalf("the surviving session: PUBACK %x, %v", ack, err)
	}
	if n := counterValue(e.srv.met.cuts.WithLabelValues(CutTakeoverRate)); n != 3 {
		t.Errorf("takeover-rate cuts: %v, want 3", n)
	}
	// Events: 2 takeovers, and refusals bounded by RefusalEventsPerMinute.
	tstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		evs, err := e.st.ListEvents(context.Background(), store.EventQuery{Device: "SN-CLONE", Limit: 100})
		if err != nil {
			return err
		}
		kinds := map[string]int{}
		for _, ev := range evs {
			kinds[ev.Kind]++
		}
		if kinds[store.EventTakeover] != 2 || kinds[store.EventRefused] != 3 {
			return fmt.Errorf("events %v, want 2 takeovers and 3 refusals", kinds)
		}
		return nil
	})
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// TestDeviceConnectsLoggedAndSummarized: each device connection is a line
// at INFO until the window's burst is spent; the rest are summed up in one
// line.
func TestDeviceConnectsLoggedAndSummarized(t *testing.T) {
	var buf lockedBuffer
	e := newEnv(t, func(_ *env, c *Config) { c.Logger = slog.New(slog.NewTextHandler(&buf, nil)) })
	n := connLogBurst + 5
	for i := range n {
		cert, _ := e.inter.device(t, fmt.Sprintf("SN-LOG-%02d", i))
		conn, code, err := dialConnect(e, cert, 60)
		if err != nil || code != 0 {
			t.Fatalf("connect %d: %v %d", i, err, code)
		}
		defer conn.Close()
	}
	tstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if got := strings.Count(buf.String(), `msg="gateway: device connected"`); got != connLogBurst {
			return fmt.Errorf("%d connection lines, want %d", got, connLogBurst)
		}
		return nil
	})
	if !strings.Contains(buf.String(), "level=INFO") || !strings.Contains(buf.String(), "device=SN-LOG-00") {
		t.Errorf("connection lines lack level or device:\n%s", buf.String())
	}
	e.srv.Close()
	if !strings.Contains(buf.String(), `msg="gateway: devices connected" count=5`) {
		t.Errorf("no summary of the 5 connections beyond the burst:\n%s", buf.String())
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
