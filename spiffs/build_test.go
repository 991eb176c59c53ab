package spiffs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestBuildRefusesWhatDoesNotFit(t *testing.T) {
	files, err := ReadDir("testdata/in/full", false, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	// The same files fill testdata/full.bin.gz (0x10000) to all but 7 pages;
	// spiffsgen.py also refuses them in 0xf000 (SpiffsFullError).
	if _, err := Build(DefaultConfig(0xf000), files); !errors.Is(err, ErrFull) {
		t.Fatalf("Build in 0xf000: %v, want ErrFull", err)
	}
	if _, err := Build(DefaultConfig(0x10000), files); err != nil {
		t.Fatalf("Build in 0x10000: %v", err)
	}
	// One more page's worth than the 7 pages left: 6 data pages and an index page fit, 7 do not.
	more := append(files[:len(files):len(files)], File{Path: "/x", Data: make([]byte, 6*251)})
	if _, err := Build(DefaultConfig(0x10000), more); err != nil {
		t.Fatalf("Build with 7 more pages: %v", err)
	}
	more[len(more)-1].Data = make([]byte, 6*251+1)
	if _, err := Build(DefaultConfig(0x10000), more); !errors.Is(err, ErrFull) {
		t.Fatalf("Build with 8 more pages: %v, want ErrFull", err)
	}
	// ReadDir gives up before reading more bytes than an image could hold.
	if _, err := ReadDir("testdata/in/full", false, 0x8000); !errors.Is(err, ErrFull) {
		t.Fatalf("ReadDir with a small limit: %v, want ErrFull", err)
	}
}

func TestBuildNames(t *testing.T) {
	cfg := DefaultConfig(0x10000)
	exact := "/" + strings.Repeat("n", 31) // 32 bytes: allowed, with no room for the NUL
	for _, tc := range []struct {
		files []File
		want  string // part of the error, "" for success
	}{
		{[]File{{Path: exact}}, ""},
		{[]File{{Path: exact + "x"}}, "longer than the object name length"},
		{[]File{{Path: "no-slash"}}, "does not start with /"},
		{[]File{{Path: "/a\x00b"}}, "without NUL"},
		{[]File{{Path: "/\xff"}}, "valid UTF-8"},
		{[]File{{Path: "/a"}, {Path: "/a"}}, "given twice"},
	} {
		_, err := Build(cfg, tc.files)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Build(%q): %v, want %q", tc.files[0].Path, err, tc.want)
		}
	}
	img, err := Build(cfg, []File{{Path: exact, Data: []byte("full-length name")}})
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := Open(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := fsys.ReadFile(exact); err != nil || string(got) != "full-length name" {
		t.Fatalf("ReadFile(%s) = %q, %v", exact, got, err)
	}
}

// TestBuildNonASCIIName pins the one deliberate difference from spiffsgen.py:
// the page table of a file with a multi-byte name stays where SPIFFS reads it.
func TestBuildNonASCIIName(t *testing.T) {
	cfg := DefaultConfig(0x10000)
	name := "/ünï.txt" // 8 characters, 10 bytes
	data := bytes.Repeat([]byte("utf8 "), 100)
	img, err := Build(cfg, []File{{Path: name, Data: data}})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := newGeometry(cfg, len(img))
	// Page 1 is the index page; its table must start right after the 49-byte
	// header with page 2, the first data page (spiffsgen.py writes it 2 bytes later).
	if got := g.order.Uint16(img[256+49:]); got != 2 {
		t.Fatalf("first page table entry = %d, want 2", got)
	}
	fsys, err := Open(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := fsys.ReadFile(name); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadFile: %d bytes, %v", len(got), err)
	}
}

func TestConfigChecks(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.PageSize = 300 }, "power of two"},
		{func(c *Config) { c.BlockSize = 1000 }, "multiple of the page size"},
		{func(c *Config) { c.ImageSize = 5000 }, "multiple of the block size"},
		{func(c *Config) { c.ObjNameLen = 250 }, "does not fit"},
		{func(c *Config) { c.MetaLen = -1 }, "negative"},
	} {
		cfg := DefaultConfig(0x10000)
		tc.mod(&cfg)
		if _, err := Build(cfg, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Build: %v, want %q", err, tc.want)
		}
	}
	if _, err := Open(make([]byte, 4095), DefaultConfig(0)); err == nil {
		t.Error("Open accepted an image that is not a whole number of blocks")
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func paths(files []File) string {
	var s []string
	for _, f := range files {
		s = append(s, f.Path)
	}
	return strings.Join(s, " ")
}

func TestReadDirOrderAndLinks(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	writeFile(t, filepath.Join(root, "b"), "b")
	writeFile(t, filepath.Join(root, "a/z"), "az")
	writeFile(t, filepath.Join(root, "a/y/x"), "ayx")
	writeFile(t, filepath.Join(root, "c"), "c")
	writeFile(t, filepath.Join(outside, "target/t"), "t")
	writeFile(t, filepath.Join(outside, "file"), "linked")
	if err := os.Symlink(filepath.Join(outside, "target"), filepath.Join(root, "dirlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "file"), filepath.Join(root, "filelink")); err != nil {
		t.Fatal(err)
	}

	// os.walk's order with sorted listings: a directory's files, then its
	// subdirectories depth first. Links to files always count.
	files, err := ReadDir(root, false, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := paths(files), "/b /c /filelink /a/z /a/y/x"; got != want {
		t.Fatalf("order %q, want %q", got, want)
	}
	if string(files[2].Data) != "linked" {
		t.Fatalf("/filelink holds %q", files[2].Data)
	}
	files, err = ReadDir(root, true, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := paths(files), "/b /c /filelink /a/z /a/y/x /dirlink/t"; got != want {
		t.Fatalf("following links: order %q, want %q", got, want)
	}

	// A loop is refused when following links, and harmless when not.
	if err := os.Symlink("..", filepath.Join(root, "a/up")); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDir(root, true, 1<<20); err == nil || !strings.Contains(err.Error(), "loops") {
		t.Fatalf("loop: %v", err)
	}
	if _, err := ReadDir(root, false, 1<<20); err != nil {
		t.Fatalf("loop not followed: %v", err)
	}
	if err := os.Remove(filepath.Join(root, "a/up")); err != nil {
		t.Fatal(err)
	}

	if err := os.Symlink(filepath.Join(outside, "gone"), filepath.Join(root, "dangling")); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDir(root, false, 1<<20); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dangling link: %v", err)
	}
	if err := os.Remove(filepath.Join(root, "dangling")); err != nil {
		t.Fatal(err)
	}

	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDir(root, false, 1<<20); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("fifo: %v", err)
	}

	if _, err := ReadDir(filepath.Join(root, "b"), false, 1<<20); err == nil {
		t.Fatal("ReadDir accepted a file as the directory")
	}
	if _, err := BuildDir(DefaultConfig(0x10000), filepath.Join(root, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing directory: %v", err)
	}
}
