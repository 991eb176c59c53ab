package api

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Limits on what one HTTP client can hold: a slow or endless request is
// cut, not waited for.
const (
	// headerTimeout bounds reading a request's headers.
	headerTimeout = 10 * time.Second
	// defaultBodyTimeout bounds reading a request's body, from its first
	// byte to its end: a body trickled in slower than that is cut.
	defaultBodyTimeout = 30 * time.Second
	// defaultMaxBody is a route's largest body unless it says otherwise.
	defaultMaxBody = 1 << 20
)

// HTTPServer is the http.Server the API is served with: headers and bodies
// have deadlines, idle keep-alive connections are closed, headers are
// bounded. There is no write timeout: the event stream and RPC answers are
// long-lived by design; a client that stops reading is cut by the kernel's
// buffers filling and the handler's own deadline.
func HTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}

type apiMetrics struct {
	refused *prometheus.CounterVec
}

func newAPIMetrics(reg prometheus.Registerer) *apiMetrics {
	m := &apiMetrics{refused: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "thingline_api_requests_refused_total",
		Help: "API requests refused before their handler ran, by reason (bad-query, slow-body, body-too-large).",
	}, []string{"reason"})}
	if reg != nil {
		// A second API on one registry (tests) shares the first's counter.
		if err := reg.Register(m.refused); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				m.refused = are.ExistingCollector.(*prometheus.CounterVec)
			}
		}
	}
	return m
}

// limitBody bounds r's body in size and time: it must arrive within
// Config.BodyTimeout. The deadline is lifted once the body has been read, so that
// a handler may then wait (for a device's RPC answer) as long as it needs.
func (s *Server) limitBody(w http.ResponseWriter, r *http.Request, maxBody int64) {
	if r.Body == nil || r.Body == http.NoBody {
		return
	}
	if maxBody <= 0 {
		maxBody = defaultMaxBody
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout)) != nil {
		return
	}
	r.Body = &deadlineBody{rc: rc, r: http.MaxBytesReader(w, r.Body, maxBody), m: s.met}
}

// deadlineBody lifts the read deadline at the end of the body and counts
// bodies cut for slowness or size.
type deadlineBody struct {
	rc   *http.ResponseController
	r    io.ReadCloser
	m    *apiMetrics
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && !b.done {
		b.done = true
		var mbe *http.MaxBytesError
		var te interface{ Timeout() bool }
		switch {
		case err == io.EOF:
			b.rc.SetReadDeadline(time.Time{})
		case errors.As(err, &mbe):
			b.m.refused.WithLabelValues("body-too-large").Inc()
		case errors.As(err, &te) && te.Timeout():
			b.m.refused.WithLabelValues("slow-body").Inc()
		}
	}
	return n, err
}

func (b *deadlineBody) Close() error { return b.r.Close() }
