// Package httpd is protocomm's SoftAP/HTTP transport as ESP-IDF's
// protocomm_httpd.c serves it and esp_prov's Transport_HTTP uses it: each
// endpoint is POST /<name> with the raw (possibly encrypted) body, and the
// session is tracked by a "session=<uint32>" cookie or, for clients without
// cookies, by the TCP connection.
package httpd

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/thingline/thingline/protocomm"
)

// MaxBody is the largest request body the device accepts (MAX_REQ_BODY_LEN).
const MaxBody = 4096

type connKey struct{}

// connID identifies one TCP connection for sessions kept without cookies.
type connID struct{ _ byte }

// Server is the device side. Use it through Serve, or set ConnContext on
// your own http.Server so that connection-bound sessions work.
type Server struct {
	pc  *protocomm.Protocomm
	log *slog.Logger

	mu      sync.Mutex // guards the fields below; taken before pc's lock
	session uint32
	open    bool
	conn    *connID // connection of the current session, nil once the client showed a cookie
	newID   func() uint32
}

// NewServer serves pc. log may be nil.
func NewServer(pc *protocomm.Protocomm, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{pc: pc, log: log, newID: randomID}
}

func randomID() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint32(b[:])
}

// ConnContext tags each connection so that requests on it can be told apart.
func (s *Server) ConnContext(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, &connID{})
}

// Serve accepts connections on ln until ctx is done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ConnContext:       s.ConnContext,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = hs.Shutdown(sctx)
		case <-done:
		}
	}()
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("protocomm httpd: %w", err)
}

// ServeHTTP answers one endpoint request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ep := strings.TrimPrefix(r.URL.Path, "/")
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !s.pc.HasEndpoint(ep) {
		http.NotFound(w, r)
		return
	}
	conn, _ := r.Context().Value(connKey{}).(*connID)

	s.mu.Lock()
	defer s.mu.Unlock()
	same := false
	if cookie := r.Header.Get("Cookie"); cookie != "" {
		// Like protocomm_httpd.c: the whole header must be exactly our
		// cookie, and from then on the connection no longer matters.
		if s.open && cookie == "session="+strconv.FormatUint(uint64(s.session), 10) {
			same = true
			s.conn = nil
		}
	} else if s.open && conn != nil && s.conn == conn {
		same = true
	}
	if !same {
		if s.open {
			s.log.Debug("protocomm httpd: closing session", "session", s.session)
			s.pc.CloseSession(s.session)
		}
		s.session, s.open, s.conn = s.newID(), true, conn
		s.pc.NewSession(s.session)
	}

	if r.ContentLength == 0 {
		http.Error(w, "empty request", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		http.Error(w, "reading request", http.StatusBadRequest)
		return
	}
	if len(body) == 0 {
		http.Error(w, "empty request", http.StatusBadRequest)
		return
	}
	if len(body) > MaxBody {
		http.Error(w, "request larger than 4096 bytes", http.StatusRequestEntityTooLarge)
		return
	}
	resp, err := s.pc.Handle(s.session, ep, body)
	if err != nil {
		s.log.Warn("protocomm httpd: handler failed", "endpoint", ep, "err", err)
		http.Error(w, "handler failed", http.StatusInternalServerError)
		return
	}
	if !same {
		w.Header().Set("Set-Cookie", "session="+strconv.FormatUint(uint64(s.session), 10))
	}
	w.Header().Set("Content-Type", "text/html")
	w.Header().Set("Content-Length", strconv.Itoa(len(resp)))
	_, _ = w.Write(resp)
}

// Client is the client side, behaving like esp_prov: one keep-alive
// connection, and the session cookie echoed once the device set it.
type Client struct {
	base   string
	hc     *http.Client
	mu     sync.Mutex // guards cookie
	cookie string
}

// NewClient returns a client for the device at hostport ("192.168.4.1:80").
func NewClient(hostport string) *Client {
	tr := &http.Transport{
		MaxConnsPerHost:     1,
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
	}
	return &Client{base: "http://" + hostport, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Do posts req to endpoint and returns the answer body.
func (c *Client) Do(ctx context.Context, endpoint string, req []byte) ([]byte, error) {
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/"+endpoint, strings.NewReader(string(req)))
	if err != nil {
		return nil, fmt.Errorf("protocomm httpd: %w", err)
	}
	hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	hr.Header.Set("Accept", "text/plain")
	c.mu.Lock()
	if c.cookie != "" {
		hr.Header.Set("Cookie", c.cookie)
	}
	c.mu.Unlock()
	resp, err := c.hc.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("protocomm httpd: posting %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("protocomm httpd: reading %s answer: %w", endpoint, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("protocomm httpd: %s: device answered %s", endpoint, resp.Status)
	}
	if sc := resp.Header.Get("Set-Cookie"); strings.HasPrefix(sc, "session=") {
		v, _, _ := strings.Cut(sc, ";")
		c.mu.Lock()
		c.cookie = v
		c.mu.Unlock()
	}
	return body, nil
}

// Close drops the kept-alive connection.
func (c *Client) Close() { c.hc.CloseIdleConnections() }
