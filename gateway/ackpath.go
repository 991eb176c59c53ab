package gateway

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/thingline/thingline/bus"
)

// The acknowledgement path of the fleet's shape. A device sending a reading
// a second has one message in flight, so the session's flusher (one
// goroutine started per burst, waiting for the store, then writing the
// PUBACKs) cost a goroutine start, its stack grown and two wake-ups per
// message. When the store can report durability from its own commit path
// (store.AsyncAppender) and the message is plain telemetry, the session
// instead queues the records and returns to its socket; the store's syncer,
// after the fsync, posts the completions of the whole group commit to the
// ackers, goroutines woken once per commit, which write each session's
// PUBACKs. The reading goroutine hands over in one append what it read
// before it would wait (a pipelining device's burst), and the acker writes
// its acknowledgements in one TLS record. Messages with side effects (attributes, requests, refusals with a
// reason) and telemetry that live consoles watch keep the flusher, which
// waits for the asynchronous appends before it (so PUBACK order stays
// PUBLISH order).
//
// The acker must never wait for one device: its writes, as every write of
// a session, go to the connection, which never waits (pollConn): what the
// socket does not take at once, because the device is slow to read or has
// stopped, is sent by a goroutine of that connection's, in order.

// acker runs the completions posted by the store. A server has one per two
// processors, each serving a share of the sessions (so that one session's
// completions stay in order): one writes about 200,000 acknowledgement
// records a second, and each more costs wake-ups.
type acker struct {
	mu   sync.Mutex
	jobs []ackJob
	wake chan struct{} // capacity 1
	quit chan struct{}
	done chan struct{}
	ran  atomic.Uint64 // messages completed, for tests
}

type ackJob struct {
	ss  *session
	ws  []*work
	err error
}

func newAckers() []*acker {
	as := make([]*acker, max(1, runtime.GOMAXPROCS(0)/2))
	for i := range as {
		as[i] = &acker{wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
		go as[i].run()
	}
	return as
}

// post queues a completion; it is called by the store's syncer.
func (a *acker) post(j ackJob) {
	a.mu.Lock()
	a.jobs = append(a.jobs, j)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *acker) run() {
	defer close(a.done)
	var jobs []ackJob
	for {
		select {
		case <-a.wake:
		case <-a.quit:
			return
		}
		a.mu.Lock()
		jobs, a.jobs = a.jobs, jobs[:0]
		a.mu.Unlock()
		for i, j := range jobs {
			a.ran.Add(uint64(len(j.ws)))
			j.ss.completeAsync(j.ws, j.err)
			jobs[i] = ackJob{}
		}
	}
}

// stop ends the acker once no session is left (nothing can be posted).
func (a *acker) stop() {
	close(a.quit)
	<-a.done
}

// asyncOK tells whether w can take the asynchronous path: plain telemetry,
// a store that supports it, and a bus on which publishing it live costs
// the acker nothing: no in-process listener (a subscriber's work must not
// hold up every session's acknowledgements), or a buffered bus (NATS),
// which the acker publishes on after the acknowledgements.
func (ss *session) asyncOK(w *work) bool {
	if ss.srv.async == nil || len(w.recs) == 0 || len(w.attrs) > 0 || w.fn != nil || w.reason != codeSuccess {
		return false
	}
	if ss.srv.buffered {
		return true
	}
	return ss.srv.watcher != nil && !ss.srv.watcher.Watched(bus.TopicTelemetry)
}

// publishAsync publishes ws's stored telemetry live on a buffered bus,
// after their acknowledgements, as the flusher does.
func (ss *session) publishAsync(ws []*work) {
	if !ss.srv.buffered {
		return
	}
	for _, w := range ws {
		ss.publishLive(context.Background(), w.recs)
	}
}

// submitAsync hands the telemetry read since the last wait (counted by
// enqueue in pending and inAsync) to the store as one append. Only the
// reading goroutine calls it.
func (ss *session) submitAsync() {
	ws := ss.asyncGroup
	if len(ws) == 0 {
		return
	}
	ss.asyncGroup = nil
	recs := ws[0].recs
	if len(ws) > 1 {
		recs = nil
		for _, w := range ws {
			recs = append(recs, w.recs...)
		}
	}
	a := ss.srv.ackers[ss.ackerIdx]
	ss.srv.async.AppendTelemetryAsync(recs, func(err error) {
		a.post(ackJob{ss: ss, ws: ws, err: err})
	})
}

// completeAsync acknowledges ws, stored (err nil) or not, on the acker.
func (ss *session) completeAsync(ws []*work, err error) {
	if err != nil {
		ss.srv.log.Error("gateway: storing telemetry", "device", ss.dev.Name, "err", err)
		// Unstored messages must not be acknowledged; the device will
		// resend them on its next connection. close may write a
		// DISCONNECT: not on the acker.
		go ss.close(codeImplSpecific, "storage unavailable")
		ss.asyncDone(len(ws))
		return
	}
	// Stored: the observer (device activity, alarm rules) sees the records
	// as on the flusher's path. Its Handled only updates memory and hands
	// raises to its own workers, so the acker is not held up.
	if ss.obs != nil {
		now := ss.srv.now()
		for _, w := range ws {
			ss.obs.Handled(w.recs, now)
		}
	}
	defer ss.publishAsync(ws)
	if ss.closing.Load() {
		ss.asyncDone(len(ws))
		return
	}
	var werr error
	ss.writeMu.Lock()
	if buf := appendAcks(ss.ackBuf[:0], ws); len(buf) > 0 {
		werr = ss.writeLocked(buf)
	}
	ss.writeMu.Unlock()
	ss.acked(ws, werr)
}

// appendAcks appends the acknowledgements of ws to buf.
func appendAcks(buf []byte, ws []*work) []byte {
	for _, w := range ws {
		switch w.qos {
		case 1:
			buf = append(buf, packets.Puback<<4, 2, byte(w.pid>>8), byte(w.pid))
		case 2:
			buf = append(buf, packets.Pubrec<<4, 2, byte(w.pid>>8), byte(w.pid))
		}
	}
	return buf
}

// acked completes ws once their acknowledgements are written (or failed
// to be: the session is then ending).
func (ss *session) acked(ws []*work, err error) {
	if err != nil {
		ss.srv.log.Debug("gateway: writing acks", "device", ss.dev.Name, "err", err)
	}
	now := time.Now()
	for _, w := range ws {
		if w.qos > 0 {
			ss.srv.met.ackLatency.Observe(now.Sub(w.read).Seconds())
		}
	}
	ss.asyncDone(len(ws))
}

// asyncDone ends n asynchronous messages: the reader may read further, a
// waiting flusher or finish may go on.
func (ss *session) asyncDone(n int) {
	ss.ackMu.Lock()
	ss.pending -= n
	ss.inAsync -= n
	ss.ackCond.Broadcast()
	ss.ackMu.Unlock()
}
