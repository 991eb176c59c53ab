package sqlite

// walSyncer makes the write-ahead log's written pages durable: the
// syncer's one fsync per group commit.
//
// Why not (*os.File).Sync on the syncer goroutine: an fsync takes 0.2 ms to
// several milliseconds, and a goroutine in a system call that long holds
// its processor until the runtime's monitor takes it back and hands it to
// another thread. Every such retake puts the monitor back to waking every
// 20 µs, and at the fleet's shape there is one fsync per group commit, a few
// hundred a second: the monitor alone then took 9 % of the server's CPU
// (4,000 wake-ups a second, measured at 10,000 devices × 1 msg/s), the
// hand-offs more. On Linux the fsync therefore runs on a thread of its own
// outside the Go scheduler (walsync_linux.go): the syncer goroutine asks and
// parks in the network poller until the answer comes, holding no processor.
// It measured 91 → 77 µs of server CPU per message. Elsewhere, a plain
// Sync (walsync_other.go).
type walSyncer interface {
	Sync() error
	// Close ends the syncer; the file stays open (its owner closes it).
	Close() error
}
