package twin

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// scheduler runs the periodic work of many twins (telemetry, uptime,
// keepalive) from one timer and a small worker pool, instead of one ticker
// and goroutine per twin: with 10,000 twins that is one heap of 10,000
// entries and a handful of goroutines, and a tick costs O(log n).
type scheduler struct {
	mu   sync.Mutex // guards h and the gen fields of the devices in it
	h    entryHeap
	wake chan struct{}
	work chan *device
}

type entry struct {
	due time.Time
	d   *device
	gen uint64
}

type entryHeap []entry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h entryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *entryHeap) Push(x any)        { *h = append(*h, x.(entry)) }
func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = entry{}
	*h = old[:len(old)-1]
	return e
}

func newScheduler() *scheduler {
	return &scheduler{wake: make(chan struct{}, 1), work: make(chan *device, 1024)}
}

// schedule (re)places d at due. A device has at most one live entry: older
// entries are recognised by their generation and dropped when they surface,
// which makes rescheduling O(log n) without searching the heap.
func (s *scheduler) schedule(d *device, due time.Time) {
	s.mu.Lock()
	d.schedGen++
	heap.Push(&s.h, entry{due: due, d: d, gen: d.schedGen})
	first := s.h[0].d == d && s.h[0].gen == d.schedGen
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// remove forgets d; its entry is dropped when it surfaces.
func (s *scheduler) remove(d *device) {
	s.mu.Lock()
	d.schedGen++
	s.mu.Unlock()
}

// run dispatches due devices to workers until ctx is done. A device's tick
// runs on one worker at a time because it is back in the heap only after
// its tick returned.
func (s *scheduler) run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range s.work {
				next := d.tick(time.Now())
				s.mu.Lock()
				live := d.schedGen == d.tickGen
				s.mu.Unlock()
				if live {
					s.schedule(d, next)
				}
			}
		}()
	}
	defer func() {
		close(s.work)
		wg.Wait()
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		var wait time.Duration = time.Hour
		s.mu.Lock()
		var due []*device
		for s.h.Len() > 0 {
			e := s.h[0]
			if e.gen != e.d.schedGen {
				heap.Pop(&s.h)
				continue
			}
			if e.due.After(now) {
				wait = e.due.Sub(now)
				break
			}
			heap.Pop(&s.h)
			// Mark the entry as taken, so that a reschedule during the
			// tick (setInterval) wins over the tick's own next time.
			e.d.schedGen++
			e.d.tickGen = e.d.schedGen
			due = append(due, e.d)
			if len(due) >= 256 {
				wait = 0
				break
			}
		}
		s.mu.Unlock()
		for _, d := range due {
			select {
			case s.work <- d:
			case <-ctx.Done():
				return
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}
