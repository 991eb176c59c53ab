package gateway

import (
	"sync"
	"time"
)

// Device connections are logged at INFO, one line each, so that a person
// watching a node sees devices arrive. Under load (a reconnect storm) that
// would be thousands of lines a second: after connLogBurst lines in a
// connLogWindow, connections are only counted, and one summary line says
// how many at the window's end.
const (
	connLogBurst  = 20
	connLogWindow = 10 * time.Second
)

type connLog struct {
	mu         sync.Mutex // leaf lock
	start      time.Time
	logged     int
	suppressed int
	timer      *time.Timer
}

// connected logs a device's connection, or counts it when the window's
// burst is spent.
func (s *Server) connected(device, addr string, protocol byte) {
	l := &s.connLog
	now := time.Now()
	l.mu.Lock()
	if now.Sub(l.start) > connLogWindow {
		l.start, l.logged = now, 0
	}
	if l.logged < connLogBurst {
		l.logged++
		l.mu.Unlock()
		s.log.Info("gateway: device connected", "device", device, "addr", addr, "protocol", protocol)
		return
	}
	l.suppressed++
	if l.timer == nil {
		l.timer = time.AfterFunc(l.start.Add(connLogWindow).Sub(now), s.flushConnLog)
	}
	l.mu.Unlock()
}

// flushConnLog writes the summary of the connections counted but not
// logged.
func (s *Server) flushConnLog() {
	l := &s.connLog
	l.mu.Lock()
	n := l.suppressed
	l.suppressed, l.timer = 0, nil
	l.mu.Unlock()
	if n > 0 {
		s.log.Info("gateway: devices connected", "count", n, "within", connLogWindow.String(), "note", "not logged one by one under load")
	}
}
