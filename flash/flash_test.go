package flash

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The partition tables are gen_esp32part.py's own output, committed by the
// parttable package: seed.bin is the single-app layout with spiffs at
// 0x290000, seed_ota.bin an OTA layout with otadata at 0xd000.
const (
	seedTable = "../parttable/testdata/seed.bin"
	otaTable  = "../parttable/testdata/seed_ota.bin"
)

// fill returns n bytes of a pattern unique to tag, so that a misplaced
// image shows in a merged image.
func fill(tag byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = tag ^ byte(i*7)
	}
	return b
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	write(t, to, b)
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

type fixture struct {
	build, unit          string
	boot, app, spiffs    []byte
	bootPath, appPath    string
	tablePath, spiffsBin string
}

// newSeedFixture lays out an ESP-IDF build directory without
// flasher_args.json, and a unit directory with its spiffs.bin.
func newSeedFixture(t *testing.T) *fixture {
	dir := t.TempDir()
	f := &fixture{
		build: filepath.Join(dir, "build"), unit: filepath.Join(dir, "out", "SN-000001"),
		boot: fill(0xB0, 0x6100), app: fill(0xA0, 0x2F123), spiffs: fill(0x50, 0x40000),
	}
	f.bootPath = filepath.Join(f.build, "bootloader", "bootloader.bin")
	f.appPath = filepath.Join(f.build, "thing.bin")
	f.tablePath = filepath.Join(f.build, "partition_table", "partition-table.bin")
	f.spiffsBin = filepath.Join(f.unit, "spiffs.bin")
	write(t, f.bootPath, f.boot)
	write(t, f.appPath, f.app)
	copyFile(t, seedTable, f.tablePath)
	write(t, f.spiffsBin, f.spiffs)
	return f
}

func TestSeedPlan(t *testing.T) {
	f := newSeedFixture(t)
	plan, err := NewPlan(Config{Chip: "esp32", BuildDir: f.build, UnitDir: f.unit})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		off  uint32
		name string
		path string
		data []byte
	}{
		{0x1000, NameBootloader, f.bootPath, f.boot},
		{0x8000, NamePartitionTable, f.tablePath, nil},
		{0x10000, NameApp, f.appPath, f.app},
		{0x290000, "spiffs", f.spiffsBin, f.spiffs},
	}
	if len(plan) != len(want) {
		t.Fatalf("plan:\n%s", plan)
	}
	for i, w := range want {
		img := plan[i]
		if img.Offset != w.off || img.Name != w.name || img.Path != w.path {
			t.Errorf("image %d: %+v, want %#x %s %s", i, img, w.off, w.name, w.path)
		}
		if w.data != nil && (img.SHA256 != sum(w.data) || img.Size != len(w.data)) {
			t.Errorf("image %d: size %d sha %s", i, img.Size, img.SHA256)
		}
	}

	got := EsptoolArgs(plan, "/dev/ttyUSB0", "esp32", 460800)
	wantArgs := []string{"esptool.py", "--chip", "esp32", "--port", "/dev/ttyUSB0", "--baud", "460800", "write_flash",
		"0x1000", f.bootPath, "0x8000", f.tablePath, "0x10000", f.appPath, "0x290000", f.spiffsBin}
	if !reflect.DeepEqual(got, wantArgs) {
		t.Fatalf("esptool args:\n%q\nwant\n%q", got, wantArgs)
	}
	if s := plan.String(); !strings.Contains(s, "0x290000") || !strings.Contains(s, f.spiffsBin) {
		t.Fatalf("plan text:\n%s", s)
	}
}

func TestMerge(t *testing.T) {
	f := newSeedFixture(t)
	plan, err := NewPlan(Config{Chip: "esp32", BuildDir: f.build, UnitDir: f.unit})
	if err != nil {
		t.Fatal(err)
	}
	table, err := os.ReadFile(f.tablePath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Merge(plan, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 4<<20 {
		t.Fatalf("merged image is %#x bytes", len(m))
	}
	ff := func(from, to int) {
		t.Helper()
		if !bytes.Equal(m[from:to], bytes.Repeat([]byte{0xFF}, to-from)) {
			t.Fatalf("%#x-%#x is not 0xFF padding", from, to)
		}
	}
	at := func(off int, b []byte) {
		t.Helper()
		if !bytes.Equal(m[off:off+len(b)], b) {
			t.Fatalf("image expected at %#x is not there", off)
		}
	}
	ff(0, 0x1000)
	at(0x1000, f.boot)
	ff(0x1000+len(f.boot), 0x8000)
	at(0x8000, table)
	at(0x10000, f.app)
	ff(0x10000+len(f.app), 0x290000)
	at(0x290000, f.spiffs)
	ff(0x2D0000, 4<<20)

	short, err := Merge(plan, 0)
	if err != nil || len(short) != 0x2D0000 || !bytes.Equal(short, m[:0x2D0000]) {
		t.Fatalf("unpadded merge: %#x bytes, %v", len(short), err)
	}
	if _, err := Merge(plan, 2<<20); err == nil {
		t.Fatal("merge into a too small image accepted")
	}
	// A file changed after planning must not be merged silently.
	write(t, f.appPath, fill(0xA1, len(f.app)))
	if _, err := Merge(plan, 0); err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("changed app merged: %v", err)
	}
}

func TestOTABuildWithFlasherArgs(t *testing.T) {
	dir := t.TempDir()
	build := filepath.Join(dir, "build")
	// Laid out as ESP-IDF v5.5 writes it for an esp32s3 OTA project.
	flasherArgs := `{
    "write_flash_args" : [ "--flash_mode", "dio",
                           "--flash_size", "8MB",
                           "--flash_freq", "80m" ],
    "flash_settings" : {
        "flash_mode": "dio",
        "flash_size": "8MB",
        "flash_freq": "80m"
    },
    "flash_files" : {
        "0x0" : "bootloader/bootloader.bin",
        "0x10000" : "thing_fw.bin",
        "0x8000" : "partition_table/partition-table.bin",
        "0xd000" : "ota_data_initial.bin"
    },
    "bootloader" : { "offset" : "0x0", "file" : "bootloader/bootloader.bin", "encrypted" : "false" },
    "app" : { "offset" : "0x10000", "file" : "thing_fw.bin", "encrypted" : "false" },
    "partition-table" : { "offset" : "0x8000", "file" : "partition_table/partition-table.bin", "encrypted" : "false" },
    "otadata" : { "offset" : "0xd000", "file" : "ota_data_initial.bin", "encrypted" : "false" },
    "extra_esptool_args" : {
        "after"  : "hard_reset",
        "before" : "default_reset",
        "stub"   : true,
        "chip"   : "esp32s3"
    }
}`
	write(t, filepath.Join(build, "flasher_args.json"), []byte(flasherArgs))
	write(t, filepath.Join(build, "bootloader", "bootloader.bin"), fill(1, 0x5000))
	copyFile(t, otaTable, filepath.Join(build, "partition_table", "partition-table.bin"))
	write(t, filepath.Join(build, "thing_fw.bin"), fill(2, 0x100000))
	// A second top-level .bin: flasher_args.json says which is the app.
	write(t, filepath.Join(build, "other.bin"), fill(3, 0x100))
	write(t, filepath.Join(build, "ota_data_initial.bin"), bytes.Repeat([]byte{0xFF}, 0x2000))
	unit := filepath.Join(dir, "SN-000002")
	write(t, filepath.Join(unit, "spiffs.bin"), fill(4, 0x40000))

	plan, err := NewPlan(Config{Chip: "esp32s3", BuildDir: build, UnitDir: unit})
	if err != nil {
		t.Fatal(err)
	}
	var offs []string
	for _, img := range plan {
		offs = append(offs, img.Name+"@"+hex.EncodeToString([]byte{byte(img.Offset >> 16), byte(img.Offset >> 8), byte(img.Offset)}))
	}
	want := "bootloader@000000 partition-table@008000 otadata@00d000 app@010000 spiffs@610000"
	if strings.Join(offs, " ") != want {
		t.Fatalf("plan %s, want %s", strings.Join(offs, " "), want)
	}
	if plan[3].Partition != "ota_0" || filepath.Base(plan[3].Path) != "thing_fw.bin" {
		t.Fatalf("app image: %+v", plan[3])
	}

	// The build says esp32s3: flashing it to an esp32 is refused.
	if _, err := NewPlan(Config{Chip: "esp32", BuildDir: build, UnitDir: unit}); err == nil || !strings.Contains(err.Error(), "esp32s3") {
		t.Fatalf("wrong chip: %v", err)
	}
	// Without otadata's initial image the plan simply leaves it out.
	os.Remove(filepath.Join(build, "ota_data_initial.bin"))
	plan, err = NewPlan(Config{Chip: "esp32s3", BuildDir: build})
	if err != nil || len(plan) != 3 {
		t.Fatalf("plan without otadata and unit: %v\n%s", err, plan)
	}
}

func TestRefusals(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(t *testing.T, f *fixture) Config
		want  string
	}{
		{"spiffs too big", func(t *testing.T, f *fixture) Config {
			write(t, f.spiffsBin, fill(9, 0x40001))
			return Config{Chip: "esp32", BuildDir: f.build, UnitDir: f.unit}
		}, "larger than partition spiffs"},
		{"app too big", func(t *testing.T, f *fixture) Config {
			write(t, f.appPath, fill(9, 0x280001))
			return Config{Chip: "esp32", BuildDir: f.build}
		}, "larger than partition factory"},
		{"bootloader into the table", func(t *testing.T, f *fixture) Config {
			write(t, f.bootPath, fill(9, 0x7001))
			return Config{Chip: "esp32", BuildDir: f.build}
		}, "larger than its room"},
		{"unknown chip", func(t *testing.T, f *fixture) Config {
			return Config{Chip: "esp8266", BuildDir: f.build}
		}, "unknown chip"},
		{"two apps", func(t *testing.T, f *fixture) Config {
			write(t, filepath.Join(f.build, "second.bin"), fill(9, 10))
			return Config{Chip: "esp32", BuildDir: f.build}
		}, "several .bin"},
		{"no app", func(t *testing.T, f *fixture) Config {
			os.Remove(f.appPath)
			return Config{Chip: "esp32", BuildDir: f.build}
		}, "no application"},
		{"no spiffs in unit", func(t *testing.T, f *fixture) Config {
			os.Remove(f.spiffsBin)
			return Config{Chip: "esp32", BuildDir: f.build, UnitDir: f.unit}
		}, "spiffs.bin"},
		{"corrupt table", func(t *testing.T, f *fixture) Config {
			b, _ := os.ReadFile(f.tablePath)
			b[0x90] ^= 1 // inside the MD5 row's digest
			write(t, f.tablePath, b)
			return Config{Chip: "esp32", BuildDir: f.build}
		}, "md5"},
		{"manifest for another table", func(t *testing.T, f *fixture) Config {
			return Config{Chip: "esp32", BuildDir: f.build, UnitDir: f.unit, UnitImages: []UnitImage{
				{Partition: "spiffs", Offset: 0x300000, Size: 0x40000, File: "spiffs.bin"}}}
		}, "was made for"},
		{"manifest checksum", func(t *testing.T, f *fixture) Config {
			return Config{Chip: "esp32", BuildDir: f.build, UnitDir: f.unit, UnitImages: []UnitImage{
				{Partition: "spiffs", Offset: 0x290000, Size: 0x40000, File: "spiffs.bin", SHA256: sum([]byte("x"))}}}
		}, "the manifest says"},
		{"manifest escapes the unit", func(t *testing.T, f *fixture) Config {
			return Config{Chip: "esp32", BuildDir: f.build, UnitDir: f.unit, UnitImages: []UnitImage{
				{Partition: "spiffs", Offset: 0x290000, Size: 0x40000, File: "../x.bin"}}}
		}, "not inside"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newSeedFixture(t)
			_, err := NewPlan(c.setup(t, f))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

func TestManifestImages(t *testing.T) {
	f := newSeedFixture(t)
	plan, err := NewPlan(Config{Chip: "esp32", BuildDir: f.build, UnitDir: f.unit, UnitImages: []UnitImage{
		{Partition: "spiffs", Offset: 0x290000, Size: 0x40000, File: "spiffs.bin", SHA256: strings.ToUpper(sum(f.spiffs))}}})
	if err != nil {
		t.Fatal(err)
	}
	if last := plan[len(plan)-1]; last.Offset != 0x290000 || last.Path != f.spiffsBin {
		t.Fatalf("unit image: %+v", last)
	}
}

func TestCheckOverlap(t *testing.T) {
	p := Plan{
		{Offset: 0x10000, Name: "app", Size: 0x2000, SHA256: "x"},
		{Offset: 0x1000, Name: "bootloader", Size: 0x7000},
		{Offset: 0x11000, Name: "data", Size: 0x1000},
	}
	err := p.Check()
	if err == nil || !strings.Contains(err.Error(), "overlaps data") {
		t.Fatalf("overlap: %v", err)
	}
	if p[0].Name != "bootloader" {
		t.Fatal("Check does not sort by offset")
	}
	if _, err := Merge(p, 0); err == nil {
		t.Fatal("merged overlapping images")
	}
}

func TestBootloaderOffsets(t *testing.T) {
	for chip, want := range map[string]uint32{"esp32": 0x1000, "ESP32S2": 0x1000, "esp32s3": 0, "esp32c2": 0,
		"esp32c3": 0, "esp32c6": 0, "esp32h2": 0, "esp32c5": 0x2000, "esp32p4": 0x2000} {
		if got, err := BootloaderOffset(chip); err != nil || got != want {
			t.Errorf("%s: %#x %v, want %#x", chip, got, err, want)
		}
	}
}

// esptool v4.12.0's merge_bin output for newSeedFixture's plan, as sha256:
// unpadded, and with --fill-flash-size 4MB. See testdata/README.md.
const (
	esptoolMergedSHA256   = "4850f5e7b9d1a8253ded0dcdb10be9cc187a88e7dca9afbd77f9c9fb6511bd20"
	esptoolMerged4MSHA256 = "2be92a70a694c6d3a5b6977740b3966b34a6a703a817977052d6f581e625749f"
)

func TestMergeMatchesEsptool(t *testing.T) {
	f := newSeedFixture(t)
	plan, err := NewPlan(Config{Chip: "esp32", BuildDir: f.build, UnitDir: f.unit})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		size int
		pad  []string
		want string
	}{{0, nil, esptoolMergedSHA256}, {4 << 20, []string{"--fill-flash-size", "4MB"}, esptoolMerged4MSHA256}} {
		m, err := Merge(plan, c.size)
		if err != nil {
			t.Fatal(err)
		}
		if got := sum(m); got != c.want {
			t.Errorf("merged image (size %#x) sha256 %s, esptool's is %s", c.size, got, c.want)
		}
		// THINGLINE_ESPTOOL names esptool.py to compare with it live.
		tool := os.Getenv("THINGLINE_ESPTOOL")
		if tool == "" {
			continue
		}
		out := filepath.Join(t.TempDir(), "merged.bin")
		args := []string{tool, "--chip", "esp32", "merge_bin", "-o", out}
		args = append(args, c.pad...)
		for _, img := range plan {
			args = append(args, fmt.Sprintf("%#x", img.Offset), img.Path)
		}
		if msg, err := exec.Command("python3", args...).CombinedOutput(); err != nil {
			t.Fatalf("esptool: %v\n%s", err, msg)
		}
		want, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(m, want) {
			t.Errorf("merged image (size %#x) differs from esptool's (sha256 %s)", c.size, sum(want))
		}
	}
}
