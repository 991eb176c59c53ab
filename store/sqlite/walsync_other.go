//go:build !linux || !cgo

package sqlite

import "os"

func newWALSyncer(f *os.File) (walSyncer, error) { return plainSyncer{f}, nil }

// plainSyncer syncs on the calling goroutine.
type plainSyncer struct{ f *os.File }

func (p plainSyncer) Sync() error  { return p.f.Sync() }
func (p plainSyncer) Close() error { return nil }
