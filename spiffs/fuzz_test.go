package spiffs

import (
	"bytes"
	"path/filepath"
	"testing"
)

// fuzzConfig picks a geometry from a byte, so that the fuzzer explores small
// pages (many pages per input byte) as well as the defaults.
func fuzzConfig(sel byte) Config {
	cfg := DefaultConfig(0)
	if sel&1 != 0 {
		cfg.PageSize, cfg.BlockSize, cfg.ObjNameLen, cfg.MetaLen = 64, 256, 8, 0
	}
	cfg.BigEndian = sel&2 != 0
	cfg.AlignedObjIxTables = sel&4 != 0
	return cfg
}

// FuzzOpen feeds arbitrary bytes to the reader: it may refuse them, but must
// not panic, and whatever it lists it must either read or refuse to read.
func FuzzOpen(f *testing.F) {
	for _, name := range []string{"one", "empty-nomagic"} {
		f.Add(byte(0), readGzip(f, filepath.Join("testdata", name+".bin.gz")))
	}
	cfg := fuzzConfig(1)
	cfg.ImageSize = 4 * cfg.BlockSize
	small, err := Build(cfg, []File{{Path: "/a", Data: bytes.Repeat([]byte("x"), 200)}, {Path: "/b"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(byte(1), small)
	f.Add(byte(3), small[:300])
	f.Add(byte(0), []byte{})
	f.Fuzz(func(t *testing.T, sel byte, img []byte) {
		cfg := fuzzConfig(sel)
		// Round the input to whole blocks so that most inputs get past the
		// length check and into the page parsing.
		if n := len(img) % cfg.BlockSize; n != 0 {
			img = append(img, bytes.Repeat([]byte{0xff}, cfg.BlockSize-n)...)
		}
		fsys, err := Open(img, cfg)
		if err != nil {
			return
		}
		for _, e := range fsys.List() {
			data, err := fsys.ReadFile(e.Path)
			if err == nil && int64(len(data)) != e.Size {
				t.Fatalf("%s: read %d bytes, listed %d", e.Path, len(data), e.Size)
			}
		}
	})
}

// FuzzRoundTrip builds images from fuzzed files and reads them back.
func FuzzRoundTrip(f *testing.F) {
	f.Add(byte(0), "/a", []byte("hello"), 3)
	f.Add(byte(1), "/dir/b", bytes.Repeat([]byte{1, 2, 3}, 700), 40)
	f.Fuzz(func(t *testing.T, sel byte, name string, data []byte, copies int) {
		cfg := fuzzConfig(sel)
		cfg.UseMagic = sel&8 != 0
		cfg.UseMagicLen = sel&16 != 0
		cfg.ImageSize = 64 * cfg.BlockSize
		copies = 1 + abs(copies%8)
		var files []File
		for i := 0; i < copies; i++ {
			p := name
			if i > 0 {
				p = name + string(rune('0'+i))
			}
			files = append(files, File{Path: p, Data: data})
		}
		img, err := Build(cfg, files)
		if err != nil {
			return // bad names and oversize input are refused, which is fine
		}
		fsys, err := Open(img, cfg)
		if err != nil {
			t.Fatal(err)
		}
		checkContents(t, fsys, files)
	})
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
