package api

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/thingline/thingline/bus"
	"github.com/thingline/thingline/bus/inproc"
	"github.com/thingline/thingline/tstest"
)

const streamToken = "stream-test-token"

func streamServer(t *testing.T, keepAlive time.Duration) (*httptest.Server, *inproc.Bus) {
	t.Helper()
	b := inproc.New()
	t.Cleanup(func() { b.Close() })
	srv := httptest.NewServer(New(Config{Bus: b, AdminTokenHash: HashToken(streamToken), StreamKeepAlive: keepAlive}))
	t.Cleanup(srv.Close)
	return srv, b
}

func openStream(t *testing.T, srv *httptest.Server, query string) (*http.Response, *bufio.Reader) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/api/v1/stream"+query, nil)
	req.Header.Set("Authorization", "Bearer "+streamToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp, bufio.NewReader(resp.Body)
}

// readUntil reads lines until one contains want, failing after 10 s.
func readUntil(t *testing.T, r *bufio.Reader, want string) []string {
	t.Helper()
	type res struct {
		lines []string
		err   error
	}
	ch := make(chan res, 1)
	go func() {
		var lines []string
		for {
			l, err := r.ReadString('\n')
			lines = append(lines, strings.TrimRight(l, "\n"))
			if err != nil || strings.Contains(l, want) {
				ch <- res{lines, err}
				return
			}
		}
	}()
	select {
	case x := <-ch:
		if x.err != nil {
			t.Fatalf("stream ended before %q: %v; read %q", want, x.err, x.lines)
		}
		return x.lines
	case <-time.After(10 * time.Second):
		t.Fatalf("no %q on the stream within 10 s", want)
		return nil
	}
}

func TestStreamFiltersAndKeepAlive(t *testing.T) {
	srv, b := streamServer(t, 50*time.Millisecond)
	resp, r := openStream(t, srv, "?device=SN-1&device=SN-3,SN-4&types=telemetry,alarms")
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("stream: %d %q", resp.StatusCode, ct)
	}
	readUntil(t, r, ": keep-alive")
	ctx := context.Background()
	// Subscriptions are in place once the first bytes came.
	for _, n := range []struct{ topic, data string }{
		{bus.TopicTelemetry, `{"device":"SN-2","ts":1,"values":{"t":1}}`}, // another device
		{bus.TopicState, `{"device":"SN-1","ts":2,"connected":true}`},     // a type not asked for
		{bus.TopicTelemetry, `{"device":"SN-1","ts":3,"values":{"t":3}}`},
		{bus.TopicAlarms, "{\"device\":\"SN-4\",\n\"ts\":4,\"op\":\"raised\"}"}, // a line break inside
	} {
		if err := b.Publish(ctx, n.topic, []byte(n.data)); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Join(readUntil(t, r, `"op":"raised"`), "\n")
	if strings.Contains(lines, "SN-2") || strings.Contains(lines, "connected") {
		t.Errorf("stream sent notices it should have filtered out:\n%s", lines)
	}
	if !strings.Contains(lines, "event: telemetry\ndata: {\"device\":\"SN-1\",\"ts\":3,\"values\":{\"t\":3}}\n") ||
		!strings.Contains(lines, "event: alarms\ndata: {\"device\":\"SN-4\", \"ts\":4,\"op\":\"raised\"}") {
		t.Errorf("stream lines:\n%s", lines)
	}
	readUntil(t, r, ": keep-alive")

	for _, q := range []string{"?types=telemetry,weather", "?since=1", "?types=state&types=rpc"} {
		resp, _ := openStream(t, srv, q)
		if resp.StatusCode != 400 {
			t.Errorf("stream%s: HTTP %d, want 400", q, resp.StatusCode)
		}
	}
}

// TestStreamSlowClientDropped: a client that does not read is dropped once
// its buffer is full; publishing never waits for it, and its
// subscriptions are released.
func TestStreamSlowClientDropped(t *testing.T) {
	srv, b := streamServer(t, 50*time.Millisecond)
	// A raw connection that reads the headers and then nothing more.
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /api/v1/stream?types=telemetry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", streamToken)
	br := bufio.NewReader(c)
	if l, err := br.ReadString('\n'); err != nil || !strings.Contains(l, "200") {
		t.Fatalf("status line %q, %v", l, err)
	}
	tstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !b.Watched(bus.TopicTelemetry) {
			return fmt.Errorf("the stream does not watch telemetry yet")
		}
		return nil
	})
	payload := `{"device":"SN-1","ts":1,"values":{"blob":"` + strings.Repeat("x", 4000) + `"}}`
	start := time.Now()
	for range 20000 { // 80 MB: far more than socket buffers and the client's buffer hold
		if err := b.Publish(context.Background(), bus.TopicTelemetry, []byte(payload)); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("publishing to a stalled stream took %v: the bus waited for the client", d)
	}
	// The write deadline cuts the stalled client; its subscriptions go.
	tstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if b.Watched(bus.TopicTelemetry) {
			return fmt.Errorf("the stalled stream still subscribes to telemetry")
		}
		return nil
	})
}
