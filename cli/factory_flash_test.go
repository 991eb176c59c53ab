package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thingline/thingline/factory"
	"github.com/thingline/thingline/pki"
)

// flashBuild lays out an ESP-IDF build directory for the seed table
// (spiffs at 0x290000) without flasher_args.json.
func flashBuild(t *testing.T) string {
	t.Helper()
	build := filepath.Join(t.TempDir(), "build")
	for name, b := range map[string][]byte{
		"bootloader/bootloader.bin":           bytes.Repeat([]byte{0xE9, 1}, 0x3000),
		"partition_table/partition-table.bin": readParttableTestdata(t, "seed.bin"),
		"thing.bin":                           bytes.Repeat([]byte{0xE9, 2}, 0x18000),
	} {
		p := filepath.Join(build, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return build
}

// injectUnit makes a real unit with station 3 for the seed table, so that
// flash reads the manifest and ledger the factory really writes.
func injectUnit(t *testing.T) (out, unit string) {
	t.Helper()
	ca := filepath.Join(t.TempDir(), "ca")
	if err := pki.InitCA(ca, pki.KeyEC); err != nil {
		t.Fatal(err)
	}
	out = filepath.Join(t.TempDir(), "out")
	_, err := factory.Inject(context.Background(), factory.InjectOptions{
		CADir: ca, Out: out, SN: "SN-000042",
		Partitions: filepath.Join(parttableTestdata, "seed.csv"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, filepath.Join(out, "SN-000042")
}

// fakeEsptool puts an esptool.py on PATH that records its arguments, one a
// line, and exits with status code. Nothing else is on PATH.
func fakeEsptool(t *testing.T, code string) (argsFile string) {
	t.Helper()
	bin := t.TempDir()
	argsFile = filepath.Join(bin, "args")
	script := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '" + argsFile + "'\nexit " + code + "\n"
	if err := os.WriteFile(filepath.Join(bin, "esptool.py"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	return argsFile
}

func travellerStations(t *testing.T, ledger, sn string) []string {
	t.Helper()
	l, err := factory.OpenLedger(ledger)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	evs, err := l.Traveller(context.Background(), sn)
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, e := range evs {
		s = append(s, e.Station.String()+":"+string(e.Result))
	}
	return s
}

func TestFactoryFlashDryRun(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("/bin/sh: not installed")
	}
	build := flashBuild(t)
	out, unit := injectUnit(t)
	t.Setenv("PATH", t.TempDir()) // no esptool anywhere

	got, err := runParttableCLI(t, nil, "factory", "flash", "--port", "/dev/ttyUSB0", "--chip", "esp32",
		"--build", build, "--unit", unit, "--dry-run", "--baud", "921600")
	if err != nil {
		t.Fatal(err)
	}
	want := "esptool.py --chip esp32 --port /dev/ttyUSB0 --baud 921600 write_flash" +
		" 0x1000 " + filepath.Join(build, "bootloader", "bootloader.bin") +
		" 0x8000 " + filepath.Join(build, "partition_table", "partition-table.bin") +
		" 0x10000 " + filepath.Join(build, "thing.bin") +
		" 0x290000 " + filepath.Join(unit, "spiffs.bin") + "\n"
	if !strings.HasSuffix(string(got), want) {
		t.Fatalf("output:\n%s\nwant it to end with:\n%s", got, want)
	}
	// A dry run flashes nothing, so it records nothing.
	if st := travellerStations(t, filepath.Join(out, factory.LedgerFile), "SN-000042"); strings.Contains(strings.Join(st, " "), "flashing") {
		t.Fatalf("dry run recorded %v", st)
	}

	// Without esptool, flashing for real fails with a clear message.
	_, err = runParttableCLI(t, nil, "factory", "flash", "--port", "/dev/ttyUSB0", "--build", build, "--unit", unit)
	if err == nil || !strings.Contains(err.Error(), "esptool") {
		t.Fatalf("missing esptool: %v", err)
	}

	// --merged alone needs neither esptool nor a port.
	merged := filepath.Join(t.TempDir(), "merged.bin")
	if _, err := runParttableCLI(t, nil, "factory", "flash", "--build", build, "--unit", unit, "--merged", merged, "--merged-size", "0x200000"); err == nil {
		t.Fatal("merged image smaller than the plan accepted")
	}
	if _, err := runParttableCLI(t, nil, "factory", "flash", "--build", build, "--unit", unit, "--merged", merged, "--merged-size", "0x400000"); err != nil {
		t.Fatal(err)
	}
	m, err := os.ReadFile(merged)
	if err != nil {
		t.Fatal(err)
	}
	spiffs, err := os.ReadFile(filepath.Join(unit, "spiffs.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 4<<20 || !bytes.Equal(m[0x290000:0x2D0000], spiffs) || !bytes.Equal(m[0x8000:0x8C00], readParttableTestdata(t, "seed.bin")) {
		t.Fatal("merged image does not hold the table and the unit's spiffs image at their offsets")
	}
}

func TestFactoryFlashRunsEsptoolAndRecords(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("/bin/sh: not installed")
	}
	build := flashBuild(t)
	out, unit := injectUnit(t)
	ledger := filepath.Join(out, factory.LedgerFile)

	argsFile := fakeEsptool(t, "0")
	got, err := runParttableCLI(t, nil, "factory", "flash", "--port", "/dev/ttyACM0", "--build", build, "--unit", unit, "--operator", "ana")
	if err != nil {
		t.Fatal(err)
	}
	args, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatal(err)
	}
	wantArgs := strings.Join([]string{"--chip", "esp32", "--port", "/dev/ttyACM0", "--baud", "460800", "write_flash",
		"0x1000", filepath.Join(build, "bootloader", "bootloader.bin"),
		"0x8000", filepath.Join(build, "partition_table", "partition-table.bin"),
		"0x10000", filepath.Join(build, "thing.bin"),
		"0x290000", filepath.Join(unit, "spiffs.bin")}, "\n") + "\n"
	if string(args) != wantArgs {
		t.Fatalf("esptool got:\n%s\nwant:\n%s", args, wantArgs)
	}
	if !strings.Contains(string(got), "station 2 pass recorded") {
		t.Fatalf("output:\n%s", got)
	}

	fakeEsptool(t, "2")
	if _, err := runParttableCLI(t, nil, "factory", "flash", "--port", "/dev/ttyACM0", "--build", build, "--unit", unit, "--ledger", ledger); err == nil {
		t.Fatal("a failing esptool did not fail the command")
	}
	st := strings.Join(travellerStations(t, ledger, "SN-000042"), " ")
	if !strings.HasSuffix(st, "flashing:pass flashing:fail") {
		t.Fatalf("traveller: %s", st)
	}
}
