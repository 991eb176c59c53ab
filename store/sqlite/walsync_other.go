//go:build !linux || !cgo

package sqlite

import "os"

func newWALSyncer(f *os.File) (walSyncer, error) { return plainSyncer{f}, nil }
