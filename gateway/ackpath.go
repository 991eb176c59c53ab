package gateway

import (
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
// acker, one goroutine woken once per commit, which writes each session's
// PUBACK. Messages with side effects (attributes, requests, refusals with a
// reason) and telemetry that live consoles watch keep the flusher, which
// waits for the asynchronous appends before it (so PUBACK order stays
// PUBLISH order).
//
// The acker must never block on one device: it writes a PUBACK only when the
// session's write lock is free and the socket's send queue is short (a few
// KiB unsent: the 30-byte record then fits without waiting); otherwise the
// session's remaining acknowledgements go to a goroutine of its own
// (drainAcks), in order.

// acker runs the completions posted by the store.
type acker struct {
	mu   sync.Mutex
	jobs []ackJob
	wake chan struct{} // capacity 1
	quit chan struct{}
	done chan struct{}
	ran  atomic.Uint64 // completions run, for tests
}

type ackJob struct {
	ss  *session
	w   *work
	err error
}

func newAcker() *acker {
	a := &acker{wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go a.run()
	return a
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
			a.ran.Add(1)
			j.ss.completeAsync(j.w, j.err)
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
// a store that supports it, and no live listener to publish it to (a bus
// subscriber's work must not hold up every session's acknowledgements).
func (ss *session) asyncOK(w *work) bool {
	if ss.srv.async == nil || len(w.recs) == 0 || len(w.attrs) > 0 || w.fn != nil || w.reason != codeSuccess {
		return false
	}
	wt, ok := ss.srv.bus.(bus.Watcher)
	return ok && !wt.Watched(bus.TopicTelemetry)
}

// appendAsync hands w's records to the store; enqueue counted w in pending
// and inAsync.
func (ss *session) appendAsync(w *work) {
	ss.srv.async.AppendTelemetryAsync(w.recs, func(err error) {
		ss.srv.acker.post(ackJob{ss: ss, w: w, err: err})
	})
}

// completeAsync acknowledges w, stored (err nil) or not, on the acker.
func (ss *session) completeAsync(w *work, err error) {
	if err != nil {
		ss.srv.log.Error("gateway: storing telemetry", "device", ss.dev.Name, "err", err)
		// Unstored messages must not be acknowledged; the device will
		// resend them on its next connection. close may write a
		// DISCONNECT: not on the acker.
		go ss.close(codeImplSpecific, "storage unavailable")
		ss.asyncDone()
		return
	}
	// Stored: the observer (device activity, alarm rules) sees the records
	// as on the flusher's path. Its Handled only updates memory and hands
	// raises to its own workers, so the acker is not held up.
	if ss.obs != nil {
		ss.obs.Handled(w.recs, ss.srv.now())
	}
	ss.ackMu.Lock()
	if ss.outBusy {
		ss.outq = append(ss.outq, w)
		ss.ackMu.Unlock()
		return
	}
	ss.ackMu.Unlock()
	if ss.closing.Load() {
		ss.asyncDone()
		return
	}
	if ss.writeMu.TryLock() {
		if ss.sendRoom() {
			ss.writeAckLocked(w)
			return
		}
		ss.writeMu.Unlock()
	}
	ss.ackMu.Lock()
	ss.outBusy = true
	ss.outq = append(ss.outq, w)
	ss.ackMu.Unlock()
	go ss.drainAcks()
}

// drainAcks writes the session's queued acknowledgements in order, in a
// goroutine of its own, so that a device slow to read blocks nobody else.
func (ss *session) drainAcks() {
	for {
		ss.ackMu.Lock()
		if len(ss.outq) == 0 {
			ss.outq = nil
			ss.outBusy = false
			ss.ackMu.Unlock()
			return
		}
		w := ss.outq[0]
		ss.outq = ss.outq[1:]
		ss.ackMu.Unlock()
		if ss.closing.Load() {
			ss.asyncDone()
			continue
		}
		ss.writeMu.Lock()
		ss.writeAckLocked(w)
	}
}

// writeAckLocked writes w's acknowledgement with writeMu held, releases
// it, and completes w.
func (ss *session) writeAckLocked(w *work) {
	var ack [4]byte
	n := 0
	switch w.qos {
	case 1:
		ack, n = [4]byte{packets.Puback << 4, 2, byte(w.pid >> 8), byte(w.pid)}, 4
	case 2:
		ack, n = [4]byte{packets.Pubrec << 4, 2, byte(w.pid >> 8), byte(w.pid)}, 4
	}
	var err error
	if n > 0 {
		err = ss.writeLocked(ss.srv.timeout, ack[:n])
	}
	ss.writeMu.Unlock()
	if err != nil {
		ss.srv.log.Debug("gateway: writing acks", "device", ss.dev.Name, "err", err)
	}
	if n > 0 {
		ss.srv.met.ackLatency.Observe(time.Since(w.read).Seconds())
	}
	ss.asyncDone()
}

// asyncDone ends one asynchronous message: the reader may read further, a
// waiting flusher or finish may go on.
func (ss *session) asyncDone() {
	ss.ackMu.Lock()
	ss.pending--
	ss.inAsync--
	ss.ackCond.Broadcast()
	ss.ackMu.Unlock()
}
