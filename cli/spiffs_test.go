package cli

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs thingline with args and returns its standard output.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

const spiffsTestdata = "../spiffs/testdata"

func gunzipFile(t *testing.T, path string) []byte {
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

// TestSpiffsBuildVectors runs `spiffs build` with the very flags spiffsgen.py
// was given for each test vector and compares the output with its image.
func TestSpiffsBuildVectors(t *testing.T) {
	f, err := os.Open(filepath.Join(spiffsTestdata, "vectors.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		n++
		name, input, size, flags := fields[0], fields[1], fields[2], fields[3:]
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(spiffsTestdata, "in", input)
			if input == "-" {
				dir = t.TempDir()
			}
			out := filepath.Join(t.TempDir(), "out.bin")
			args := append([]string{"spiffs", "build"}, flags...)
			if _, err := runCLI(t, append(args, size, dir, out)...); err != nil {
				t.Fatalf("spiffs build %v: %v", flags, err)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, gunzipFile(t, filepath.Join(spiffsTestdata, name+".bin.gz"))) {
				t.Fatalf("spiffs build %v differs from spiffsgen.py's image", flags)
			}
		})
	}
	if n == 0 {
		t.Fatal("no vectors")
	}
}

func TestSpiffsLsCat(t *testing.T) {
	img := filepath.Join(t.TempDir(), "spiffs.bin")
	seed := filepath.Join(spiffsTestdata, "in", "seed")
	if _, err := runCLI(t, "spiffs", "build", "256K", seed, img); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "spiffs", "ls", img)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, name := range []string{"device.crt", "device.key", "server_chain.pem"} {
		fi, err := os.Stat(filepath.Join(seed, name))
		if err != nil {
			t.Fatal(err)
		}
		want.WriteString("/" + name + "\t" + itoa(fi.Size()) + "\n")
	}
	if out != want.String() {
		t.Fatalf("ls printed\n%s\nwant\n%s", out, want.String())
	}
	for _, path := range []string{"/server_chain.pem", "server_chain.pem"} {
		out, err = runCLI(t, "spiffs", "cat", img, path)
		if err != nil {
			t.Fatal(err)
		}
		wantData, _ := os.ReadFile(filepath.Join(seed, "server_chain.pem"))
		if out != string(wantData) {
			t.Fatalf("cat %s printed %d bytes, want %d", path, len(out), len(wantData))
		}
	}
	if _, err := runCLI(t, "spiffs", "cat", img, "/missing"); err == nil || !strings.Contains(err.Error(), "not exist") {
		t.Fatalf("cat of a missing file: %v", err)
	}
	// A geometry the image cannot have is refused.
	if _, err := runCLI(t, "spiffs", "ls", "--block-size", "12288", img); err == nil || !strings.Contains(err.Error(), "multiple of the block size") {
		t.Fatalf("ls with 12 KiB blocks: %v", err)
	}
}

func itoa(n int64) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
		if n == 0 {
			return string(b)
		}
	}
}

// TestSpiffsBuildRefusesOversize checks that input that does not fit fails
// and leaves neither an output file nor a temporary file, and that an older
// image at the output path is left alone.
func TestSpiffsBuildRefusesOversize(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "spiffs.bin")
	full := filepath.Join(spiffsTestdata, "in", "full")
	_, err := runCLI(t, "spiffs", "build", "0xF000", full, out)
	if err == nil || !strings.Contains(err.Error(), "image is full") {
		t.Fatalf("build of too much: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("failed build left %v behind", entries)
	}
	if err := os.WriteFile(out, []byte("old image"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "spiffs", "build", "60K", full, out); err == nil {
		t.Fatal("build of too much succeeded")
	}
	if b, _ := os.ReadFile(out); string(b) != "old image" {
		t.Fatalf("failed build replaced the old image with %d bytes", len(b))
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("failed build left %v behind", entries)
	}
}

func TestSpiffsBuildPartitions(t *testing.T) {
	dir := t.TempDir()
	csv := filepath.Join(dir, "partitions.csv")
	table := `# Name,   Type, SubType, Offset,   Size
nvs,      data, nvs,     0x9000,   0x6000
phy_init, data, phy,     0xf000,   0x1000
factory,  app,  factory, 0x10000,  0x280000
storage,  data, spiffs,  0x290000, 0x40000
other,    data, spiffs,  ,         64K
`
	if err := os.WriteFile(csv, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(spiffsTestdata, "in", "seed")
	want := gunzipFile(t, filepath.Join(spiffsTestdata, "seed.bin.gz"))
	for _, args := range [][]string{
		{"-", seed},
		{seed},
		{"0x40000", seed},
		{"--partition", "storage", seed},
	} {
		out := filepath.Join(dir, "out.bin")
		all := append([]string{"spiffs", "build", "--partitions", csv}, args...)
		if _, err := runCLI(t, append(all, out)...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, want) {
			t.Fatalf("%v: image differs from the seed vector", args)
		}
	}
	out := filepath.Join(dir, "other.bin")
	if _, err := runCLI(t, "spiffs", "build", "--partitions", csv, "--partition", "other", seed, out); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(out); err != nil || fi.Size() != 64<<10 {
		t.Fatalf("--partition other: %v, %v", fi, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--partitions", csv, "0x10000", seed, out}, "disagrees"},
		{[]string{"--partitions", csv, "--partition", "nvs", seed, out}, "not a spiffs data partition"},
		{[]string{"--partitions", csv, "--partition", "nope", seed, out}, "no partition"},
		{[]string{"--partition", "storage", "0x40000", seed, out}, "needs --partitions"},
		{[]string{seed, out}, "give SIZE or --partitions"},
		{[]string{"12Q", seed, out}, "not a number"},
		{[]string{"--use-magic", "--no-magic", "64K", seed, out}, "none of the others"},
	} {
		if _, err := runCLI(t, append([]string{"spiffs", "build"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("build %v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestSpiffsParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"262144": 262144, "0x40000": 0x40000, "0X10": 16, "256K": 256 << 10, "1M": 1 << 20, "4k": 4096, "0x10K": 16 << 10,
	} {
		if got, err := spiffsParseSize(in); err != nil || got != want {
			t.Errorf("spiffsParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "K", "0x", "-1", "1.5M", "12Q", "4096M", "0x1_000"} {
		if _, err := spiffsParseSize(in); err == nil {
			t.Errorf("spiffsParseSize(%q) succeeded", in)
		}
	}
}

func TestSpiffsBuildFollowSymlinks(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "a"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "b"), []byte("bb"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "spiffs.bin")
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{nil, "/a\t1\n"},
		{[]string{"--follow-symlinks"}, "/a\t1\n/link/b\t2\n"},
	} {
		if _, err := runCLI(t, append(append([]string{"spiffs", "build"}, tc.flags...), "64K", root, img)...); err != nil {
			t.Fatal(err)
		}
		out, err := runCLI(t, "spiffs", "ls", img)
		if err != nil || out != tc.want {
			t.Fatalf("build %v, ls: %q, %v; want %q", tc.flags, out, err, tc.want)
		}
	}
}
