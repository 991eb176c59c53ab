package spiffs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// vector is one line of testdata/vectors.txt: an image spiffsgen.py made.
type vector struct {
	name, input string
	cfg         Config
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	f, err := os.Open("testdata/vectors.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var vs []vector
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if len(fields) < 3 {
			t.Fatalf("vectors.txt: short line %q", sc.Text())
		}
		size, err := strconv.ParseInt(fields[2], 0, 64)
		if err != nil {
			t.Fatalf("vectors.txt: %v", err)
		}
		v := vector{name: fields[0], input: fields[1], cfg: DefaultConfig(int(size))}
		flags := fields[3:]
		for i := 0; i < len(flags); i++ {
			num := func() int {
				i++
				if i >= len(flags) {
					t.Fatalf("vectors.txt: %s needs a value", flags[i-1])
				}
				n, err := strconv.Atoi(flags[i])
				if err != nil {
					t.Fatalf("vectors.txt: %v", err)
				}
				return n
			}
			switch flags[i] {
			case "--no-magic":
				v.cfg.UseMagic = false
			case "--no-magic-len":
				v.cfg.UseMagicLen = false
			case "--big-endian":
				v.cfg.BigEndian = true
			case "--aligned-obj-ix-tables":
				v.cfg.AlignedObjIxTables = true
			case "--page-size":
				v.cfg.PageSize = num()
			case "--block-size":
				v.cfg.BlockSize = num()
			case "--meta-len":
				v.cfg.MetaLen = num()
			case "--obj-name-len":
				v.cfg.ObjNameLen = num()
			default:
				t.Fatalf("vectors.txt: unknown flag %s", flags[i])
			}
		}
		vs = append(vs, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(vs) == 0 {
		t.Fatal("vectors.txt: no vectors")
	}
	return vs
}

func (v vector) dir(t testing.TB) string {
	if v.input == "-" {
		return t.TempDir() // git keeps no empty directories
	}
	return filepath.Join("testdata", "in", v.input)
}

func readGzip(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// firstDiff describes where two images first differ, for a readable failure.
func firstDiff(got, want []byte, pageSize int) string {
	if len(got) != len(want) {
		return "length " + strconv.Itoa(len(got)) + ", want " + strconv.Itoa(len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return "first difference at byte 0x" + strconv.FormatInt(int64(i), 16) +
				" (page " + strconv.Itoa(i/pageSize) + ", offset " + strconv.Itoa(i%pageSize) + "): got 0x" +
				strconv.FormatInt(int64(got[i]), 16) + ", want 0x" + strconv.FormatInt(int64(want[i]), 16)
		}
	}
	return ""
}

// TestSpiffsgenVectors checks byte identity with images made by ESP-IDF
// v5.5.5's spiffsgen.py (see testdata/README.md), and that the reader gets
// every input file back from them.
func TestSpiffsgenVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.name, func(t *testing.T) {
			want := readGzip(t, filepath.Join("testdata", v.name+".bin.gz"))
			dir := v.dir(t)
			got, err := BuildDir(v.cfg, dir)
			if err != nil {
				t.Fatalf("BuildDir: %v", err)
			}
			if d := firstDiff(got, want, v.cfg.PageSize); d != "" {
				t.Fatalf("image differs from spiffsgen.py's: %s", d)
			}

			files, err := ReadDir(dir, false, 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			fsys, err := Open(want, v.cfg)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			checkContents(t, fsys, files)
		})
	}
}

// checkContents asserts that fsys holds exactly files.
func checkContents(t *testing.T, fsys *FS, files []File) {
	t.Helper()
	list := fsys.List()
	if len(list) != len(files) {
		t.Fatalf("List has %d entries %v, want %d", len(list), list, len(files))
	}
	byPath := map[string]int64{}
	for _, e := range list {
		byPath[e.Path] = e.Size
	}
	for _, f := range files {
		size, ok := byPath[f.Path]
		if !ok {
			t.Fatalf("List lacks %s: %v", f.Path, list)
		}
		if size != int64(len(f.Data)) {
			t.Errorf("%s: listed size %d, want %d", f.Path, size, len(f.Data))
		}
		data, err := fsys.ReadFile(f.Path)
		if err != nil {
			t.Fatalf("ReadFile(%s): %v", f.Path, err)
		}
		if !bytes.Equal(data, f.Data) {
			t.Fatalf("ReadFile(%s): %d bytes differ from the %d written", f.Path, len(data), len(f.Data))
		}
	}
}

// TestSeedImage checks the seed's case by hand as well: the three files the
// firmware loads, in a 0x40000 image, readable by their firmware paths.
func TestSeedImage(t *testing.T) {
	img := readGzip(t, "testdata/seed.bin.gz")
	if len(img) != 0x40000 {
		t.Fatalf("seed image is %d bytes", len(img))
	}
	fsys, err := Open(img, DefaultConfig(0))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range fsys.List() {
		names = append(names, e.Path)
	}
	if got := strings.Join(names, " "); got != "/device.crt /device.key /server_chain.pem" {
		t.Fatalf("files %q", got)
	}
	crt, err := fsys.ReadFile("/device.crt")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(crt, []byte("-----BEGIN CERTIFICATE-----")) {
		t.Fatalf("device.crt starts %q", crt[:min(len(crt), 30)])
	}
}
