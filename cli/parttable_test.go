package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const parttableTestdata = "../parttable/testdata"

// runParttableCLI runs thingline with args and returns its standard output.
func runParttableCLI(t *testing.T, stdin []byte, args ...string) ([]byte, error) {
	t.Helper()
	root := NewRoot()
	var out, errOut bytes.Buffer
	root.SetIn(bytes.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.Bytes(), err
}

func readParttableTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(parttableTestdata, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParttableCLIVectors runs the command with gen_esp32part.py's own
// flags and compares with the tool's output.
func TestParttableCLIVectors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		in, want string
		flags    []string
	}{
		{"seed.csv", "seed.bin", []string{"--flash-size", "4MB"}},
		{"seed.csv", "seed_nomd5.bin", []string{"--disable-md5sum"}},
		{"table_offset.csv", "table_offset.bin", []string{"--offset", "0x10000"}},
		{"secure_v1.csv", "secure_v1.bin", []string{"--secure"}},
		{"boot_types.csv", "boot_types.bin", []string{"--primary-bootloader-offset", "0x1000", "--recovery-bootloader-offset", "0x20000"}},
		{"extra_subtypes.csv", "extra_subtypes.bin", []string{"--extra-partition-subtypes", "data,my_data,0x40"}},
	} {
		out := filepath.Join(dir, "sub", c.want)
		args := append([]string{"parttable", filepath.Join(parttableTestdata, c.in), out}, c.flags...)
		if _, err := runParttableCLI(t, nil, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, readParttableTestdata(t, c.want)) {
			t.Fatalf("%v: output differs from gen_esp32part.py's", args)
		}
	}

	// A binary prints back as the tool prints it, to stdout by default.
	got, err := runParttableCLI(t, nil, "parttable", filepath.Join(parttableTestdata, "seed_ota.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if want := readParttableTestdata(t, "seed_ota.back.csv"); !bytes.Equal(got, want) {
		t.Fatalf("csv:\n%s\nwant:\n%s", got, want)
	}
	// Standard input works too, and binary output goes to stdout.
	got, err = runParttableCLI(t, readParttableTestdata(t, "seed.csv"), "parttable", "-")
	if err != nil || !bytes.Equal(got, readParttableTestdata(t, "seed.bin")) {
		t.Fatalf("stdin to stdout: %v", err)
	}
}

func TestParttableCLIErrors(t *testing.T) {
	for _, args := range [][]string{
		{filepath.Join(parttableTestdata, "errors", "overlap.csv")},
		{filepath.Join(parttableTestdata, "seed.csv"), "--flash-size", "2MB"},
	} {
		_, err := runParttableCLI(t, nil, append([]string{"parttable"}, args...)...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 {
			t.Fatalf("%v: error %v, want exit status 2", args, err)
		}
	}
	if _, err := runParttableCLI(t, nil, "parttable", filepath.Join(parttableTestdata, "seed.csv"), "--flash-size", "3MB"); err == nil {
		t.Fatal("--flash-size 3MB accepted")
	}
}

func TestParttableCLIEnvironment(t *testing.T) {
	t.Setenv("THINGLINE_TEST_SPIFFS_SIZE", "0x40000")
	dir := t.TempDir()
	csv := filepath.Join(dir, "p.csv")
	if err := os.WriteFile(csv, []byte(strings.ReplaceAll(string(readParttableTestdata(t, "seed.csv")),
		"0x40000", "$THINGLINE_TEST_SPIFFS_SIZE")), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := runParttableCLI(t, nil, "parttable", csv)
	if err != nil || !bytes.Equal(got, readParttableTestdata(t, "seed.bin")) {
		t.Fatalf("expanded table differs: %v", err)
	}
}
