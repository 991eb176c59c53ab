//go:build linux

package gateway

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/sys/unix"
)

// A ready loop serves the sessions whose devices are between packets: at
// the fleet's shape, all of them nearly all the time. Each loop has an
// epoll instance of its own holding those sessions' sockets, level
// triggered, and one goroutine that waits on it through Go's poller (the
// epoll descriptor is itself pollable, so the goroutine parks like any
// reader and holds no processor). When a socket is readable the loop reads
// the socket once, decrypts, and handles the telemetry it finds in its own
// goroutine: no goroutine per session is woken, none keeps a stack between
// messages, and no read is made only to learn that nothing is left (the
// level-triggered epoll says so next time).
//
// Only what never waits is handled here: PUBLISH on the telemetry topics,
// within the in-flight limit. Anything else (a subscription, a request, a
// DISCONNECT, a packet not yet whole, a large one, a burst) is handed back
// to a goroutine of the session's with the bytes already read (session.lbuf),
// where the ordinary code handles it; the session comes back once nothing
// is buffered any more (session.serve).
//
// Lock order: readyLoop.mu is a leaf lock.
type readyLoop struct {
	srv    *Server
	ep     int      // the epoll descriptor
	file   *os.File // ep, for Go's poller
	rc     syscall.RawConn
	evfd   int // an eventfd in ep: kicks (see kick)
	events []unix.EpollEvent
	buf    []byte // the decrypted bytes of the session being served
	done   chan struct{}

	// The loop goroutine's: set by its epoll wait callback.
	waitN   int
	waitErr error
	waitFn  func(fd uintptr) bool

	mu      sync.Mutex
	entries []*loopEntry // by slot; nil: free
	gens    []uint32     // each slot's generation, in its events
	free    []int32
	kicked  []*session
	closed  bool
}

// loopEntry is one session in a loop. Only the loop goroutine changes
// deadline; the rest is fixed when the entry is made.
type loopEntry struct {
	ss       *session
	c        net.Conn // the accepted connection, for endConn
	fd       int
	slot     int32
	gen      uint32
	deadline time.Time // keep-alive: 1.5 periods after the last packet
}

const (
	kickSlot     = -1        // the eventfd's slot in events
	loopBuf      = 32 * 1024 // decrypted bytes read per session at once
	maxInline    = 32        // packets per wake before the session gets a goroutine
	loopSweep    = 500 * time.Millisecond
	loopMaxEvent = 256
)

// newReadyLoops starts one loop per processor, or none if epoll is not
// available (the sessions then wait in goroutines, as elsewhere).
func newReadyLoops(s *Server) []*readyLoop {
	var ls []*readyLoop
	for range runtime.GOMAXPROCS(0) {
		l, err := newReadyLoop(s)
		if err != nil {
			s.log.Warn("gateway: no ready loop; idle sessions wait in goroutines", "err", err)
			for _, l := range ls {
				l.stop()
			}
			return nil
		}
		ls = append(ls, l)
	}
	return ls
}

func newReadyLoop(s *Server) (*readyLoop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("gateway: epoll_create1: %w", err)
	}
	// Non-blocking, so that os.NewFile hands it to Go's poller.
	if err := unix.SetNonblock(ep, true); err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("gateway: epoll descriptor: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("gateway: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: kickSlot}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(ep)
		unix.Close(evfd)
		return nil, fmt.Errorf("gateway: epoll_ctl: %w", err)
	}
	l := &readyLoop{srv: s, ep: ep, evfd: evfd, file: os.NewFile(uintptr(ep), "epoll"),
		events: make([]unix.EpollEvent, loopMaxEvent), buf: make([]byte, loopBuf), done: make(chan struct{})}
	if l.rc, err = l.file.SyscallConn(); err != nil {
		l.file.Close()
		unix.Close(evfd)
		return nil, fmt.Errorf("gateway: epoll descriptor: %w", err)
	}
	l.waitFn = l.wait
	go l.run()
	return l, nil
}

// stop ends the loop. Every session must have left it: the server stops
// its loops only after all its connections ended.
func (l *readyLoop) stop() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.file.Close() // the goroutine's wait fails
	<-l.done
	unix.Close(l.evfd)
}

// add hands ss, whose device has nothing more buffered, to the loop. It
// reports false when the loop cannot take it (then nothing changed).
func (l *readyLoop) add(ss *session, c net.Conn) bool {
	if ss.pc == nil || ss.pc.rc == nil {
		return false
	}
	fd := -1
	if err := ss.pc.rc.Control(func(f uintptr) { fd = int(f) }); err != nil || fd < 0 {
		return false
	}
	// The loop keeps its own deadline; a read deadline left on the
	// connection would fail the loop's reads once it passed.
	ss.conn.SetReadDeadline(time.Time{})
	e := &loopEntry{ss: ss, c: c, fd: fd, deadline: time.Now().Add(ss.keepAlive * 3 / 2)}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	if n := len(l.free); n > 0 {
		e.slot = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		e.slot = int32(len(l.entries))
		l.entries = append(l.entries, nil)
		l.gens = append(l.gens, 0)
	}
	l.gens[e.slot]++
	e.gen = l.gens[e.slot]
	l.entries[e.slot] = e
	ss.rslot = e.slot
	l.mu.Unlock()
	ss.rloop.Store(l)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: e.slot, Pad: int32(e.gen)}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		ss.rloop.Store(nil)
		l.mu.Lock()
		l.entries[e.slot] = nil
		l.free = append(l.free, e.slot)
		l.mu.Unlock()
		return false
	}
	// close (on any goroutine) sets closing, then kicks the loop it finds
	// in rloop: one of the two sides sees the other.
	if ss.closing.Load() {
		l.kick(ss)
	}
	return true
}

// kick tells the loop that ss was closed: the loop ends it if it holds it.
func (l *readyLoop) kick(ss *session) {
	l.mu.Lock()
	l.kicked = append(l.kicked, ss)
	l.mu.Unlock()
	one := [8]byte{1}
	unix.Write(l.evfd, one[:])
}

// wait is the loop's epoll_wait through Go's poller: it never blocks in
// the kernel; with nothing ready the goroutine parks until the epoll
// descriptor is readable.
func (l *readyLoop) wait(uintptr) bool {
	l.waitN, l.waitErr = unix.EpollWait(l.ep, l.events, 0)
	if errors.Is(l.waitErr, unix.EINTR) {
		l.waitN, l.waitErr = 0, nil
	}
	return l.waitN > 0 || l.waitErr != nil
}

func (l *readyLoop) run() {
	defer close(l.done)
	next := time.Now().Add(loopSweep)
	l.file.SetReadDeadline(next)
	for {
		err := l.rc.Read(l.waitFn)
		if err == nil {
			err = l.waitErr
		}
		if err != nil {
			if !isTimeout(err) {
				l.mu.Lock()
				closed := l.closed
				l.mu.Unlock()
				if !closed {
					l.srv.log.Error("gateway: ready loop stopped", "err", err)
				}
				return
			}
			l.waitN = 0
		}
		for _, ev := range l.events[:l.waitN] {
			if ev.Fd == kickSlot {
				l.serveKicks()
				continue
			}
			if e := l.entry(ev.Fd, uint32(ev.Pad)); e != nil {
				l.serve(e)
			}
		}
		if now := time.Now(); now.After(next) {
			l.sweep(now)
			next = now.Add(loopSweep)
			l.file.SetReadDeadline(next)
		}
	}
}

// entry returns the session an event is for, or nil if it has left the
// loop since (its slot is free or holds another session).
func (l *readyLoop) entry(slot int32, gen uint32) *loopEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	if slot < 0 || int(slot) >= len(l.entries) {
		return nil
	}
	if e := l.entries[slot]; e != nil && e.gen == gen {
		return e
	}
	return nil
}

func (l *readyLoop) serveKicks() {
	var b [8]byte
	unix.Read(l.evfd, b[:])
	l.mu.Lock()
	ks := l.kicked
	l.kicked = nil
	l.mu.Unlock()
	for _, ss := range ks {
		if ss.rloop.Load() != l || !ss.closing.Load() {
			continue
		}
		l.mu.Lock()
		e := l.entries[ss.rslot]
		l.mu.Unlock()
		if e != nil && e.ss == ss {
			l.end(e, nil)
		}
	}
}

// sweep ends the sessions whose keep-alive expired.
func (l *readyLoop) sweep(now time.Time) {
	var expired []*loopEntry
	l.mu.Lock()
	for _, e := range l.entries {
		if e != nil && now.After(e.deadline) {
			expired = append(expired, e)
		}
	}
	l.mu.Unlock()
	for _, e := range expired {
		l.end(e, os.ErrDeadlineExceeded)
	}
}

// remove takes e out of the loop. Only the loop goroutine calls it, and
// before anything closes e's socket (a descriptor number may be reused
// once closed).
func (l *readyLoop) remove(e *loopEntry) {
	unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, e.fd, nil)
	e.ss.rloop.Store(nil)
	l.mu.Lock()
	l.entries[e.slot] = nil
	l.free = append(l.free, e.slot)
	l.mu.Unlock()
}

// end ends e's session as its reading goroutine would after err (nil: it
// was closed), in a goroutine: finish waits for the store.
func (l *readyLoop) end(e *loopEntry, err error) {
	l.remove(e)
	ss, c := e.ss, e.c
	go func() {
		if err != nil {
			ss.readFailed(err)
		}
		ss.finish(true, true)
		ss.srv.endConn(c)
	}()
}

// handoff gives e's session back to a goroutine of its own, which reads
// rest before the connection.
func (l *readyLoop) handoff(e *loopEntry, rest []byte) {
	l.remove(e)
	ss := e.ss
	if len(rest) > 0 {
		ss.lbuf = append([]byte(nil), rest...)
	}
	go ss.resume(e.c)
}

// serve handles what e's device sent.
func (l *readyLoop) serve(e *loopEntry) {
	ss := e.ss
	in := true // e is still in the loop
	defer func() {
		if v := recover(); v != nil {
			l.srv.log.Error("gateway: session panicked", "addr", ss.addr, "device", ss.dev.Name, "panic", v)
			if in {
				l.end(e, nil)
			}
		}
	}()
	buf := l.buf
	off, end, handled := 0, 0, 0
	socket := true // the socket is read once per wake; then only what crypto/tls holds
	for {
		for off < end {
			fh, hlen, ok, bad := peekFixedHeader(buf[off:end])
			if !ok {
				break
			}
			if bad || fh.Type != packets.Publish || hlen+fh.Remaining > len(buf) {
				in = false
				l.handoff(e, buf[off:end])
				return
			}
			if end-off < hlen+fh.Remaining {
				break
			}
			pk := packets.Packet{FixedHeader: fh, ProtocolVersion: ss.ver}
			if handled == maxInline || decode(&pk, buf[off+hlen:off+hlen+fh.Remaining]) != nil || !ss.inlineOK(&pk) {
				in = false
				l.handoff(e, buf[off:end])
				return
			}
			off += hlen + fh.Remaining
			handled++
			ss.srv.packets.Add(1)
			if !ss.handlePublish(&pk) {
				in = false
				l.end(e, nil)
				return
			}
		}
		if off > 0 {
			end = copy(buf, buf[off:end])
			off = 0
		}
		n, err := ss.readReady(buf[end:], socket)
		socket = false
		end += n
		if n > 0 {
			continue
		}
		if err == nil || errors.Is(err, errNothingBuffered) {
			if end > 0 {
				// A packet not whole yet: its rest is waited for in a
				// goroutine, under the session's deadlines.
				in = false
				l.handoff(e, buf[:end])
				return
			}
			break
		}
		in = false
		if end > 0 {
			l.handoff(e, buf[:end]) // it meets err again after these
		} else {
			l.end(e, err)
		}
		return
	}
	if handled > 0 {
		ss.submitAsync()
		e.deadline = time.Now().Add(ss.keepAlive * 3 / 2)
	}
}

// readReady reads decrypted bytes into b: from the socket (one read that
// does not wait) if socket is set, else only what crypto/tls holds.
// crypto/tls answers some records from inside the read that meets them (a
// key update the device asks for, an alert): that write does not wait
// either (pollConn), so it holds up none of the loop's other sessions.
func (ss *session) readReady(b []byte, socket bool) (int, error) {
	pc := ss.pc
	if socket {
		pc.raw = true
	} else {
		pc.nonblock = true
	}
	n, err := ss.conn.Read(b)
	pc.raw, pc.nonblock = false, false
	return n, err
}

// readNow makes one read on the socket that does not wait: nothing there
// is errNothingBuffered, which crypto/tls takes as temporary.
func (p *pollConn) readNow(b []byte) (int, error) {
	if p.readFn == nil {
		p.readFn = p.readSome // once per connection, as writeFn
	}
	p.rb = b
	cerr := p.rc.Read(p.readFn)
	n, err := p.rn, p.rerr
	p.rb, p.rn, p.rerr = nil, 0, nil
	if cerr != nil {
		return 0, cerr
	}
	return n, err
}

func (p *pollConn) readSome(fd uintptr) bool {
	for {
		n, e := unix.Read(int(fd), p.rb)
		switch {
		case errors.Is(e, unix.EINTR):
			continue
		case errors.Is(e, unix.EAGAIN):
			p.rerr = errNothingBuffered
		case e != nil:
			p.rerr = os.NewSyscallError("read", e)
		case n == 0 && len(p.rb) > 0:
			p.rerr = io.EOF
		default:
			p.rn = n
		}
		return true
	}
}

// peekFixedHeader decodes the fixed header at the start of b: ok is false
// while b is too short to hold it, bad when it is malformed. It is
// fixedHeaderAfter over a slice: the loop must tell "not yet whole" from
// the bytes it holds, and a reader passed per packet would be allocated.
func peekFixedHeader(b []byte) (fh packets.FixedHeader, hlen int, ok, bad bool) {
	if len(b) == 0 {
		return fh, 0, false, false
	}
	if err := fh.Decode(b[0]); err != nil {
		return fh, 0, true, true
	}
	n, mult := 0, 1
	for i := 1; i <= 4; i++ {
		if i >= len(b) {
			return fh, 0, false, false
		}
		n += int(b[i]&127) * mult
		if b[i]&128 == 0 {
			fh.Remaining = n
			return fh, i + 1, true, false
		}
		mult *= 128
	}
	return fh, 0, true, true
}

// inlineOK tells whether a ready loop may handle pk itself: telemetry that
// will not wait for room in the pipeline and is not refused by closing
// with a DISCONNECT (a write that could wait for the device).
func (ss *session) inlineOK(pk *packets.Packet) bool {
	if pk.FixedHeader.Qos == 2 || pk.PublishValidate(0) != packets.CodeSuccess {
		return false
	}
	if kind, _, _ := classifyPublish(pk.TopicName); kind != pubTelemetry {
		return false
	}
	ss.ackMu.Lock()
	ok := ss.pending < maxPending
	ss.ackMu.Unlock()
	return ok
}
