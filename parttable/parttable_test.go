package parttable

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// vector is one line of testdata/vectors.txt: a CSV, the options it was
// given to gen_esp32part.py with, and the binary the tool wrote.
type vector struct {
	out, in string
	csvOpt  CSVOptions
	binOpt  BinaryOptions
	args    []string
}

func readVectors(t *testing.T) []vector {
	t.Helper()
	f, err := os.Open("testdata/vectors.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var vs []vector
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Fields(line)
		v := vector{out: fs[0], in: fs[1], args: fs[2:]}
		for i := 2; i < len(fs); i++ {
			arg := func() string {
				i++
				return fs[i]
			}
			num := func() uint32 {
				n, err := strconv.ParseUint(arg(), 0, 32)
				if err != nil {
					t.Fatalf("%s: %v", line, err)
				}
				return uint32(n)
			}
			switch fs[i] {
			case "--offset":
				v.csvOpt.TableOffset = num()
			case "--disable-md5sum":
				v.binOpt.DisableMD5 = true
			case "--secure":
				v.csvOpt.Secure = arg()
			case "--flash-size":
				mb, err := strconv.Atoi(strings.TrimSuffix(arg(), "MB"))
				if err != nil {
					t.Fatal(err)
				}
				v.csvOpt.FlashSize = uint32(mb) << 20
			case "--primary-bootloader-offset":
				n := num()
				v.csvOpt.PrimaryBootloaderOffset = &n
			case "--recovery-bootloader-offset":
				n := num()
				v.csvOpt.RecoveryBootloaderOffset = &n
			case "--extra-partition-subtypes":
				v.csvOpt.ExtraSubtypes = append(v.csvOpt.ExtraSubtypes, arg())
			default:
				t.Fatalf("%s: unknown option %s", line, fs[i])
			}
		}
		vs = append(vs, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 20 {
		t.Fatalf("only %d vectors", len(vs))
	}
	return vs
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVectors checks byte identity with the tool's output, and that reading
// the tool's binary prints the same CSV the tool printed back from it.
func TestVectors(t *testing.T) {
	for _, v := range readVectors(t) {
		t.Run(v.out, func(t *testing.T) {
			tab, err := ParseCSV(bytes.NewReader(mustRead(t, v.in)), v.csvOpt)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tab.Binary(v.binOpt)
			if err != nil {
				t.Fatal(err)
			}
			want := mustRead(t, v.out)
			if !bytes.Equal(got, want) {
				t.Fatalf("binary differs from gen_esp32part.py's\ngot  %x\nwant %x", got, want)
			}
			if !v.binOpt.DisableMD5 {
				if m, _ := tab.MarshalBinary(); !bytes.Equal(m, want) {
					t.Fatal("MarshalBinary differs from Binary with default options")
				}
			}

			back, err := ParseBinary(want)
			if err != nil {
				t.Fatal(err)
			}
			csv, err := back.CSVWithSubtypes(v.csvOpt.ExtraSubtypes)
			if err != nil {
				t.Fatal(err)
			}
			if wantCSV := string(mustRead(t, strings.TrimSuffix(v.out, ".bin")+".back.csv")); csv != wantCSV {
				t.Fatalf("csv differs from gen_esp32part.py's\ngot:\n%s\nwant:\n%s", csv, wantCSV)
			}
			if err := back.Verify(v.csvOpt); err != nil {
				t.Fatalf("verify of the tool's binary: %v", err)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	files, err := filepath.Glob("testdata/errors/*.csv")
	if err != nil || len(files) < 20 {
		t.Fatalf("error tables: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(b), "\n")
			want := strings.TrimPrefix(first, "# want: ")
			_, err = ParseCSV(bytes.NewReader(b), CSVOptions{FlashSize: 4 << 20})
			if err == nil {
				t.Fatal("accepted a table gen_esp32part.py refuses")
			}
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not mention %q", err, want)
			}
			if !strings.HasPrefix(err.Error(), "parttable: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestSeedTable(t *testing.T) {
	tab, err := ParseCSV(bytes.NewReader(mustRead(t, "seed.csv")), CSVOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sp := tab.FindSubtype(TypeData, SubtypeSPIFFS)
	if sp == nil || sp.Name != "spiffs" || sp.Offset != 0x290000 || sp.Size != 0x40000 {
		t.Fatalf("spiffs partition: %+v", sp)
	}
	if app := tab.FirstApp(); app == nil || app.Offset != 0x10000 || app.Size != 0x280000 {
		t.Fatalf("first app: %+v", app)
	}
	if tab.Find("phy_init") == nil || tab.Find("nope") != nil || tab.FindSubtype(TypeData, SubtypeOTA) != nil {
		t.Fatal("Find/FindSubtype")
	}
	ota, err := ParseCSV(bytes.NewReader(mustRead(t, "seed_ota.csv")), CSVOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if app := ota.FirstApp(); app == nil || app.Name != "ota_0" {
		t.Fatalf("first app of an ota table: %+v", app)
	}
}

func TestEnvironmentVariables(t *testing.T) {
	env := map[string]string{"SIZE": "0x6000", "NAME": "store"}
	getenv := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	tab, err := ParseCSV(strings.NewReader("$NAME, data, nvs, , ${SIZE}\n"), CSVOptions{Getenv: getenv})
	if err != nil {
		t.Fatal(err)
	}
	if p := tab.Partitions[0]; p.Name != "store" || p.Size != 0x6000 {
		t.Fatalf("expanded row: %+v", p)
	}
	// An unknown variable in the middle of a line is kept as text.
	tab, err = ParseCSV(strings.NewReader("a$X, data, nvs, , 0x6000\n"), CSVOptions{Getenv: getenv})
	if err != nil || tab.Partitions[0].Name != "a$X" {
		t.Fatalf("got %+v, %v", tab, err)
	}
}

func TestEncodings(t *testing.T) {
	const csv = "nvs,data,nvs,,0x6000\r\nfactory,app,factory,,1M\n"
	want, err := ParseCSV(strings.NewReader(csv), CSVOptions{})
	if err != nil {
		t.Fatal(err)
	}
	utf16le := []byte{0xFF, 0xFE}
	for _, r := range csv {
		utf16le = append(utf16le, byte(r), 0)
	}
	for name, in := range map[string][]byte{
		"utf-8 bom": append([]byte{0xEF, 0xBB, 0xBF}, csv...),
		"utf-16le":  utf16le,
	} {
		got, err := ParseCSV(bytes.NewReader(in), CSVOptions{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.CSV() != want.CSV() {
			t.Fatalf("%s: got\n%s", name, got.CSV())
		}
	}
	if _, err := ParseCSV(bytes.NewReader([]byte("n\xff,data,nvs,,0x6000\n")), CSVOptions{}); err == nil {
		t.Fatal("accepted invalid utf-8")
	}
}

func TestBinaryLimits(t *testing.T) {
	var tab Table
	for i := 0; i < 95; i++ {
		tab.Partitions = append(tab.Partitions, Partition{Name: "p" + strconv.Itoa(i), Type: TypeData, SubType: SubtypeFAT,
			Offset: 0x10000 + uint32(i)*0x1000, Size: 0x1000})
	}
	// 95 rows and the MD5 row fill all 0xC00 bytes, which the tool refuses;
	// without the MD5 row they fit.
	if _, err := tab.MarshalBinary(); err == nil {
		t.Fatal("95 rows with md5 accepted")
	}
	b, err := tab.Binary(BinaryOptions{DisableMD5: true})
	if err != nil || len(b) != MaxBinaryLength {
		t.Fatalf("95 rows without md5: %d bytes, %v", len(b), err)
	}
	tab.Partitions = tab.Partitions[:94]
	b, err = tab.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseBinary(b)
	if err != nil || len(back.Partitions) != 94 {
		t.Fatalf("read back %v rows, %v", back, err)
	}
}

func TestParseBinaryErrors(t *testing.T) {
	good := mustRead(t, "seed.bin")
	for name, b := range map[string][]byte{
		"bad md5":      func() []byte { c := bytes.Clone(good); c[0x80+20] ^= 1; return c }(),
		"bad magic":    func() []byte { c := bytes.Clone(good); c[0x20] = 0; return c }(),
		"no end":       good[:0x80],
		"short row":    good[:0x30],
		"invalid utf8": func() []byte { c := bytes.Clone(good); c[12] = 0xC3; c[13] = 0x28; return c }(),
	} {
		if _, err := ParseBinary(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A flash read-back is a whole sector; the end marker stops the reader.
	sector := append(bytes.Clone(good), bytes.Repeat([]byte{0xFF}, SectorSize-len(good))...)
	tab, err := ParseBinary(sector)
	if err != nil || len(tab.Partitions) != 4 {
		t.Fatalf("sector: %+v %v", tab, err)
	}
}

// TestAgainstTool runs the real gen_esp32part.py on every vector when
// THINGLINE_GEN_ESP32PART names it, so that the committed vectors can be
// checked against another IDF release.
func TestAgainstTool(t *testing.T) {
	gen := os.Getenv("THINGLINE_GEN_ESP32PART")
	if gen == "" {
		t.Skip("THINGLINE_GEN_ESP32PART (path of gen_esp32part.py): not set")
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3: not installed")
	}
	for _, v := range readVectors(t) {
		out := filepath.Join(t.TempDir(), "out.bin")
		args := append([]string{gen, "-q", filepath.Join("testdata", v.in), out}, v.args...)
		if msg, err := exec.Command(py, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", v.in, err, msg)
		}
		want, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		tab, err := ParseCSV(bytes.NewReader(mustRead(t, v.in)), v.csvOpt)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := tab.Binary(v.binOpt); !bytes.Equal(got, want) {
			t.Errorf("%s: differs from the tool", v.in)
		}
	}
}
