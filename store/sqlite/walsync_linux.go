//go:build linux && cgo

package sqlite

/*
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

// One thread per store fdatasyncs its write-ahead log on request: a byte on
// req asks for a sync ('s') or the end (anything else, or end of file);
// each sync's result, 0 or an errno, is written to resp as four bytes, and
// -1 when the thread ends.
struct tl_walsync { int file, req, resp; };

static void tl_walsync_answer(int fd, int32_t v) {
	// Four bytes to a pipe are written at once (PIPE_BUF); at most two
	// answers are ever unread.
	while (write(fd, &v, sizeof v) < 0 && errno == EINTR) {
	}
}

static void *tl_walsync_run(void *arg) {
	struct tl_walsync s = *(struct tl_walsync *)arg;
	free(arg);
	// Signals are for the Go runtime's threads, not this one.
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		char c;
		ssize_t n = read(s.req, &c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n != 1 || c != 's')
			break;
		int32_t r = 0;
		while (fdatasync(s.file) != 0) {
			if (errno != EINTR) {
				r = errno;
				break;
			}
		}
		tl_walsync_answer(s.resp, r);
	}
	tl_walsync_answer(s.resp, -1);
	return NULL;
}

static int tl_walsync_start(int file, int req, int resp) {
	struct tl_walsync *s = malloc(sizeof *s);
	if (s == NULL)
		return ENOMEM;
	s->file = file;
	s->req = req;
	s->resp = resp;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_t t;
	int r = pthread_create(&t, &a, tl_walsync_run, s);
	pthread_attr_destroy(&a);
	if (r != 0)
		free(s);
	return r;
}
*/
import "C"

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// threadSyncer is the Linux walSyncer: see walSyncer for why.
type threadSyncer struct {
	f    *os.File // kept referenced: the thread uses its descriptor
	mu   sync.Mutex
	req  *os.File // write end of the request pipe
	resp *os.File // read end of the answer pipe, non-blocking: a wait parks the goroutine
	// reqRead and respWrite are the thread's ends, closed once it ended.
	reqRead, respWrite int
	closed             bool
}

func newWALSyncer(f *os.File) (walSyncer, error) {
	var req, resp [2]int
	if err := unix.Pipe2(req[:], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("sqlite: wal syncer: %w", err)
	}
	if err := unix.Pipe2(resp[:], unix.O_CLOEXEC); err != nil {
		unix.Close(req[0])
		unix.Close(req[1])
		return nil, fmt.Errorf("sqlite: wal syncer: %w", err)
	}
	closeAll := func() {
		for _, fd := range []int{req[0], req[1], resp[0], resp[1]} {
			unix.Close(fd)
		}
	}
	// os.NewFile registers a non-blocking descriptor with the poller.
	if err := unix.SetNonblock(resp[0], true); err != nil {
		closeAll()
		return nil, fmt.Errorf("sqlite: wal syncer: %w", err)
	}
	fd, err := f.SyscallConn()
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("sqlite: wal syncer: %w", err)
	}
	var rc C.int
	if cerr := fd.Control(func(file uintptr) {
		rc = C.tl_walsync_start(C.int(file), C.int(req[0]), C.int(resp[1]))
	}); cerr != nil {
		closeAll()
		return nil, fmt.Errorf("sqlite: wal syncer: %w", cerr)
	}
	if rc != 0 {
		closeAll()
		return nil, fmt.Errorf("sqlite: wal syncer: starting its thread: %w", syscall.Errno(rc))
	}
	return &threadSyncer{
		f:         f,
		req:       os.NewFile(uintptr(req[1]), "walsync-req"),
		resp:      os.NewFile(uintptr(resp[0]), "walsync-resp"),
		reqRead:   req[0],
		respWrite: resp[1],
	}, nil
}

var errSyncerClosed = errors.New("sqlite: wal syncer closed")

// Sync asks the thread for one fdatasync and waits for its answer.
func (t *threadSyncer) Sync() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errSyncerClosed
	}
	if _, err := t.req.Write([]byte{'s'}); err != nil {
		return fmt.Errorf("sqlite: asking for a wal sync: %w", err)
	}
	v, err := t.answer()
	if err != nil {
		return err
	}
	if v != 0 {
		return fmt.Errorf("sqlite: fdatasync: %w", syscall.Errno(v))
	}
	return nil
}

func (t *threadSyncer) answer() (int32, error) {
	var b [4]byte
	if _, err := io.ReadFull(t.resp, b[:]); err != nil {
		return 0, fmt.Errorf("sqlite: waiting for a wal sync: %w", err)
	}
	v := int32(binary.NativeEndian.Uint32(b[:]))
	if v < 0 {
		return 0, errSyncerClosed
	}
	return v, nil
}

// Close ends the thread and waits for it.
func (t *threadSyncer) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	t.req.Write([]byte{'q'})
	t.answer() // -1 once the thread has left its loop
	t.req.Close()
	t.resp.Close()
	unix.Close(t.reqRead)
	unix.Close(t.respWrite)
	runtime.KeepAlive(t.f)
	return nil
}
