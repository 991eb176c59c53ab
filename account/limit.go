package account

import (
	"sync"
	"time"
)

// Limiter bounds failed login attempts per key (an account name, a source
// address): after Burst failures within Window, the key is locked until the
// window of its oldest counted failure passes. A success forgets the
// account's failures, not the address's: an attacker with one valid
// account must not reset the counter of the address they spray from.
//
// The counts are kept per node, in memory: on a cluster an attacker gets
// at most Burst tries per node behind a load balancer, and a restart
// forgets them. docs/accounts.md says why that is acceptable.
type Limiter struct {
	Burst  int
	Window time.Duration
	Max    int // keys kept at most; the oldest are dropped beyond (bounds memory under a spray)

	mu   sync.Mutex // guards keys; no call out of the package while held
	keys map[string][]time.Time
}

// NewLimiter returns a limiter of burst failures per window.
func NewLimiter(burst int, window time.Duration) *Limiter {
	return &Limiter{Burst: burst, Window: window, Max: 100000, keys: map[string][]time.Time{}}
}

// Allow tells whether key may try now, and if not, how long to wait.
func (l *Limiter) Allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fs := l.prune(key, now)
	if len(fs) < l.Burst {
		return true, 0
	}
	return false, fs[0].Add(l.Window).Sub(now)
}

// Fail counts a failed attempt of key.
func (l *Limiter) Fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fs := l.prune(key, now)
	if len(l.keys) >= l.Max && fs == nil {
		l.evict(now)
	}
	l.keys[key] = append(fs, now)
}

// Reset forgets key's failures.
func (l *Limiter) Reset(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.keys, key)
}

// prune drops failures older than the window. l.mu is held.
func (l *Limiter) prune(key string, now time.Time) []time.Time {
	fs := l.keys[key]
	i := 0
	for i < len(fs) && now.Sub(fs[i]) >= l.Window {
		i++
	}
	fs = fs[i:]
	if len(fs) == 0 {
		delete(l.keys, key)
		return nil
	}
	l.keys[key] = fs
	return fs
}

// evict drops expired keys, and if none, an arbitrary one. l.mu is held.
func (l *Limiter) evict(now time.Time) {
	for k := range l.keys {
		if l.prune(k, now) == nil {
			return
		}
	}
	for k := range l.keys {
		delete(l.keys, k)
		return
	}
}
