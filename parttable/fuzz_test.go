package parttable

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func addTestdata(f *testing.F, pattern string) {
	files, err := filepath.Glob(filepath.Join("testdata", pattern))
	if err != nil || len(files) == 0 {
		f.Fatalf("seed corpus %s: %v", pattern, err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// FuzzParseBinary checks that any bytes either fail cleanly or give a table
// that writes back to the same rows and prints as CSV.
func FuzzParseBinary(f *testing.F) {
	addTestdata(f, "*.bin")
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xFF}, 32))
	f.Add(append([]byte{0xEB, 0xEB}, bytes.Repeat([]byte{0xFF}, 30)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		tab, err := ParseBinary(b)
		if err != nil {
			return
		}
		_ = tab.CSV()
		_ = tab.Verify(CSVOptions{})
		out, err := tab.Binary(BinaryOptions{DisableMD5: true})
		if err != nil {
			if len(tab.Partitions)*entrySize < MaxBinaryLength {
				t.Fatalf("writing %d rows: %v", len(tab.Partitions), err)
			}
			return
		}
		back, err := ParseBinary(out)
		if err != nil {
			t.Fatalf("reading back: %v", err)
		}
		if len(back.Partitions) != len(tab.Partitions) {
			t.Fatalf("%d rows read back as %d", len(tab.Partitions), len(back.Partitions))
		}
		for i := range back.Partitions {
			if back.Partitions[i] != tab.Partitions[i] {
				t.Fatalf("row %d: %+v read back as %+v", i, tab.Partitions[i], back.Partitions[i])
			}
		}
		roundTripCSV(t, tab)
	})
}

// roundTripCSV checks that a printed table reads back as itself when its
// names survive CSV unchanged and its rows are in the order the CSV reader
// can place.
func roundTripCSV(t *testing.T, tab *Table) {
	for _, p := range tab.Partitions {
		if p.Type > TypeData || p.Name != pyStrip(p.Name) || strings.ContainsAny(p.Name, ",$\x00") ||
			strings.HasPrefix(p.Name, "#") || len(splitLines(p.Name+"x")) != 1 || len(p.Name) > 16 {
			return
		}
	}
	back, err := ParseCSV(strings.NewReader(tab.CSV()), CSVOptions{NoVerify: true})
	if err != nil {
		return // offsets out of order: the CSV reader refuses them
	}
	if len(back.Partitions) != len(tab.Partitions) {
		t.Fatalf("csv of %d rows read back as %d:\n%s", len(tab.Partitions), len(back.Partitions), tab.CSV())
	}
	for i := range back.Partitions {
		if back.Partitions[i] != tab.Partitions[i] {
			t.Fatalf("row %d: %+v read back from csv as %+v", i, tab.Partitions[i], back.Partitions[i])
		}
	}
}

// FuzzParseCSV checks that any text either fails cleanly or gives a table
// that writes a binary reading back to the same table.
func FuzzParseCSV(f *testing.F) {
	addTestdata(f, "*.csv")
	addTestdata(f, "errors/*.csv")
	f.Add([]byte("a,data,nvs,,-0x10000\nb,app,ota_15,,1kk,encrypted:readonly\n"))
	f.Add([]byte("x,0x40,0x_ff,0o77000,0b1_0000_0000_0000\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, opt := range []CSVOptions{{}, {NoVerify: true, Secure: "v1", TableOffset: 0x10000}} {
			tab, err := ParseCSV(bytes.NewReader(b), opt)
			if err != nil {
				if !strings.HasPrefix(err.Error(), "parttable: ") {
					t.Fatalf("error without prefix: %v", err)
				}
				continue
			}
			if !opt.NoVerify {
				if err := tab.Verify(opt); err != nil {
					t.Fatalf("parsed table fails Verify: %v", err)
				}
			}
			bin, err := tab.MarshalBinary()
			if err != nil {
				continue
			}
			back, err := ParseBinary(bin)
			if err != nil {
				t.Fatalf("reading back: %v", err)
			}
			if len(back.Partitions) != len(tab.Partitions) {
				t.Fatalf("%d rows read back as %d", len(tab.Partitions), len(back.Partitions))
			}
			for i, p := range tab.Partitions {
				q := back.Partitions[i]
				p.Name = truncName(p.Name)
				if p != q {
					t.Fatalf("row %d: %+v read back as %+v", i, p, q)
				}
			}
		}
	})
}

// truncName is what a name becomes after the 16-byte label field, when it
// is still valid UTF-8 and has no NUL.
func truncName(s string) string {
	if len(s) > 16 {
		s = s[:16]
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return s
}
