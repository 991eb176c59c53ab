package factory

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLabelUnitAndSheet(t *testing.T) {
	ca := devCA(t)
	out := t.TempDir()
	ctx := context.Background()
	units, err := Inject(ctx, InjectOptions{CADir: ca, Out: out, Count: 2, Batch: "L1"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLedger(filepath.Join(out, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sn, err := LabelUnit(ctx, l, units[0].Dir, "fay")
	if err != nil || sn != units[0].SN {
		t.Fatalf("label: %s, %v", sn, err)
	}
	p, _ := ReadProvInfo(units[0].Dir)
	zpl, err := os.ReadFile(filepath.Join(units[0].Dir, LabelZPL))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(zpl), "^FDMA,"+p.QRPayload()+"^FS") || !strings.Contains(string(zpl), sn) {
		t.Errorf("zpl lacks the payload or SN:\n%s", zpl)
	}
	for _, f := range []string{LabelPNG, LabelPDF} {
		if fi, err := os.Stat(filepath.Join(units[0].Dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	u, _ := l.Unit(ctx, sn)
	if u.LastStation != StationLabel || u.LastResult != Pass {
		t.Errorf("station 5 not recorded: %+v", u)
	}
	// Two units never share a proof of possession.
	p2, _ := ReadProvInfo(units[1].Dir)
	if p.PoP == p2.PoP {
		t.Error("two units share a pop")
	}
	sheet := filepath.Join(t.TempDir(), "sheet.pdf")
	sns, err := LabelSheet(ctx, l, sheet, "L1", "fay")
	if err != nil || len(sns) != 2 {
		t.Fatalf("sheet: %v, %v", sns, err)
	}
	if b, _ := os.ReadFile(sheet); !strings.HasPrefix(string(b), "%PDF-") {
		t.Error("sheet is not a pdf")
	}
	if _, err := LabelSheet(ctx, l, sheet, "nope", ""); err == nil {
		t.Error("empty batch sheet accepted")
	}
	// A directory that is not an injected unit of the ledger is refused.
	fake := filepath.Join(out, "SN-999999")
	os.Mkdir(fake, 0o755)
	os.WriteFile(filepath.Join(fake, ProvFile), NewProvInfo("SN-999999").Marshal(), 0o644)
	if _, err := LabelUnit(ctx, l, fake, ""); err == nil {
		t.Error("label for an unknown unit accepted")
	}
}

func TestQRPayload(t *testing.T) {
	p := ProvInfo{ServiceName: "PROV_11770F", PoP: "abcdefgh23", Sec2Username: "wifiprov"}
	want := `{"ver":"v1","name":"PROV_11770F","username":"wifiprov","pop":"abcdefgh23","transport":"ble"}`
	if got := p.QRPayload(); got != want {
		t.Errorf("payload %s, want %s", got, want)
	}
}
